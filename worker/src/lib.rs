//! `coop-worker`: runs on each machine of the pool. It registers the node,
//! heartbeats to the leader, follows its assignment stream, reconciles
//! desired against running allocations, runs jobs as real processes and
//! reports what happened, fenced by allocation id.

pub mod agent;
pub mod config;
pub mod executor;
pub mod inventory;
pub mod logs;
pub mod model;
pub mod reconcile;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coop_proto::api::Resources;
use coop_proto::worker::worker_agent_server::WorkerAgentServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

pub use config::WorkerConfig;

use agent::{Event, Identity, Schedulers};
use reconcile::Local;

pub struct Worker {
    pub node_id: String,
    pub addr: String,
    local: Arc<Mutex<BTreeMap<u64, Local>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Worker {
    /// Starts the worker; `listener` serves logs to the schedulers.
    pub async fn start(config: WorkerConfig, listener: TcpListener) -> anyhow::Result<Worker> {
        config.validate().map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(&config.work_dir)
            .map_err(|e| anyhow::anyhow!("work dir {}: {e}", config.work_dir.display()))?;
        let bound = listener.local_addr()?;
        let addr = config
            .advertise
            .clone()
            .unwrap_or_else(|| bound.to_string());
        let capacity = Resources {
            cpu_millis: config
                .cpu_millis
                .unwrap_or_else(inventory::detect_cpu_millis),
            memory_bytes: config
                .memory_bytes
                .unwrap_or_else(inventory::detect_memory_bytes),
            gpus: config.gpus.unwrap_or(0),
        };
        // Increases with every start, so the scheduler can tell a restarted
        // worker (whose old processes are gone) from a reconnecting one.
        let incarnation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        let gpus = (0..capacity.gpus)
            .map(|index| coop_proto::api::GpuInfo {
                index,
                ..Default::default()
            })
            .collect();
        let id = Arc::new(Identity {
            node_id: config.node_id.clone(),
            owner: config.owner.clone(),
            capacity,
            gpus,
            addr: addr.clone(),
            incarnation,
            work_dir: config.work_dir.clone(),
            stop_grace: Duration::from_millis(config.stop_grace_ms),
            runner: match &config.model_runner {
                Some(p) => p.clone(),
                None => {
                    std::env::current_exe().map_err(|e| anyhow::anyhow!("find own binary: {e}"))?
                }
            },
        });
        let scheds = Arc::new(Schedulers::new(config.schedulers.clone()));
        let local = Arc::new(Mutex::new(BTreeMap::new()));
        let (events_tx, events_rx) = mpsc::channel(256);
        let (desired_tx, mut desired_rx) = mpsc::channel(16);
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        let forward_tx = events_tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(set) = desired_rx.recv().await {
                if forward_tx.send(Event::Desired(set)).await.is_err() {
                    return;
                }
            }
        }));
        tasks.push(tokio::spawn(agent::actor(
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
        let logs = logs::LogService {
            work_dir: config.work_dir.clone(),
            local: local.clone(),
        };
        tasks.push(tokio::spawn(async move {
            let server = tonic::transport::Server::builder()
                .add_service(WorkerAgentServer::new(logs))
                .serve_with_incoming(TcpListenerStream::new(listener).map(|conn| {
                    conn.inspect(|s| {
                        let _ = s.set_nodelay(true);
                    })
                }));
            if let Err(e) = server.await {
                tracing::error!(error = %e, "log server stopped");
            }
        }));
        tracing::info!(node = %config.node_id, %addr, cpu_millis = capacity.cpu_millis, memory_bytes = capacity.memory_bytes, "worker started");
        Ok(Worker {
            node_id: config.node_id,
            addr,
            local,
            tasks,
        })
    }

    /// Allocations this worker is running right now.
    pub fn running(&self) -> Vec<u64> {
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        local
            .iter()
            .filter(|(_, l)| matches!(l, Local::Running | Local::Stopping))
            .map(|(a, _)| *a)
            .collect()
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
