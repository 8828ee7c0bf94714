//! The replicated log's vocabulary: `Command`s in, `Outcome`s out.
//!
//! Every variant is tagged by name in the log (`"type": "submit"`). A tag is
//! never reused or renamed; a change of meaning is a new variant. A replica
//! that reads a tag it does not know gets `Command::Unknown`, which `apply`
//! refuses without touching the state; the scheduler stops applying there
//! rather than diverge from replicas that do know it (upgrade it, then it
//! catches up from the log).

use serde::{Deserialize, Serialize};

use crate::identity::{Auth, PublicKey};
use crate::ids::{AllocId, JobId, MemberId, NodeId};
use crate::job::JobSpec;
use crate::node::GpuInfo;
use crate::policy::Policy;
use crate::resources::Resources;
use crate::result::JobResult;

/// How a run ended, as the worker saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The process exit code, when it exited by itself.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// A worker-side failure (the program could not be started, ...), empty otherwise.
    #[serde(default)]
    pub error: String,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0) && self.error.is_empty()
    }

    pub fn describe(&self) -> String {
        if !self.error.is_empty() {
            return self.error.clone();
        }
        match (self.code, self.signal) {
            (Some(0), _) => "exited with code 0".into(),
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "ended without an exit status".into(),
        }
    }
}

/// A founding member, listed in the genesis config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Founder {
    pub name: MemberId,
    pub key: PublicKey,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// A member submits a job, signed with its key (see `identity`).
    /// `request_id` is the client's idempotency key: the same member and
    /// request id always return the first job.
    Submit {
        request_id: String,
        member: MemberId,
        spec: JobSpec,
        auth: Auth,
        now_ms: u64,
        /// With a salt, `spec` holds the env values themselves and the
        /// member signed the spec with each value replaced by its
        /// commitment (`JobSpec::committed`); the public record (the
        /// decision log) holds that committed spec and no salt.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        env_salt: Option<crate::job::EnvSalt>,
    },
    /// A member cancels one of its jobs, signed with its key.
    Cancel {
        job: JobId,
        member: MemberId,
        request_id: String,
        auth: Auth,
        now_ms: u64,
    },
    /// A member cancels every unfinished job of one of its arrays (named
    /// by any of its jobs), signed with its key.
    CancelArray {
        job: JobId,
        member: MemberId,
        request_id: String,
        auth: Auth,
        now_ms: u64,
    },
    /// A member authorizes a node of its own to join with `key` (or
    /// replaces the key of one it authorized before), signed by the member.
    AddNode {
        node: NodeId,
        member: MemberId,
        key: PublicKey,
        request_id: String,
        auth: Auth,
        now_ms: u64,
    },
    /// A member asks for a replica to join the replica group: recorded
    /// before the membership change, so who added which replica is in the
    /// log for anyone to see.
    AddReplica {
        id: u64,
        addr: String,
        member: MemberId,
        request_id: String,
        auth: Auth,
        now_ms: u64,
    },
    /// A member asks for a replica to leave the replica group: recorded
    /// before the membership change.
    RemoveReplica {
        id: u64,
        /// Where it was, for the record.
        addr: String,
        member: MemberId,
        request_id: String,
        auth: Auth,
        now_ms: u64,
    },
    /// A member proposes a change of the policy or the member set.
    Propose {
        member: MemberId,
        request_id: String,
        kind: crate::governance::ProposalKind,
        auth: Auth,
        now_ms: u64,
    },
    /// A member votes on an open proposal.
    Vote {
        member: MemberId,
        request_id: String,
        proposal: crate::governance::ProposalId,
        yes: bool,
        auth: Auth,
        now_ms: u64,
    },
    /// A worker (re)joins the pool, signed with its authorized node key.
    RegisterNode {
        node: NodeId,
        owner: MemberId,
        capacity: Resources,
        addr: String,
        incarnation: u64,
        now_ms: u64,
        /// The node's GPUs (index, model, memory); generic ones are assumed
        /// when empty and `capacity.gpus` > 0.
        #[serde(default)]
        gpus: Vec<GpuInfo>,
        /// The model engines it offers beyond tract.
        #[serde(default, skip_serializing_if = "crate::node::NodeEngines::is_none")]
        engines: crate::node::NodeEngines,
        auth: Auth,
    },
    /// The leader saw no heartbeat from this incarnation of the node within the timeout.
    NodeLost {
        node: NodeId,
        incarnation: u64,
        now_ms: u64,
    },
    /// The cluster's birth, from the bootstrap config; applies once, ever:
    /// its id (every signature names it), the genesis policy and the
    /// founding members with their keys. Later changes to the policy and
    /// the member set come only through member votes.
    Genesis {
        cluster_id: String,
        policy: Policy,
        members: Vec<Founder>,
        now_ms: u64,
    },
    /// Run the allocator over the pending queue.
    Schedule { now_ms: u64 },
    /// Every replica signs the log's head once it has applied this (see
    /// `checkpoint`), so their signatures cover one size; the leader
    /// proposes one at an interval. It changes nothing but the log's time.
    Checkpoint { now_ms: u64 },
    /// The worker started the allocation's process; signed by the node.
    AllocStarted {
        alloc: AllocId,
        node: NodeId,
        incarnation: u64,
        auth: Auth,
        now_ms: u64,
    },
    /// The allocation's process ended (or could not start); signed by the node.
    AllocFinished {
        alloc: AllocId,
        node: NodeId,
        exit: ExitStatus,
        now_ms: u64,
        /// What a model job produced.
        #[serde(default)]
        result: Option<JobResult>,
        incarnation: u64,
        auth: Auth,
    },
    /// A tag this build does not know; see the module docs.
    #[serde(other)]
    Unknown,
}

impl Command {
    /// The command as the public record holds it: a submit's env values
    /// replaced by their commitments. Applying it gives the same outcome
    /// and the same public state as applying the command itself.
    pub fn public(&self) -> std::borrow::Cow<'_, Command> {
        match self {
            Command::Submit {
                request_id,
                member,
                spec,
                auth,
                now_ms,
                env_salt: Some(salt),
            } => std::borrow::Cow::Owned(Command::Submit {
                request_id: request_id.clone(),
                member: member.clone(),
                spec: spec.committed(salt),
                auth: auth.clone(),
                now_ms: *now_ms,
                env_salt: None,
            }),
            other => std::borrow::Cow::Borrowed(other),
        }
    }

    /// The time the proposer stamped on the command (0 for an unknown one).
    pub fn now_ms(&self) -> u64 {
        match self {
            Self::Submit { now_ms, .. }
            | Self::Cancel { now_ms, .. }
            | Self::CancelArray { now_ms, .. }
            | Self::AddNode { now_ms, .. }
            | Self::AddReplica { now_ms, .. }
            | Self::RemoveReplica { now_ms, .. }
            | Self::Propose { now_ms, .. }
            | Self::Vote { now_ms, .. }
            | Self::RegisterNode { now_ms, .. }
            | Self::NodeLost { now_ms, .. }
            | Self::Schedule { now_ms }
            | Self::Checkpoint { now_ms }
            | Self::Genesis { now_ms, .. }
            | Self::AllocStarted { now_ms, .. }
            | Self::AllocFinished { now_ms, .. } => *now_ms,
            Self::Unknown => 0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Submit { .. } => "submit",
            Self::Cancel { .. } => "cancel",
            Self::CancelArray { .. } => "cancel_array",
            Self::AddNode { .. } => "add_node",
            Self::AddReplica { .. } => "add_replica",
            Self::RemoveReplica { .. } => "remove_replica",
            Self::Propose { .. } => "propose",
            Self::Vote { .. } => "vote",
            Self::RegisterNode { .. } => "register_node",
            Self::NodeLost { .. } => "node_lost",
            Self::Schedule { .. } => "schedule",
            Self::Checkpoint { .. } => "checkpoint",
            Self::Genesis { .. } => "genesis",
            Self::AllocStarted { .. } => "alloc_started",
            Self::AllocFinished { .. } => "alloc_finished",
            Self::Unknown => "unknown",
        }
    }
}
