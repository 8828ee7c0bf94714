//! A whole cluster in this process, on loopback ports and a temporary data
//! dir: replicas from `coop_scheduler::local` plus in-process workers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use coop_scheduler::local::LocalReplicas;
use coop_worker::{Worker, WorkerConfig};
use tokio::net::TcpListener;

pub struct LocalCluster {
    pub replicas: LocalReplicas,
    pub workers: Vec<Worker>,
    pub dir: PathBuf,
}

impl LocalCluster {
    pub async fn start(dir: &Path, n: usize) -> Result<Self> {
        Ok(Self {
            replicas: LocalReplicas::start(dir, n, |_| {}).await?,
            workers: Vec::new(),
            dir: dir.to_path_buf(),
        })
    }

    /// Adds an in-process worker offering `cpu_millis` and `memory_bytes`.
    pub async fn add_worker(
        &mut self,
        node_id: &str,
        owner: &str,
        cpu_millis: u64,
        memory_bytes: u64,
    ) -> Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let config = WorkerConfig {
            node_id: node_id.into(),
            owner: owner.into(),
            schedulers: self.replicas.addrs(),
            listen: listener.local_addr()?.to_string(),
            work_dir: self.dir.join(format!("worker-{node_id}")),
            cpu_millis: Some(cpu_millis),
            memory_bytes: Some(memory_bytes),
            gpus: Some(0),
            stop_grace_ms: 1000,
            metrics_listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        self.workers.push(Worker::start(config, listener).await?);
        Ok(())
    }

    pub async fn leader(&self, timeout: Duration) -> Option<usize> {
        self.replicas.leader(timeout).await
    }

    pub fn addr(&self, i: usize) -> Option<String> {
        self.replicas.replicas[i].as_ref().map(|r| r.addr.clone())
    }

    pub async fn kill_leader(&mut self) -> Result<usize> {
        Ok(self.replicas.kill_leader().await?)
    }

    pub async fn stop(self) {
        for w in self.workers {
            w.stop();
        }
        self.replicas.stop_all().await;
    }
}
