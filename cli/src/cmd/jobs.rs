//! Jobs: submit (commands and model jobs), status, list, cancel, logs.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Result};
use coop_core::JobState as CoreJobState;
use coop_proto::api::*;
use serde_json::json;

use super::submit::{build_spec, SubmitArgs};
use super::{new_request_id, now_ms};
use crate::client::{call, connect, Client};
use crate::identity::{Settings, Signer};
use crate::output::{
    decision_kind, job_json, job_state, ms_ago, print_json, res, rule_name, table, Format,
};
use coop_core::resources::format_bytes;

/// Signs and sends one submit; a retry sends the same signed request.
pub async fn submit_one(
    client: &Client,
    signer: &Signer,
    request_id: &str,
    spec: &JobSpec,
) -> Result<SubmitResponse> {
    let req = signer.submit(client, request_id, spec.clone()).await?;
    call(client, req, |mut c, req| async move { c.submit(req).await }).await
}

/// A job; `brief` leaves out the reasons, history and decisions (for
/// polling: the reasons run the allocator's pass on the leader).
pub async fn get_job(client: &Client, job: u64, brief: bool) -> Result<Job> {
    call(client, (), |mut c, ()| async move {
        c.get_job(GetJobRequest { job_id: job, brief }).await
    })
    .await
}

pub async fn submit(settings: &Settings, fmt: Format, args: SubmitArgs) -> Result<i32> {
    let spec = build_spec(&args)?;
    let signer = settings.signer(args.member.clone())?;
    let request_id = args.request_id.clone().unwrap_or_else(new_request_id);
    let client = connect(&settings.addr).await?;
    let reply = submit_one(&client, &signer, &request_id, &spec).await?;
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
                match spec.array.as_ref() {
                    Some(r) => {
                        let (what, indices) = if args.shards.is_some() {
                            ("sharded evaluation", "shards")
                        } else {
                            ("array", "indices")
                        };
                        let last = reply.job_id + u64::from(r.last - r.first);
                        println!(
                            "submitted {what} {}: jobs {}-{last} for {indices} {}-{}{note}",
                            reply.job_id, reply.job_id, r.first, r.last
                        )
                    }
                    None => println!("submitted job {}{note}", reply.job_id),
                }
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
    // The reasons run the allocator's pass on the leader: the spinner asks
    // for them every 20th poll (2 s), not every 100 ms.
    let mut reason = String::new();
    let mut poll = 0u64;
    loop {
        let brief = !(show && poll.is_multiple_of(20));
        poll += 1;
        let job = get_job(client, job_id, brief).await?;
        let state = job_state(job.state);
        if let Some(r) = job.pending_reasons.first() {
            reason = r.text.clone();
        }
        let detail = match state {
            "pending" => reason.clone(),
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
    let j = get_job(&client, job, false).await?;
    if fmt == Format::Json {
        print_json(&job_json(&j));
        return Ok(0);
    }
    let spec = j.spec.clone().unwrap_or_default();
    let now = now_ms();
    let sharded = spec
        .evaluation
        .as_ref()
        .and_then(|e| e.options.as_ref())
        .is_some_and(|o| o.shards > 0);
    if let Some(a) = &j.array {
        let last = a.first + u64::from(a.total.saturating_sub(1));
        let (what, index) = if sharded {
            ("sharded evaluation", "shard")
        } else {
            ("array", "index")
        };
        println!(
            "{what} {} (jobs {}-{last}): {index} {} of {}; {} pending, {} running, {} succeeded, {} failed, {} cancelled",
            a.first, a.first, a.index, a.total, a.pending, a.running, a.succeeded, a.failed, a.cancelled
        );
        if let Some(merged) = a
            .merged
            .as_ref()
            .and_then(|r| coop_core::JobResult::try_from(r).ok())
        {
            println!("all {} shards merged:", a.total);
            super::models::print_result(&merged);
        } else if !a.merge_error.is_empty() {
            println!("the shards cannot be merged: {}", a.merge_error);
        }
    }
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
        if j.started_at_ms > 0 {
            let ran = j.finished_at_ms.saturating_sub(j.started_at_ms);
            println!("  ran for    {:.3} s", ran as f64 / 1000.0);
        }
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
            println!("    - {}", r.text);
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

pub async fn cancel(
    settings: &Settings,
    fmt: Format,
    job: u64,
    member: Option<String>,
    array: bool,
) -> Result<i32> {
    let signer = settings.signer(member)?;
    let client = connect(&settings.addr).await?;
    let req = signer
        .cancel(&client, &new_request_id(), job, array)
        .await?;
    let reply = call(
        &client,
        req,
        |mut c, req| async move { c.cancel(req).await },
    )
    .await?;
    let what = if array {
        format!("{} unfinished jobs of job {job}'s array", reply.cancelled)
    } else {
        format!("job {job}")
    };
    match fmt {
        Format::Json => print_json(
            &json!({"job_id": job, "cancelled": reply.cancelled, "stopping": reply.stopping}),
        ),
        Format::Table if reply.stopping => {
            println!("cancelled {what}; running processes are being stopped")
        }
        Format::Table => println!("cancelled {what}"),
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

/// The SHA-256s a job's result records for its output files, by path.
fn recorded_digests(job: &Job) -> std::collections::BTreeMap<String, String> {
    let outputs = match job.result.as_ref().and_then(|r| r.kind.as_ref()) {
        Some(job_result::Kind::Inference(i)) => i.outputs.as_slice(),
        _ => &[],
    };
    outputs
        .iter()
        .map(|o| (o.path.clone(), o.sha256.clone()))
        .collect()
}

/// Downloads one file of `job` into `to` (`-`: standard output) in
/// chunks; returns its SHA-256.
async fn fetch_file(client: &Client, job: u64, path: &str, to: &std::path::Path) -> Result<String> {
    use sha2::Digest;
    let mut out: Box<dyn Write> = if to == std::path::Path::new("-") {
        Box::new(std::io::stdout())
    } else {
        if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Box::new(std::io::BufWriter::new(std::fs::File::create(to)?))
    };
    let mut hash = sha2::Sha256::new();
    let mut offset = 0;
    loop {
        let req = FetchRequest {
            job_id: job,
            path: path.to_string(),
            offset,
            max_bytes: 1024 * 1024,
        };
        let reply = call(client, req, |mut c, req| async move { c.fetch(req).await }).await?;
        out.write_all(&reply.data)?;
        hash.update(&reply.data);
        offset = reply.next_offset;
        if reply.data.is_empty() || offset >= reply.size {
            break;
        }
    }
    out.flush()?;
    Ok(hex::encode(hash.finalize()))
}

/// `coop fetch`: the files an ended job left on its worker, through the
/// scheduler, for the job's member only. A file whose SHA-256 the job's
/// result recorded is checked against it.
pub async fn fetch(
    addr: &str,
    job: u64,
    path: Option<String>,
    output: Option<std::path::PathBuf>,
    list: bool,
) -> Result<i32> {
    let client = connect(addr).await?;
    let recorded = recorded_digests(&get_job(&client, job, true).await?);
    // A file that does not match its recorded digest is removed, not kept.
    let check = |path: &str, to: &std::path::Path, digest: &str| -> Result<&'static str> {
        match recorded.get(path) {
            Some(want) if want != digest => {
                if to != std::path::Path::new("-") {
                    let _ = std::fs::remove_file(to);
                }
                bail!(
                    "{path}: SHA-256 {digest} differs from the {want} the job's result recorded: the file changed since the job wrote it (not kept)"
                )
            }
            Some(_) => Ok(" (SHA-256 matches the job's result)"),
            None => Ok(""),
        }
    };
    if let Some(path) = path {
        let name = path.rsplit('/').next().unwrap_or(&path).to_string();
        let to = output.unwrap_or_else(|| name.into());
        let digest = fetch_file(&client, job, &path, &to).await?;
        let note = check(&path, &to, &digest)?;
        if to != std::path::Path::new("-") {
            eprintln!("{path} -> {}{note}", to.display());
        }
        return Ok(0);
    }
    let listing = call(&client, job, |mut c, job| async move {
        c.fetch(FetchRequest {
            job_id: job,
            ..Default::default()
        })
        .await
    })
    .await?;
    if list {
        let mut t = table(&["FILE", "SIZE"]);
        for f in &listing.files {
            t.add_row(vec![f.path.clone(), format_bytes(f.size)]);
        }
        println!("{t}");
        println!("on {} (allocation {})", listing.node, listing.alloc_id);
        return Ok(0);
    }
    let dir = output.unwrap_or_else(|| format!("job-{job}").into());
    for f in &listing.files {
        // The listing comes from a worker: a name that could land outside
        // the directory is refused, not written.
        if f.path.is_empty()
            || f.path.starts_with('/')
            || f.path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!(
                "the worker listed {:?}, which is not a path inside the job's work dir",
                f.path
            );
        }
        let to = dir.join(&f.path);
        let digest = fetch_file(&client, job, &f.path, &to).await?;
        let note = check(&f.path, &to, &digest)?;
        println!("{} ({}){note}", to.display(), format_bytes(f.size));
    }
    println!(
        "{} files of job {job} from {} in {}",
        listing.files.len(),
        listing.node,
        dir.display()
    );
    Ok(0)
}
