//! A whole cluster in this process, on loopback ports and a temporary data
//! dir: replicas from `coop_scheduler::local` plus in-process workers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use coop_core::{Founder, MemberId};
use coop_scheduler::local::LocalReplicas;
use coop_worker::{Worker, WorkerConfig};
use tokio::net::TcpListener;

use crate::identity::{generate_key, Signer};

/// The founding members of a local cluster, each with a fresh key.
pub type Members = BTreeMap<String, Arc<Signer>>;

pub struct LocalCluster {
    pub replicas: LocalReplicas,
    pub workers: Vec<Worker>,
    pub dir: PathBuf,
    pub members: Members,
}

/// The prefix of a local cluster's id (a random suffix follows).
pub const LOCAL_CLUSTER_ID: &str = "coop-local";

/// Fresh keys for `names`, as founders (public halves) and signers.
pub fn found(names: &[&str]) -> Result<(Vec<Founder>, Members)> {
    let mut founders = Vec::new();
    let mut members = Members::new();
    for name in names {
        let key = generate_key()?;
        founders.push(Founder {
            name: MemberId::new(*name),
            key: key.public_key(),
        });
        members.insert(
            name.to_string(),
            Arc::new(Signer::new(MemberId::new(*name), key)),
        );
    }
    Ok((founders, members))
}

/// Creates (or reuses) the node key in a worker's work dir and has its
/// owner authorize it at the replica at `addr`, as `coop node add` does.
pub async fn authorize_node(addr: &str, owner: &Signer, node: &str, work_dir: &Path) -> Result<()> {
    let key = coop_proto::keyfile::load_or_create(&work_dir.join("node.key"))?;
    let client = crate::client::connect(addr).await?;
    let req = owner
        .add_node(
            &client,
            &format!("add-node-{node}"),
            node,
            &key.public_key(),
        )
        .await?;
    crate::client::call(
        &client,
        req,
        |mut c, req| async move { c.add_node(req).await },
    )
    .await?;
    Ok(())
}

/// `prefix-` and 8 random hex digits: a new cluster's id.
pub fn fresh_cluster_id(prefix: &str) -> Result<String> {
    let mut bytes = [0u8; 4];
    getrandom::getrandom(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!("{prefix}-{}", hex::encode(bytes)))
}

impl LocalCluster {
    /// `n` replicas founded by `names`, each with a fresh key.
    pub async fn start(dir: &Path, n: usize, names: &[&str]) -> Result<Self> {
        let (founders, members) = found(names)?;
        // Each run is a new history: the checkpoint `coop audit` remembers
        // for one is never taken for another's.
        let cluster_id = fresh_cluster_id(LOCAL_CLUSTER_ID)?;
        let replicas = LocalReplicas::start(dir, n, |c| {
            c.cluster_id = cluster_id.clone();
            c.members = founders.clone();
        })
        .await?;
        // This process made the cluster's CA: it trusts it, and nothing is
        // pinned in your config.
        crate::client::trust_ca_pem(replicas.ca_pem.clone());
        Ok(Self {
            replicas,
            workers: Vec::new(),
            dir: dir.to_path_buf(),
            members,
        })
    }

    /// The signer of a founding member.
    pub fn signer(&self, name: &str) -> Result<Arc<Signer>> {
        self.members
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow!("{name} is not a member of this local cluster"))
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
        let work_dir = self.dir.join(format!("worker-{node_id}"));
        std::fs::create_dir_all(&work_dir)?;
        std::fs::write(work_dir.join("cluster-ca.pem"), &self.replicas.ca_pem)?;
        authorize_node(
            &self.replicas.addrs()[0],
            &*self.signer(owner)?,
            node_id,
            &work_dir,
        )
        .await?;
        let config = WorkerConfig {
            node_id: node_id.into(),
            owner: owner.into(),
            schedulers: self.replicas.addrs(),
            listen: listener.local_addr()?.to_string(),
            work_dir,
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

    /// Starts replica `i` again from its data dir, on its old address.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        Ok(self.replicas.restart(i).await?)
    }

    pub async fn stop(self) {
        for w in self.workers {
            w.stop();
        }
        self.replicas.stop_all().await;
    }
}
