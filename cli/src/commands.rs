//! The member and operator commands that talk to a running cluster.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use coop_core::resources::{format_bytes, format_cpu, parse_bytes, parse_cpu};
use coop_proto::api::*;
use serde_json::json;

use crate::client::{call, connect, explain, Client};
use crate::output::{job_json, ms_ago, print_json, res, res_json, table, Format};

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

pub fn member_or_default(member: Option<String>) -> Result<String> {
    match member
        .or_else(|| std::env::var("USER").ok())
        .filter(|m| !m.is_empty())
    {
        Some(m) => Ok(m),
        None => bail!("say who you are: --member NAME or COOP_MEMBER"),
    }
}

pub fn new_request_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{:x}", std::process::id(), nanos)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
            task: args.task.clone(),
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
            job.state,
            if job.node.is_empty() { "-" } else { &job.node },
            job.message
        ),
    }
    Ok(if job.state == "succeeded" { 0 } else { 1 })
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
        let detail = match job.state.as_str() {
            "pending" => job.pending_reasons.first().cloned().unwrap_or_default(),
            "assigned" | "running" => format!("on {}", job.node),
            _ => String::new(),
        };
        bar.set_message(format!("job {} {} {}", job.id, job.state, detail));
        if matches!(job.state.as_str(), "succeeded" | "failed" | "cancelled") {
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
    println!("  state      {}", j.state);
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
    if let Ok(result) = serde_json::from_str::<serde_json::Value>(&j.result_json) {
        print_result(&result);
    }
    if !j.pending_reasons.is_empty() {
        println!("  waiting because:");
        for r in &j.pending_reasons {
            println!("    - {r}");
        }
    }
    if !j.decisions.is_empty() {
        println!("  decisions:");
        for d in &j.decisions {
            println!(
                "    {:>8}  {} allocation {} on {} by rule {} (policy v{})",
                ms_ago(d.at_ms, now),
                d.kind,
                d.alloc_id,
                d.node,
                d.rule,
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
    let client = connect(addr).await?;
    let req = ListJobsRequest {
        state: state.unwrap_or_default(),
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
            j.state.clone(),
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

pub async fn nodes(addr: &str, fmt: Format) -> Result<i32> {
    let client = connect(addr).await?;
    let reply = call(&client, (), |mut c, ()| async move {
        c.list_nodes(ListNodesRequest {}).await
    })
    .await?;
    if fmt == Format::Json {
        let nodes: Vec<_> = reply
            .nodes
            .iter()
            .map(|n| {
                json!({"id": n.id, "owner": n.owner, "state": n.state, "addr": n.addr,
                       "capacity": res_json(n.capacity.as_ref()), "allocated": res_json(n.allocated.as_ref()),
                       "allocations": n.allocations})
            })
            .collect();
        print_json(&json!(nodes));
        return Ok(0);
    }
    let mut t = table(&[
        "NODE",
        "OWNER",
        "STATE",
        "CPU USED/TOTAL",
        "MEMORY USED/TOTAL",
        "GPUS",
        "ALLOCS",
    ]);
    for n in &reply.nodes {
        let c = n.capacity.unwrap_or_default();
        let a = n.allocated.unwrap_or_default();
        t.add_row(vec![
            n.id.clone(),
            n.owner.clone(),
            n.state.clone(),
            format!("{}/{}", format_cpu(a.cpu_millis), format_cpu(c.cpu_millis)),
            format!(
                "{}/{}",
                format_bytes(a.memory_bytes),
                format_bytes(c.memory_bytes)
            ),
            format!("{}/{}", a.gpus, c.gpus),
            n.allocations.to_string(),
        ]);
    }
    println!("{t}");
    Ok(0)
}

fn print_replicas(replicas: &[Replica]) {
    let mut t = table(&["REPLICA", "ADDRESS", "ROLE", "MATCHED INDEX"]);
    for r in replicas {
        t.add_row(vec![
            r.id.to_string(),
            r.addr.clone(),
            format!(
                "{}{}",
                if r.leader {
                    "leader"
                } else if r.voter {
                    "voter"
                } else {
                    "learner"
                },
                ""
            ),
            r.matched_index
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{t}");
}

fn replicas_json(replicas: &[Replica]) -> serde_json::Value {
    json!(replicas
        .iter()
        .map(|r| json!({"id": r.id, "addr": r.addr, "voter": r.voter, "leader": r.leader, "matched_index": r.matched_index}))
        .collect::<Vec<_>>())
}

pub async fn cluster_status(addr: &str, fmt: Format) -> Result<i32> {
    let mut client = connect(addr).await?;
    let s = client
        .cluster_status(ClusterStatusRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    if fmt == Format::Json {
        print_json(&json!({
            "answered_by": s.answered_by, "leader_id": s.leader_id, "leader_addr": s.leader_addr,
            "term": s.term, "commit_index": s.commit_index, "applied_index": s.applied_index,
            "last_log_index": s.last_log_index, "snapshot_index": s.snapshot_index,
            "replicas": replicas_json(&s.replicas), "jobs": s.jobs, "pending": s.pending,
            "running": s.running, "nodes_ready": s.nodes_ready, "state_digest": s.state_digest,
        }));
        return Ok(0);
    }
    println!("answered by replica {}", s.answered_by);
    match s.leader_id {
        Some(l) => println!("leader       replica {l} at {}", s.leader_addr),
        None => println!("leader       none (election in progress, or the cluster is not initialized: coop cluster init)"),
    }
    println!("term         {}", s.term);
    println!(
        "log          last {} · committed {} · applied {} · snapshot {}",
        s.last_log_index, s.commit_index, s.applied_index, s.snapshot_index
    );
    println!(
        "jobs         {} ({} pending, {} running)",
        s.jobs, s.pending, s.running
    );
    println!("nodes ready  {}", s.nodes_ready);
    println!("state digest {}", s.state_digest);
    print_replicas(&s.replicas);
    Ok(0)
}

pub async fn cluster_init(addr: &str, fmt: Format) -> Result<i32> {
    let mut client = connect(addr).await?;
    let reply = client
        .init_cluster(InitClusterRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    match fmt {
        Format::Json => {
            print_json(&json!({"initialized": true, "replicas": replicas_json(&reply.replicas)}))
        }
        Format::Table => {
            println!("cluster initialized");
            print_replicas(&reply.replicas);
        }
    }
    Ok(0)
}

pub async fn add_replica(addr: &str, fmt: Format, id: u64, replica_addr: String) -> Result<i32> {
    let client = connect(addr).await?;
    let req = AddReplicaRequest {
        id,
        addr: replica_addr,
    };
    let reply = call(&client, req, |mut c, req| async move {
        c.add_replica(req).await
    })
    .await?;
    match fmt {
        Format::Json => print_json(&json!({"replicas": replicas_json(&reply.replicas)})),
        Format::Table => {
            println!("replica {id} added");
            print_replicas(&reply.replicas);
        }
    }
    Ok(0)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

pub async fn why(addr: &str, fmt: Format, job: u64) -> Result<i32> {
    let client = connect(addr).await?;
    let e = call(&client, (), |mut c, ()| async move {
        c.why(WhyRequest { job_id: job }).await
    })
    .await?;
    if fmt == Format::Json {
        print_json(&json!({
            "job_id": e.job_id, "member": e.member, "state": e.state, "reasons": e.reasons,
            "queue_position": e.queue_position, "queue_length": e.queue_length,
            "dominant_share": e.dominant_share, "entitlement": e.entitlement,
            "would_start": e.would_start, "policy_version": e.policy_version,
        }));
        return Ok(0);
    }
    if e.state != "pending" {
        println!(
            "job {} is {}, not waiting (coop status {} shows its history)",
            e.job_id, e.state, e.job_id
        );
        return Ok(0);
    }
    println!(
        "job {} of {} waits (policy v{})",
        e.job_id, e.member, e.policy_version
    );
    println!(
        "  queue      position {} of {} in {}'s queue",
        e.queue_position, e.queue_length, e.member
    );
    println!(
        "  share      {} has {} of the pool (dominant share); entitled to {}",
        e.member,
        pct(e.dominant_share),
        pct(e.entitlement)
    );
    println!("  because:");
    for r in &e.reasons {
        println!("    - {r}");
    }
    if !e.would_start.is_empty() {
        println!("  it starts when:");
        for w in &e.would_start {
            println!("    - {w}");
        }
    }
    Ok(0)
}

pub async fn share(addr: &str, fmt: Format) -> Result<i32> {
    let client = connect(addr).await?;
    let s = call(&client, (), |mut c, ()| async move {
        c.share(ShareRequest {}).await
    })
    .await?;
    if fmt == Format::Json {
        let members: Vec<_> = s
            .members
            .iter()
            .map(|m| {
                json!({
                    "member": m.member, "entitlement": m.entitlement, "floor_part": m.floor_part,
                    "contribution_part": m.contribution_part, "allocated": res_json(m.allocated.as_ref()),
                    "gpu_share": m.gpu_share, "cpu_share": m.cpu_share, "memory_share": m.memory_share,
                    "dominant_share": m.dominant_share, "usage_gpu_seconds": m.usage_gpu_seconds,
                    "usage_cpu_seconds": m.usage_cpu_seconds, "usage_memory_gib_seconds": m.usage_memory_gib_seconds,
                    "usage_share": m.usage_share, "contribution": m.contribution,
                    "pending": m.pending, "running": m.running,
                })
            })
            .collect();
        print_json(
            &json!({"pool": res_json(s.pool.as_ref()), "policy_version": s.policy_version, "members": members}),
        );
        return Ok(0);
    }
    println!(
        "pool: {} · policy v{}",
        res(s.pool.as_ref()),
        s.policy_version
    );
    let mut t = table(&[
        "MEMBER",
        "ENTITLED",
        "DOMINANT",
        "GPU",
        "CPU",
        "MEM",
        "USAGE (cpu·s / gpu·s)",
        "CONTRIBUTION",
        "RUNNING",
        "PENDING",
    ]);
    for m in &s.members {
        t.add_row(vec![
            m.member.clone(),
            pct(m.entitlement),
            pct(m.dominant_share),
            pct(m.gpu_share),
            pct(m.cpu_share),
            pct(m.memory_share),
            format!("{:.0} / {:.0}", m.usage_cpu_seconds, m.usage_gpu_seconds),
            format!("{:.1}", m.contribution),
            m.running.to_string(),
            m.pending.to_string(),
        ]);
    }
    println!("{t}");
    Ok(0)
}

pub async fn policy_show(addr: &str, fmt: Format) -> Result<i32> {
    let client = connect(addr).await?;
    let p = call(&client, (), |mut c, ()| async move {
        c.get_policy(GetPolicyRequest {}).await
    })
    .await?;
    match fmt {
        Format::Json => print_json(
            &json!({"version": p.version, "toml": p.toml, "genesis_adopted": p.genesis_adopted}),
        ),
        Format::Table => {
            println!(
                "# policy version {}{}",
                p.version,
                if p.genesis_adopted {
                    ""
                } else {
                    " (built-in defaults; genesis not adopted yet)"
                }
            );
            print!("{}", p.toml);
        }
    }
    Ok(0)
}

pub async fn evals(addr: &str, fmt: Format, dataset: Option<String>) -> Result<i32> {
    let client = connect(addr).await?;
    let req = ListEvaluationsRequest {
        dataset: dataset.unwrap_or_default(),
    };
    let boards = call(&client, req, |mut c, req| async move {
        c.list_evaluations(req).await
    })
    .await?
    .leaderboards;
    if fmt == Format::Json {
        let out: Vec<_> = boards
            .iter()
            .map(|b| {
                json!({
                    "dataset": b.dataset, "dataset_sha256": b.dataset_sha256, "task": b.task,
                    "entries": b.entries.iter().map(|e| json!({
                        "job_id": e.job_id, "member": e.member, "model": e.model, "model_sha256": e.model_sha256,
                        "metrics": e.metrics, "rows": e.rows,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        print_json(&json!(out));
        return Ok(0);
    }
    if boards.is_empty() {
        println!("no evaluations yet: coop submit --evaluate MODEL --dataset DATA.csv");
    }
    for b in &boards {
        println!(
            "dataset {} ({}, sha256 {}…)",
            b.dataset,
            b.task,
            &b.dataset_sha256[..b.dataset_sha256.len().min(12)]
        );
        let names: Vec<String> = {
            let mut n: Vec<String> = b
                .entries
                .iter()
                .flat_map(|e| e.metrics.keys().cloned())
                .collect();
            n.sort();
            n.dedup();
            n
        };
        let mut header = vec!["RANK", "MODEL", "JOB", "MEMBER", "ROWS"];
        let upper: Vec<String> = names.iter().map(|n| n.to_uppercase()).collect();
        header.extend(upper.iter().map(String::as_str));
        let mut t = table(&header);
        for (i, e) in b.entries.iter().enumerate() {
            let mut row = vec![
                (i + 1).to_string(),
                e.model.clone(),
                e.job_id.to_string(),
                e.member.clone(),
                e.rows.to_string(),
            ];
            row.extend(names.iter().map(|n| {
                e.metrics
                    .get(n)
                    .map(|v| format!("{v:.4}"))
                    .unwrap_or_default()
            }));
            t.add_row(row);
        }
        println!("{t}");
    }
    Ok(0)
}

/// A model job's result, for `coop status`.
fn print_result(r: &serde_json::Value) {
    match r["kind"].as_str() {
        Some("inference") => {
            let rows = r["rows"].as_u64().unwrap_or(0);
            let secs = r["seconds"].as_f64().unwrap_or(0.0);
            let rate = if secs > 0.0 { rows as f64 / secs } else { 0.0 };
            println!(
                "  result     {rows} rows in {secs:.3} s ({rate:.0} rows/s) -> {}",
                r["output"].as_str().unwrap_or("")
            );
            println!(
                "             output sha256 {}",
                r["output_sha256"].as_str().unwrap_or("")
            );
        }
        Some("evaluation") => {
            println!(
                "  result     {} rows of {} ({})",
                r["rows"].as_u64().unwrap_or(0),
                r["dataset"].as_str().unwrap_or(""),
                r["task"].as_str().unwrap_or("")
            );
            let scores = r["scores"].as_array().cloned().unwrap_or_default();
            for s in scores
                .iter()
                .chain(r["ensemble"].as_object().map(|_| &r["ensemble"]))
            {
                let metrics: Vec<String> = s["metrics"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k} {:.4}", v.as_f64().unwrap_or(f64::NAN)))
                            .collect()
                    })
                    .unwrap_or_default();
                println!(
                    "             {}: {}",
                    s["model"].as_str().unwrap_or(""),
                    metrics.join(", ")
                );
            }
        }
        _ => {}
    }
}
