//! `coop-worker`: runs on each machine of the pool. It registers the node,
//! heartbeats to the leader, follows its assignment stream, reconciles
//! desired against running allocations, runs jobs as real processes and
//! reports what happened, fenced by allocation id.

pub mod actor;
pub mod agent;
pub mod cli;
pub mod config;
pub mod error;
pub mod executor;
pub mod files;
pub mod inventory;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod outbox;
pub mod reconcile;

use crate::error::WorkerError;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coop_proto::api::Resources;
use coop_proto::worker::worker_agent_server::WorkerAgentServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use config::WorkerConfig;

use actor::Event;
use agent::{Identity, Schedulers};
use reconcile::Local;

pub struct Worker {
    pub node_id: String,
    pub addr: String,
    /// Where `/metrics` is served, when configured.
    pub metrics_addr: Option<String>,
    tasks: Vec<JoinHandle<()>>,
}

/// Where a worker reads the wall clock: milliseconds since the Unix epoch.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system's wall clock.
pub fn system_clock() -> WallClock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

impl Worker {
    /// Starts the worker; `listener` serves logs to the schedulers.
    pub async fn start(
        config: WorkerConfig,
        listener: impl Into<coop_proto::net::Listener>,
    ) -> Result<Worker, WorkerError> {
        Self::start_with_clock(config, listener, system_clock()).await
    }

    /// Like `start`, with another wall clock (the simulation's, with its
    /// skews): what credentials are stamped with and incarnations start at.
    pub async fn start_with_clock(
        config: WorkerConfig,
        listener: impl Into<coop_proto::net::Listener>,
        clock: WallClock,
    ) -> Result<Worker, WorkerError> {
        let listener = listener.into();
        config.validate()?;
        std::fs::create_dir_all(&config.work_dir).map_err(WorkerError::io(format!(
            "work dir {}",
            config.work_dir.display()
        )))?;
        let orphans = executor::kill_orphans(&config.work_dir);
        if orphans > 0 {
            tracing::warn!(
                orphans,
                "stopped jobs left running by this worker's previous incarnation"
            );
        }
        let bound = listener
            .local_addr()
            .map_err(WorkerError::io("listener address"))?;
        let addr = config.advertise.clone().unwrap_or(bound);
        let gpus: Vec<coop_proto::api::GpuInfo> = match (&config.gpu_inventory, config.gpus) {
            (Some(list), _) => list
                .iter()
                .enumerate()
                .map(|(i, g)| coop_proto::api::GpuInfo {
                    index: i as u32,
                    uuid: g.uuid.clone(),
                    model: g.model.clone(),
                    memory_bytes: g.memory_bytes,
                })
                .collect(),
            (None, Some(n)) => (0..n)
                .map(|index| coop_proto::api::GpuInfo {
                    index,
                    ..Default::default()
                })
                .collect(),
            (None, None) => inventory::detect_gpus()
                .into_iter()
                .map(|g| coop_proto::api::GpuInfo {
                    index: g.index,
                    uuid: g.uuid,
                    model: g.model,
                    memory_bytes: g.memory_bytes,
                })
                .collect(),
        };
        let capacity = Resources {
            cpu_millis: config
                .cpu_millis
                .unwrap_or_else(inventory::detect_cpu_millis),
            memory_bytes: config
                .memory_bytes
                .unwrap_or_else(inventory::detect_memory_bytes),
            gpus: gpus.len() as u32,
        };
        // Increases with every start, so the scheduler can tell a restarted
        // worker (whose old processes are gone) from a reconnecting one.
        let incarnation = next_incarnation(&config.work_dir, clock().saturating_mul(1000))?;
        for g in &gpus {
            tracing::info!(index = g.index, model = %g.model, memory_bytes = g.memory_bytes, uuid = %g.uuid, "gpu");
        }
        let key = coop_proto::keyfile::load_or_create(&config.key_path())
            .map_err(|e| WorkerError::Config(format!("node key: {e}")))?;
        tracing::info!(
            node = %config.node_id,
            node_key = %key.public_key(),
            "node key (its owner authorizes it with `coop node add {} --key {}`)",
            config.node_id,
            key.public_key()
        );
        let metrics = Arc::new(metrics::WorkerMetrics::new(&capacity, &gpus));
        let runner = match &config.model_runner {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(WorkerError::io("find own binary"))?,
        };
        let engines = executor::launcher()
            .detect_engines(&runner, config.onnxruntime_lib.as_deref())
            .await;
        tracing::info!(
            onnxruntime = engines.onnxruntime.is_some(),
            cuda = engines.cuda,
            detail = %engines.detail,
            "model engines: tract, and ONNX Runtime where found"
        );
        let id = Arc::new(Identity {
            advertised: engines.advertised(),
            onnxruntime: engines.onnxruntime,
            node_id: config.node_id.clone(),
            owner: config.owner.clone(),
            capacity,
            gpus,
            addr: addr.clone(),
            incarnation,
            work_dir: config.work_dir.clone(),
            stop_grace: Duration::from_millis(config.stop_grace_ms),
            cache_max_bytes: config.cache_max_bytes,
            job_uids: config.job_uid_base.map(|b| (b, config.job_uid_count)),
            cgroups: executor::cgroup_root(),
            metrics: metrics.clone(),
            key,
            cluster_id: Default::default(),
            session: Default::default(),
            clock,
            runner,
        });
        tracing::info!(
            limits = if id.cgroups.is_some() {
                "cgroup v2 (cpu.max, memory.max)"
            } else {
                "rlimit (RLIMIT_DATA; cpu only by timeout)"
            },
            "job confinement"
        );
        let cache = model::cache_dir(&config.work_dir);
        std::fs::create_dir_all(&cache)
            .map_err(WorkerError::io(format!("cache dir {}", cache.display())))?;
        if config.job_uid_base.is_some() {
            use std::os::unix::fs::PermissionsExt;
            // Jobs of every uid share the cache; the sticky bit keeps them
            // from deleting each other's files, and hits are re-hashed.
            std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o1777))
                .map_err(WorkerError::io("cache permissions"))?;
        }
        let tls = if config.plaintext {
            None
        } else {
            Some(coop_proto::tls::client(&cluster_ca(&config).await?))
        };
        let scheds = Arc::new(Schedulers::new(config.schedulers.clone(), tls));
        let local = Arc::new(Mutex::new(BTreeMap::new()));
        let (events_tx, events_rx) = mpsc::channel(256);
        let (desired_tx, mut desired_rx) = mpsc::channel(16);
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        let forward_tx = events_tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some((index, set)) = desired_rx.recv().await {
                if forward_tx.send(Event::Desired(index, set)).await.is_err() {
                    return;
                }
            }
        }));
        // Cut off from every leader with a quorum for too long: stop what
        // runs here before the cluster starts it elsewhere.
        let (cutoff_tx, cutoff_scheds, cutoff_local) =
            (events_tx.clone(), scheds.clone(), local.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let silent = cutoff_scheds.since_contact();
                let running = cutoff_local
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .any(|l| *l == reconcile::Local::Running);
                if running
                    && silent > cutoff_scheds.stop_after()
                    && cutoff_tx.send(Event::CutOff(silent)).await.is_err()
                {
                    return;
                }
            }
        }));
        tasks.push(tokio::spawn(actor::actor(
            id.clone(),
            local.clone(),
            events_rx,
            events_tx,
            reports_tx,
        )));
        tasks.push(tokio::spawn(agent::reporter(
            id.clone(),
            scheds.clone(),
            reports_rx,
        )));
        tasks.push(tokio::spawn(agent::connection_loop(
            id.clone(),
            scheds,
            desired_tx,
        )));
        tasks.push(tokio::spawn(janitor(
            config.work_dir.clone(),
            local.clone(),
            Duration::from_secs(config.retention_secs),
        )));
        let mut metrics_addr = None;
        if let Some(listen) = &config.metrics_listen {
            let listener = TcpListener::bind(listen)
                .await
                .map_err(WorkerError::io(format!("metrics listen on {listen}")))?;
            metrics_addr = Some(
                listener
                    .local_addr()
                    .map_err(WorkerError::io("metrics address"))?
                    .to_string(),
            );
            let (m, table) = (metrics.clone(), local.clone());
            let render = Arc::new(move || {
                let running = table
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .filter(|l| matches!(l, Local::Running | Local::Stopping))
                    .count();
                m.render(running)
            });
            tasks.push(tokio::spawn(coop_proto::metrics_http::serve(
                listener, render,
            )));
        }
        let logs = logs::LogService {
            work_dir: config.work_dir.clone(),
            local: local.clone(),
            id: id.clone(),
        };
        // Logs leave the node over TLS 1.3 under the node key: the replica
        // checks the handshake against the key the owner authorized.
        let mut builder = tonic::transport::Server::builder();
        if !config.plaintext {
            let identity = coop_proto::tls::node_identity(&id.key)
                .map_err(|e| WorkerError::Config(format!("node TLS identity: {e}")))?;
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(|e| WorkerError::Config(format!("node TLS: {e}")))?;
        }
        tasks.push(tokio::spawn(async move {
            let server = builder
                .add_service(WorkerAgentServer::new(logs))
                .serve_with_incoming(listener.incoming());
            if let Err(e) = server.await {
                tracing::error!(error = %e, "log server stopped");
            }
        }));
        tracing::info!(node = %config.node_id, %addr, cpu_millis = capacity.cpu_millis, memory_bytes = capacity.memory_bytes, "worker started");
        Ok(Worker {
            node_id: config.node_id,
            addr,
            metrics_addr,
            tasks,
        })
    }

    /// Stops talking to the scheduler. Running jobs are left alone: a
    /// restarted worker registers a new incarnation and the scheduler
    /// requeues them.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Removes the work dirs of jobs that ended more than `retention` ago.
async fn janitor(
    work_dir: std::path::PathBuf,
    local: Arc<Mutex<BTreeMap<u64, Local>>>,
    retention: Duration,
) {
    let every = retention.clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let Ok(entries) = std::fs::read_dir(work_dir.join("allocs")) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(alloc) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let running = matches!(
                local.lock().unwrap_or_else(|p| p.into_inner()).get(&alloc),
                Some(Local::Running | Local::Stopping)
            );
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > retention);
            if !running && old {
                match std::fs::remove_dir_all(entry.path()) {
                    Ok(()) => tracing::info!(alloc, "work dir removed after retention"),
                    Err(e) => tracing::warn!(alloc, error = %e, "could not remove work dir"),
                }
            }
        }
    }
}

/// File in the work dir holding the last incarnation this worker used.
const INCARNATION_FILE: &str = "incarnation";

/// The cluster CA this worker trusts: the pinned one, or (first start, no
/// file yet) the one the first replica to answer presents, pinned from now
/// on (trust on first use, like ssh's known_hosts).
async fn cluster_ca(config: &WorkerConfig) -> Result<String, WorkerError> {
    let path = config.ca_path();
    if let Ok(pem) = std::fs::read_to_string(&path) {
        return Ok(pem);
    }
    let mut wait = Duration::from_millis(200);
    loop {
        for addr in &config.schedulers {
            match coop_proto::tls::probe_ca(addr).await {
                Ok(pem) => {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)
                            .map_err(WorkerError::io(format!("create {}", dir.display())))?;
                    }
                    std::fs::write(&path, &pem)
                        .map_err(WorkerError::io(format!("write {}", path.display())))?;
                    tracing::warn!(
                        replica = %addr,
                        fingerprint = %coop_proto::tls::fingerprint(&pem).unwrap_or_default(),
                        pinned = %path.display(),
                        "first contact: trusting the cluster CA this replica presented from now on"
                    );
                    return Ok(pem);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no replica answered yet to learn the cluster CA")
                }
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// The next incarnation: one more than the last one this work dir used,
/// and at least the wall clock in microseconds (so a fresh work dir on a
/// reinstalled machine still starts above its predecessor), written back
/// before use. A clock stepped back cannot lock the node out: the stored
/// counter keeps it increasing.
pub fn next_incarnation(work_dir: &std::path::Path, clock_us: u64) -> Result<u64, WorkerError> {
    let path = work_dir.join(INCARNATION_FILE);
    let last: u64 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let next = last.saturating_add(1).max(clock_us);
    let tmp = work_dir.join(format!("{INCARNATION_FILE}.tmp"));
    std::fs::write(&tmp, next.to_string())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(WorkerError::io(format!("write {}", path.display())))?;
    Ok(next)
}

#[cfg(test)]
mod incarnation_tests {
    use super::*;

    fn now_us() -> u64 {
        system_clock()().saturating_mul(1000)
    }

    /// A stored incarnation ahead of the clock (the clock was stepped back)
    /// still yields a larger one, every start.
    #[test]
    fn incarnations_increase_even_when_the_clock_steps_back() {
        let dir = tempfile::tempdir().unwrap();
        let ahead = u64::MAX / 2;
        std::fs::write(dir.path().join(INCARNATION_FILE), ahead.to_string()).unwrap();
        let a = next_incarnation(dir.path(), now_us()).unwrap();
        let b = next_incarnation(dir.path(), now_us()).unwrap();
        assert_eq!((a, b), (ahead + 1, ahead + 2));
        // A fresh work dir starts at the clock.
        let fresh = tempfile::tempdir().unwrap();
        assert!(next_incarnation(fresh.path(), now_us()).unwrap() > 1_600_000_000_000_000);
    }
}
