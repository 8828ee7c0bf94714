//! The decision log: every command a replica applies, with a digest of its
//! outcome, is the next leaf of an append-only Merkle tree (`merkle`). The
//! state holds the tree's frontier, so its root is part of the state digest
//! and every replica computes the same one; each replica's journal keeps
//! the leaves. Anyone holding the journal replays it from genesis through
//! `ClusterState::apply_logged` and must get the same leaves, byte for
//! byte: every placement, preemption and refusal is recomputed.
//!
//! ```text
//!  leaf = "coop/v1/leaf\0"
//!         || u32be(len) || command JSON      (with its signatures)
//!         || sha256(outcome JSON)             (Ok(outcome) or Err(refusal))
//! ```

use sha2::{Digest, Sha256};

use crate::command::Command;
use crate::error::CoreError;
use crate::merkle::{self, Hash};
use crate::outcome::Outcome;
use crate::state::ClusterState;

/// Domain-separation tag of a decision-log leaf.
pub const LEAF_DOMAIN: &[u8] = b"coop/v1/leaf\0";

/// The bytes of one leaf.
pub fn leaf_data(cmd: &Command, result: &Result<Outcome, CoreError>) -> Vec<u8> {
    // The public form: a submit's env values as commitments.
    let command = serde_json::to_vec(&*cmd.public()).expect("a command always serializes");
    let outcome = serde_json::to_vec(result).expect("an outcome always serializes");
    let mut leaf = Vec::with_capacity(LEAF_DOMAIN.len() + 4 + command.len() + 32);
    leaf.extend_from_slice(LEAF_DOMAIN);
    leaf.extend_from_slice(&(command.len() as u32).to_be_bytes());
    leaf.extend_from_slice(&command);
    leaf.extend_from_slice(&Sha256::digest(&outcome));
    leaf
}

/// A leaf taken apart.
#[derive(Debug)]
pub struct Leaf<'a> {
    pub command: &'a [u8],
    pub outcome_digest: &'a [u8],
}

/// Why a leaf does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeafError {
    #[error("the leaf does not start with the coop leaf tag")]
    Tag,
    #[error("the leaf's length fields do not add up")]
    Length,
}

pub fn parse_leaf(leaf: &[u8]) -> Result<Leaf<'_>, LeafError> {
    let rest = leaf.strip_prefix(LEAF_DOMAIN).ok_or(LeafError::Tag)?;
    let (len, rest) = rest.split_at_checked(4).ok_or(LeafError::Length)?;
    let len = u32::from_be_bytes(len.try_into().map_err(|_| LeafError::Length)?) as usize;
    if rest.len() != len + 32 {
        return Err(LeafError::Length);
    }
    let (command, outcome_digest) = rest.split_at(len);
    Ok(Leaf {
        command,
        outcome_digest,
    })
}

impl ClusterState {
    /// Applies a command as a replica does: the command and what came of
    /// it become the next leaf of the decision log. Returns the outcome and
    /// the leaf's bytes (for the journal).
    pub fn apply_logged(&mut self, cmd: &Command) -> (Result<Outcome, CoreError>, Vec<u8>) {
        let result = self.apply(cmd);
        let leaf = leaf_data(cmd, &result);
        let index = self.log_size();
        self.push_leaf(merkle::leaf_hash(&leaf));
        if let Ok(outcome) = &result {
            for job in jobs_in(outcome) {
                // An array's submit is a decision about each of its jobs.
                let count = match outcome {
                    Outcome::Submitted { .. } => self
                        .job(job)
                        .and_then(|j| j.spec.array)
                        .map_or(1, |r| r.len()),
                    _ => 1,
                };
                for id in (job.0..job.0 + u64::from(count)).map(crate::ids::JobId) {
                    if let Some(j) = self.job_mut(id) {
                        j.note_leaf(index);
                    }
                }
            }
        }
        (result, leaf)
    }
}

/// The jobs an outcome decided something about.
fn jobs_in(outcome: &Outcome) -> Vec<crate::ids::JobId> {
    match outcome {
        Outcome::Submitted {
            job,
            existing: false,
        }
        | Outcome::Cancelled { job, .. }
        | Outcome::AllocStarted { job, .. }
        | Outcome::AllocFinished { job, .. } => vec![*job],
        Outcome::Scheduled {
            placements,
            preemptions,
        } => placements
            .iter()
            .map(|p| p.job)
            .chain(preemptions.iter().map(|p| p.job))
            .collect(),
        Outcome::NodeLost {
            requeued, failed, ..
        } => requeued.iter().chain(failed).copied().collect(),
        Outcome::NodeRegistered { requeued, .. } => requeued.clone(),
        Outcome::ArrayCancelled { cancelled, .. } => cancelled.clone(),
        _ => Vec::new(),
    }
}

/// How a replayed journal differs from what it claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("entry {index}: {error}")]
    Malformed { index: u64, error: LeafError },
    #[error("entry {index}: the command does not decode: {error}")]
    Command { index: u64, error: String },
    #[error(
        "entry {index}: replaying {command} gives another outcome than the journal records{detail}"
    )]
    Outcome {
        index: u64,
        command: &'static str,
        detail: String,
    },
    #[error("entry {index} is missing: the journal jumps to {next}")]
    Gap { index: u64, next: u64 },
}

/// Replays journal leaves from genesis. Stops at the first leaf that does
/// not recompute, naming it and how it differs.
pub struct Replay {
    pub state: ClusterState,
    /// Placements, preemptions and losses recomputed so far.
    pub decisions: u64,
}

impl Default for Replay {
    fn default() -> Self {
        Self::new()
    }
}

impl Replay {
    pub fn new() -> Self {
        Self {
            state: ClusterState::new(),
            decisions: 0,
        }
    }

    /// Replays the leaf at `index` (the next one expected).
    pub fn step(&mut self, index: u64, leaf: &[u8]) -> Result<(), ReplayError> {
        let expected = self.state.log_size();
        if index != expected {
            return Err(ReplayError::Gap {
                index: expected,
                next: index,
            });
        }
        let parsed = parse_leaf(leaf).map_err(|error| ReplayError::Malformed { index, error })?;
        let cmd: Command =
            serde_json::from_slice(parsed.command).map_err(|e| ReplayError::Command {
                index,
                error: e.to_string(),
            })?;
        let (result, recomputed) = self.state.apply_logged(&cmd);
        if recomputed != leaf {
            let detail = match &result {
                Ok(o) => format!(": replay gives {}", short(o)),
                Err(e) => format!(": replay refuses it ({e})"),
            };
            return Err(ReplayError::Outcome {
                index,
                command: cmd.name(),
                detail,
            });
        }
        if let Ok(o) = &result {
            self.decisions += o.decisions() as u64;
        }
        Ok(())
    }

    pub fn root(&self) -> Hash {
        self.state.log_root()
    }
}

fn short(o: &Outcome) -> String {
    let text = format!("{o:?}");
    if text.len() > 160 {
        format!("{}…", &text[..160])
    } else {
        text
    }
}
