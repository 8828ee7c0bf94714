//! The worker's configuration: a TOML file and flags (flags win).

use crate::error::WorkerError;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// This node's name in the pool; the hostname by default.
    pub node_id: String,
    /// The member who contributes this machine.
    pub owner: String,
    /// Scheduler replicas, HOST:PORT; any one will do, the worker finds the leader.
    pub schedulers: Vec<String>,
    /// Where this worker serves job logs to the schedulers.
    pub listen: String,
    pub advertise: Option<String>,
    /// Job work dirs and logs live under here.
    pub work_dir: PathBuf,
    /// Inventory overrides; detected when absent.
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// Offer this many GPUs (indices 0..n, model unknown) instead of what
    /// NVML finds; `gpu` entries give the full inventory instead.
    pub gpus: Option<u32>,
    /// The GPU inventory, overriding detection: `[[gpu]]` tables with
    /// `model`, `memory_bytes` and optionally `uuid`.
    #[serde(rename = "gpu")]
    pub gpu_inventory: Option<Vec<GpuOverride>>,
    /// Size limit of the content-addressed artifact cache.
    pub cache_max_bytes: u64,
    /// Run each job as its own unprivileged uid (and gid) from
    /// `job_uid_base .. job_uid_base + job_uid_count`, so no job can read
    /// another's work dir. Needs the worker to run as root. Unset: jobs run
    /// as the worker's user.
    pub job_uid_base: Option<u32>,
    pub job_uid_count: u32,
    /// A finished job's work dir (and logs) is removed this long after it ended.
    pub retention_secs: u64,
    /// Where to serve Prometheus metrics (`/metrics`); none when unset.
    pub metrics_listen: Option<String>,
    /// Between SIGTERM and SIGKILL when a job is stopped.
    pub stop_grace_ms: u64,
    /// The binary that runs model jobs as `<it> run-model DIR CACHE`; this
    /// worker's own binary by default (`coop-worker` and `coop` both can).
    pub model_runner: Option<PathBuf>,
    /// ONNX Runtime's library (`libonnxruntime.so.*`); found through
    /// `COOP_ONNXRUNTIME_LIB`, `ORT_DYLIB_PATH` or the onnxruntime Python
    /// wheel when unset.
    pub onnxruntime_lib: Option<PathBuf>,
    /// The node's secret key; `node.key` in the work dir by default,
    /// created at first start. Its owner authorizes the public half with
    /// `coop node add NODE --key PUBKEY`.
    pub key_file: Option<PathBuf>,
    /// The cluster CA's certificate; `cluster-ca.pem` in the work dir by
    /// default, where the CA the first replica presents is pinned when the
    /// file does not exist yet (trust on first use).
    pub ca_file: Option<PathBuf>,
    /// Talk to replicas started with `--plaintext` (local experiments).
    pub plaintext: bool,
}

impl WorkerConfig {
    /// Where the cluster CA is pinned.
    pub fn ca_path(&self) -> PathBuf {
        self.ca_file
            .clone()
            .unwrap_or_else(|| self.work_dir.join("cluster-ca.pem"))
    }

    /// Where the node key lives.
    pub fn key_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.work_dir.join("node.key"))
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            node_id: hostname(),
            owner: String::new(),
            schedulers: Vec::new(),
            listen: "127.0.0.1:0".into(),
            advertise: None,
            work_dir: std::env::temp_dir().join("coop-worker"),
            cpu_millis: None,
            memory_bytes: None,
            gpus: None,
            gpu_inventory: None,
            cache_max_bytes: crate::model::artifact::DEFAULT_CACHE_BYTES,
            job_uid_base: None,
            job_uid_count: 1000,
            retention_secs: 24 * 3600,
            metrics_listen: None,
            stop_grace_ms: 5000,
            model_runner: None,
            onnxruntime_lib: None,
            key_file: None,
            ca_file: None,
            plaintext: false,
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "worker".into())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuOverride {
    pub model: String,
    pub memory_bytes: u64,
    #[serde(default)]
    pub uuid: String,
}

impl WorkerConfig {
    pub fn from_toml(path: &str, text: &str) -> Result<Self, WorkerError> {
        toml::from_str(text).map_err(|e| {
            WorkerError::Config(format!(
                "config file {path}: {}",
                e.to_string().trim().replace('\n', " ")
            ))
        })
    }

    pub fn validate(&self) -> Result<(), WorkerError> {
        check_name("node_id", &self.node_id)?;
        check_name("owner", &self.owner)?;
        if self.schedulers.is_empty() {
            return Err(WorkerError::Config(
                "schedulers: give at least one scheduler address (--scheduler)".into(),
            ));
        }
        for s in &self.schedulers {
            if s.rsplit_once(':')
                .and_then(|(h, p)| (!h.is_empty()).then_some(p))
                .and_then(|p| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(WorkerError::Config(format!(
                    "scheduler address {s:?} is not HOST:PORT"
                )));
            }
        }
        if let Some(base) = self.job_uid_base {
            if base < 1000
                || self.job_uid_count == 0
                || base.checked_add(self.job_uid_count).is_none()
            {
                return Err(WorkerError::Config(
                    "job_uid_base must be at least 1000, with a non-empty job_uid_count range"
                        .into(),
                ));
            }
        }
        if self.gpus.is_some() && self.gpu_inventory.is_some() {
            return Err(WorkerError::Config(
                "give either gpus (a count) or [[gpu]] entries, not both".into(),
            ));
        }
        if self.cpu_millis == Some(0) || self.memory_bytes == Some(0) {
            return Err(WorkerError::Config(
                "a worker must offer some cpu and memory".into(),
            ));
        }
        Ok(())
    }
}

fn check_name(what: &str, name: &str) -> Result<(), WorkerError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(WorkerError::Config(format!(
            "{what} {name:?} must be 1 to 64 letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(())
}
