//! Connecting to a replica and calling it, retrying what is retryable.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Result};
use coop_proto::api::coop_client::CoopClient;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

pub type Client = CoopClient<Channel>;

/// Connects to `addr` (HOST:PORT), failing clearly if nothing answers.
pub async fn connect(addr: &str) -> Result<Client> {
    let url = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|_| anyhow!("bad address {addr:?}: use HOST:PORT"))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow!(
            "cannot reach a coop scheduler at {addr}: {}",
            source_chain(&e)
        )
    })?;
    Ok(CoopClient::new(channel).max_decoding_message_size(coop_proto::MAX_MESSAGE_BYTES))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.dedup();
    parts.join(": ")
}

/// Calls `f` until it succeeds, fails for good, or `budget` runs out.
/// UNAVAILABLE (no leader yet, leader changed) is retried with backoff; a
/// submit carries its request id, so a retry never makes a second job.
pub async fn retry<T, F, Fut>(budget: Duration, mut f: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + budget;
    let mut backoff = Duration::from_millis(20);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(s)
                if s.code() == Code::Unavailable
                    && tokio::time::Instant::now() + backoff < deadline =>
            {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Err(s) => return Err(s),
        }
    }
}

/// How long a command keeps retrying while the cluster elects a leader.
pub const RETRY_BUDGET: Duration = Duration::from_secs(15);

/// One call to the cluster: `f` gets a client and the request, and is
/// retried (see `retry`) with a fresh copy of both; errors come back as
/// one line for people.
pub async fn call<Req, T, F, Fut>(client: &Client, req: Req, f: F) -> anyhow::Result<T>
where
    Req: Clone,
    F: Fn(Client, Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    retry(RETRY_BUDGET, || f(client.clone(), req.clone()))
        .await
        .map(tonic::Response::into_inner)
        .map_err(explain)
}

/// A status as a one-line error for people.
pub fn explain(status: tonic::Status) -> anyhow::Error {
    let what = match status.code() {
        Code::InvalidArgument => "rejected",
        Code::NotFound => "not found",
        Code::PermissionDenied => "not allowed",
        Code::FailedPrecondition => "cannot do that now",
        Code::AlreadyExists => "already done",
        Code::Unavailable => "scheduler unavailable",
        Code::ResourceExhausted => "too large",
        _ => "error",
    };
    anyhow!("{what}: {}", status.message())
}
