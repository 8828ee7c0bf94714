//! Jobs: what a member asked for (`JobSpec`) and what became of it (`Job`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{AllocId, JobId, MemberId, NodeId};
use crate::resources::Resources;
use crate::result::JobResult;

/// Limits on a job spec that hold whatever the policy says; they keep one
/// request from bloating the replicated log.
pub const MAX_ARGV_ITEMS: usize = 256;
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
pub const MAX_RETRIES: u32 = 100;
pub const MAX_NAME_LEN: usize = 128;
/// Longest run a job may ask for, whatever the policy: a year.
pub const MAX_TIMEOUT_SECS: u64 = 366 * 24 * 3600;
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
        #[serde(default, skip_serializing_if = "ModelOptions::is_default")]
        options: ModelOptions,
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
        #[serde(default, skip_serializing_if = "ModelOptions::is_default")]
        options: ModelOptions,
    },
}

/// What a model job needs of a worker beyond room (see `JobSpec::engine_needs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineNeeds {
    pub onnxruntime: bool,
    pub cuda: bool,
}

impl EngineNeeds {
    /// The need as `why` names it.
    pub fn describe(self) -> String {
        if self.cuda {
            "ONNX Runtime with its CUDA execution provider".into()
        } else if self.onnxruntime {
            "ONNX Runtime".into()
        } else {
            "tract".into()
        }
    }
}

/// Which runtime runs a model job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// ONNX Runtime where the worker has it, tract otherwise.
    #[default]
    Auto,
    /// tract, pure Rust, on every worker.
    Tract,
    /// ONNX Runtime (on the job's GPUs through CUDA when it has any).
    Onnxruntime,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Tract => "tract",
            Self::Onnxruntime => "onnxruntime",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "auto" => Some(Self::Auto),
            "tract" => Some(Self::Tract),
            "onnxruntime" | "ort" => Some(Self::Onnxruntime),
            _ => None,
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a model job runs and reads its data, beyond the model and the files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelOptions {
    #[serde(default, skip_serializing_if = "is_auto")]
    pub engine: Engine,
    /// The model output to write (inference) or score (evaluation); all of
    /// them are written, and the task picks the one scored, when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_name: Option<String>,
    /// Evaluation: the dataset columns that are features, in this order
    /// (default: every column but the label, in the file's order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Evaluation: columns that are not features.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
    /// Evaluation: split the dataset's rows into this many jobs (an array
    /// `0..shards`, one shard per index), each reporting its models'
    /// sufficient statistics, merged into one score (0: not sharded).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shards: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Most shards one evaluation may be split into.
pub const MAX_SHARDS: u32 = 1024;

fn is_auto(e: &Engine) -> bool {
    *e == Engine::Auto
}

/// Most columns `--features` or `--drop` may name.
pub const MAX_COLUMNS: usize = 4096;
/// Longest column or output name.
pub const MAX_COLUMN_NAME_LEN: usize = 128;

impl ModelOptions {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    fn validate(&self, evaluation: bool) -> Result<(), SpecError> {
        if self
            .output_name
            .as_ref()
            .is_some_and(|n| n.is_empty() || n.len() > MAX_COLUMN_NAME_LEN)
        {
            return Err(SpecError::OutputName);
        }
        if !evaluation && self.shards > 0 {
            return Err(SpecError::Shards(
                "--shards splits an evaluation's dataset; an inference is one job".into(),
            ));
        }
        if self.shards > MAX_SHARDS {
            return Err(SpecError::Shards(format!(
                "an evaluation is split into at most {MAX_SHARDS} shards"
            )));
        }
        if !evaluation && (!self.features.is_empty() || !self.drop.is_empty()) {
            return Err(SpecError::Columns(
                "--features and --drop choose an evaluation dataset's columns".into(),
            ));
        }
        if !self.features.is_empty() && !self.drop.is_empty() {
            return Err(SpecError::Columns(
                "give --features or --drop, not both".into(),
            ));
        }
        let names = self.features.iter().chain(&self.drop);
        if self.features.len() + self.drop.len() > MAX_COLUMNS {
            return Err(SpecError::Columns(format!(
                "at most {MAX_COLUMNS} columns may be named"
            )));
        }
        if let Some(bad) = names
            .clone()
            .find(|n| n.is_empty() || n.len() > MAX_COLUMN_NAME_LEN)
        {
            return Err(SpecError::Columns(format!(
                "column name {bad:?} must be 1 to {MAX_COLUMN_NAME_LEN} bytes"
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = names.clone().find(|n| !seen.insert(n.as_str())) {
            return Err(SpecError::Columns(format!("column {dup:?} is named twice")));
        }
        Ok(())
    }
}

/// A file a model job reads: a local path or an http(s) URI, with the
/// SHA-256 the worker checks before use when given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalTask {
    /// Outputs are class scores; the prediction is the argmax.
    Classification,
    /// Outputs are values.
    Regression,
}

impl std::fmt::Display for EvalTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EvalTask {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classification => "classification",
            Self::Regression => "regression",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "classification" => Some(Self::Classification),
            "regression" => Some(Self::Regression),
            _ => None,
        }
    }

    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            Self::Classification => &["accuracy", "macro_f1"],
            Self::Regression => &["mse", "mae"],
        }
    }
}

/// Most jobs one array submit makes.
pub const MAX_ARRAY_JOBS: u32 = 100_000;

/// A job array's indices, both ends included (`--array 0-999`): one job per
/// index, each with `COOP_ARRAY_INDEX`, submitted, signed and logged once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayRange {
    pub first: u32,
    pub last: u32,
}

impl ArrayRange {
    /// How many jobs the range makes (0 for a reversed range).
    pub fn len(self) -> u32 {
        self.last
            .checked_sub(self.first)
            .map_or(0, |d| d.saturating_add(1))
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// `A-B` or a lone `A`.
    pub fn parse(text: &str) -> Option<Self> {
        let (a, b) = text.split_once('-').unwrap_or((text, text));
        Some(Self {
            first: a.trim().parse().ok()?,
            last: b.trim().parse().ok()?,
        })
    }
}

impl std::fmt::Display for ArrayRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Where a job sits in its array: the array's first job (its id) and the
/// job's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayPlace {
    pub first: JobId,
    pub index: u32,
}

/// Most models one evaluation may compare.
pub const MAX_EVAL_MODELS: usize = 16;

/// Longest artifact URI.
pub const MAX_URI_LEN: usize = 2048;
/// Longest output path of an inference job.
pub const MAX_OUTPUT_PATH_LEN: usize = 256;
/// Longest label column name.
pub const MAX_LABEL_COLUMN_LEN: usize = 128;
/// Longest GPU model constraint.
pub const MAX_GPU_MODEL_LEN: usize = 64;

/// Why a job spec was refused: the first problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SpecError {
    #[error("job name is longer than {MAX_NAME_LEN} bytes")]
    NameTooLong,
    #[error("{what}: give a path or an http(s) URI")]
    MissingUri { what: String },
    #[error("{what}: URI longer than {MAX_URI_LEN} bytes")]
    UriTooLong { what: String },
    #[error("{what}: unsupported scheme {scheme}:// (use a path, file://, http:// or https://)")]
    UnsupportedScheme { what: String, scheme: String },
    #[error("{what}: sha256 must be 64 hex digits")]
    BadSha256 { what: String },
    #[error("output must end in .npy or .jsonl")]
    OutputFormat,
    #[error("output must be a relative path inside the job's work dir")]
    OutputPath,
    #[error("output name must be 1 to {MAX_COLUMN_NAME_LEN} bytes")]
    OutputName,
    #[error("an array is FIRST-LAST with FIRST <= LAST, at most {MAX_ARRAY_JOBS} jobs")]
    Array,
    #[error("tract runs on CPUs only: a model job with GPUs runs on ONNX Runtime's CUDA provider (--engine auto or onnxruntime), or ask for no GPUs")]
    TractOnGpus,
    #[error("{0}")]
    Columns(String),
    #[error("{0}")]
    Shards(String),
    #[error("an evaluation needs 1 to {MAX_EVAL_MODELS} models")]
    ModelCount,
    #[error("give the dataset's label column")]
    LabelColumn,
    #[error("metric {metric:?} does not apply to {task}: use {allowed}")]
    Metric {
        metric: String,
        task: EvalTask,
        allowed: String,
    },
    #[error("empty command: give the program to run")]
    EmptyCommand,
    #[error("command has more than {MAX_ARGV_ITEMS} arguments")]
    TooManyArguments,
    #[error("command argument contains a NUL byte")]
    NulByte,
    #[error("bad environment variable name or value {key:?}")]
    BadEnv { key: String },
    #[error("environment variable {key} is set by coop")]
    ReservedEnv { key: String },
    #[error("an env salt is 16 bytes")]
    EnvSalt,
    #[error("command and environment exceed {MAX_SPEC_BYTES} bytes")]
    TooLarge,
    #[error("a job must request some cpu (e.g. --cpu 0.1)")]
    NoCpu,
    #[error("a job must request some memory (e.g. --memory 64Mi)")]
    NoMemory,
    #[error("gpu model must be 1 to {MAX_GPU_MODEL_LEN} characters")]
    GpuModel,
    #[error("timeout must be 1 second to {MAX_TIMEOUT_SECS} seconds")]
    BadTimeout,
    #[error("retries must be at most {MAX_RETRIES}")]
    TooManyRetries,
}

impl Artifact {
    fn validate(&self, what: &str) -> Result<(), SpecError> {
        let what = what.to_string();
        let uri = self.uri.trim();
        if uri.is_empty() {
            return Err(SpecError::MissingUri { what });
        }
        if uri.len() > MAX_URI_LEN {
            return Err(SpecError::UriTooLong { what });
        }
        if let Some(scheme) = uri.split_once("://").map(|(s, _)| s) {
            if !matches!(scheme, "http" | "https" | "file") {
                return Err(SpecError::UnsupportedScheme {
                    what,
                    scheme: scheme.to_string(),
                });
            }
        }
        if let Some(h) = &self.sha256 {
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(SpecError::BadSha256 { what });
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
    /// One job per index of this range (a job array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArrayRange>,
}

/// A job's secret salt for its env commitments: random to others (the
/// client derives it from its own secret key and the request id), so a
/// commitment does not give away a guessable value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EnvSalt(pub [u8; 16]);

impl std::fmt::Debug for EnvSalt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnvSalt(..)")
    }
}

impl Serialize for EnvSalt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for EnvSalt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        Ok(Self(bytes.try_into().map_err(|_| {
            serde::de::Error::custom("an env salt is 16 bytes")
        })?))
    }
}

impl TryFrom<&[u8]> for EnvSalt {
    type Error = SpecError;

    fn try_from(bytes: &[u8]) -> Result<Self, SpecError> {
        Ok(Self(bytes.try_into().map_err(|_| SpecError::EnvSalt)?))
    }
}

/// The commitment to one env value that stands in for it in the public
/// record: `sha256:` and the hex SHA-256 of the salt, the name and the value.
pub fn env_commitment(salt: &EnvSalt, key: &str, value: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"coop/v1/env\0");
    h.update(salt.0);
    h.update((key.len() as u32).to_be_bytes());
    h.update(key.as_bytes());
    h.update(value.as_bytes());
    format!("sha256:{}", hex::encode(h.finalize()))
}

impl JobSpec {
    /// The spec as the public record holds it: each env value replaced by
    /// its commitment. What a member signs, what the decision log records,
    /// and what anyone may see; the values themselves stay with the
    /// member, the replicas' private state and the worker that runs the job.
    pub fn committed(&self, salt: &EnvSalt) -> JobSpec {
        let mut public = self.clone();
        if let JobKind::Command { env, .. } = &mut public.kind {
            for (key, value) in env.iter_mut() {
                *value = env_commitment(salt, key, value);
            }
        }
        public
    }

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
            array: None,
        }
    }

    /// What the job needs of a worker's engines: a model job asking for
    /// ONNX Runtime needs it, and one with GPUs needs its CUDA provider
    /// (tract runs on CPUs only, so GPUs would sit idle under it).
    pub fn engine_needs(&self) -> EngineNeeds {
        match &self.kind {
            JobKind::Command { .. } => EngineNeeds::default(),
            JobKind::Inference { options, .. } | JobKind::Evaluation { options, .. } => {
                let cuda = self.resources.gpus > 0;
                EngineNeeds {
                    onnxruntime: cuda || options.engine == Engine::Onnxruntime,
                    cuda,
                }
            }
        }
    }

    /// True when not every node with room can take the job: GPU
    /// constraints, or an engine only some workers have.
    pub fn has_node_constraints(&self) -> bool {
        self.has_gpu_constraints() || self.engine_needs() != EngineNeeds::default()
    }

    /// True when the job constrains which GPUs it may get.
    pub fn has_gpu_constraints(&self) -> bool {
        self.resources.gpus > 0 && (self.gpu_model.is_some() || self.gpu_min_memory_bytes.is_some())
    }

    /// Checks what can be checked without the cluster: the first problem found.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.len() > MAX_NAME_LEN {
            return Err(SpecError::NameTooLong);
        }
        if let JobKind::Inference { options, .. } | JobKind::Evaluation { options, .. } = &self.kind
        {
            if options.engine == Engine::Tract && self.resources.gpus > 0 {
                return Err(SpecError::TractOnGpus);
            }
        }
        match &self.kind {
            JobKind::Inference {
                model,
                input,
                output,
                options,
            } => {
                options.validate(false)?;
                model.validate("model")?;
                input.validate("input")?;
                if !(output.ends_with(".npy") || output.ends_with(".jsonl")) {
                    return Err(SpecError::OutputFormat);
                }
                if output.starts_with('/')
                    || output.split('/').any(|p| p == "..")
                    || output.len() > MAX_OUTPUT_PATH_LEN
                {
                    return Err(SpecError::OutputPath);
                }
            }
            JobKind::Evaluation {
                models,
                dataset,
                label_column,
                task,
                metrics,
                options,
            } => {
                options.validate(true)?;
                if options.features.contains(label_column) {
                    return Err(SpecError::Columns(format!(
                        "the label column {label_column:?} cannot be a feature"
                    )));
                }
                if models.is_empty() || models.len() > MAX_EVAL_MODELS {
                    return Err(SpecError::ModelCount);
                }
                for (i, m) in models.iter().enumerate() {
                    m.validate(&format!("model {}", i + 1))?;
                }
                dataset.validate("dataset")?;
                if label_column.is_empty() || label_column.len() > MAX_LABEL_COLUMN_LEN {
                    return Err(SpecError::LabelColumn);
                }
                if let Some(m) = metrics
                    .iter()
                    .find(|m| !task.metrics().contains(&m.as_str()))
                {
                    return Err(SpecError::Metric {
                        metric: m.clone(),
                        task: *task,
                        allowed: task.metrics().join(", "),
                    });
                }
            }
            JobKind::Command { argv, env } => validate_command(argv, env)?,
        }
        let r = &self.resources;
        if r.cpu_millis == 0 {
            return Err(SpecError::NoCpu);
        }
        if r.memory_bytes == 0 {
            return Err(SpecError::NoMemory);
        }
        if self
            .gpu_model
            .as_ref()
            .is_some_and(|m| m.is_empty() || m.len() > MAX_GPU_MODEL_LEN)
        {
            return Err(SpecError::GpuModel);
        }
        if self
            .timeout_secs
            .is_some_and(|t| t == 0 || t > MAX_TIMEOUT_SECS)
        {
            return Err(SpecError::BadTimeout);
        }
        if self.max_retries > MAX_RETRIES {
            return Err(SpecError::TooManyRetries);
        }
        if self
            .array
            .is_some_and(|r| r.is_empty() || r.len() > MAX_ARRAY_JOBS)
        {
            return Err(SpecError::Array);
        }
        // A model job's array is its evaluation's shards, exactly `0..shards`:
        // the worker splits the rows by index over that count.
        if let JobKind::Inference { options, .. } | JobKind::Evaluation { options, .. } = &self.kind
        {
            let shards = (options.shards > 0).then(|| ArrayRange {
                first: 0,
                last: options.shards - 1,
            });
            if self.array != shards {
                return Err(SpecError::Shards(match shards {
                    Some(r) => format!("a sharded evaluation is the array {r}"),
                    None => "a model job is not an array: split an evaluation with --shards".into(),
                }));
            }
        }
        Ok(())
    }
}

fn validate_command(argv: &[String], env: &BTreeMap<String, String>) -> Result<(), SpecError> {
    if argv.is_empty() || argv[0].trim().is_empty() {
        return Err(SpecError::EmptyCommand);
    }
    if argv.len() > MAX_ARGV_ITEMS {
        return Err(SpecError::TooManyArguments);
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(SpecError::NulByte);
    }
    for (key, value) in env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(SpecError::BadEnv { key: key.clone() });
        }
        if key.starts_with("COOP_") || key == "CUDA_VISIBLE_DEVICES" {
            return Err(SpecError::ReservedEnv { key: key.clone() });
        }
    }
    let size: usize = argv.iter().map(String::len).sum::<usize>()
        + env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    if size > MAX_SPEC_BYTES {
        return Err(SpecError::TooLarge);
    }
    Ok(())
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

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Pending,
        JobState::Assigned,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

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
    /// The salt of the spec's env commitments, when the spec holds the
    /// values themselves (a replica's private state; never in the public
    /// record, where `spec` holds the commitments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_salt: Option<EnvSalt>,
    /// Milliseconds of runs lost to preemption or to a lost node, not yet
    /// credited back by an upheld appeal.
    #[serde(default)]
    pub lost_ms: u64,
    /// The decision log's leaves that record this job's decisions (its
    /// submit, placements, preemptions, reports, loss): the first and the
    /// latest `JOB_LEAVES_KEPT - 1`. `coop audit prove` proves them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaves: Vec<u64>,
    /// Private: the pending queue is derived from it, so it changes only
    /// through `ClusterState::set_job_state`.
    state: JobState,
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
    /// Its place in a job array, for one of an array's jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArrayPlace>,
}

/// Leaf indices kept per job.
pub const JOB_LEAVES_KEPT: usize = 32;

impl Job {
    pub(crate) fn note_leaf(&mut self, index: u64) {
        if self.leaves.last() == Some(&index) {
            return;
        }
        if self.leaves.len() >= JOB_LEAVES_KEPT {
            self.leaves.remove(1);
        }
        self.leaves.push(index);
    }

    /// A job as submitted: pending, with one history line.
    pub(crate) fn new(
        id: JobId,
        member: MemberId,
        request_id: String,
        spec: JobSpec,
        env_salt: Option<EnvSalt>,
        now_ms: u64,
    ) -> Self {
        let mut job = Job {
            id,
            member,
            request_id,
            spec,
            env_salt,
            lost_ms: 0,
            leaves: Vec::new(),
            state: JobState::Pending,
            attempts: 0,
            alloc: None,
            last_run: None,
            submitted_at_ms: now_ms,
            started_at_ms: None,
            finished_at_ms: None,
            exit_code: None,
            message: String::new(),
            result: None,
            history: Vec::new(),
            array: None,
        };
        job.record(now_ms, "submitted".into());
        job
    }

    /// The spec as the public record holds it (env values as commitments).
    pub fn public_spec(&self) -> JobSpec {
        match &self.env_salt {
            Some(salt) => self.spec.committed(salt),
            None => self.spec.clone(),
        }
    }

    pub fn state(&self) -> JobState {
        self.state
    }

    /// Only `ClusterState::set_job_state` calls this, keeping the pending queue in step.
    pub(crate) fn set_state(&mut self, state: JobState) {
        self.state = state;
    }

    pub(crate) fn record(&mut self, at_ms: u64, what: String) {
        if self.history.len() == HISTORY_LEN {
            self.history.remove(0);
        }
        self.history.push(JobEvent { at_ms, what });
    }
}
