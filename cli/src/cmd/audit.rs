//! `coop audit`: anyone can recompute every decision. `export` writes a
//! replica's journal up to the latest valid checkpoint to a file; `verify`
//! replays a journal (streamed from the cluster, or a file, offline) from
//! genesis (or from a state an earlier verification saved) through
//! coop-core, checks every signature and recomputes every placement,
//! preemption and refusal, and compares the root and the state digest with
//! a checkpoint a majority of the replicas signed.
//!
//! ```text
//!  file = one JSON line {"format":"coop-journal/1", "size", "root", "state_digest",
//!                        "checkpoint": {head, signatures, voters, ca_pem}, ...}
//!         then per leaf: u64be index || u32be length || leaf bytes
//! ```

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use coop_core::checkpoint::{Conflict, Head, Signed};
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
    /// The checkpoint the journal ends at, with its signatures.
    #[serde(default)]
    checkpoint: Option<Valid>,
}

/// A checkpoint a majority of the replicas signed, with what vouches for it.
#[derive(Clone, Serialize, Deserialize)]
struct Valid {
    head: Head,
    /// One signature per signer, each checked.
    signatures: Vec<Signed>,
    /// How many replicas voted when it was collected.
    voters: u64,
    /// The cluster CA whose certificates vouched for the signers' keys
    /// (empty on a cluster without TLS, where nothing vouches for them).
    #[serde(default)]
    ca_pem: String,
}

impl Valid {
    fn signers(&self) -> Vec<u64> {
        let mut who: Vec<u64> = self.signatures.iter().map(|s| s.replica).collect();
        who.sort_unstable();
        who.dedup();
        who
    }

    /// Checks it again from its parts (a file's checkpoint is only a
    /// claim until then): every signature over the head, vouched for by
    /// `ca`, from a majority of distinct keys.
    fn check(&self, ca: Option<&str>) -> Result<(), String> {
        let mut ok = Vec::new();
        for s in &self.signatures {
            if s.head != self.head {
                return Err(format!(
                    "replica {} did not sign this head (its signature is over another)",
                    s.replica
                ));
            }
            coop_proto::tls::check_checkpoint(s, &self.head.cluster_id, ca)?;
            ok.push(s.clone());
        }
        // A file cannot lower the bar below the signers it shows.
        let voters = (self.voters as usize).max(ok.len());
        match coop_core::checkpoint::latest_valid(&ok, voters) {
            Some((head, _)) if head == self.head => Ok(()),
            _ => Err(format!(
                "the checkpoint at {} entries is signed by {} of {} replicas: not a majority",
                self.head.size,
                ok.len(),
                voters
            )),
        }
    }
}

/// What the replicas' signatures say, checked by this CLI.
struct Gathered {
    valid: Option<Valid>,
    /// Validly signed heads of one size that differ.
    conflicts: Vec<Conflict>,
    /// Signatures that did not check, and why.
    refused: Vec<String>,
    voters: u64,
}

/// Collects the signed checkpoints of every replica listed in `status`
/// (the one asked first) and checks each signature against `ca`.
async fn gather(client: &Client, s: &ClusterStatusResponse, ca: Option<&str>) -> Result<Gathered> {
    let mut replies = vec![
        call(client, (), |mut c, ()| async move {
            c.checkpoints(CheckpointsRequest {}).await
        })
        .await?,
    ];
    for r in &s.replicas {
        if r.id == s.answered_by {
            continue;
        }
        if let Ok(c) = connect(&r.addr).await {
            if let Ok(reply) = call(&c, (), |mut c, ()| async move {
                c.checkpoints(CheckpointsRequest {}).await
            })
            .await
            {
                replies.push(reply);
            }
        }
    }
    let voters = replies.iter().map(|r| r.voters).max().unwrap_or(1);
    let mut signed = Vec::new();
    let mut refused = Vec::new();
    let mut reported = Vec::new();
    for reply in replies {
        for w in reply.signed {
            match Signed::try_from(w) {
                Ok(x) => match coop_proto::tls::check_checkpoint(&x, &s.cluster_id, ca) {
                    Ok(()) => signed.push(x),
                    Err(e) => refused.push(e),
                },
                Err(e) => refused.push(format!("a malformed signature: {e}")),
            }
        }
        for c in reply.conflicts {
            let (Some(a), Some(b)) = (c.a, c.b) else {
                continue;
            };
            if let (Ok(a), Ok(b)) = (Signed::try_from(a), Signed::try_from(b)) {
                reported.push(a);
                reported.push(b);
            }
        }
    }
    let mut all = signed.clone();
    all.extend(
        reported
            .into_iter()
            .filter(|x| coop_proto::tls::check_checkpoint(x, &s.cluster_id, ca).is_ok()),
    );
    let conflicts = coop_core::checkpoint::conflicts(&all);
    let valid = coop_core::checkpoint::latest_valid(&signed, voters as usize).map(|(head, _)| {
        let mut signatures: Vec<Signed> = Vec::new();
        for x in signed.iter().filter(|x| x.head == head) {
            if !signatures.iter().any(|y| y.key == x.key) {
                signatures.push(x.clone());
            }
        }
        Valid {
            head,
            signatures,
            voters,
            ca_pem: ca.unwrap_or_default().to_string(),
        }
    });
    Ok(Gathered {
        valid,
        conflicts,
        refused,
        voters,
    })
}

/// A new cluster has no checkpoint until the replicas sign their first (at
/// the leader's checkpoint interval): wait this long for one.
const FIRST_CHECKPOINT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The latest valid checkpoint of the cluster at `addr`, or an error that
/// says why there is none.
async fn valid_checkpoint(addr: &str, client: &Client, s: &ClusterStatusResponse) -> Result<Valid> {
    let ca = crate::client::trusted_ca(addr).await?;
    let deadline = std::time::Instant::now() + FIRST_CHECKPOINT_WAIT;
    loop {
        let g = gather(client, s, ca.as_deref()).await?;
        if let Some(v) = g.valid {
            return Ok(v);
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "no checkpoint is signed by a majority of the {} replicas (they sign one at the leader's checkpoint interval while the log grows){}",
                g.voters,
                g.refused.first().map(|r| format!("; refused: {r}")).unwrap_or_default()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn status(client: &Client) -> Result<ClusterStatusResponse> {
    call(client, (), |mut c, ()| async move {
        c.cluster_status(ClusterStatusRequest {}).await
    })
    .await
}

/// Streams leaves [from, to) from the replica, calling `each` in order.
async fn stream(
    client: &Client,
    from: u64,
    to: u64,
    mut each: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut s = client
        .clone()
        .export_journal(ExportJournalRequest { from, to })
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
    // The journal ends where a checkpoint vouches for it, so the file
    // carries what it must match: the signed root and state digest.
    let valid = valid_checkpoint(addr, &client, &s).await?;
    let size = valid.head.size;
    let out = std::fs::File::create(file).with_context(|| format!("create {}", file.display()))?;
    let mut out = BufWriter::new(out);
    let header = Header {
        format: FORMAT.into(),
        cluster_id: s.cluster_id.clone(),
        answered_by: s.answered_by,
        size,
        root: valid.head.root.clone(),
        state_digest: valid.head.state_digest.clone(),
        checkpoint: Some(valid.clone()),
    };
    serde_json::to_writer(&mut out, &header)?;
    out.write_all(b"\n")?;
    let progress = bar(size);
    let mut written = 0u64;
    stream(&client, 0, size, |index, leaf| {
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
            "root": valid.head.root, "state_digest": valid.head.state_digest,
            "signed_by": valid.signers()}),
        ),
        Format::Table => println!(
            "wrote {written} entries of replica {}'s journal to {}, up to the checkpoint signed by replicas {:?} (root {})",
            s.answered_by,
            file.display(),
            valid.signers(),
            valid.head.root
        ),
    }
    Ok(0)
}

/// Where a verification starts and what it keeps.
#[derive(Default)]
pub struct VerifyOptions<'a> {
    /// Replay this exported journal instead of streaming the replica's.
    pub journal: Option<&'a Path>,
    /// Start from a state an earlier verification saved (`save_state`)
    /// instead of from genesis.
    pub from_state: Option<&'a Path>,
    /// After a successful verification, save the state reached, with the
    /// checkpoint it matched, to start the next one from.
    pub save_state: Option<&'a Path>,
}

const STATE_FORMAT: &str = "coop-audit-state/1";

/// The first line of a saved state; the state's snapshot bytes follow.
#[derive(Serialize, Deserialize)]
struct SavedHeader {
    format: String,
    checkpoint: Valid,
}

/// A state saved by an earlier verification, checked: its checkpoint is
/// signed by a majority, and the state's size, root and digest are the
/// checkpoint's.
fn load_state(path: &Path, ca: Option<&str>) -> Result<(Replay, Valid)> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let split = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| anyhow!("{} is not a saved audit state", path.display()))?;
    let header: SavedHeader = serde_json::from_slice(&bytes[..split])
        .map_err(|e| anyhow!("{} is not a saved audit state: {e}", path.display()))?;
    if header.format != STATE_FORMAT {
        bail!(
            "{}: format {:?}, not {STATE_FORMAT}",
            path.display(),
            header.format
        );
    }
    let valid = header.checkpoint;
    let ca = ca.or((!valid.ca_pem.is_empty()).then_some(valid.ca_pem.as_str()));
    valid
        .check(ca)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let state = coop_core::ClusterState::from_snapshot_bytes(&bytes[split + 1..])
        .map_err(|e| anyhow!("{}: the state does not parse: {e}", path.display()))?;
    let head = &valid.head;
    if state.log_size() != head.size
        || hex::encode(state.log_root()) != head.root
        || state.digest() != head.state_digest
    {
        bail!(
            "{}: the saved state is not the one the checkpoint at {} entries covers (its digest {})",
            path.display(),
            head.size,
            state.digest()
        );
    }
    Ok((
        Replay {
            state,
            decisions: 0,
        },
        valid,
    ))
}

fn save_state(path: &Path, replay: &Replay, valid: &Valid) -> Result<()> {
    let mut out = serde_json::to_vec(&SavedHeader {
        format: STATE_FORMAT.into(),
        checkpoint: valid.clone(),
    })?;
    out.push(b'\n');
    out.extend_from_slice(&replay.state.to_snapshot_bytes());
    std::fs::write(path, out).with_context(|| format!("write {}", path.display()))
}

pub async fn verify(addr: &str, fmt: Format, opts: VerifyOptions<'_>) -> Result<i32> {
    let started = std::time::Instant::now();
    // Offline, the CA is the one given (--ca, COOP_CA, a context), else
    // the one the file names, whose fingerprint is printed to compare.
    let offline_ca = crate::client::given_ca()?;
    let (mut replay, from) = match opts.from_state {
        Some(path) => {
            let online = if opts.journal.is_none() {
                crate::client::trusted_ca(addr).await?
            } else {
                offline_ca.clone()
            };
            let (replay, valid) = load_state(path, online.as_deref())?;
            (replay, Some(valid.head.size))
        }
        None => (Replay::new(), None),
    };
    let start = from.unwrap_or(0);
    let step = |replay: &mut Replay, index: u64, leaf: &[u8]| -> Result<(), String> {
        if index < start {
            return Ok(());
        }
        replay.step(index, leaf).map_err(|e| e.to_string())
    };
    let (valid, source, vouched_by) = match opts.journal {
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
            let Some(valid) = header.checkpoint else {
                bail!(
                    "{}: the journal names no checkpoint to check it against",
                    path.display()
                );
            };
            let ca = offline_ca
                .clone()
                .or((!valid.ca_pem.is_empty()).then(|| valid.ca_pem.clone()));
            if let Err(e) = valid.check(ca.as_deref()) {
                return report_problems(fmt, &[format!("the journal's checkpoint: {e}")]);
            }
            let vouched_by = match (&offline_ca, &ca) {
                (Some(pem), _) => format!(
                    "the cluster CA you gave ({})",
                    coop_proto::tls::fingerprint(pem)?
                ),
                (None, Some(pem)) => format!(
                    "the CA in the file ({}): compare it with your cluster's",
                    coop_proto::tls::fingerprint(pem)?
                ),
                (None, None) => "no CA (a cluster without TLS)".to_string(),
            };
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
                if let Err(e) = step(&mut replay, index, &leaf) {
                    progress.finish_and_clear();
                    return report_problems(fmt, &[e]);
                }
                progress.inc(1);
            }
            progress.finish_and_clear();
            let source = format!(
                "{} (exported from replica {})",
                path.display(),
                header.answered_by
            );
            (valid, source, vouched_by)
        }
        None => {
            let client = connect(addr).await?;
            let s = status(&client).await?;
            let valid = valid_checkpoint(addr, &client, &s).await?;
            let vouched_by = if valid.ca_pem.is_empty() {
                "no CA (a cluster without TLS)".to_string()
            } else {
                format!(
                    "the cluster CA ({})",
                    coop_proto::tls::fingerprint(&valid.ca_pem)?
                )
            };
            let progress = bar(valid.head.size);
            let mut failure = None;
            stream(&client, start, valid.head.size, |index, leaf| {
                if failure.is_none() {
                    failure = step(&mut replay, index, leaf).err();
                }
                progress.inc(1);
                Ok(())
            })
            .await?;
            progress.finish_and_clear();
            if let Some(e) = failure {
                return report_problems(fmt, &[e]);
            }
            (
                valid,
                format!("replica {} at {addr}", s.answered_by),
                vouched_by,
            )
        }
    };
    let head = &valid.head;
    let entries = replay.state.log_size();
    let root = hex::encode(replay.root());
    let digest = replay.state.digest();
    let mut problems = Vec::new();
    if entries != head.size {
        problems.push(format!(
            "the journal has {entries} entries from genesis, the checkpoint covers {} (a replica that joined from a snapshot lacks the start: export from another one)",
            head.size
        ));
    } else {
        if root != head.root {
            problems.push(format!(
                "the replayed root {root} is not the checkpoint's root {}",
                head.root
            ));
        }
        if digest != head.state_digest {
            problems.push(format!(
                "the replayed state digest {digest} is not the checkpoint's {}",
                head.state_digest
            ));
        }
    }
    let ok = problems.is_empty();
    if ok {
        if let Some(path) = opts.save_state {
            save_state(path, &replay, &valid)?;
        }
    }
    let replayed = entries.saturating_sub(start);
    let origin = match from {
        Some(size) => format!("from the saved state at {size} entries"),
        None => "from genesis".to_string(),
    };
    match fmt {
        Format::Json => print_json(
            &json!({"ok": ok, "entries": entries, "replayed": replayed, "from": start,
            "decisions": replay.decisions, "root": root, "state_digest": digest,
            "signed_by": valid.signers(), "voters": valid.voters, "source": source,
            "problems": problems, "seconds": started.elapsed().as_secs_f64()}),
        ),
        Format::Table => {
            if ok {
                println!(
                    "verified {replayed} entries {origin} of {source}: every signature checked, {} placements, preemptions and losses recomputed, in {:.1} s",
                    replay.decisions,
                    started.elapsed().as_secs_f64()
                );
                println!(
                    "root {root} and state digest {digest} match the checkpoint at {entries} entries signed by replicas {:?} of {}, vouched for by {vouched_by}",
                    valid.signers(),
                    valid.voters
                );
                if let Some(path) = opts.save_state {
                    println!(
                        "saved the state to {} (`--from-state` starts the next audit there)",
                        path.display()
                    );
                }
            } else {
                for p in &problems {
                    println!("FAILED: {p}");
                }
            }
        }
    }
    Ok(if ok { 0 } else { 1 })
}

/// What this CLI last verified of a cluster's log: a valid checkpoint.
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

/// Keeps a conflict (two validly signed heads of one size) where the
/// member can hand it to others: it proves the fork by itself.
fn keep_evidence(cluster_id: &str, c: &Conflict) -> Result<std::path::PathBuf> {
    let path = crate::identity::config_dir().join("evidence").join(format!(
        "{cluster_id}-size-{}-replicas-{}-{}.json",
        c.a.head.size, c.a.replica, c.b.replica
    ));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(c)?)?;
    Ok(path)
}

/// `coop audit checkpoint`: the latest checkpoint a majority of the
/// replicas signed (each signature checked against the cluster CA), any
/// two signed heads of one size that differ (kept as evidence), and an
/// RFC 9162 consistency proof from the checkpoint this CLI verified last
/// time, so a rewritten history is noticed by any member who looked before.
pub async fn checkpoint(addr: &str, fmt: Format) -> Result<i32> {
    let client = connect(addr).await?;
    let head = status(&client).await?;
    let ca = crate::client::trusted_ca(addr).await?;
    let g = gather(&client, &head, ca.as_deref()).await?;
    let mut problems = Vec::new();
    for c in &g.conflicts {
        let file = keep_evidence(&head.cluster_id, c)?;
        problems.push(format!(
            "replicas {} and {} signed different heads for size {} (roots {} and {}): a forked history; the evidence is in {}",
            c.a.replica,
            c.b.replica,
            c.a.head.size,
            c.a.head.root,
            c.b.head.root,
            file.display()
        ));
    }
    let Some(valid) = g.valid else {
        problems.push(format!(
            "no checkpoint is signed by a majority of the {} replicas yet{}",
            g.voters,
            g.refused
                .first()
                .map(|r| format!(" (refused: {r})"))
                .unwrap_or_default()
        ));
        return report_problems(fmt, &problems);
    };
    let path = seen_path(&head.cluster_id);
    let seen: Option<Seen> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut consistent = None;
    let mut remember = true;
    if let Some(seen) = &seen {
        if seen.size > valid.head.size {
            // Replicas keep recent signatures in memory: after restarts
            // the newest valid one can be older than what this CLI saw.
            remember = false;
            consistent = Some(true);
        } else {
            let proof = call(
                &client,
                (seen.size, valid.head.size),
                |mut c, (from_size, to_size)| async move {
                    c.consistency_proof(ConsistencyProofRequest { from_size, to_size })
                        .await
                },
            )
            .await?;
            let old = hash(&hex::decode(&seen.root)?)?;
            let new = hash(&hex::decode(&valid.head.root)?)?;
            let steps: Vec<coop_core::merkle::Hash> =
                proof.proof.iter().map(|p| hash(p)).collect::<Result<_>>()?;
            let ok = coop_core::merkle::verify_consistency(
                seen.size,
                valid.head.size,
                &old,
                &new,
                &steps,
            );
            if !ok {
                problems.push(format!(
                    "HISTORY REWRITTEN: the log of {} entries this CLI verified (root {}) is not a prefix of the one a majority of the replicas signed now ({} entries, root {})",
                    seen.size, seen.root, valid.head.size, valid.head.root
                ));
            }
            consistent = Some(ok);
        }
    }
    if problems.is_empty() && remember {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            &path,
            serde_json::to_vec(&Seen {
                size: valid.head.size,
                root: valid.head.root.clone(),
            })?,
        )?;
    }
    let h = &valid.head;
    match fmt {
        Format::Json => print_json(&json!({
            "cluster_id": head.cluster_id,
            "checkpoint": h,
            "signed_by": valid.signers(),
            "voters": valid.voters,
            "log_size_now": head.log_size,
            "previous": seen.as_ref().map(|s| json!({"size": s.size, "root": s.root})),
            "consistent": consistent,
            "refused": g.refused,
            "problems": problems})),
        Format::Table => {
            println!(
                "checkpoint of {}: {} entries, root {}",
                head.cluster_id, h.size, h.root
            );
            println!(
                "  state digest {}, policy version {}, log time {} ms",
                h.state_digest, h.policy_version, h.at_ms
            );
            println!(
                "  signed by replicas {:?} of {} ({}){}",
                valid.signers(),
                valid.voters,
                if valid.ca_pem.is_empty() {
                    "a cluster without TLS: no CA vouches for their keys".to_string()
                } else {
                    format!(
                        "valid: a majority, each key vouched for by the cluster CA {}",
                        coop_proto::tls::fingerprint(&valid.ca_pem)?
                    )
                },
                if head.log_size > h.size {
                    format!("; the log has grown to {} entries since", head.log_size)
                } else {
                    String::new()
                }
            );
            for r in &g.refused {
                println!("  refused a signature: {r}");
            }
            match (&seen, consistent) {
                (Some(s), Some(true)) if s.size > h.size => println!(
                    "consistent with what this CLI verified before? not yet checkable: it saw {} entries, the newest valid checkpoint has {}",
                    s.size, h.size
                ),
                (Some(s), Some(true)) => println!(
                    "consistent with the checkpoint of {} entries this CLI verified before (RFC 9162 consistency proof checked)",
                    s.size
                ),
                (None, _) => println!(
                    "first checkpoint this CLI has verified of {}: remembered",
                    head.cluster_id
                ),
                _ => {}
            }
            for p in &problems {
                println!("FAILED: {p}");
            }
        }
    }
    Ok(if problems.is_empty() { 0 } else { 1 })
}

fn report_problems(fmt: Format, problems: &[String]) -> Result<i32> {
    match fmt {
        Format::Json => print_json(&json!({"ok": false, "problems": problems})),
        Format::Table => {
            for p in problems {
                println!("FAILED: {p}");
            }
        }
    }
    Ok(1)
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
