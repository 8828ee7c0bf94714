//! `apply`: the one deterministic way the replicated state changes. One
//! `match` dispatches each command to the handler of its area; every handler
//! checks first and mutates only once the command is known to be valid, so
//! a refused command leaves the state untouched.
//!
//! Time: the leader stamps each command with its clock. At the entry the
//! stamp is clamped so that it never goes back (a new leader with a slower
//! clock cannot rewind history), and the log's `now` advances toward it by
//! at most `MAX_STEP_MS` per command, so a leader clock that jumps forward
//! cannot expire every ended job or accrue a day of usage in one command.
//! Signatures' freshness windows are checked against the stamp itself, the
//! clock a member's request had to agree with: after a quiet hour the log's
//! time lags, and fresh requests must still be taken. Handlers get `now`
//! (and the stamp for signatures); none reads a command's raw time.

mod governance;
mod jobs;
pub mod nodes;
mod policy;
mod replicas;
mod results;
mod schedule;

use crate::command::Command;
use crate::error::CoreError;
use crate::identity::NodeReport;
use crate::outcome::Outcome;
use crate::state::ClusterState;

/// The most the log's time advances in one command (see the module docs).
pub const MAX_STEP_MS: u64 = 60_000;

/// A command's time: the leader's stamp (signatures' freshness) and the
/// log's time after it (everything else).
#[derive(Clone, Copy)]
struct Time {
    stamp: u64,
    now: u64,
}

impl ClusterState {
    /// A command's stamp, never before the log's time, and the log's time
    /// after it: at most `MAX_STEP_MS` later, except before genesis, when
    /// there is no time to step from.
    fn clock(&self, stamp_ms: u64) -> Time {
        let before = self.now_ms();
        let stamp = before.max(stamp_ms);
        let now = if before == 0 {
            stamp
        } else {
            before + (stamp - before).min(MAX_STEP_MS)
        };
        Time { stamp, now }
    }

    /// Applies one command. On `Err` nothing changed.
    pub fn apply(&mut self, cmd: &Command) -> Result<Outcome, CoreError> {
        let at = self.clock(cmd.now_ms());
        let Time { stamp, now } = at;
        let outcome = match cmd {
            Command::Submit {
                request_id,
                member,
                spec,
                auth,
                env_salt,
                ..
            } => jobs::submit(self, request_id, member, spec, env_salt.as_ref(), auth, at),
            Command::Cancel {
                job,
                member,
                request_id,
                auth,
                ..
            } => jobs::cancel(self, *job, member, request_id, auth, at),
            Command::CancelArray {
                job,
                member,
                request_id,
                auth,
                ..
            } => jobs::cancel_array(self, *job, member, request_id, auth, at),
            Command::AddNode {
                node,
                member,
                key,
                request_id,
                auth,
                ..
            } => nodes::add(self, node, member, key, request_id, auth, stamp),
            Command::Propose {
                member,
                request_id,
                kind,
                auth,
                ..
            } => governance::propose(self, member, request_id, kind, auth, at),
            Command::Vote {
                member,
                request_id,
                proposal,
                yes,
                auth,
                ..
            } => governance::vote(self, member, request_id, *proposal, *yes, auth, at),
            Command::AddReplica {
                id,
                addr,
                member,
                request_id,
                auth,
                ..
            } => replicas::add(self, *id, addr, member, request_id, auth, at),
            Command::RemoveReplica {
                id,
                addr,
                member,
                request_id,
                auth,
                ..
            } => replicas::remove(self, *id, addr, member, request_id, auth, at),
            Command::RegisterNode {
                node,
                owner,
                capacity,
                addr,
                incarnation,
                gpus,
                engines,
                auth,
                ..
            } => nodes::register(
                self,
                nodes::Registration {
                    node,
                    owner,
                    capacity: *capacity,
                    addr,
                    incarnation: *incarnation,
                    gpus,
                    engines,
                    auth,
                },
                at,
            ),
            Command::NodeLost {
                node, incarnation, ..
            } => nodes::lost(self, node, *incarnation, now),
            Command::Schedule { .. } => Ok(schedule::pass(self, now)),
            // Its leaf is the next one: the head replicas sign is one past it.
            Command::Checkpoint { .. } => Ok(Outcome::Checkpointed {
                size: self.log_size() + 1,
            }),
            Command::Genesis {
                cluster_id,
                policy,
                members,
                ..
            } => policy::genesis(self, cluster_id, policy, members, now),
            Command::AllocStarted {
                alloc,
                node,
                incarnation,
                auth,
                ..
            } => {
                let report = NodeReport::Started { alloc: *alloc };
                self.verify_node_report(node, *incarnation, auth, &report, stamp)?;
                results::started(self, *alloc, node, now)
            }
            Command::AllocFinished {
                alloc,
                node,
                exit,
                result,
                incarnation,
                auth,
                ..
            } => {
                let report = NodeReport::Finished {
                    alloc: *alloc,
                    exit,
                    result: result.as_ref(),
                };
                self.verify_node_report(node, *incarnation, auth, &report, stamp)?;
                results::finished(self, *alloc, node, exit, result.as_ref(), now)
            }
            Command::Unknown => Err(CoreError::UnknownCommand),
        }?;
        // Proposals whose deadline passed are decided by the log's time.
        governance::settle_due(self, now);
        self.set_now(now);
        Ok(outcome)
    }
}
