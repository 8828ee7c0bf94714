//! What `apply` returns for an accepted command: a value the proposer
//! (and tests) read, never a side effect.

use serde::{Deserialize, Serialize};

use crate::decision::Rule;
use crate::ids::{AllocId, JobId, MemberId, NodeId};
use crate::job::JobState;
use crate::resources::Resources;

/// One job placed by a scheduling pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub job: JobId,
    pub alloc: AllocId,
    pub node: NodeId,
    pub resources: Resources,
    pub gpu_indices: Vec<u32>,
    /// The policy rule that placed it.
    pub rule: Rule,
}

/// One allocation a scheduling pass stops to give its resources back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preemption {
    pub alloc: AllocId,
    pub job: JobId,
    pub victim: MemberId,
    /// The waiting job this makes room for.
    pub for_job: JobId,
    pub rule: Rule,
}

/// What a command did, returned to whoever proposed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    /// `existing` is true when the request id had been seen: nothing new was created.
    Submitted {
        job: JobId,
        existing: bool,
    },
    Cancelled {
        job: JobId,
        stopping: Option<AllocId>,
    },
    /// An array's unfinished jobs were cancelled; these allocations stop.
    ArrayCancelled {
        first: JobId,
        cancelled: Vec<JobId>,
        stopping: Vec<AllocId>,
    },
    Proposed {
        proposal: u64,
        existing: bool,
    },
    Voted {
        proposal: u64,
        /// The proposal's status after this vote (decided when certain).
        status: crate::governance::ProposalStatus,
    },
    ReplicaRecorded {
        id: u64,
    },
    NodeAdded {
        node: NodeId,
        owner: MemberId,
    },
    NodeRegistered {
        node: NodeId,
        requeued: Vec<JobId>,
    },
    NodeLost {
        node: NodeId,
        requeued: Vec<JobId>,
        failed: Vec<JobId>,
    },
    Scheduled {
        placements: Vec<Placement>,
        #[serde(default)]
        preemptions: Vec<Preemption>,
    },
    PolicyAdopted {
        version: u64,
    },
    /// Replicas sign the log's head at `size` (this command's leaf included).
    Checkpointed {
        size: u64,
    },
    AllocStarted {
        alloc: AllocId,
        job: JobId,
    },
    AllocFinished {
        alloc: AllocId,
        job: JobId,
        job_state: JobState,
    },
}

impl Outcome {
    /// How many allocation decisions it made: placements, preemptions, and
    /// runs ended by a lost node or a restarted worker.
    pub fn decisions(&self) -> usize {
        match self {
            Self::Scheduled {
                placements,
                preemptions,
            } => placements.len() + preemptions.len(),
            Self::NodeLost {
                requeued, failed, ..
            } => requeued.len() + failed.len(),
            Self::NodeRegistered { requeued, .. } => requeued.len(),
            _ => 0,
        }
    }
}
