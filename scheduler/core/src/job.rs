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
    /// Run an ONNX model over an input file and write its outputs.
    Inference {
        model: Artifact,
        input: Artifact,
        /// Where the worker writes the outputs: `.npy` or `.jsonl`, relative
        /// to the job's work dir (served with its logs).
        output: String,
    },
    /// Score one or more ONNX models (and, with several, their ensemble) on
    /// a labelled dataset.
    Evaluation {
        models: Vec<Artifact>,
        dataset: Artifact,
        /// The dataset column holding the label.
        label_column: String,
        task: EvalTask,
        /// accuracy, macro_f1 (classification); mse, mae (regression).
        metrics: Vec<String>,
    },
}

/// A file a model job reads: a local path or an http(s) URI, with the
/// SHA-256 the worker checks before use when given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalTask {
    /// Outputs are class scores; the prediction is the argmax.
    Classification,
    /// Outputs are values.
    Regression,
}

impl EvalTask {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classification => "classification",
            Self::Regression => "regression",
        }
    }

    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            Self::Classification => &["accuracy", "macro_f1"],
            Self::Regression => &["mse", "mae"],
        }
    }
}

/// Most models one evaluation may compare.
pub const MAX_EVAL_MODELS: usize = 16;

impl Artifact {
    fn validate(&self, what: &str) -> Result<(), String> {
        let uri = self.uri.trim();
        if uri.is_empty() {
            return Err(format!("{what}: give a path or an http(s) URI"));
        }
        if uri.len() > 2048 {
            return Err(format!("{what}: URI longer than 2048 bytes"));
        }
        if let Some(scheme) = uri.split_once("://").map(|(s, _)| s) {
            if !matches!(scheme, "http" | "https" | "file") {
                return Err(format!("{what}: unsupported scheme {scheme}:// (use a path, file://, http:// or https://)"));
            }
        }
        if let Some(h) = &self.sha256 {
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("{what}: sha256 must be 64 hex digits"));
            }
        }
        Ok(())
    }
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
            JobKind::Inference {
                model,
                input,
                output,
            } => {
                model.validate("model")?;
                input.validate("input")?;
                if !(output.ends_with(".npy") || output.ends_with(".jsonl")) {
                    return Err("output must end in .npy or .jsonl".into());
                }
                if output.starts_with('/')
                    || output.split('/').any(|p| p == "..")
                    || output.len() > 256
                {
                    return Err("output must be a relative path inside the job's work dir".into());
                }
            }
            JobKind::Evaluation {
                models,
                dataset,
                label_column,
                task,
                metrics,
            } => {
                if models.is_empty() || models.len() > MAX_EVAL_MODELS {
                    return Err(format!("an evaluation needs 1 to {MAX_EVAL_MODELS} models"));
                }
                for (i, m) in models.iter().enumerate() {
                    m.validate(&format!("model {}", i + 1))?;
                }
                dataset.validate("dataset")?;
                if label_column.is_empty() || label_column.len() > 128 {
                    return Err("give the dataset's label column".into());
                }
                for m in metrics {
                    if !task.metrics().contains(&m.as_str()) {
                        return Err(format!(
                            "metric {m:?} does not apply to {}: use {}",
                            task.as_str(),
                            task.metrics().join(", ")
                        ));
                    }
                }
            }
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// What a model job produced, as its worker reported it.
    #[serde(default)]
    pub result: Option<JobResult>,
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

/// Scores of one model (or of the ensemble) on a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelScore {
    /// The model's URI, or "ensemble".
    pub model: String,
    /// SHA-256 of the model file (empty for the ensemble).
    pub sha256: String,
    pub metrics: BTreeMap<String, f64>,
}

/// A model job's outcome, recorded through the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobResult {
    Inference {
        rows: u64,
        seconds: f64,
        output: String,
        output_sha256: String,
        model_sha256: String,
    },
    Evaluation {
        dataset: String,
        dataset_sha256: String,
        rows: u64,
        task: EvalTask,
        scores: Vec<ModelScore>,
        /// Majority vote (classification) or mean (regression), with several models.
        ensemble: Option<ModelScore>,
    },
}

impl JobResult {
    /// Refuses absurd reports (NaN scores, hundreds of models) before they reach the state.
    pub fn validate(&self) -> Result<(), String> {
        let check = |s: &ModelScore| -> Result<(), String> {
            if s.metrics.len() > 16 || s.model.len() > 2048 {
                return Err("result too large".into());
            }
            if s.metrics.values().any(|v| !v.is_finite()) {
                return Err(format!("result for {} has a non-finite metric", s.model));
            }
            Ok(())
        };
        match self {
            JobResult::Inference { seconds, .. } => {
                if !seconds.is_finite() || *seconds < 0.0 {
                    return Err("inference seconds must be finite".into());
                }
            }
            JobResult::Evaluation {
                scores, ensemble, ..
            } => {
                if scores.len() > MAX_EVAL_MODELS {
                    return Err("too many model scores".into());
                }
                for s in scores.iter().chain(ensemble.iter()) {
                    check(s)?;
                }
            }
        }
        Ok(())
    }
}
