//! `coop-core`: Coop's pure core. The replicated state, the commands that
//! change it, the allocator and the explanations, with no clock, I/O,
//! randomness or async: every replica computes the same state from the same
//! log, and anyone holding the log can recompute every decision.
//!
//! ```text
//!  vocabulary   ids, resources, job (JobSpec, Job), result (JobResult),
//!               node, member, alloc, decision (Rule), policy, ledger
//!  log          command (Command in) ─▶ apply/* ─▶ outcome (Outcome out) | error
//!  state        state (ClusterState: data + queries) ─ view (read-only window)
//!  decisions    fairshare/{shares, reserve, pass, reclaim}, nodefit, explain
//!  queries      fairness (Jain's index), leaderboard
//! ```

pub mod alloc;
mod apply;
pub mod checkpoint;
pub mod command;
pub mod decision;
pub mod decision_log;
pub mod error;
pub mod explain;
pub mod fairness;
pub mod fairshare;
pub mod governance;
pub mod identity;
pub mod ids;
pub mod job;
pub mod leaderboard;
pub mod ledger;
pub mod member;
pub mod merkle;
pub mod node;
pub mod nodefit;
pub mod outcome;
pub mod policy;
pub mod resources;
pub mod result;
pub mod state;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod view;

pub use alloc::{AllocState, Allocation};
pub use apply::nodes::Registration;
pub use apply::MAX_STEP_MS;
pub use command::{Command, ExitStatus, Founder};
pub use decision::{Decision, DecisionKind, Rule};
pub use error::{CoreError, Impossible, SnapshotError};
pub use explain::{Explanation, PendingReason, WouldStart};
pub use fairness::Fairness;
pub use identity::{Auth, AuthError, MemberRequest, NodeReport, PublicKey, SecretKey, Signature};
pub use ids::{AllocId, JobId, MemberId, NodeId};
pub use job::{
    ArrayPlace, ArrayRange, Artifact, Engine, EnvSalt, EvalTask, Job, JobKind, JobSpec, JobState,
    ModelOptions, SpecError,
};
pub use leaderboard::Leaderboard;
pub use member::Member;
pub use node::{GpuInfo, Node, NodeEngines, NodeGrant, NodeState};
pub use outcome::{Outcome, Placement, Preemption};
pub use policy::{Policy, PolicyError};
pub use resources::Resources;
pub use result::{ClassCount, JobResult, ModelScore, OutputFile, ShardPart, Tally};
pub use state::ClusterState;
