//! `apply`: the one deterministic way the replicated state changes. One
//! `match` dispatches each command to the handler of its area; every handler
//! checks first and mutates only once the command is known to be valid, so
//! a refused command leaves the state untouched.
//!
//! Time: one `now` is taken at the entry, clamped so that it never goes
//! back (a new leader with a slower clock cannot rewind history), and passed
//! down; no handler reads a command's raw time.

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

impl ClusterState {
    /// Applies one command. On `Err` nothing changed.
    pub fn apply(&mut self, cmd: &Command) -> Result<Outcome, CoreError> {
        let now = self.now_ms().max(cmd.now_ms());
        let outcome = match cmd {
            Command::Submit {
                request_id,
                member,
                spec,
                auth,
                env_salt,
                ..
            } => jobs::submit(self, request_id, member, spec, env_salt.as_ref(), auth, now),
            Command::Cancel {
                job,
                member,
                request_id,
                auth,
                ..
            } => jobs::cancel(self, *job, member, request_id, auth, now),
            Command::AddNode {
                node,
                member,
                key,
                request_id,
                auth,
                ..
            } => nodes::add(self, node, member, key, request_id, auth, now),
            Command::Propose {
                member,
                request_id,
                kind,
                auth,
                ..
            } => governance::propose(self, member, request_id, kind, auth, now),
            Command::Vote {
                member,
                request_id,
                proposal,
                yes,
                auth,
                ..
            } => governance::vote(self, member, request_id, *proposal, *yes, auth, now),
            Command::AddReplica {
                id,
                addr,
                member,
                request_id,
                auth,
                ..
            } => replicas::add(self, *id, addr, member, request_id, auth, now),
            Command::RemoveReplica {
                id,
                addr,
                member,
                request_id,
                auth,
                ..
            } => replicas::remove(self, *id, addr, member, request_id, auth, now),
            Command::RegisterNode {
                node,
                owner,
                capacity,
                addr,
                incarnation,
                gpus,
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
                    auth,
                },
                now,
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
                self.verify_node_report(node, *incarnation, auth, &report, now)?;
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
                self.verify_node_report(node, *incarnation, auth, &report, now)?;
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
