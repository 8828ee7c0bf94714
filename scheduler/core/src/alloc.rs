//! Allocations: a job placed on a node.

use serde::{Deserialize, Serialize};

use crate::decision::Rule;
use crate::ids::{AllocId, JobId, MemberId, NodeId};
use crate::job::Job;
use crate::resources::Resources;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocState {
    /// The worker should start it.
    Assigned,
    /// The worker said the process started.
    Running,
    /// The job was cancelled; the worker should stop it. Its resources stay
    /// held until the worker confirms the process is gone, so nothing is
    /// over-committed while it dies.
    Stopping,
}

impl std::fmt::Display for AllocState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AllocState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Stopping => "stopping",
        }
    }
}

/// A live allocation. Ended allocations leave the state; their job keeps the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub id: AllocId,
    pub job: JobId,
    pub node: NodeId,
    pub resources: Resources,
    /// Indices of the node's GPUs given to this allocation.
    pub gpu_indices: Vec<u32>,
    pub state: AllocState,
    pub created_at_ms: u64,
    /// The policy rule that placed it.
    pub rule: Rule,
    /// Being stopped by a reclaim: its job requeues without spending a retry.
    #[serde(default)]
    pub preempted: bool,
    /// What a pass needs of the job, copied from it when the allocation
    /// enters the state (see `JobFacts`).
    #[serde(skip)]
    pub facts: JobFacts,
}

/// A job's fields a scheduling pass reads for each of its allocations,
/// copied so a pass looks no job up (those lookups were a fifth of a pass
/// on a full pool). Derived, like a node's allocated sum: never in a
/// snapshot or the digest, set by `ClusterState::insert_alloc` and again
/// when a snapshot is loaded, from fields a job never changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFacts {
    pub member: MemberId,
    pub preemptible: bool,
    pub timeout_secs: Option<u64>,
}

impl JobFacts {
    pub fn of(job: &Job) -> Self {
        Self {
            member: job.member.clone(),
            preemptible: job.spec.preemptible,
            timeout_secs: job.spec.timeout_secs,
        }
    }
}

impl Allocation {
    pub fn is_stopping(&self) -> bool {
        self.state == AllocState::Stopping
    }
}
