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
