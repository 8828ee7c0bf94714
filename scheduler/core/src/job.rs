//! Jobs: what a member asked for (`JobSpec`) and what became of it (`Job`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{AllocId, JobId, MemberId, NodeId};
use crate::resources::Resources;

/// Limits on a job spec that hold whatever the policy says; they keep one
/// request from bloating the replicated log.
pub const MAX_ARGV_ITEMS: usize = 256;
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
pub const MAX_RETRIES: u32 = 100;
pub const MAX_NAME_LEN: usize = 128;
/// Entries kept in a job's history; older ones are dropped first.
pub const HISTORY_LEN: usize = 32;

/// What to run. New kinds are new variants; a tag is never reused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobKind {
    /// A program run as a process: `argv[0]` is looked up on the worker's PATH.
    Command {
        argv: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// A label for people; need not be unique.
    #[serde(default)]
    pub name: String,
    #[serde(flatten)]
    pub kind: JobKind,
    pub resources: Resources,
    /// How many times a failed or lost run is retried before the job fails.
    #[serde(default)]
    pub max_retries: u32,
    /// Whether the fair-share allocator may stop this job to give its
    /// resources back to a member below entitlement.
    #[serde(default)]
    pub preemptible: bool,
    /// GPU constraint: each GPU's model must contain this (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// GPU constraint: each GPU must have at least this much memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_min_memory_bytes: Option<u64>,
    /// The run is killed after this many seconds (at most the policy's
    /// `max_job_runtime_secs`, which is also the default when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

impl JobSpec {
    /// A command job with the given argv and resources, no retries.
    pub fn command(argv: Vec<String>, resources: Resources) -> Self {
        Self {
            name: String::new(),
            kind: JobKind::Command {
                argv,
                env: BTreeMap::new(),
            },
            resources,
            max_retries: 0,
            preemptible: false,
            gpu_model: None,
            gpu_min_memory_bytes: None,
            timeout_secs: None,
        }
    }

    /// True when the job constrains which GPUs it may get.
    pub fn has_gpu_constraints(&self) -> bool {
        self.resources.gpus > 0 && (self.gpu_model.is_some() || self.gpu_min_memory_bytes.is_some())
    }

    /// Checks what can be checked without the cluster: a clear message for
    /// the first problem found.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.len() > MAX_NAME_LEN {
            return Err(format!("job name is longer than {MAX_NAME_LEN} bytes"));
        }
        match &self.kind {
            JobKind::Command { argv, env } => {
                if argv.is_empty() || argv[0].trim().is_empty() {
                    return Err("empty command: give the program to run".into());
                }
                if argv.len() > MAX_ARGV_ITEMS {
                    return Err(format!("command has more than {MAX_ARGV_ITEMS} arguments"));
                }
                if argv.iter().any(|a| a.contains('\0')) {
                    return Err("command argument contains a NUL byte".into());
                }
                for (key, value) in env {
                    if key.is_empty()
                        || key.contains('=')
                        || key.contains('\0')
                        || value.contains('\0')
                    {
                        return Err(format!("bad environment variable name or value {key:?}"));
                    }
                    if key.starts_with("COOP_") || key == "CUDA_VISIBLE_DEVICES" {
                        return Err(format!("environment variable {key} is set by coop"));
                    }
                }
                let size: usize = argv.iter().map(String::len).sum::<usize>()
                    + env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
                if size > MAX_SPEC_BYTES {
                    return Err(format!(
                        "command and environment exceed {MAX_SPEC_BYTES} bytes"
                    ));
                }
            }
        }
        let r = &self.resources;
        if r.cpu_millis == 0 {
            return Err("a job must request some cpu (e.g. --cpu 0.1)".into());
        }
        if r.memory_bytes == 0 {
            return Err("a job must request some memory (e.g. --memory 64Mi)".into());
        }
        if self
            .gpu_model
            .as_ref()
            .is_some_and(|m| m.is_empty() || m.len() > 64)
        {
            return Err("gpu model must be 1 to 64 characters".into());
        }
        if self.timeout_secs == Some(0) {
            return Err("timeout must be at least 1 second".into());
        }
        if self.max_retries > MAX_RETRIES {
            return Err(format!("retries must be at most {MAX_RETRIES}"));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting in its member's queue.
    Pending,
    /// Placed on a node; the worker has not yet said it started.
    Assigned,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => Self::Pending,
            "assigned" => Self::Assigned,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// One line of a job's history: when, and what happened, with the rule
/// that decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub at_ms: u64,
    pub what: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub member: MemberId,
    pub request_id: String,
    pub spec: JobSpec,
    pub state: JobState,
    /// Runs that ended without success (failed or lost) so far.
    pub attempts: u32,
    /// The live allocation, while assigned or running (or being stopped).
    pub alloc: Option<AllocId>,
    /// The latest allocation and its node, live or ended: where its logs are.
    pub last_run: Option<(AllocId, NodeId)>,
    pub submitted_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub exit_code: Option<i32>,
    /// Why the job ended, for a terminal job.
    pub message: String,
    pub history: Vec<JobEvent>,
}

impl Job {
    pub(crate) fn record(&mut self, at_ms: u64, what: String) {
        if self.history.len() == HISTORY_LEN {
            self.history.remove(0);
        }
        self.history.push(JobEvent { at_ms, what });
    }
}
