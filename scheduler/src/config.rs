//! The scheduler replica's configuration: a TOML file and flags (flags win),
//! checked by `validate` before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This replica's id: a positive number unique in the cluster.
    pub id: u64,
    /// Address to listen on for every service (API, workers, raft).
    pub listen: String,
    /// Address other replicas, workers and clients reach this one at;
    /// defaults to `listen`.
    pub advertise: Option<String>,
    /// Where the Raft log and snapshots live.
    pub data_dir: PathBuf,
    /// Every voter of the cluster as `ID=HOST:PORT`, this replica included.
    pub peers: Vec<String>,
    /// How often workers heartbeat.
    pub heartbeat_interval_ms: u64,
    /// A node with no heartbeat for this long is lost and its jobs requeue.
    pub heartbeat_timeout_ms: u64,
    pub raft_heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Snapshot and compact the log after this many entries.
    pub snapshot_every: u64,
    /// How often the leader asks every replica to sign the log's head
    /// (only when the log grew since the last checkpoint).
    pub checkpoint_interval_ms: u64,
    /// Where journal segments go once a checkpoint a majority signed covers
    /// them (say, a disk for cold data); they stay here when unset.
    pub journal_archive_dir: Option<PathBuf>,
    /// Where to serve Prometheus metrics (`/metrics`); none when unset.
    pub metrics_listen: Option<String>,
    /// The genesis policy (a `[policy]` table); the built-in defaults when
    /// absent. Used once, when the cluster first elects a leader.
    pub policy: Option<coop_core::Policy>,
    /// The cluster's id: every member signature names it. Used at genesis.
    pub cluster_id: String,
    /// The founding members (`[[members]]` with `name` and `key`, the
    /// Ed25519 public key in hex). Used once, at genesis; afterwards the
    /// member set changes only by member vote.
    pub members: Vec<coop_core::Founder>,
    /// TLS: the cluster CA and this replica's certificate and key (a
    /// `[tls]` table; `coop cluster ca` and `coop cluster cert` make them).
    pub tls: Option<TlsFiles>,
    /// Serve without TLS. For experiments on one machine only: then anyone
    /// who reaches the port reaches the Raft transport.
    pub plaintext: bool,
}

/// Where a replica's TLS files are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA's certificate (`ca.pem`).
    pub ca: PathBuf,
    /// This replica's certificate chain (`replica.pem`).
    pub cert: PathBuf,
    /// This replica's key (`replica.key`).
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            id: 0,
            listen: "127.0.0.1:7001".into(),
            advertise: None,
            data_dir: PathBuf::new(),
            peers: Vec::new(),
            heartbeat_interval_ms: 500,
            heartbeat_timeout_ms: 5000,
            // Failover takes about the election timeout's maximum (openraft's
            // leader lease: followers refuse to vote until it has passed)
            // plus a round: 400 ms keeps leader loss to writes accepted
            // under a second (`coop bench failover`). The same lease keeps a
            // briefly starved follower from deposing a live leader: the
            // others refuse its vote while they still hear from the leader.
            raft_heartbeat_ms: 50,
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 400,
            snapshot_every: 10_000,
            checkpoint_interval_ms: 10_000,
            journal_archive_dir: None,
            policy: None,
            metrics_listen: None,
            cluster_id: "coop".into(),
            members: Vec::new(),
            tls: None,
            plaintext: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
    #[error("data dir: {0}")]
    DataDir(String),
}

impl Config {
    /// Parses a TOML config; the error names the bad field.
    pub fn from_toml(path: &str, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::File {
            path: path.into(),
            message: e.to_string().trim().replace('\n', " "),
        })
    }

    pub fn advertise_addr(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }

    /// The voters by id.
    pub fn peer_map(&self) -> Result<BTreeMap<u64, String>, ConfigError> {
        let mut peers = BTreeMap::new();
        for p in &self.peers {
            let (id, addr) = p
                .split_once('=')
                .ok_or_else(|| ConfigError::Invalid(format!("peer {p:?} is not ID=HOST:PORT")))?;
            let id: u64 = id.trim().parse().map_err(|_| {
                ConfigError::Invalid(format!("peer {p:?}: id must be a positive number"))
            })?;
            let addr = addr.trim();
            check_addr("peer", addr)?;
            if id == 0 {
                return Err(ConfigError::Invalid(format!("peer {p:?}: ids start at 1")));
            }
            if peers.insert(id, addr.to_string()).is_some() {
                return Err(ConfigError::Invalid(format!("peer id {id} appears twice")));
            }
        }
        let mut seen = BTreeMap::new();
        for (id, addr) in &peers {
            if let Some(other) = seen.insert(addr.clone(), *id) {
                return Err(ConfigError::Invalid(format!(
                    "replicas {other} and {id} share the address {addr}"
                )));
            }
        }
        Ok(peers)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::Invalid(
                "id: give this replica a positive id (--id)".into(),
            ));
        }
        check_addr("listen", &self.listen)?;
        if let Some(a) = &self.advertise {
            check_addr("advertise", a)?;
        }
        if let Some(a) = &self.metrics_listen {
            check_addr("metrics_listen", a)?;
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "data_dir: give a data directory (--data-dir)".into(),
            ));
        }
        let peers = self.peer_map()?;
        if !peers.is_empty() {
            match peers.get(&self.id) {
                None => {
                    return Err(ConfigError::Invalid(format!(
                        "peers: this replica's id {} is not among the peers {:?}",
                        self.id,
                        peers.keys().collect::<Vec<_>>()
                    )))
                }
                Some(addr) if addr != self.advertise_addr() => {
                    return Err(ConfigError::Invalid(format!(
                        "peers: replica {} is listed at {addr} but advertises {}",
                        self.id,
                        self.advertise_addr()
                    )))
                }
                Some(_) => {}
            }
        }
        if self.heartbeat_interval_ms == 0
            || self.heartbeat_timeout_ms <= self.heartbeat_interval_ms
        {
            return Err(ConfigError::Invalid(
                "heartbeat_timeout_ms must be larger than heartbeat_interval_ms (> 0)".into(),
            ));
        }
        if self.raft_heartbeat_ms == 0
            || self.election_timeout_min_ms <= self.raft_heartbeat_ms
            || self.election_timeout_max_ms <= self.election_timeout_min_ms
        {
            return Err(ConfigError::Invalid(
                "raft timing: need 0 < raft_heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms".into(),
            ));
        }
        if let Some(p) = &self.policy {
            p.validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if self.tls.is_none() && !self.plaintext {
            return Err(ConfigError::Invalid(
                "tls: give the cluster CA and this replica's certificate ([tls] ca, cert, key; `coop cluster ca` makes them), or set plaintext = true for a local experiment".into(),
            ));
        }
        if self.checkpoint_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "checkpoint_interval_ms must be at least 1".into(),
            ));
        }
        if self.snapshot_every == 0 {
            return Err(ConfigError::Invalid(
                "snapshot_every must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

fn check_addr(what: &str, addr: &str) -> Result<(), ConfigError> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(ConfigError::Invalid(format!(
            "{what} address {addr:?} is not HOST:PORT"
        ))),
    }
}

const IDENTITY_FILE: &str = "replica.json";

#[derive(Serialize, Deserialize)]
struct Identity {
    replica_id: u64,
}

/// Makes sure the data dir can be used by this replica: creates it (its
/// parent must exist) and records the replica id in it on first use, and
/// refuses a data dir that belongs to another replica id.
pub fn prepare_data_dir(dir: &Path, id: u64) -> Result<(), ConfigError> {
    if !dir.exists() {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(ConfigError::DataDir(format!(
                "{} does not exist, and neither does its parent {}",
                dir.display(),
                parent.display()
            )));
        }
        std::fs::create_dir(dir)
            .map_err(|e| ConfigError::DataDir(format!("create {}: {e}", dir.display())))?;
    } else if !dir.is_dir() {
        return Err(ConfigError::DataDir(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let identity = dir.join(IDENTITY_FILE);
    match std::fs::read(&identity) {
        Ok(bytes) => {
            let found: Identity = serde_json::from_slice(&bytes).map_err(|e| {
                ConfigError::DataDir(format!("{} is corrupt: {e}", identity.display()))
            })?;
            if found.replica_id != id {
                return Err(ConfigError::DataDir(format!(
                    "{} belongs to replica {}, but this replica was started with id {id}",
                    dir.display(),
                    found.replica_id
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes =
                serde_json::to_vec(&Identity { replica_id: id }).expect("identity serializes");
            std::fs::write(&identity, bytes)
                .map_err(|e| ConfigError::DataDir(format!("write {}: {e}", identity.display())))?;
        }
        Err(e) => {
            return Err(ConfigError::DataDir(format!(
                "read {}: {e}",
                identity.display()
            )))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn founding_members_come_from_the_toml_with_checked_keys() {
        let key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        let c = Config::from_toml(
            "scheduler.toml",
            &format!("cluster_id = \"our-coop\"\n[[members]]\nname = \"ana\"\nkey = \"{key}\"\n"),
        )
        .unwrap();
        assert_eq!(c.cluster_id, "our-coop");
        assert_eq!(c.members.len(), 1);
        assert_eq!(c.members[0].key.to_string(), key);
        // A key that is not a point, or not 32 bytes, is refused with the file named.
        let bad = Config::from_toml(
            "scheduler.toml",
            "[[members]]\nname = \"ana\"\nkey = \"abcd\"\n",
        )
        .unwrap_err();
        assert!(bad.to_string().contains("scheduler.toml"), "{bad}");
    }

    fn cfg() -> Config {
        Config {
            id: 1,
            listen: "127.0.0.1:7001".into(),
            data_dir: "/tmp/x".into(),
            peers: vec!["1=127.0.0.1:7001".into(), "2=127.0.0.1:7002".into()],
            plaintext: true,
            ..Default::default()
        }
    }

    #[test]
    fn validates_peers_and_ids() {
        assert!(cfg().validate().is_ok());
        // A replica serves TLS unless plaintext is asked for by name.
        let mut c = cfg();
        c.plaintext = false;
        assert!(c.validate().unwrap_err().to_string().contains("tls"));
        let mut c = cfg();
        c.id = 3;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not among the peers"));
        let mut c = cfg();
        c.peers.push("2=127.0.0.1:7003".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("appears twice"));
        let mut c = cfg();
        c.peers[1] = "2=nowhere".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not HOST:PORT"));
    }

    #[test]
    fn toml_errors_name_the_field() {
        let err = Config::from_toml("s.toml", "id = \"one\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("id"), "{err}");
        let err = Config::from_toml("s.toml", "idd = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("idd"), "{err}");
    }

    #[test]
    fn data_dir_belongs_to_one_replica() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("r1");
        prepare_data_dir(&dir, 1).unwrap();
        prepare_data_dir(&dir, 1).unwrap();
        assert!(prepare_data_dir(&dir, 2)
            .unwrap_err()
            .to_string()
            .contains("belongs to replica 1"));
        let missing = tmp.path().join("no/such/dir");
        assert!(prepare_data_dir(&missing, 1)
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
    }
}
