//! Connecting to a replica and calling it, retrying what is retryable.

use std::future::Future;
use std::time::Duration;

use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, Result};
use coop_core::{MemberId, SecretKey};
use coop_proto::api::coop_client::CoopClient;
use coop_proto::api::{ClusterStatusRequest, ClusterStatusResponse};
use coop_proto::status::{broke, timed_out};
use std::path::PathBuf;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

/// A replica client whose every call carries this process's read credential.
pub type Client = CoopClient<InterceptedService<Channel, ReadAuth>>;

/// Who this process reads as: one `coop` invocation acts as one member.
static READER: OnceLock<(MemberId, Arc<SecretKey>)> = OnceLock::new();

/// Reads from now on are signed as `member` (first call wins).
pub fn read_as(member: MemberId, key: Arc<SecretKey>) {
    let _ = READER.set((member, key));
}

/// Signs a fresh read credential onto every request (see `coop_proto::read_auth`).
#[derive(Clone)]
pub struct ReadAuth {
    reader: Option<(String, MemberId, Arc<SecretKey>)>,
    /// The credential last signed: reused while it is young, so a client
    /// polling or submitting in a loop signs once a minute, not per call.
    signed: Arc<std::sync::Mutex<Option<coop_core::Auth>>>,
}

/// How long one call may wait for its answer (for a stream, for the stream
/// to start): a replica that accepted the connection and then went silent
/// (its host paused, a black-holed leader) costs a retry, not a hang. Well
/// above a loaded leader's latency, below the retry budget.
pub const CALL_DEADLINE: Duration = Duration::from_secs(5);

/// A read credential is re-signed once it is this old (replicas accept it
/// for `coop_core::identity::MAX_CLOCK_SKEW_MS`, five minutes).
const READ_CREDENTIAL_REUSE_MS: u64 = 60_000;

impl tonic::service::Interceptor for ReadAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        // The replica learns the deadline too (and passes it on when it
        // forwards the call to the leader), so it stops working for a
        // caller that has given up.
        if req.metadata().get("grpc-timeout").is_none() {
            req.set_timeout(CALL_DEADLINE);
        }
        if let Some((cluster, member, key)) = &self.reader {
            let now = crate::identity::now_ms();
            let mut signed = self.signed.lock().unwrap_or_else(|p| p.into_inner());
            let auth = match signed.as_ref() {
                Some(a) if now.saturating_sub(a.issued_at_ms) < READ_CREDENTIAL_REUSE_MS => {
                    a.clone()
                }
                _ => signed.insert(key.sign_read(cluster, member, now)).clone(),
            };
            coop_proto::read_auth::attach(req.metadata_mut(), member, &auth);
        }
        Ok(req)
    }
}

/// Which cluster CA this process trusts, when not the one pinned on first use.
enum Trust {
    /// A CA certificate in memory: the local clusters of `coop demo`,
    /// `coop bench --local` and `coop dev`.
    Pem(String),
    /// A CA certificate file (`--ca`, COOP_CA, or the context's `ca`).
    File(PathBuf),
}

static TRUST: OnceLock<Trust> = OnceLock::new();

/// Trust this CA certificate for every replica (first call wins).
pub fn trust_ca_pem(pem: String) {
    let _ = TRUST.set(Trust::Pem(pem));
}

/// Trust the CA certificate in this file for every replica.
pub fn trust_ca_file(path: PathBuf) {
    let _ = TRUST.set(Trust::File(path));
}

/// Where the CA first seen at `addr` is pinned (like ssh's known_hosts).
fn known_ca_path(addr: &str) -> PathBuf {
    let name: String = addr
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    crate::identity::config_dir()
        .join("known_cas")
        .join(format!("{name}.pem"))
}

/// The cluster CA trusted for `addr` and, for a pinned one, its file.
async fn ca_for(addr: &str) -> Result<(String, Option<PathBuf>)> {
    if let Some(given) = given_trust()? {
        return Ok(given);
    }
    let path = known_ca_path(addr);
    if let Ok(pem) = std::fs::read_to_string(&path) {
        return Ok((pem, Some(path)));
    }
    // Trust on first use: pin what the replica presents.
    let pem = coop_proto::tls::probe_ca(addr).await?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| anyhow!("create {}: {e}", dir.display()))?;
    }
    std::fs::write(&path, &pem).map_err(|e| anyhow!("write {}: {e}", path.display()))?;
    eprintln!(
        "coop: first contact with {addr}: trusting its cluster CA {} from now on (pinned in {})",
        coop_proto::tls::fingerprint(&pem)?,
        path.display()
    );
    Ok((pem, Some(path)))
}

/// The CA given by COOP_CA or a context (and its file, if it is one).
fn given_trust() -> Result<Option<(String, Option<PathBuf>)>> {
    Ok(match TRUST.get() {
        Some(Trust::Pem(pem)) => Some((pem.clone(), None)),
        Some(Trust::File(path)) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| anyhow!("cluster CA {}: {e}", path.display()))?;
            Some((pem, Some(path.clone())))
        }
        None => None,
    })
}

/// The TLS settings for `addr` and, for a pinned CA, the file it is in.
async fn tls_for(addr: &str) -> Result<(ClientTlsConfig, Option<PathBuf>)> {
    let (pem, path) = ca_for(addr).await?;
    Ok((coop_proto::tls::client(&pem), path))
}

/// The cluster CA this CLI trusts for `addr` (what vouches for replica
/// signatures); `None` for a plaintext `http://` address.
pub async fn trusted_ca(addr: &str) -> Result<Option<String>> {
    if addr.starts_with("http://") {
        return Ok(None);
    }
    let hostport = addr.strip_prefix("https://").unwrap_or(addr);
    Ok(Some(ca_for(hostport).await?.0))
}

/// The CA given on the command line, by COOP_CA or a context, if any:
/// what an offline audit checks signatures against.
pub fn given_ca() -> Result<Option<String>> {
    Ok(given_trust()?.map(|(pem, _)| pem))
}

/// Connects to `addr` (HOST:PORT), failing clearly if nothing answers.
/// TLS, verified against the cluster CA; `http://HOST:PORT` talks to a
/// replica started with `--plaintext`.
pub async fn connect(addr: &str) -> Result<Client> {
    let (endpoint, pinned) = match addr.strip_prefix("http://") {
        Some(plain) => (
            Endpoint::from_shared(format!("http://{plain}"))
                .map_err(|_| anyhow!("bad address {addr:?}: use HOST:PORT"))?,
            None,
        ),
        None => {
            let hostport = addr.strip_prefix("https://").unwrap_or(addr);
            let (tls, pinned) = tls_for(hostport).await?;
            (
                Endpoint::from_shared(format!("https://{hostport}"))
                    .map_err(|_| anyhow!("bad address {addr:?}: use HOST:PORT"))?
                    .tls_config(tls)?,
                pinned,
            )
        }
    };
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(3))
        .timeout(CALL_DEADLINE)
        .tcp_nodelay(true);
    let channel = endpoint.connect().await.map_err(|e| {
        let why = source_chain(&e);
        match pinned {
            Some(path) if why.contains("certificate") => anyhow!(
                "the replica at {addr} presented a certificate the pinned cluster CA ({}) did not issue: {why}. If the cluster's CA was replaced on purpose, remove that file; otherwise someone may be posing as the cluster",
                path.display()
            ),
            _ => anyhow!("cannot reach a coop scheduler at {addr}: {why}"),
        }
    })?;
    // The cluster id a read credential names; asking it needs no credential.
    let reader = match READER.get() {
        Some((member, key)) => {
            let plain = CoopClient::new(channel.clone());
            wait_for_cluster_id(|| {
                let mut c = plain.clone();
                async move { c.cluster_status(ClusterStatusRequest {}).await }
            })
            .await?
            .map(|id| (id, member.clone(), key.clone()))
        }
        None => None,
    };
    let auth = ReadAuth {
        reader,
        signed: Default::default(),
    };
    Ok(CoopClient::with_interceptor(channel, auth)
        .max_decoding_message_size(coop_proto::MAX_MESSAGE_BYTES))
}

/// How long to wait for a new cluster's leader to adopt its genesis.
const GENESIS_WAIT: Duration = Duration::from_secs(5);

/// The cluster's id as `ask` reports it (a `ClusterStatus` call), waiting
/// briefly while a new cluster's leader adopts its genesis; `None` for a
/// cluster that has none (not initialized).
pub async fn wait_for_cluster_id<F, Fut>(mut ask: F) -> Result<Option<String>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<ClusterStatusResponse>, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + GENESIS_WAIT;
    loop {
        let id = ask().await.map_err(explain)?.into_inner().cluster_id;
        if !id.is_empty() {
            return Ok(Some(id));
        }
        if tokio::time::Instant::now() > deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
/// UNAVAILABLE (no leader yet, leader changed) and DEADLINE_EXCEEDED are
/// retried with backoff; a submit carries its request id, so a retry never
/// makes a second job.
pub async fn retry<T, F, Fut>(budget: Duration, mut f: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + budget;
    // Capped at 100 ms: a retry is one cheap refusal while there is no
    // leader, and a longer wait would add up to its whole length to every
    // failover a user sees (an election takes 0.5-1 s by default).
    let mut backoff = Duration::from_millis(10);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            // A call past its deadline is retried like a lost leader: every
            // write carries its request id, so a retry never acts twice.
            Err(s)
                if (s.code() == Code::Unavailable || timed_out(&s) || broke(&s))
                    && tokio::time::Instant::now() + backoff < deadline =>
            {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(100));
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

/// Why this process has no read credential, when it has none.
static NO_READER: OnceLock<String> = OnceLock::new();

/// Records why reads cannot be signed (shown if a replica asks for them).
pub fn no_reader(why: String) {
    let _ = NO_READER.set(why);
}

/// A status as a one-line error for people.
pub fn explain(status: tonic::Status) -> anyhow::Error {
    if status.code() == Code::Unauthenticated && READER.get().is_none() {
        if let Some(why) = NO_READER.get() {
            return anyhow!(
                "this replica answers members only, and coop cannot sign as one: {why}"
            );
        }
    }
    if timed_out(&status) {
        return anyhow!(
            "no answer within {} s: the replica may be paused, overloaded or cut off from the leader; try again, or another replica (--addr)",
            CALL_DEADLINE.as_secs()
        );
    }
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
