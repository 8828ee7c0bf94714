//! Several replicas in one process on loopback ports: what `coop dev`,
//! `coop demo`, `coop bench --local` and the integration tests run on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpListener;

use coop_proto::tls::ClusterCa;

use crate::config::TlsFiles;
use crate::error::StartError;
use crate::{Config, Replica};

/// How long a new local cluster may take to elect its first leader.
const FIRST_ELECTION: Duration = Duration::from_secs(10);

pub struct LocalReplicas {
    /// `None` where a replica was stopped.
    pub replicas: Vec<Option<Replica>>,
    pub configs: Vec<Config>,
    /// The cluster CA's certificate: what clients of this cluster pin.
    pub ca_pem: String,
}

/// Quick timings for a cluster on one machine.
pub fn local_config(id: u64, listen: String, data_dir: PathBuf, peers: Vec<String>) -> Config {
    Config {
        id,
        listen,
        data_dir,
        peers,
        heartbeat_interval_ms: 200,
        heartbeat_timeout_ms: 2000,
        // A local cluster's audits should not wait long for a checkpoint.
        checkpoint_interval_ms: 1000,
        metrics_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    }
}

/// Issues a replica certificate from `ca` into `dir` (and the CA's
/// certificate next to it); returns the files for the config.
pub fn issue(ca: &ClusterCa, dir: &Path) -> Result<TlsFiles, StartError> {
    let tls = |e: coop_proto::tls::TlsError| StartError::Tls(e.to_string());
    let identity = ca.issue_replica().map_err(tls)?;
    // A local cluster's directory is ours: a restart on the same data dir
    // gets a fresh certificate.
    for f in ["replica.pem", "replica.key"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    identity.save(dir).map_err(tls)?;
    let ca_file = dir.join(coop_proto::tls::CA_CERT_FILE);
    std::fs::write(&ca_file, &ca.cert_pem)
        .map_err(StartError::io(format!("write {}", ca_file.display())))?;
    Ok(TlsFiles {
        ca: ca_file,
        cert: dir.join("replica.pem"),
        key: dir.join("replica.key"),
    })
}

impl LocalReplicas {
    /// Starts `n` replicas under `dir` with a new cluster CA, with `tune`
    /// applied to each config, forms the cluster and waits for a leader.
    pub async fn start(
        dir: &Path,
        n: usize,
        tune: impl Fn(&mut Config),
    ) -> Result<Self, StartError> {
        let ca = ClusterCa::generate().map_err(|e| StartError::Tls(e.to_string()))?;
        Self::start_with_ca(dir, n, &ca, tune).await
    }

    /// Like `start`, with certificates from `ca`.
    pub async fn start_with_ca(
        dir: &Path,
        n: usize,
        ca: &ClusterCa,
        tune: impl Fn(&mut Config),
    ) -> Result<Self, StartError> {
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(
                TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(StartError::io("bind 127.0.0.1:0"))?,
            );
        }
        let peers: Vec<String> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{}={}", i + 1, l.local_addr().expect("bound")))
            .collect();
        let mut replicas = Vec::new();
        let mut configs = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let mut config = local_config(
                i as u64 + 1,
                listener
                    .local_addr()
                    .map_err(StartError::io("local address"))?
                    .to_string(),
                dir.join(format!("replica-{}", i + 1)),
                peers.clone(),
            );
            config.tls = Some(issue(ca, &dir.join(format!("tls-{}", i + 1)))?);
            tune(&mut config);
            configs.push(config.clone());
            replicas.push(Some(Replica::start(config, listener).await?));
        }
        replicas[0]
            .as_ref()
            .expect("just started")
            .initialize()
            .await?;
        let cluster = Self {
            replicas,
            configs,
            ca_pem: ca.cert_pem.clone(),
        };
        cluster
            .leader(FIRST_ELECTION)
            .await
            .ok_or(StartError::NoLeader(FIRST_ELECTION))?;
        Ok(cluster)
    }

    /// Addresses of the replicas still running.
    pub fn addrs(&self) -> Vec<String> {
        self.replicas
            .iter()
            .flatten()
            .map(|r| r.addr.clone())
            .collect()
    }

    /// Index of the leader among the running replicas, waiting for one.
    pub async fn leader(&self, timeout: Duration) -> Option<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(i) = self
                .replicas
                .iter()
                .position(|r| r.as_ref().is_some_and(|r| r.node.is_leader()))
            {
                return Some(i);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops replica `i` (its data dir stays).
    pub async fn stop(&mut self, i: usize) {
        if let Some(r) = self.replicas[i].take() {
            r.stop().await;
        }
    }

    /// Stops the leader; returns its index.
    pub async fn kill_leader(&mut self) -> Result<usize, StartError> {
        let wait = Duration::from_secs(5);
        let Some(i) = self.leader(wait).await else {
            return Err(StartError::NoLeader(wait));
        };
        self.stop(i).await;
        Ok(i)
    }

    /// Starts replica `i` again from its data dir, on its old address.
    pub async fn restart(&mut self, i: usize) -> Result<(), StartError> {
        let config = self.configs[i].clone();
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(StartError::io(format!("rebind {}", config.listen)))?;
        self.replicas[i] = Some(Replica::start(config, listener).await?);
        Ok(())
    }

    pub async fn stop_all(self) {
        for r in self.replicas.into_iter().flatten() {
            r.stop().await;
        }
    }
}
