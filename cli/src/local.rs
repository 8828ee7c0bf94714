//! A whole cluster in this process, on loopback ports and a temporary data
//! dir: what `coop dev`, `coop demo` and `coop bench --local` run on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use coop_scheduler::{Config, Replica};
use coop_worker::{Worker, WorkerConfig};
use tokio::net::TcpListener;

pub struct LocalCluster {
    pub replicas: Vec<Option<Replica>>,
    pub workers: Vec<Worker>,
    pub dir: PathBuf,
}

impl LocalCluster {
    /// Starts `n` replicas, forms the cluster and waits for a leader.
    pub async fn start(dir: &Path, n: usize) -> Result<Self> {
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(TcpListener::bind("127.0.0.1:0").await?);
        }
        let peers: Vec<String> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{}={}", i + 1, l.local_addr().expect("bound")))
            .collect();
        let mut replicas = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let config = Config {
                id: i as u64 + 1,
                listen: listener.local_addr()?.to_string(),
                data_dir: dir.join(format!("replica-{}", i + 1)),
                peers: peers.clone(),
                heartbeat_interval_ms: 200,
                heartbeat_timeout_ms: 2000,
                raft_heartbeat_ms: 50,
                election_timeout_min_ms: 300,
                election_timeout_max_ms: 600,
                ..Default::default()
            };
            replicas.push(Some(Replica::start(config, listener).await?));
        }
        replicas[0]
            .as_ref()
            .expect("just started")
            .initialize()
            .await?;
        let cluster = Self {
            replicas,
            workers: Vec::new(),
            dir: dir.to_path_buf(),
        };
        cluster
            .leader(Duration::from_secs(10))
            .await
            .context("no leader elected")?;
        Ok(cluster)
    }

    /// Adds a worker process-in-process offering `cpus` and `memory`.
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
            schedulers: self.addrs(),
            listen: listener.local_addr()?.to_string(),
            work_dir: self.dir.join(format!("worker-{node_id}")),
            cpu_millis: Some(cpu_millis),
            memory_bytes: Some(memory_bytes),
            gpus: Some(0),
            stop_grace_ms: 1000,
            ..Default::default()
        };
        self.workers.push(Worker::start(config, listener).await?);
        Ok(())
    }

    /// Addresses of the replicas still running.
    pub fn addrs(&self) -> Vec<String> {
        self.replicas
            .iter()
            .flatten()
            .map(|r| r.addr.clone())
            .collect()
    }

    /// Index of the current leader among the running replicas.
    pub async fn leader(&self, timeout: Duration) -> Option<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            for (i, r) in self.replicas.iter().enumerate() {
                if let Some(r) = r {
                    if r.node.is_leader() {
                        return Some(i);
                    }
                }
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the leader's replica abruptly (its data dir stays).
    pub async fn kill_leader(&mut self) -> Result<usize> {
        let Some(i) = self.leader(Duration::from_secs(5)).await else {
            bail!("no leader to kill")
        };
        if let Some(r) = self.replicas[i].take() {
            r.stop().await;
        }
        Ok(i)
    }

    pub async fn stop(self) {
        for w in self.workers {
            w.stop();
        }
        for r in self.replicas.into_iter().flatten() {
            r.stop().await;
        }
    }
}
