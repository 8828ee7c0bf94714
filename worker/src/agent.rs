//! The worker's control loop.
//!
//! ```text
//!  connection task: register ─▶ heartbeat loop ┐   (to the leader; re-register
//!                               assignment stream ┤    or follow the leader hint
//!                                                  ▼    on any error)
//!  actor task:  desired set ─▶ reconcile ─▶ start / stop processes
//!               process exits ─────────────▶ local table
//!  reporter task: started/finished reports, in order, retried until the
//!                 scheduler acknowledges (or calls them stale)
//! ```

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coop_proto::api::Resources;
use coop_proto::worker::worker_gateway_client::WorkerGatewayClient;
use coop_proto::worker::*;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::executor::Exit;

/// Who this worker is and where to reach the schedulers.
pub struct Identity {
    pub node_id: String,
    pub owner: String,
    pub capacity: Resources,
    pub gpus: Vec<coop_proto::api::GpuInfo>,
    pub addr: String,
    pub incarnation: u64,
    pub work_dir: PathBuf,
    pub stop_grace: Duration,
    /// The binary that runs model jobs (`<runner> run-model DIR CACHE`).
    pub runner: PathBuf,
    /// ONNX Runtime's library, when this worker has one that loads.
    pub onnxruntime: Option<PathBuf>,
    /// The engines advertised in its registration (ONNX Runtime, CUDA).
    pub advertised: coop_core::NodeEngines,
    pub cache_max_bytes: u64,
    /// First uid and how many, when each job runs as its own user.
    pub job_uids: Option<(u32, u32)>,
    /// Where job cgroups go, when cgroup v2 is available.
    pub cgroups: Option<PathBuf>,
    pub metrics: Arc<crate::metrics::WorkerMetrics>,
    /// The node key its owner authorized (`coop node add`): registration,
    /// reports and the session credential are signed with it.
    pub key: coop_core::SecretKey,
    /// The cluster the signatures name, learned from the first replica
    /// that answers.
    pub cluster_id: std::sync::OnceLock<String>,
    /// The session credential in use, re-signed every minute.
    pub session: Mutex<Option<coop_core::Auth>>,
    /// The wall clock credentials are stamped with.
    pub clock: crate::WallClock,
}

/// How long a session credential is reused before a new one is signed.
const SESSION_REUSE_MS: u64 = 60_000;

impl Identity {
    /// The wall clock, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    fn node(&self) -> coop_core::NodeId {
        coop_core::NodeId::new(self.node_id.clone())
    }

    fn cluster(&self) -> &str {
        self.cluster_id.get().map(String::as_str).unwrap_or("")
    }

    /// The session credential for heartbeats and the assignment stream.
    fn session(&self) -> coop_core::Auth {
        let now = self.now_ms();
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        match &*session {
            Some(auth) if now.saturating_sub(auth.issued_at_ms) < SESSION_REUSE_MS => auth.clone(),
            _ => {
                let auth =
                    self.key
                        .sign_node_session(self.cluster(), &self.node(), self.incarnation, now);
                *session = Some(auth.clone());
                auth
            }
        }
    }

    /// Signs a report with the node key, issued now.
    fn sign(&self, report: &coop_core::NodeReport<'_>) -> coop_core::Auth {
        self.sign_as(self.incarnation, report)
    }

    /// Signs a report as `incarnation` (a predecessor's, for its outbox).
    fn sign_as(&self, incarnation: u64, report: &coop_core::NodeReport<'_>) -> coop_core::Auth {
        self.key.sign_node_report(
            self.cluster(),
            &self.node(),
            incarnation,
            self.now_ms(),
            report,
        )
    }

    /// The signed report of a run's end, as `incarnation`.
    fn finished(&self, incarnation: u64, alloc: u64, exit: &Exit) -> ReportFinishedRequest {
        let result = exit.result.as_deref().map(coop_proto::api::JobResult::from);
        // Signed over what the scheduler will decode from the wire.
        let decoded = result
            .as_ref()
            .and_then(|r| coop_core::JobResult::try_from(r).ok())
            .or_else(|| exit.result.as_deref().cloned());
        let status = coop_core::ExitStatus {
            code: exit.code,
            signal: exit.signal,
            error: exit.error.clone(),
        };
        let auth = self.sign_as(
            incarnation,
            &coop_core::NodeReport::Finished {
                alloc: coop_core::AllocId(alloc),
                exit: &status,
                result: decoded.as_ref(),
            },
        );
        ReportFinishedRequest {
            node_id: self.node_id.clone(),
            alloc_id: alloc,
            exit_code: exit.code,
            signal: exit.signal,
            error: exit.error.clone(),
            result,
            incarnation,
            issued_at_ms: auth.issued_at_ms,
            signature: auth.signature.0.to_vec(),
        }
    }
}

/// The most a call to a replica may take (reports; a heartbeat gets one
/// heartbeat interval): below the default node timeout of 5 s, so a hung
/// call never outlasts the time in which the node is declared lost.
pub const CALL_DEADLINE: Duration = Duration::from_secs(3);

/// The node timeout assumed until a replica tells (the scheduler's default).
const DEFAULT_NODE_TIMEOUT_MS: u64 = 5000;

/// HTTP/2 keepalive interval and timeout on the connections to replicas.
pub const KEEPALIVE: Duration = Duration::from_secs(1);

/// Finds and remembers the scheduler leader.
pub struct Schedulers {
    addrs: Vec<String>,
    /// TLS to the replicas, trusting the cluster CA (none with plaintext).
    tls: Option<tonic::transport::ClientTlsConfig>,
    next: Mutex<usize>,
    leader: Mutex<Option<String>>,
    channels: Mutex<HashMap<String, Channel>>,
    /// When a leader with its quorum last answered a leader-only call.
    last_contact: Mutex<tokio::time::Instant>,
    /// The cluster's node timeout, learnt at registration (ms).
    node_timeout_ms: std::sync::atomic::AtomicU64,
}

impl Schedulers {
    pub fn new(addrs: Vec<String>, tls: Option<tonic::transport::ClientTlsConfig>) -> Self {
        Self {
            addrs,
            tls,
            next: Mutex::new(0),
            leader: Mutex::new(None),
            channels: Mutex::new(HashMap::new()),
            last_contact: Mutex::new(tokio::time::Instant::now()),
            node_timeout_ms: std::sync::atomic::AtomicU64::new(DEFAULT_NODE_TIMEOUT_MS),
        }
    }

    /// How long since a leader that has its quorum last answered.
    pub fn since_contact(&self) -> Duration {
        self.last_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// How long this worker may go without reaching a leader that has its
    /// quorum before it stops its allocations: three quarters of the node
    /// timeout, so they are stopped before the cluster, having declared
    /// the node lost, can start them elsewhere (Nomad's
    /// `stop_after_client_disconnect`). A leader election takes about one
    /// election timeout (0.5-1 s by default), well inside it.
    pub fn stop_after(&self) -> Duration {
        let timeout = self
            .node_timeout_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        Duration::from_millis(timeout * 3 / 4)
    }

    /// The leader if known, otherwise the next address in turn.
    fn target(&self) -> String {
        if let Some(l) = self
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return l;
        }
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let addr = self.addrs[*next % self.addrs.len()].clone();
        *next += 1;
        addr
    }

    /// Learns from an error: follows a leader hint, or forgets a leader that failed.
    fn observe(&self, status: &tonic::Status) {
        let hint = status
            .metadata()
            .get(coop_proto::LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = hint;
    }

    /// Records that `addr` answered a leader-only call: it leads, with its
    /// quorum (replicas serve those calls only then).
    fn confirm(&self, addr: &str) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr.to_string());
        self.touch();
    }

    /// Records that the cluster's quorum answered.
    fn touch(&self) {
        *self.last_contact.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
    }

    fn client(&self, addr: &str) -> Option<WorkerGatewayClient<Channel>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).ok()?;
                if let Some(tls) = &self.tls {
                    endpoint = endpoint.tls_config(tls.clone()).ok()?;
                }
                let c = coop_proto::net::lazy_channel(
                    endpoint
                        .connect_timeout(Duration::from_secs(1))
                        .timeout(CALL_DEADLINE)
                        // A leader that died silently (powered off, black-holed)
                        // is noticed within two keepalives, the assignment
                        // stream included, instead of hanging on it.
                        .http2_keep_alive_interval(KEEPALIVE)
                        .keep_alive_timeout(KEEPALIVE)
                        .keep_alive_while_idle(true)
                        .tcp_nodelay(true),
                );
                channels.insert(addr.to_string(), c.clone());
                c
            }
        };
        Some(WorkerGatewayClient::new(channel))
    }

    fn coop_client(&self, addr: &str) -> Option<coop_proto::api::coop_client::CoopClient<Channel>> {
        self.client(addr)?;
        let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .get(addr)
            .cloned()
            .map(coop_proto::api::coop_client::CoopClient::new)
    }
}

/// Registers, then heartbeats and follows the assignment stream until
/// something breaks; then starts over. Runs until the task is aborted.
pub async fn connection_loop(
    id: Arc<Identity>,
    scheds: Arc<Schedulers>,
    desired_tx: mpsc::Sender<(u64, Vec<Assignment>)>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let (interval, registered_at) = match register(&id, &scheds).await {
            Ok(interval) => (interval, scheds.target()),
            Err(e) => {
                tracing::debug!(error = %e, "register failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        tracing::info!(node = %id.node_id, via = %registered_at, "registered");
        tokio::select! {
            _ = heartbeat_loop(&id, &scheds, interval) => {},
            _ = stream_loop(&id, &scheds, &desired_tx) => {},
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn register(id: &Identity, scheds: &Schedulers) -> Result<Duration, tonic::Status> {
    let addr = scheds.target();
    let mut client = scheds
        .client(&addr)
        .ok_or_else(|| tonic::Status::invalid_argument(format!("bad scheduler address {addr}")))?;
    if id.cluster_id.get().is_none() {
        let status = scheds
            .coop_client(&addr)
            .ok_or_else(|| {
                tonic::Status::invalid_argument(format!("bad scheduler address {addr}"))
            })?
            .cluster_status(coop_proto::api::ClusterStatusRequest {})
            .await?
            .into_inner();
        if status.cluster_id.is_empty() {
            return Err(tonic::Status::unavailable("the cluster has no id yet"));
        }
        let _ = id.cluster_id.set(status.cluster_id);
    }
    send_predecessors_reports(id, &mut client).await?;
    let capacity = coop_proto::convert::resources(Some(&id.capacity));
    let gpus: Vec<coop_core::GpuInfo> = id.gpus.iter().map(coop_core::GpuInfo::from).collect();
    let owner = coop_core::MemberId::new(id.owner.clone());
    let auth = id.sign(&coop_core::NodeReport::Register {
        owner: &owner,
        capacity: &capacity,
        addr: &id.addr,
        gpus: &gpus,
        engines: &id.advertised,
    });
    let reply = client
        .register(RegisterRequest {
            node_id: id.node_id.clone(),
            owner: id.owner.clone(),
            capacity: Some(id.capacity),
            addr: id.addr.clone(),
            incarnation: id.incarnation,
            gpus: id.gpus.clone(),
            engines: Some((&id.advertised).into()),
            issued_at_ms: auth.issued_at_ms,
            signature: auth.signature.0.to_vec(),
        })
        .await;
    match reply {
        Ok(r) => {
            let r = r.into_inner();
            if r.heartbeat_timeout_ms > 0 {
                scheds
                    .node_timeout_ms
                    .store(r.heartbeat_timeout_ms, std::sync::atomic::Ordering::Relaxed);
            }
            // A registration is a committed write: a quorum took it.
            scheds.touch();
            Ok(Duration::from_millis(r.heartbeat_interval_ms.max(10)))
        }
        Err(status) => {
            scheds.observe(&status);
            if matches!(
                status.code(),
                Code::InvalidArgument | Code::Unauthenticated | Code::PermissionDenied
            ) {
                tracing::error!(
                    error = %status.message(),
                    node_key = %id.key.public_key(),
                    "the scheduler refused this worker"
                );
            }
            Err(status)
        }
    }
}

/// Whether a failed report may succeed if sent again (re-signed): no
/// leader, no answer, a broken connection, a clock outside the window.
/// The rest is the scheduler's considered no to these very contents.
fn transient(status: &tonic::Status) -> bool {
    !matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::ResourceExhausted
            | Code::OutOfRange
            | Code::Unimplemented
    )
}

/// Sends the ends of runs an earlier incarnation recorded but may not have
/// reported (see `crate::outbox`), before this one registers and so ends
/// that incarnation's allocations. A report the scheduler calls stale (the
/// node was already declared lost) is dropped too.
async fn send_predecessors_reports(
    id: &Identity,
    client: &mut WorkerGatewayClient<Channel>,
) -> Result<(), tonic::Status> {
    for entry in crate::outbox::load(&id.work_dir) {
        if entry.incarnation >= id.incarnation {
            continue;
        }
        let reply = client
            .report_finished(id.finished(entry.incarnation, entry.alloc, &entry.exit))
            .await;
        match reply {
            Ok(r) => tracing::info!(
                alloc = entry.alloc,
                stale = r.get_ref().stale,
                "reported a run that ended before this worker restarted"
            ),
            Err(status) if transient(&status) => return Err(status),
            Err(status) => tracing::warn!(
                alloc = entry.alloc,
                error = %status,
                "the scheduler refused a report of an earlier incarnation: dropped"
            ),
        }
        crate::outbox::remove(&id.work_dir, entry.alloc);
    }
    Ok(())
}

/// A heartbeat that cannot finish within one interval is a missed one:
/// the next is due, and a hung call must not outlast the node timeout.
fn heartbeat_request(id: &Identity, interval: Duration) -> tonic::Request<HeartbeatRequest> {
    let session = id.session();
    let mut req = tonic::Request::new(HeartbeatRequest {
        node_id: id.node_id.clone(),
        incarnation: id.incarnation,
        issued_at_ms: session.issued_at_ms,
        signature: session.signature.0.to_vec(),
    });
    req.set_timeout(interval);
    req
}

/// Returns when the worker must register again (or the leader is gone).
async fn heartbeat_loop(id: &Identity, scheds: &Schedulers, interval: Duration) {
    let mut failures = 0;
    loop {
        tokio::time::sleep(interval).await;
        let addr = scheds.target();
        let Some(mut client) = scheds.client(&addr) else {
            return;
        };
        match client.heartbeat(heartbeat_request(id, interval)).await {
            Ok(r) if r.get_ref().reregister => return,
            Ok(_) => {
                scheds.confirm(&addr);
                failures = 0;
            }
            Err(status) => {
                scheds.observe(&status);
                failures += 1;
                // A new leader may not know us yet; after a few misses, start over.
                if failures >= 3 {
                    return;
                }
            }
        }
    }
}

async fn stream_loop(
    id: &Identity,
    scheds: &Schedulers,
    desired_tx: &mpsc::Sender<(u64, Vec<Assignment>)>,
) {
    loop {
        let addr = scheds.target();
        let Some(mut client) = scheds.client(&addr) else {
            return;
        };
        let session = id.session();
        let request = AssignmentsRequest {
            node_id: id.node_id.clone(),
            incarnation: id.incarnation,
            issued_at_ms: session.issued_at_ms,
            signature: session.signature.0.to_vec(),
        };
        let mut stream = match client.assignments(request).await {
            Ok(s) => {
                scheds.confirm(&addr);
                s.into_inner()
            }
            Err(status) => {
                scheds.observe(&status);
                if status.code() == Code::FailedPrecondition {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(set)) => {
                    if desired_tx
                        .send((set.applied_index, set.allocations))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    scheds.observe(&status);
                    if status.code() == Code::FailedPrecondition {
                        return;
                    }
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A report for the scheduler; sent in order.
#[derive(Debug, Clone)]
pub enum Report {
    Started(u64),
    Finished(u64, Exit),
}

/// Sends reports in order, each retried until the scheduler answers.
pub async fn reporter(
    id: Arc<Identity>,
    scheds: Arc<Schedulers>,
    mut rx: mpsc::UnboundedReceiver<Report>,
) {
    let mut queue: VecDeque<Report> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(r) => queue.push_back(r),
                None => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            queue.push_back(r);
        }
        let Some(report) = queue.front().cloned() else {
            continue;
        };
        let addr = scheds.target();
        let Some(mut client) = scheds.client(&addr) else {
            return;
        };
        let result = match &report {
            Report::Started(alloc) => {
                let auth = id.sign(&coop_core::NodeReport::Started {
                    alloc: coop_core::AllocId(*alloc),
                });
                client
                    .report_started(ReportStartedRequest {
                        node_id: id.node_id.clone(),
                        alloc_id: *alloc,
                        incarnation: id.incarnation,
                        issued_at_ms: auth.issued_at_ms,
                        signature: auth.signature.0.to_vec(),
                    })
                    .await
            }
            Report::Finished(alloc, exit) => {
                client
                    .report_finished(id.finished(id.incarnation, *alloc, exit))
                    .await
            }
        };
        match result {
            Ok(r) => {
                if r.get_ref().stale {
                    tracing::info!(?report, why = %r.get_ref().message, "report was stale");
                }
                if let Report::Finished(alloc, _) = report {
                    crate::outbox::remove(&id.work_dir, alloc);
                }
                queue.pop_front();
            }
            Err(status) if transient(&status) => {
                scheds.observe(&status);
                tracing::debug!(error = %status, "report failed; will retry");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Refused for good (a bad signature, an impossible result): the
            // same bytes would be refused forever and hold up every later
            // report, so it is dropped, loudly.
            Err(status) => {
                tracing::error!(?report, error = %status, "the scheduler refused a report: dropped");
                if let Report::Finished(alloc, _) = report {
                    crate::outbox::remove(&id.work_dir, alloc);
                }
                queue.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica that accepts the connection and then says nothing (a
    /// black-holed or frozen leader) costs a heartbeat one interval, not the
    /// channel's whole deadline. Measured in the runtime's virtual time.
    #[tokio::test(start_paused = true)]
    async fn a_silent_replica_costs_a_heartbeat_one_interval() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let scheds = Schedulers::new(vec![addr.clone()], None);
        let id = Identity {
            onnxruntime: None,
            advertised: Default::default(),
            node_id: "n".into(),
            owner: "o".into(),
            capacity: Resources::default(),
            gpus: vec![],
            addr: String::new(),
            incarnation: 1,
            work_dir: std::env::temp_dir(),
            stop_grace: Duration::from_secs(1),
            runner: PathBuf::new(),
            cache_max_bytes: 0,
            job_uids: None,
            cgroups: None,
            metrics: Arc::new(crate::metrics::WorkerMetrics::new(
                &Resources::default(),
                &[],
            )),
            key: coop_core::SecretKey::from_bytes(&[7; 32]),
            cluster_id: Default::default(),
            session: Default::default(),
            clock: crate::system_clock(),
        };
        let interval = Duration::from_millis(200);
        let started = tokio::time::Instant::now();
        let reply = scheds
            .client(&addr)
            .unwrap()
            .heartbeat(heartbeat_request(&id, interval))
            .await;
        assert!(reply.is_err());
        assert!(
            started.elapsed() <= interval + Duration::from_millis(50),
            "{:?}",
            started.elapsed()
        );
        drop(silent);
    }
}
