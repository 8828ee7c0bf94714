//! `coop audit`: anyone can recompute every decision. `export` writes a
//! replica's journal to a file; `verify` replays a journal (streamed from
//! the cluster, or a file, offline) from genesis through coop-core, checks
//! every signature and recomputes every placement, preemption and refusal,
//! and compares the root and the state digest with what the cluster claims.
//!
//! ```text
//!  file = one JSON line {"format":"coop-journal/1", "size", "root", "state_digest", ...}
//!         then per leaf: u64be index || u32be length || leaf bytes
//! ```

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use coop_core::decision_log::Replay;
use coop_proto::api::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client::{call, connect, explain, Client};
use crate::output::{print_json, Format};

const FORMAT: &str = "coop-journal/1";

/// What the exporting replica claimed when the journal was written.
#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    cluster_id: String,
    answered_by: u64,
    size: u64,
    root: String,
    state_digest: String,
}

async fn status(client: &Client) -> Result<ClusterStatusResponse> {
    call(client, (), |mut c, ()| async move {
        c.cluster_status(ClusterStatusRequest {}).await
    })
    .await
}

/// Streams leaves [0, size) from the replica, calling `each` in order.
async fn stream(
    client: &Client,
    size: u64,
    mut each: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut s = client
        .clone()
        .export_journal(ExportJournalRequest { from: 0, to: size })
        .await
        .map_err(explain)?
        .into_inner();
    while let Some(chunk) = s.message().await.map_err(explain)? {
        for e in chunk.entries {
            each(e.index, &e.leaf)?;
        }
    }
    Ok(())
}

fn bar(size: u64) -> indicatif::ProgressBar {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let b = indicatif::ProgressBar::new(size);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} entries {per_sec} {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    }
}

pub async fn export(addr: &str, fmt: Format, file: &Path) -> Result<i32> {
    let client = connect(addr).await?;
    let s = status(&client).await?;
    let out = std::fs::File::create(file).with_context(|| format!("create {}", file.display()))?;
    let mut out = BufWriter::new(out);
    let header = Header {
        format: FORMAT.into(),
        cluster_id: s.cluster_id.clone(),
        answered_by: s.answered_by,
        size: s.log_size,
        root: s.log_root.clone(),
        state_digest: s.state_digest.clone(),
    };
    serde_json::to_writer(&mut out, &header)?;
    out.write_all(b"\n")?;
    let progress = bar(s.log_size);
    let mut written = 0u64;
    stream(&client, s.log_size, |index, leaf| {
        out.write_all(&index.to_be_bytes())?;
        out.write_all(&(leaf.len() as u32).to_be_bytes())?;
        out.write_all(leaf)?;
        written += 1;
        progress.inc(1);
        Ok(())
    })
    .await?;
    progress.finish_and_clear();
    out.flush()?;
    match fmt {
        Format::Json => print_json(
            &json!({"file": file.display().to_string(), "entries": written,
            "root": s.log_root, "state_digest": s.state_digest}),
        ),
        Format::Table => println!(
            "wrote {written} entries of replica {}'s journal to {} (root {})",
            s.answered_by,
            file.display(),
            s.log_root
        ),
    }
    Ok(0)
}

/// What a verification found.
struct Verdict {
    entries: u64,
    decisions: u64,
    root: String,
    digest: String,
}

fn finish(replay: &Replay) -> Verdict {
    Verdict {
        entries: replay.state.log_size(),
        decisions: replay.decisions,
        root: hex::encode(replay.root()),
        digest: replay.state.digest(),
    }
}

pub async fn verify(addr: &str, fmt: Format, journal: Option<&Path>) -> Result<i32> {
    let started = std::time::Instant::now();
    let mut replay = Replay::new();
    let (claimed_root, claimed_digest, claimed_size, source) = match journal {
        Some(path) => {
            let file =
                std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
            let mut input = BufReader::new(file);
            let mut line = String::new();
            input.read_line(&mut line)?;
            let header: Header = serde_json::from_str(line.trim())
                .map_err(|e| anyhow!("{} is not a coop journal: {e}", path.display()))?;
            if header.format != FORMAT {
                bail!(
                    "{}: format {:?}, not {FORMAT}",
                    path.display(),
                    header.format
                );
            }
            let progress = bar(header.size);
            loop {
                let mut head = [0u8; 12];
                match input.read_exact(&mut head) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e.into()),
                }
                let index = u64::from_be_bytes(head[..8].try_into()?);
                let len = u32::from_be_bytes(head[8..].try_into()?) as usize;
                if len > 64 << 20 {
                    bail!("entry {index}: a leaf of {len} bytes is not plausible: the file is corrupt");
                }
                let mut leaf = vec![0u8; len];
                input
                    .read_exact(&mut leaf)
                    .map_err(|_| anyhow!("entry {index}: the file ends inside it"))?;
                if let Err(e) = replay.step(index, &leaf) {
                    progress.finish_and_clear();
                    return report_failure(fmt, &e.to_string());
                }
                progress.inc(1);
            }
            progress.finish_and_clear();
            (
                header.root,
                header.state_digest,
                header.size,
                format!(
                    "{} (exported from replica {})",
                    path.display(),
                    header.answered_by
                ),
            )
        }
        None => {
            let client = connect(addr).await?;
            let s = status(&client).await?;
            let progress = bar(s.log_size);
            let mut failure = None;
            stream(&client, s.log_size, |index, leaf| {
                if failure.is_none() {
                    if let Err(e) = replay.step(index, leaf) {
                        failure = Some(e.to_string());
                    }
                }
                progress.inc(1);
                Ok(())
            })
            .await?;
            progress.finish_and_clear();
            if let Some(e) = failure {
                return report_failure(fmt, &e);
            }
            (
                s.log_root,
                s.state_digest,
                s.log_size,
                format!("replica {} at {addr}", s.answered_by),
            )
        }
    };
    let v = finish(&replay);
    let mut problems = Vec::new();
    if v.entries != claimed_size {
        problems.push(format!(
            "the journal has {} entries from genesis, the cluster claims {claimed_size} (it may have joined from a snapshot: export from another replica)",
            v.entries
        ));
    }
    if v.root != claimed_root {
        problems.push(format!(
            "the replayed root {} is not the claimed root {claimed_root}",
            v.root
        ));
    }
    if v.digest != claimed_digest {
        problems.push(format!(
            "the replayed state digest {} is not the claimed {claimed_digest}",
            v.digest
        ));
    }
    let ok = problems.is_empty();
    match fmt {
        Format::Json => print_json(
            &json!({"ok": ok, "entries": v.entries, "decisions": v.decisions,
            "root": v.root, "state_digest": v.digest, "source": source, "problems": problems,
            "seconds": started.elapsed().as_secs_f64()}),
        ),
        Format::Table => {
            if ok {
                println!(
                    "verified {} entries from {source}: every signature checked, {} placements, preemptions and losses recomputed, in {:.1} s",
                    v.entries,
                    v.decisions,
                    started.elapsed().as_secs_f64()
                );
                println!("root {} and state digest {} match", v.root, v.digest);
            } else {
                for p in &problems {
                    println!("FAILED: {p}");
                }
            }
        }
    }
    Ok(if ok { 0 } else { 1 })
}

fn report_failure(fmt: Format, why: &str) -> Result<i32> {
    match fmt {
        Format::Json => print_json(&json!({"ok": false, "problems": [why]})),
        Format::Table => println!("FAILED: {why}"),
    }
    Ok(1)
}

/// What this CLI last verified of a cluster's log.
#[derive(Serialize, Deserialize)]
struct Seen {
    size: u64,
    root: String,
}

fn seen_path(cluster_id: &str) -> std::path::PathBuf {
    crate::identity::config_dir()
        .join("checkpoints")
        .join(format!("{cluster_id}.json"))
}

fn hash(bytes: &[u8]) -> Result<coop_core::merkle::Hash> {
    bytes
        .try_into()
        .map_err(|_| anyhow!("a hash is 32 bytes, got {}", bytes.len()))
}

/// `coop audit checkpoint`: the log's head as every replica reports it;
/// replicas at one size must agree on the root, and the head must extend
/// the one this CLI verified last time (an RFC 9162 consistency proof), so
/// a rewritten history is noticed by any member who looked before.
pub async fn checkpoint(addr: &str, fmt: Format) -> Result<i32> {
    let client = connect(addr).await?;
    let head = status(&client).await?;
    let mut heads = Vec::new();
    for r in &head.replicas {
        let s = if r.id == head.answered_by {
            Some(head.clone())
        } else {
            match connect(&r.addr).await {
                Ok(c) => status(&c).await.ok(),
                Err(_) => None,
            }
        };
        heads.push((r.id, r.addr.clone(), s));
    }
    let mut problems = Vec::new();
    let mut by_size: std::collections::BTreeMap<u64, (u64, String)> = Default::default();
    for (id, _, s) in &heads {
        let Some(s) = s else { continue };
        if let Some((other, root)) = by_size.get(&s.log_size) {
            if *root != s.log_root {
                let evidence = crate::identity::config_dir()
                    .join("evidence")
                    .join(format!("{}-size-{}.json", head.cluster_id, s.log_size));
                if let Some(dir) = evidence.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(
                    &evidence,
                    serde_json::to_vec_pretty(&json!({"size": s.log_size,
                        "roots": [{"replica": other, "root": root}, {"replica": id, "root": s.log_root}]}))?,
                )?;
                problems.push(format!(
                    "replicas {other} and {id} report different roots for size {}: a forked history (evidence kept in {})",
                    s.log_size,
                    evidence.display()
                ));
            }
        } else {
            by_size.insert(s.log_size, (*id, s.log_root.clone()));
        }
    }
    let path = seen_path(&head.cluster_id);
    let seen: Option<Seen> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut consistent = None;
    if let Some(seen) = &seen {
        if seen.size > head.log_size {
            problems.push(format!(
                "this CLI verified {} entries before, but replica {} now reports {}: its history was cut short, or it lags",
                seen.size, head.answered_by, head.log_size
            ));
        } else {
            let proof = call(
                &client,
                (seen.size, head.log_size),
                |mut c, (from_size, to_size)| async move {
                    c.consistency_proof(ConsistencyProofRequest { from_size, to_size })
                        .await
                },
            )
            .await?;
            let old = hash(&hex::decode(&seen.root)?)?;
            let new = hash(&hex::decode(&head.log_root)?)?;
            let steps: Vec<coop_core::merkle::Hash> =
                proof.proof.iter().map(|p| hash(p)).collect::<Result<_>>()?;
            let ok =
                coop_core::merkle::verify_consistency(seen.size, head.log_size, &old, &new, &steps);
            if !ok {
                problems.push(format!(
                    "HISTORY REWRITTEN: the log of {} entries this CLI verified (root {}) is not a prefix of the one replica {} reports now",
                    seen.size, seen.root, head.answered_by
                ));
            }
            consistent = Some(ok);
        }
    }
    if problems.is_empty() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            &path,
            serde_json::to_vec(&Seen {
                size: head.log_size,
                root: head.log_root.clone(),
            })?,
        )?;
    }
    match fmt {
        Format::Json => print_json(&json!({
            "cluster_id": head.cluster_id,
            "replicas": heads.iter().map(|(id, a, s)| json!({"id": id, "addr": a,
                "size": s.as_ref().map(|s| s.log_size), "root": s.as_ref().map(|s| s.log_root.clone())})).collect::<Vec<_>>(),
            "previous": seen.as_ref().map(|s| json!({"size": s.size, "root": s.root})),
            "consistent": consistent, "problems": problems})),
        Format::Table => {
            for (id, a, s) in &heads {
                match s {
                    Some(s) => println!(
                        "replica {id} ({a}): {} entries, root {}",
                        s.log_size, s.log_root
                    ),
                    None => println!("replica {id} ({a}): did not answer"),
                }
            }
            match (&seen, consistent) {
                (Some(s), Some(true)) => println!(
                    "consistent with the {} entries this CLI verified before (RFC 9162 consistency proof checked)",
                    s.size
                ),
                (None, _) => println!("first checkpoint this CLI has seen of {}: remembered", head.cluster_id),
                _ => {}
            }
            for p in &problems {
                println!("FAILED: {p}");
            }
        }
    }
    Ok(if problems.is_empty() { 0 } else { 1 })
}

/// `coop audit prove JOB`: the leaves that record the job's decisions, each
/// with its inclusion proof checked against the replica's tree head.
pub async fn prove(addr: &str, fmt: Format, job: u64) -> Result<i32> {
    let client = connect(addr).await?;
    let head = status(&client).await?;
    let reply = call(
        &client,
        (job, head.log_size),
        |mut c, (job_id, tree_size)| async move {
            c.prove_job(ProveJobRequest { job_id, tree_size }).await
        },
    )
    .await?;
    let root = hash(&hex::decode(&head.log_root)?)?;
    let mut rows = Vec::new();
    let mut all = true;
    for l in &reply.leaves {
        let steps: Vec<coop_core::merkle::Hash> =
            l.proof.iter().map(|p| hash(p)).collect::<Result<_>>()?;
        let ok = coop_core::merkle::verify_inclusion(
            &coop_core::merkle::leaf_hash(&l.leaf),
            l.index,
            head.log_size,
            &steps,
            &root,
        );
        all &= ok;
        let what = coop_core::decision_log::parse_leaf(&l.leaf)
            .ok()
            .and_then(|p| serde_json::from_slice::<coop_core::Command>(p.command).ok())
            .map(|c| c.name())
            .unwrap_or("unreadable");
        rows.push((l.index, what, ok));
    }
    match fmt {
        Format::Json => print_json(
            &json!({"job": job, "tree_size": head.log_size, "root": head.log_root,
            "leaves": rows.iter().map(|(i, w, ok)| json!({"index": i, "command": w, "included": ok})).collect::<Vec<_>>()}),
        ),
        Format::Table => {
            println!(
                "job {job}: {} decisions in the log of {} entries (root {})",
                rows.len(),
                head.log_size,
                head.log_root
            );
            for (i, w, ok) in &rows {
                println!(
                    "  entry {i:>8}  {w:<15} {}",
                    if *ok {
                        "included (proof checked)"
                    } else {
                        "PROOF FAILED"
                    }
                );
            }
        }
    }
    Ok(if all { 0 } else { 1 })
}
