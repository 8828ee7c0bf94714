//! What every service of a replica shares: the Raft node, the config, the
//! leader's in-memory heartbeat table, and cached client channels.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use coop_core::{Command, CoreError, NodeId, Outcome};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Status;

use crate::config::Config;
use crate::error::{core_status, not_leader, write_status};
use crate::raft::RaftNode;
use coop_proto::tls::PEER_CALL_DEADLINE;

/// Metadata marking a call one replica forwarded to another, so a
/// forwarded call is never forwarded again (no ping-pong during elections).
pub const FORWARDED: &str = "coop-forwarded";

pub struct Shared {
    pub node: RaftNode,
    pub config: Config,
    pub metrics: std::sync::Arc<crate::metrics::SchedulerMetrics>,
    /// node -> (incarnation, last heartbeat). Heartbeats are not logged:
    /// only the leader's view matters, and a new leader starts everyone
    /// with a full timeout of grace.
    pub heartbeats: Mutex<HashMap<NodeId, (u64, Instant)>>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Mutual TLS to other replicas (none only in plaintext experiments).
    pub replica_tls: Option<ClientTlsConfig>,
    /// This replica's checkpoint signatures and those it collected.
    pub witness: std::sync::Arc<crate::witness::Witness>,
    clock: crate::clock::Clock,
}

/// A lazily connected channel to `addr` (with `tls`, if given).
fn lazy_channel(addr: &str, tls: Option<ClientTlsConfig>) -> Result<Channel, Status> {
    Ok(coop_proto::net::lazy_channel(
        endpoint(addr, tls)?
            .connect_timeout(Duration::from_secs(2))
            .timeout(PEER_CALL_DEADLINE),
    ))
}

/// An endpoint for `addr`: https with `tls`, else plain http.
pub fn endpoint(addr: &str, tls: Option<ClientTlsConfig>) -> Result<Endpoint, Status> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| Status::internal(format!("bad address {addr}: {e}")))?
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| Status::internal(format!("TLS for {addr}: {e}")))?;
    }
    Ok(endpoint)
}

pub enum Route {
    /// Serve it here: this replica leads.
    Local,
    /// Send it to the leader at this channel.
    Forward(Channel),
}

impl Shared {
    pub fn new(
        node: RaftNode,
        config: Config,
        metrics: std::sync::Arc<crate::metrics::SchedulerMetrics>,
        replica_tls: Option<ClientTlsConfig>,
        witness: std::sync::Arc<crate::witness::Witness>,
        clock: crate::clock::Clock,
    ) -> Self {
        Self {
            clock,
            node,
            config,
            metrics,
            heartbeats: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            replica_tls,
            witness,
        }
    }

    /// This replica's time for the commands it stamps (see `clock`).
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A lazily connected channel to another replica (mutual TLS), reused.
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        self.cached_channel(addr.to_string(), || {
            lazy_channel(addr, self.replica_tls.clone())
        })
    }

    /// A lazily connected channel to a worker's log service, reused: TLS
    /// that only the holder of the node's authorized key can answer
    /// (plaintext only when the replicas themselves run without TLS).
    pub fn worker_channel(
        &self,
        addr: &str,
        node_key: &coop_core::PublicKey,
    ) -> Result<Channel, Status> {
        if self.replica_tls.is_none() {
            return self.cached_channel(format!("worker:{addr}"), || lazy_channel(addr, None));
        }
        self.cached_channel(format!("node:{addr}:{node_key}"), || {
            coop_proto::tls::node_channel(addr, node_key.0)
                .map_err(|e| Status::internal(e.to_string()))
        })
    }

    /// The channel cached under `key`, made by `make` the first time.
    fn cached_channel(
        &self,
        key: String,
        make: impl FnOnce() -> Result<Channel, Status>,
    ) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(&key) {
            return Ok(c.clone());
        }
        let channel = make()?;
        channels.insert(key, channel.clone());
        Ok(channel)
    }

    /// Where a leader-only call should go. A call that was already forwarded
    /// to us and finds us not leading fails as retryable instead.
    pub async fn route<T>(&self, request: &tonic::Request<T>) -> Result<Route, Status> {
        if self.node.is_leader() {
            self.ensure_genesis().await?;
            return Ok(Route::Local);
        }
        // Only another replica (a client certificate from the cluster CA)
        // can mark a call as forwarded; from anyone else the mark is ignored.
        if request.metadata().contains_key(FORWARDED) && self.forwarded_by_replica(request) {
            return Err(not_leader(self.node.leader().map(|(_, a)| a).as_deref()));
        }
        match self.node.wait_for_leader(Duration::from_secs(3)).await {
            Some((id, _)) if id == self.node.id => Ok(Route::Local),
            Some((_, addr)) => Ok(Route::Forward(self.channel(&addr)?)),
            None => Err(not_leader(None)),
        }
    }

    /// Runs a check against the applied state: what a handler refuses
    /// before anything reaches the log (`apply` checks again on every
    /// replica).
    pub fn precheck<R, E: Into<CoreError>>(
        &self,
        check: impl FnOnce(&coop_core::ClusterState) -> Result<R, E>,
    ) -> Result<R, Status> {
        check(&self.node.state_machine().read().state).map_err(|e| core_status(&e.into()))
    }

    /// Whether a call marked forwarded really came from a replica.
    fn forwarded_by_replica<T>(&self, request: &tonic::Request<T>) -> bool {
        self.replica_tls.is_none() || coop_proto::tls::from_replica(request)
    }

    /// A new cluster's leader adopts the genesis policy before it serves
    /// anything, so no request ever sees the built-in defaults in its place.
    pub async fn ensure_genesis(&self) -> Result<(), Status> {
        if self.node.state_machine().read().state.genesis_adopted() {
            return Ok(());
        }
        let cmd = Command::Genesis {
            cluster_id: self.config.cluster_id.clone(),
            policy: self.config.policy.clone().unwrap_or_default(),
            members: self.config.members.clone(),
            now_ms: self.now_ms(),
        };
        match self.write_result(cmd).await? {
            // Adopted now, or by a concurrent proposal: either way it is in force.
            Ok(_) | Err(CoreError::GenesisAdopted { .. }) => Ok(()),
            Err(e) => Err(core_status(&e)),
        }
    }

    /// Proposes a command here (we lead) and maps every failure to a status.
    pub async fn write(&self, cmd: Command) -> Result<Outcome, Status> {
        match self.node.write(cmd).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(core_status(&e)),
            Err(e) => Err(write_status(&e)),
        }
    }

    /// Like `write`, but a refusal by `apply` comes back as a value.
    pub async fn write_result(&self, cmd: Command) -> Result<Result<Outcome, CoreError>, Status> {
        self.node.write(cmd).await.map_err(|e| write_status(&e))
    }

    /// Makes the local applied state linearizable before a read.
    pub async fn read_barrier(&self) -> Result<(), Status> {
        self.node
            .linearizable_read()
            .await
            .map_err(|e| write_status(&e))
    }
}

/// Credentials (read credentials, node sessions) this replica already
/// verified: a client reuses one for a minute, and checking the same bytes
/// against the same key again would only cost time. A remembered one still
/// proves only its own signer, under the key it was verified with.
#[derive(Default)]
pub struct VerifiedCredentials {
    /// signature -> (who signed, the key it verified against, issued-at).
    seen: Mutex<HashMap<[u8; 64], (String, coop_core::PublicKey, u64)>>,
}

/// Verified credentials remembered at most (each lives five minutes).
const VERIFIED_KEPT: usize = 4096;

impl VerifiedCredentials {
    /// `Some(Ok)` when exactly this credential was verified for `who` under
    /// `key`; `Some(Err)` when it was but has expired; `None` when unknown.
    pub fn recall(
        &self,
        auth: &coop_core::Auth,
        who: &str,
        key: &coop_core::PublicKey,
        now: u64,
    ) -> Option<Result<(), Status>> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (w, k, at) = seen.get(&auth.signature.0)?;
        if w != who || k != key || *at != auth.issued_at_ms {
            return None;
        }
        if at.abs_diff(now) <= coop_core::identity::MAX_CLOCK_SKEW_MS {
            Some(Ok(()))
        } else {
            seen.remove(&auth.signature.0);
            Some(Err(Status::unauthenticated(
                "the credential expired: sign a new one",
            )))
        }
    }

    pub fn remember(&self, auth: &coop_core::Auth, who: &str, key: coop_core::PublicKey, now: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= VERIFIED_KEPT {
            seen.retain(|_, (_, _, at)| at.abs_diff(now) <= coop_core::identity::MAX_CLOCK_SKEW_MS);
            if seen.len() >= VERIFIED_KEPT {
                seen.clear();
            }
        }
        seen.insert(auth.signature.0, (who.to_string(), key, auth.issued_at_ms));
    }
}

/// A request's signature and issued-at as the core takes them; a malformed
/// signature is UNAUTHENTICATED.
pub fn signed(issued_at_ms: u64, signature: &[u8]) -> Result<coop_core::Auth, Status> {
    coop_proto::convert::auth(issued_at_ms, signature)
        .map_err(|e| Status::unauthenticated(e.to_string()))
}

/// Copies a request for forwarding, marked as forwarded.
pub fn forwarded<T: Clone>(request: &tonic::Request<T>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(request.get_ref().clone());
    r.metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    if let Some(t) = request.metadata().get("grpc-timeout") {
        r.metadata_mut().insert("grpc-timeout", t.clone());
    }
    coop_proto::read_auth::copy(request.metadata(), r.metadata_mut());
    r
}

/// A write whose outcome is not the kind its command makes: a bug, said so.
pub fn unexpected(outcome: Outcome) -> Status {
    Status::internal(format!("unexpected outcome {outcome:?}"))
}

/// A forwarded call that failed on the way (the leader died mid-call, the
/// connection broke) is retryable for the client: its request carries what
/// makes a retry safe (a submit's request id), and a new leader will answer.
pub fn forward_failed(status: Status) -> Status {
    let transport = coop_proto::status::broke(&status);
    match status.code() {
        tonic::Code::Cancelled | tonic::Code::Unknown | tonic::Code::DeadlineExceeded => {
            Status::unavailable(format!(
                "the leader did not answer ({}); retry",
                status.message()
            ))
        }
        _ if transport => Status::unavailable(format!(
            "the connection to the leader broke ({}); retry",
            status.message()
        )),
        _ => status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coop_proto::api::coop_client::CoopClient;
    use coop_proto::api::ClusterStatusRequest;

    /// A forwarded call to a leader that accepted the connection and went
    /// silent ends with an error at the deadline instead of hanging.
    #[tokio::test]
    async fn a_forwarded_call_to_a_silent_leader_ends_at_its_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming().flatten() {
                held.push(conn);
            }
        });
        let mut client = CoopClient::new(lazy_channel(&addr, None).unwrap());
        let call = client.cluster_status(ClusterStatusRequest {});
        // A watchdog far above the deadline: without one the call hangs.
        let answer = tokio::time::timeout(PEER_CALL_DEADLINE * 6, call)
            .await
            .expect("the forwarded call hangs");
        assert!(answer.is_err());
    }
}
