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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coop_proto::api::Resources;
use coop_proto::worker::worker_gateway_client::WorkerGatewayClient;
use coop_proto::worker::*;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::error::WorkerError;
use crate::executor::{self, Exit, Launch};
use crate::model::{self, ModelJob};
use crate::reconcile::{reconcile, Action, Desired, Local};

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
    pub cache_max_bytes: u64,
    /// First uid and how many, when each job runs as its own user.
    pub job_uids: Option<(u32, u32)>,
    /// Where job cgroups go, when cgroup v2 is available.
    pub cgroups: Option<PathBuf>,
    pub metrics: Arc<crate::metrics::WorkerMetrics>,
}

/// Finds and remembers the scheduler leader.
pub struct Schedulers {
    addrs: Vec<String>,
    next: Mutex<usize>,
    leader: Mutex<Option<String>>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Schedulers {
    pub fn new(addrs: Vec<String>) -> Self {
        Self {
            addrs,
            next: Mutex::new(0),
            leader: Mutex::new(None),
            channels: Mutex::new(HashMap::new()),
        }
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

    /// Records that `addr` answered a leader-only call: it leads.
    fn confirm(&self, addr: &str) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr.to_string());
    }

    fn client(&self, addr: &str) -> Option<WorkerGatewayClient<Channel>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = Endpoint::from_shared(format!("http://{addr}"))
                    .ok()?
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(Duration::from_secs(10))
                    .tcp_nodelay(true)
                    .connect_lazy();
                channels.insert(addr.to_string(), c.clone());
                c
            }
        };
        Some(WorkerGatewayClient::new(channel))
    }
}

/// Registers, then heartbeats and follows the assignment stream until
/// something breaks; then starts over. Runs until the task is aborted.
pub async fn connection_loop(
    id: Arc<Identity>,
    scheds: Arc<Schedulers>,
    desired_tx: mpsc::Sender<Vec<Assignment>>,
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
    let reply = client
        .register(RegisterRequest {
            node_id: id.node_id.clone(),
            owner: id.owner.clone(),
            capacity: Some(id.capacity),
            addr: id.addr.clone(),
            incarnation: id.incarnation,
            gpus: id.gpus.clone(),
        })
        .await;
    match reply {
        Ok(r) => Ok(Duration::from_millis(
            r.into_inner().heartbeat_interval_ms.max(10),
        )),
        Err(status) => {
            scheds.observe(&status);
            if status.code() == Code::InvalidArgument {
                tracing::error!(error = %status.message(), "the scheduler refused this worker");
            }
            Err(status)
        }
    }
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
        match client
            .heartbeat(HeartbeatRequest {
                node_id: id.node_id.clone(),
                incarnation: id.incarnation,
            })
            .await
        {
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
    desired_tx: &mpsc::Sender<Vec<Assignment>>,
) {
    loop {
        let addr = scheds.target();
        let Some(mut client) = scheds.client(&addr) else {
            return;
        };
        let request = AssignmentsRequest {
            node_id: id.node_id.clone(),
            incarnation: id.incarnation,
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
                    if desired_tx.send(set.allocations).await.is_err() {
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

pub enum Event {
    Desired(Vec<Assignment>),
    Exited(u64, Exit),
}

/// Owns the local table; turns desired sets and exits into actions.
pub async fn actor(
    id: Arc<Identity>,
    local: Arc<Mutex<BTreeMap<u64, Local>>>,
    mut events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut pgids: BTreeMap<u64, u32> = BTreeMap::new();
    let mut specs: BTreeMap<u64, Assignment> = BTreeMap::new();
    let mut desired: BTreeMap<u64, Desired> = BTreeMap::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Desired(set) => {
                desired = set
                    .iter()
                    .map(|a| {
                        (
                            a.alloc_id,
                            if a.state == coop_proto::api::AllocState::Stopping as i32 {
                                Desired::Stop
                            } else {
                                Desired::Run
                            },
                        )
                    })
                    .collect();
                specs = set.into_iter().map(|a| (a.alloc_id, a)).collect();
            }
            Event::Exited(alloc, exit) => {
                pgids.remove(&alloc);
                executor::record_running(&id.work_dir, &pgids);
                local
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(alloc, Local::Ended);
                let _ = reports.send(Report::Finished(alloc, exit));
            }
        }
        let actions = {
            let table = local.lock().unwrap_or_else(|p| p.into_inner());
            reconcile(&desired, &table)
        };
        for action in actions {
            match action {
                Action::Start(alloc) => {
                    let Some(a) = specs.get(&alloc) else { continue };
                    let spec = a.spec.clone().unwrap_or_default();
                    let mut env: BTreeMap<String, String> = spec.env.clone().into_iter().collect();
                    let model_job = match coop_core::JobSpec::try_from(&spec) {
                        Ok(s) if model::is_model_job(&s.kind) => Some(s.kind),
                        Ok(_) => None,
                        Err(e) => {
                            local
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(alloc, Local::Ended);
                            let _ = reports.send(Report::Finished(
                                alloc,
                                Exit::error(format!("the job spec does not convert: {e}")),
                            ));
                            continue;
                        }
                    };
                    if model_job.is_some() {
                        env.insert(
                            model::artifact::CACHE_LIMIT_ENV.into(),
                            id.cache_max_bytes.to_string(),
                        );
                    }
                    let argv = match &model_job {
                        Some(job) => match prepare_model_job(&id, alloc, job) {
                            Ok(argv) => argv,
                            Err(e) => {
                                local
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .insert(alloc, Local::Ended);
                                let _ = reports
                                    .send(Report::Finished(alloc, Exit::error(e.to_string())));
                                continue;
                            }
                        },
                        None => spec.argv.clone(),
                    };
                    let launch = Launch {
                        alloc_id: alloc,
                        job_id: a.job_id,
                        argv: &argv,
                        env: &env,
                        gpu_indices: &a.gpu_indices,
                        cpu_millis: spec.resources.map(|r| r.cpu_millis).unwrap_or(0),
                        memory_bytes: spec.resources.map(|r| r.memory_bytes).unwrap_or(0),
                        // A uid per allocation, reused only after the range wraps.
                        run_as: id.job_uids.map(|(base, count)| {
                            let uid = base + (alloc % u64::from(count)) as u32;
                            (uid, uid)
                        }),
                    };
                    match executor::spawn(&id.work_dir, &launch, id.cgroups.as_deref()) {
                        Ok((child, confinement)) => {
                            tracing::info!(alloc, ?confinement, run_as = ?launch.run_as, "confined");
                            if let Some(pid) = child.id() {
                                pgids.insert(alloc, pid);
                                executor::record_running(&id.work_dir, &pgids);
                            }
                            local
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(alloc, Local::Running);
                            let _ = reports.send(Report::Started(alloc));
                            tracing::info!(alloc, job = a.job_id, "started");
                            let tx = events_tx.clone();
                            let timeout = spec.timeout_secs.map(Duration::from_secs);
                            let grace = id.stop_grace;
                            let dir = executor::alloc_dir(&id.work_dir, alloc);
                            let is_model = model_job.is_some();
                            let kind = match &model_job {
                                Some(ModelJob::Inference { .. }) => "inference",
                                Some(ModelJob::Evaluation { .. }) => "evaluation",
                                Some(ModelJob::Command { .. }) | None => "command",
                            };
                            let metrics = id.metrics.clone();
                            let started = std::time::Instant::now();
                            tokio::spawn(async move {
                                let mut exit =
                                    executor::wait_with_timeout(child, timeout, grace).await;
                                executor::release(&confinement);
                                if is_model {
                                    collect_model_outcome(&dir, &mut exit);
                                }
                                let outcome = if exit.code == Some(0) && exit.error.is_empty() {
                                    "succeeded"
                                } else if exit.signal.is_some() {
                                    "killed"
                                } else {
                                    "failed"
                                };
                                metrics.job_ended(kind, outcome, started.elapsed());
                                let _ = tx.send(Event::Exited(alloc, exit)).await;
                            });
                        }
                        Err(e) => {
                            tracing::warn!(alloc, error = %e, "could not start");
                            local
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(alloc, Local::Ended);
                            let _ =
                                reports.send(Report::Finished(alloc, Exit::error(e.to_string())));
                        }
                    }
                }
                Action::Stop(alloc) => {
                    local
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(alloc, Local::Stopping);
                    if let Some(&pgid) = pgids.get(&alloc) {
                        // A reclaim carries the policy's grace; a cancel uses the worker's.
                        let grace = specs
                            .get(&alloc)
                            .filter(|a| a.stop_grace_ms > 0)
                            .map(|a| Duration::from_millis(a.stop_grace_ms))
                            .unwrap_or(id.stop_grace);
                        tracing::info!(alloc, ?grace, "stopping");
                        tokio::spawn(executor::stop_group(pgid, grace));
                    }
                }
                Action::ReportNeverStarted(alloc) => {
                    local
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(alloc, Local::Ended);
                    let _ = reports.send(Report::Finished(
                        alloc,
                        Exit::error("cancelled before it started"),
                    ));
                }
                Action::Forget(alloc) => {
                    local
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&alloc);
                }
            }
        }
    }
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
                client
                    .report_started(ReportStartedRequest {
                        node_id: id.node_id.clone(),
                        alloc_id: *alloc,
                    })
                    .await
            }
            Report::Finished(alloc, exit) => {
                client
                    .report_finished(ReportFinishedRequest {
                        node_id: id.node_id.clone(),
                        alloc_id: *alloc,
                        exit_code: exit.code,
                        signal: exit.signal,
                        error: exit.error.clone(),
                        result: exit.result.as_ref().map(coop_proto::api::JobResult::from),
                    })
                    .await
            }
        };
        match result {
            Ok(r) => {
                if r.get_ref().stale {
                    tracing::info!(?report, why = %r.get_ref().message, "report was stale");
                }
                queue.pop_front();
            }
            Err(status) => {
                scheds.observe(&status);
                tracing::debug!(error = %status, "report failed; will retry");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Writes a model job's spec into its work dir and returns the argv that
/// runs it in a child process (see `model`).
fn prepare_model_job(
    id: &Identity,
    alloc: u64,
    job: &ModelJob,
) -> Result<Vec<String>, WorkerError> {
    let dir = executor::alloc_dir(&id.work_dir, alloc);
    std::fs::create_dir_all(&dir).map_err(WorkerError::io(format!(
        "create work dir {}",
        dir.display()
    )))?;
    let bytes = serde_json::to_vec_pretty(job).expect("a job kind always serializes");
    std::fs::write(dir.join(model::SPEC_FILE), bytes)
        .map_err(WorkerError::io(format!("write {}", model::SPEC_FILE)))?;
    let cache = model::cache_dir(&id.work_dir);
    std::fs::create_dir_all(&cache)
        .map_err(WorkerError::io(format!("create cache {}", cache.display())))?;
    Ok(vec![
        id.runner.display().to_string(),
        "run-model".into(),
        dir.display().to_string(),
        cache.display().to_string(),
    ])
}

/// Reads what the model child left: its result, or the reason it failed.
fn collect_model_outcome(dir: &std::path::Path, exit: &mut Exit) {
    if exit.code == Some(0) {
        match std::fs::read_to_string(dir.join(model::RESULT_FILE)) {
            Ok(json) => match serde_json::from_str(&json) {
                Ok(result) => exit.result = Some(result),
                Err(e) => exit.error = format!("the model job left an unreadable result: {e}"),
            },
            Err(e) => exit.error = format!("the model job left no result: {e}"),
        }
    } else if let Ok(reason) = std::fs::read_to_string(dir.join(model::ERROR_FILE)) {
        exit.error = reason;
    } else if exit.signal.is_some() {
        exit.error = format!(
            "the model job's process was killed by signal {}",
            exit.signal.unwrap_or(0)
        );
    }
}
