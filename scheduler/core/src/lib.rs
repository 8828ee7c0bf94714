//! `coop-core`: Coop's pure core. The replicated state, the commands that
//! change it, the allocator and the explanations, with no clock, I/O,
//! randomness or async: every replica computes the same state from the same
//! log, and anyone holding the log can recompute every decision.

pub mod alloc;
pub mod command;
pub mod explain;
pub mod fairshare;
pub mod ids;
pub mod job;
pub mod ledger;
pub mod node;
pub mod nodefit;
pub mod policy;
pub mod resources;
pub mod state;

pub use alloc::{AllocState, Allocation};
pub use command::{Command, CoreError, ExitStatus, Outcome, Placement, Preemption};
pub use ids::{AllocId, JobId, MemberId, NodeId};
pub use job::{Artifact, EvalTask, Job, JobKind, JobResult, JobSpec, JobState, ModelScore};
pub use node::{GpuInfo, Node, NodeState};
pub use policy::Policy;
pub use resources::Resources;
pub use state::ClusterState;
