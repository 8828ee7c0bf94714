//! `coop-core`: Coop's pure core. The replicated state, the commands that
//! change it, the allocator and the explanations, with no clock, I/O,
//! randomness or async: every replica computes the same state from the same
//! log, and anyone holding the log can recompute every decision.

pub mod alloc;
pub mod allocator;
pub mod command;
pub mod ids;
pub mod job;
pub mod node;
pub mod resources;
pub mod state;

pub use alloc::{AllocState, Allocation};
pub use command::{Command, CoreError, ExitStatus, Outcome, Placement};
pub use ids::{AllocId, JobId, MemberId, NodeId};
pub use job::{Job, JobKind, JobSpec, JobState};
pub use node::{Node, NodeState};
pub use resources::Resources;
pub use state::ClusterState;
