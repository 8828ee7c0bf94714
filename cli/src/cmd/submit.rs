//! What `coop submit` sends: its flags, and the job spec they make.

use std::collections::HashMap;

use anyhow::{bail, Result};
use coop_core::resources::{parse_bytes, parse_cpu};
use coop_proto::api::*;

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// CPU cores (2, 0.5) or millicores (500m).
    #[arg(long, default_value = "1")]
    pub cpu: String,
    /// Memory (512Mi, 2Gi, 1G).
    #[arg(long, default_value = "256Mi")]
    pub memory: String,
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
    /// Retries after a failed or lost run (default 0; 2 for each shard of
    /// a sharded evaluation).
    #[arg(long)]
    pub retries: Option<u32>,
    /// May be preempted to give resources back to a member below entitlement.
    #[arg(long)]
    pub preemptible: bool,
    /// Only GPUs whose model contains this (e.g. A100).
    #[arg(long)]
    pub gpu_model: Option<String>,
    /// Only GPUs with at least this much memory (e.g. 40Gi).
    #[arg(long)]
    pub gpu_min_memory: Option<String>,
    /// Kill the run after this many seconds.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// A job array: one job per index of FIRST-LAST (e.g. 0-999), each
    /// with COOP_ARRAY_INDEX; shown and cancellable as one.
    #[arg(long, value_name = "FIRST-LAST")]
    pub array: Option<String>,
    /// A label for the job.
    #[arg(long, default_value = "")]
    pub name: String,
    /// Environment for the job, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The member you submit as.
    #[arg(long, env = "COOP_MEMBER")]
    pub member: Option<String>,
    /// Idempotency key (generated when absent); resubmitting with the same key returns the same job.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Wait for the job to finish, showing progress; exit non-zero if it fails.
    #[arg(long)]
    pub wait: bool,
    /// Inference: the ONNX model to run (a path on the worker or an http(s)
    /// URI; append #sha256=HEX to have it checked).
    #[arg(long, value_name = "MODEL", conflicts_with = "evaluate")]
    pub infer: Option<String>,
    /// Inference: the input (.npy or JSONL rows).
    #[arg(long, requires = "infer")]
    pub input: Option<String>,
    /// Inference: where to write the outputs in the job's work dir (.npy or .jsonl).
    #[arg(
        long = "out",
        id = "out",
        requires = "infer",
        default_value = "output.npy"
    )]
    pub out: String,
    /// Evaluation: a model to score (repeat for several; they are also
    /// scored as an ensemble).
    #[arg(long = "evaluate", value_name = "MODEL")]
    pub evaluate: Vec<String>,
    /// Evaluation: the labelled dataset (CSV with a header, or JSONL).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Evaluation: the label column.
    #[arg(long, default_value = "label")]
    pub label: String,
    /// Evaluation: classification or regression.
    #[arg(long, default_value = "classification")]
    pub task: String,
    /// Evaluation: a metric (repeatable; default: all of the task's).
    #[arg(long = "metric")]
    pub metrics: Vec<String>,
    /// Model jobs: auto (ONNX Runtime where the worker has it, else tract),
    /// tract or onnxruntime.
    #[arg(long, default_value = "auto")]
    pub engine: String,
    /// Model jobs: the model output to write or score (default: every
    /// output is written; the task picks the one scored).
    #[arg(long)]
    pub output_name: Option<String>,
    /// Evaluation: the feature columns, in the order the model takes them
    /// (comma-separated or repeated; default: every column but the label).
    #[arg(long, value_delimiter = ',', conflicts_with = "drop")]
    pub features: Vec<String>,
    /// Evaluation: columns that are not features (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub drop: Vec<String>,
    /// Evaluation: split the dataset's rows into N jobs (the array 0..N),
    /// run in parallel and merged into one leaderboard entry; a failed
    /// shard re-runs alone.
    #[arg(
        long,
        value_name = "N",
        requires = "evaluate",
        conflicts_with = "array"
    )]
    pub shards: Option<u32>,
    /// The program and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `path#sha256=HEX` -> an artifact with its digest.
pub fn artifact(text: &str) -> Artifact {
    match text.rsplit_once("#sha256=") {
        Some((uri, sha)) => Artifact {
            uri: uri.to_string(),
            sha256: Some(sha.to_string()),
        },
        None => Artifact {
            uri: text.to_string(),
            sha256: None,
        },
    }
}

/// How often a shard of a sharded evaluation is retried unless told: a
/// shard lost with its worker, or failing once, re-runs alone.
const SHARD_RETRIES: u32 = 2;

pub fn build_spec(args: &SubmitArgs) -> Result<JobSpec> {
    let model_job = args.infer.is_some() || !args.evaluate.is_empty();
    if model_job && !args.command.is_empty() {
        bail!("a model job (--infer or --evaluate) takes no command");
    }
    if !model_job && args.command.is_empty() {
        bail!("empty command: give the program to run after --, e.g. coop submit -- echo hi");
    }
    let Some(engine) = coop_core::Engine::parse(&args.engine) else {
        bail!("--engine {:?}: use auto, tract or onnxruntime", args.engine);
    };
    let options = coop_core::ModelOptions {
        engine,
        output_name: args.output_name.clone(),
        features: args.features.clone(),
        drop: args.drop.clone(),
        shards: args.shards.unwrap_or(0),
    };
    let options = (!options.is_default()).then(|| ModelOptions::from(&options));
    if !model_job && options.is_some() {
        bail!("--engine, --output-name, --features and --drop are for model jobs (--infer or --evaluate)");
    }
    let inference = match &args.infer {
        Some(model) => Some(InferenceSpec {
            model: Some(artifact(model)),
            input: Some(artifact(
                args.input
                    .as_deref()
                    .ok_or_else(|| anyhow::anyhow!("--infer needs --input"))?,
            )),
            output: args.out.clone(),
            options: options.clone(),
        }),
        None => None,
    };
    let evaluation = if args.evaluate.is_empty() {
        None
    } else {
        Some(EvaluationSpec {
            models: args.evaluate.iter().map(|m| artifact(m)).collect(),
            dataset: Some(artifact(
                args.dataset
                    .as_deref()
                    .ok_or_else(|| anyhow::anyhow!("--evaluate needs --dataset"))?,
            )),
            label_column: args.label.clone(),
            task: match coop_core::EvalTask::parse(&args.task) {
                Some(t) => coop_proto::convert::wire::<EvalTask, _>(t),
                None => bail!("--task {:?}: use classification or regression", args.task),
            },
            metrics: args.metrics.clone(),
            options,
        })
    };
    let cpu_millis = parse_cpu(&args.cpu).map_err(anyhow::Error::msg)?;
    let memory_bytes = parse_bytes(&args.memory).map_err(anyhow::Error::msg)?;
    let mut env = HashMap::new();
    for kv in &args.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env {kv:?} is not KEY=VALUE");
        };
        env.insert(k.to_string(), v.to_string());
    }
    Ok(JobSpec {
        name: args.name.clone(),
        argv: args.command.clone(),
        env,
        resources: Some(Resources {
            cpu_millis,
            memory_bytes,
            gpus: args.gpus,
        }),
        max_retries: args.retries.unwrap_or(if args.shards.is_some() {
            SHARD_RETRIES
        } else {
            0
        }),
        preemptible: args.preemptible,
        gpu_model: args.gpu_model.clone(),
        gpu_min_memory_bytes: args
            .gpu_min_memory
            .as_deref()
            .map(parse_bytes)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        timeout_secs: args.timeout,
        array: match &args.array {
            // A sharded evaluation is the array of its shards.
            None => args.shards.filter(|n| *n > 0).map(|n| ArrayRange {
                first: 0,
                last: n - 1,
            }),
            Some(text) => match coop_core::ArrayRange::parse(text) {
                Some(r) => Some(coop_proto::api::ArrayRange {
                    first: r.first,
                    last: r.last,
                }),
                None => bail!("--array {text:?}: give FIRST-LAST, e.g. 0-999"),
            },
        },
        inference,
        evaluation,
    })
}
