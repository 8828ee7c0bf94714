//! Allocations: a job placed on a node.

use serde::{Deserialize, Serialize};

use crate::decision::Rule;
use crate::ids::{AllocId, JobId, NodeId};
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
}

impl Allocation {
    pub fn is_stopping(&self) -> bool {
        self.state == AllocState::Stopping
    }
}
