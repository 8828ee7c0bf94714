//! Jobs: submit (commands and model jobs), status, list, cancel, logs.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Result};
use coop_core::resources::{parse_bytes, parse_cpu};
use coop_core::JobState as CoreJobState;
use coop_proto::api::*;
use serde_json::json;

use super::{member_or_default, new_request_id, now_ms};
use crate::client::{call, connect, Client};
use crate::output::{
    decision_kind, job_json, job_state, ms_ago, print_json, reason_text, res, rule_name, table,
    Format,
};

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
    /// Retries after a failed or lost run.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
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

pub fn build_spec(args: &SubmitArgs) -> Result<JobSpec> {
    let model_job = args.infer.is_some() || !args.evaluate.is_empty();
    if model_job && !args.command.is_empty() {
        bail!("a model job (--infer or --evaluate) takes no command");
    }
    if !model_job && args.command.is_empty() {
        bail!("empty command: give the program to run after --, e.g. coop submit -- echo hi");
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
        max_retries: args.retries,
        preemptible: args.preemptible,
        gpu_model: args.gpu_model.clone(),
        gpu_min_memory_bytes: args
            .gpu_min_memory
            .as_deref()
            .map(parse_bytes)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        timeout_secs: args.timeout,
        inference,
        evaluation,
    })
}

pub async fn submit_one(
    client: &Client,
    member: &str,
    request_id: &str,
    spec: &JobSpec,
) -> Result<SubmitResponse> {
    let req = SubmitRequest {
        member: member.to_string(),
        request_id: request_id.to_string(),
        spec: Some(spec.clone()),
    };
    call(client, req, |mut c, req| async move { c.submit(req).await }).await
}

pub async fn get_job(client: &Client, job: u64) -> Result<Job> {
    call(client, (), |mut c, ()| async move {
        c.get_job(GetJobRequest { job_id: job }).await
    })
    .await
}

pub async fn submit(addr: &str, fmt: Format, args: SubmitArgs) -> Result<i32> {
    let spec = build_spec(&args)?;
    let member = member_or_default(args.member.clone())?;
    let request_id = args.request_id.clone().unwrap_or_else(new_request_id);
    let client = connect(addr).await?;
    let reply = submit_one(&client, &member, &request_id, &spec).await?;
    if !args.wait {
        match fmt {
            Format::Json => print_json(
                &json!({"job_id": reply.job_id, "existing": reply.existing, "request_id": request_id}),
            ),
            Format::Table => {
                let note = if reply.existing {
                    " (already submitted with this request id)"
                } else {
                    ""
                };
                println!("submitted job {}{note}", reply.job_id);
            }
        }
        return Ok(0);
    }
    let job = wait_for(&client, reply.job_id, fmt == Format::Table).await?;
    match fmt {
        Format::Json => print_json(&job_json(&job)),
        Format::Table => println!(
            "job {} {} on {}: {}",
            job.id,
            job_state(job.state),
            if job.node.is_empty() { "-" } else { &job.node },
            job.message
        ),
    }
    Ok(if job_state(job.state) == "succeeded" {
        0
    } else {
        1
    })
}

/// Polls a job until it ends, with a spinner showing its state.
pub async fn wait_for(client: &Client, job_id: u64, show: bool) -> Result<Job> {
    let bar = if show {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(100));
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    loop {
        let job = get_job(client, job_id).await?;
        let state = job_state(job.state);
        let detail = match state {
            "pending" => job
                .pending_reasons
                .first()
                .map(reason_text)
                .unwrap_or_default(),
            "assigned" | "running" => format!("on {}", job.node),
            _ => String::new(),
        };
        bar.set_message(format!("job {} {state} {detail}", job.id));
        if matches!(state, "succeeded" | "failed" | "cancelled") {
            bar.finish_and_clear();
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn status(addr: &str, fmt: Format, job: u64) -> Result<i32> {
    let client = connect(addr).await?;
    let j = get_job(&client, job).await?;
    if fmt == Format::Json {
        print_json(&job_json(&j));
        return Ok(0);
    }
    let spec = j.spec.clone().unwrap_or_default();
    let now = now_ms();
    println!(
        "job {}  {}",
        j.id,
        if spec.name.is_empty() {
            String::new()
        } else {
            format!("({})", spec.name)
        }
    );
    println!("  member     {}", j.member);
    println!("  state      {}", job_state(j.state));
    println!("  command    {}", spec.argv.join(" "));
    println!("  resources  {}", res(spec.resources.as_ref()));
    println!(
        "  retries    {} used of {}",
        j.attempts.min(spec.max_retries),
        spec.max_retries
    );
    if !j.node.is_empty() {
        println!("  node       {} (allocation {})", j.node, j.alloc_id);
    }
    if !j.gpu_indices.is_empty() {
        println!("  gpus       {:?}", j.gpu_indices);
    }
    println!("  submitted  {}", ms_ago(j.submitted_at_ms, now));
    if j.started_at_ms > 0 {
        println!("  started    {}", ms_ago(j.started_at_ms, now));
    }
    if j.finished_at_ms > 0 {
        println!("  finished   {}", ms_ago(j.finished_at_ms, now));
    }
    if !j.message.is_empty() {
        println!("  outcome    {}", j.message);
    }
    if let Some(result) = crate::output::job_result(&j) {
        super::models::print_result(&result);
    }
    if !j.pending_reasons.is_empty() {
        println!("  waiting because:");
        for r in &j.pending_reasons {
            println!("    - {}", reason_text(r));
        }
    }
    if !j.decisions.is_empty() {
        println!("  decisions:");
        for d in &j.decisions {
            println!(
                "    {:>8}  {} allocation {} on {} by rule {} (policy v{})",
                ms_ago(d.at_ms, now),
                decision_kind(d.kind),
                d.alloc_id,
                d.node,
                rule_name(d.rule),
                d.policy_version
            );
        }
    }
    println!("  history:");
    for e in &j.history {
        println!("    {:>8}  {}", ms_ago(e.at_ms, now), e.what);
    }
    Ok(0)
}

pub async fn jobs(
    addr: &str,
    fmt: Format,
    state: Option<String>,
    member: Option<String>,
    limit: u32,
) -> Result<i32> {
    let state = match state.as_deref() {
        None | Some("") => 0,
        Some(s) => match CoreJobState::parse(s) {
            Some(s) => coop_proto::convert::wire::<coop_proto::api::JobState, _>(s),
            None => bail!(
                "unknown state {s:?}: use pending, assigned, running, succeeded, failed or cancelled"
            ),
        },
    };
    let client = connect(addr).await?;
    let req = ListJobsRequest {
        state,
        member: member.unwrap_or_default(),
        limit,
    };
    let reply = call(
        &client,
        req,
        |mut c, req| async move { c.list_jobs(req).await },
    )
    .await?;
    if fmt == Format::Json {
        print_json(&json!(reply.jobs.iter().map(job_json).collect::<Vec<_>>()));
        return Ok(0);
    }
    let now = now_ms();
    let mut t = table(&[
        "JOB",
        "MEMBER",
        "STATE",
        "NODE",
        "RESOURCES",
        "SUBMITTED",
        "COMMAND",
    ]);
    for j in &reply.jobs {
        let spec = j.spec.clone().unwrap_or_default();
        let mut cmd = spec.argv.join(" ");
        if cmd.len() > 40 {
            cmd.truncate(37);
            cmd.push_str("...");
        }
        t.add_row(vec![
            j.id.to_string(),
            j.member.clone(),
            job_state(j.state).to_string(),
            if j.node.is_empty() {
                "-".into()
            } else {
                j.node.clone()
            },
            res(spec.resources.as_ref()),
            ms_ago(j.submitted_at_ms, now),
            cmd,
        ]);
    }
    println!("{t}");
    Ok(0)
}

pub async fn cancel(addr: &str, fmt: Format, job: u64, member: Option<String>) -> Result<i32> {
    let member = member_or_default(member)?;
    let client = connect(addr).await?;
    let req = CancelRequest {
        job_id: job,
        member,
    };
    let reply = call(
        &client,
        req,
        |mut c, req| async move { c.cancel(req).await },
    )
    .await?;
    match fmt {
        Format::Json => {
            print_json(&json!({"job_id": job, "cancelled": true, "stopping": reply.stopping}))
        }
        Format::Table if reply.stopping => {
            println!("cancelled job {job}; its process is being stopped")
        }
        Format::Table => println!("cancelled job {job}"),
    }
    Ok(0)
}

pub async fn logs(addr: &str, job: u64, stderr: bool, follow: bool) -> Result<i32> {
    let client = connect(addr).await?;
    let stream = if stderr { "stderr" } else { "stdout" };
    let mut offset = 0;
    let mut out = std::io::stdout();
    loop {
        let req = LogsRequest {
            job_id: job,
            stream: stream.into(),
            offset,
            max_bytes: 256 * 1024,
        };
        let reply = call(&client, req, |mut c, req| async move { c.logs(req).await }).await?;
        out.write_all(&reply.data)?;
        out.flush()?;
        offset = reply.next_offset;
        if reply.complete || (!follow && reply.data.is_empty()) {
            return Ok(0);
        }
        if reply.data.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
