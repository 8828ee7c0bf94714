//! `RaftNode`: one replica's Raft instance as the rest of the scheduler sees
//! it: propose a command, read the applied state linearizably, ask who leads.
//!
//! ```text
//!  handlers ──write(cmd)──▶ proposer queue ──client_write_many(batch)──▶ openraft
//!                                                   │ one append = one fsync per batch
//!  handlers ◀──Outcome──────────── per-command reply ◀┘ (after commit + apply)
//! ```
//!
//! Proposals are batched by draining whatever queued while the previous
//! batch was being handed to openraft: under load many submits share one
//! log append and one fsync (group commit); when idle a batch is one command
//! and adds no delay.

use crate::error::StartError;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use coop_core::{Command, CoreError, Outcome};
use futures::StreamExt;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::{BasicNode, Config, ReadPolicy, ServerState, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot};

use super::{open_storage, Network, Raft, Request, StateMachine};

/// Most commands in one proposal batch.
const MAX_BATCH: usize = 4096;

/// Why a write or linearizable read did not happen here.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// Retryable: ask the leader (if one is known).
    #[error("this replica is not the leader")]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    /// The entry may or may not have committed (leadership changed while it
    /// was in flight); a retry with the same request id is safe.
    #[error("leadership changed while the request was in flight; retry")]
    Uncertain,
    #[error("raft stopped: {0}")]
    Fatal(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

#[derive(Debug, Clone)]
pub struct ReplicaInfo {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
    pub matched_index: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct RaftStatus {
    pub id: u64,
    pub role: NodeRole,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub replicas: Vec<ReplicaInfo>,
}

impl RaftStatus {
    /// How many replicas vote: what a majority is counted of.
    pub fn voters(&self) -> usize {
        self.replicas.iter().filter(|r| r.voter).count()
    }
}

type Reply = oneshot::Sender<Result<Result<Outcome, CoreError>, WriteError>>;

#[derive(Clone)]
pub struct RaftNode {
    pub id: u64,
    raft: Raft,
    sm: StateMachine,
    proposals: mpsc::Sender<(Command, Reply)>,
}

/// Timing knobs for Raft, from the scheduler config.
#[derive(Debug, Clone)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot (and compact the log) after this many entries.
    pub snapshot_every: u64,
}

impl RaftNode {
    /// Opens the replica's storage in `dir` and starts Raft. It serves
    /// nothing until a transport service is added to a server.
    pub async fn start(
        id: u64,
        dir: &Path,
        timing: &RaftTiming,
        network: Network,
    ) -> Result<Self, StartError> {
        let config = Config {
            cluster_name: "coop".into(),
            heartbeat_interval: timing.heartbeat_ms,
            election_timeout_min: timing.election_min_ms,
            election_timeout_max: timing.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(timing.snapshot_every),
            max_in_snapshot_log_to_keep: 0,
            purge_batch_size: 256,
            max_payload_entries: 2000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let (log_store, sm) = open_storage(dir).map_err(|e| StartError::Storage(e.to_string()))?;
        let raft = Raft::new(id, Arc::new(config), network, log_store, sm.clone())
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(propose_loop(raft.clone(), rx));
        Ok(Self {
            id,
            raft,
            sm,
            proposals: tx,
        })
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn state_machine(&self) -> &StateMachine {
        &self.sm
    }

    /// Proposes a command and waits for it to be committed and applied.
    pub async fn write(&self, cmd: Command) -> Result<Result<Outcome, CoreError>, WriteError> {
        let (tx, rx) = oneshot::channel();
        self.proposals
            .send((cmd, tx))
            .await
            .map_err(|_| WriteError::Fatal("proposer stopped".into()))?;
        rx.await
            .map_err(|_| WriteError::Fatal("proposer stopped".into()))?
    }

    /// Waits until this replica's applied state reflects every write
    /// committed before the call (Raft §6.4 ReadIndex). Leader only.
    pub async fn linearizable_read(&self) -> Result<(), WriteError> {
        self.raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map(|_| ())
            .map_err(write_error)
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics().borrow_watched().clone();
        m.state == ServerState::Leader
    }

    /// Whether this replica leads and a quorum acknowledged it within
    /// `within`. openraft keeps a cut-off leader in the leader state until
    /// it hears a higher term, so a leader partitioned from its followers
    /// would go on answering workers while the others elect a new one and
    /// requeue their jobs; what workers act on must come from a leader that
    /// still has its quorum (a leader lease).
    pub fn leads_with_quorum(&self, within: Duration) -> bool {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.state != ServerState::Leader {
            return false;
        }
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        if voters == [self.id] {
            // Alone, it is its own quorum.
            return true;
        }
        m.last_quorum_acked
            .as_ref()
            .is_some_and(|at| openraft::Instant::elapsed(&**at) <= within)
    }

    /// The leader's id and address as this replica knows them.
    pub fn leader(&self) -> Option<(u64, String)> {
        let m = self.raft.metrics().borrow_watched().clone();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// Waits up to `timeout` for some replica to be leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<(u64, String)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.raft.metrics();
        loop {
            if let Some(l) = self.leader() {
                return Some(l);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.leader(),
            }
        }
    }

    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let replicas = membership
            .nodes()
            .map(|(id, node)| ReplicaInfo {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched_index: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index),
            })
            .collect();
        let role = match m.state {
            ServerState::Leader => NodeRole::Leader,
            ServerState::Follower => NodeRole::Follower,
            ServerState::Candidate => NodeRole::Candidate,
            ServerState::Learner => NodeRole::Learner,
            ServerState::Shutdown => NodeRole::Shutdown,
        };
        RaftStatus {
            id: self.id,
            role,
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: m
                .cluster_committed
                .or(m.local_committed)
                .map(|l| l.index)
                .unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            replicas,
        }
    }

    /// One-time cluster formation with the given voters.
    pub async fn initialize(&self, peers: &BTreeMap<u64, String>) -> Result<(), StartError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?
        {
            return Err(StartError::AlreadyInitialized);
        }
        let members: BTreeMap<u64, BasicNode> = peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        self.raft
            .initialize(members)
            .await
            .map_err(|e| match e.api_error() {
                Some(openraft::errors::InitializeError::NotAllowed(_)) => {
                    StartError::AlreadyInitialized
                }
                _ => StartError::Raft(e.to_string()),
            })
    }

    /// Adds a replica: as a learner first (it catches up, from a snapshot
    /// when the log is compacted), then as a voter.
    pub async fn add_replica(&self, id: u64, addr: &str) -> Result<(), WriteError> {
        self.raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map_err(write_error)?;
        // A change relative to the membership openraft holds when it
        // applies it, not a voter set computed from this replica's view:
        // two concurrent additions cannot drop each other's voter.
        self.raft
            .change_membership(
                openraft::ChangeMembers::AddVoterIds(BTreeSet::from([id])),
                false,
            )
            .await
            .map_err(write_error)?;
        Ok(())
    }

    /// Removes a voter from the replica group.
    pub async fn remove_replica(&self, id: u64) -> Result<(), WriteError> {
        self.raft
            .change_membership(
                openraft::ChangeMembers::RemoveVoters(BTreeSet::from([id])),
                false,
            )
            .await
            .map_err(write_error)?;
        Ok(())
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// Drains the proposal queue into batches; see the module docs.
async fn propose_loop(raft: Raft, mut rx: mpsc::Receiver<(Command, Reply)>) {
    while let Some(first) = rx.recv().await {
        let mut cmds = vec![Request(first.0)];
        let mut replies = vec![first.1];
        while cmds.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((cmd, reply)) => {
                    cmds.push(Request(cmd));
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        match raft.client_write_many(cmds).await {
            Ok(mut results) => {
                // Collect replies concurrently so the next batch can be handed
                // to openraft while this one replicates.
                tokio::spawn(async move {
                    let mut replies = replies.into_iter();
                    while let Some(item) = results.next().await {
                        let Some(reply) = replies.next() else { break };
                        let _ = reply.send(match item {
                            Ok(Ok(w)) => Ok(w.response.0.unwrap_or(Err(CoreError::UnknownCommand))),
                            Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
                                Err(WriteError::NotLeader {
                                    leader_id: f.leader_id,
                                    leader_addr: f.leader_node.as_ref().map(|n| n.addr.clone()),
                                })
                            }
                            Ok(Err(ClientWriteError::LogEntryDiscarded(_))) => {
                                Err(WriteError::Uncertain)
                            }
                            Ok(Err(e)) => Err(WriteError::Fatal(e.to_string())),
                            Err(fatal) => Err(WriteError::Fatal(fatal.to_string())),
                        });
                    }
                    for reply in replies {
                        let _ = reply.send(Err(WriteError::Uncertain));
                    }
                });
            }
            Err(fatal) => {
                for reply in replies {
                    let _ = reply.send(Err(WriteError::Fatal(fatal.to_string())));
                }
            }
        }
    }
}

/// An openraft error as a write error: "not the leader" (with where the
/// leader is, when known) or fatal.
fn write_error<E>(e: openraft::errors::RaftError<super::TypeConfig, E>) -> WriteError
where
    E: std::error::Error + openraft::TryAsRef<openraft::errors::ForwardToLeader<super::TypeConfig>>,
{
    match e.forward_to_leader() {
        Some(f) => WriteError::NotLeader {
            leader_id: f.leader_id,
            leader_addr: f.leader_node.as_ref().map(|n| n.addr.clone()),
        },
        None => WriteError::Fatal(e.to_string()),
    }
}
