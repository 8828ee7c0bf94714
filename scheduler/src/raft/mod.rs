//! Our wrapper around openraft: the type config, the redb-backed log store
//! and state machine, and the tonic transport. Nothing outside this module
//! names an openraft type; the rest of the scheduler sees [`RaftNode`].
//!
//! openraft is pinned at `=0.10.0-alpha.37`: the 0.10 line is the
//! maintained one (its simulation and Jepsen suites run against it, and its
//! largest production user pins an exact alpha), it has batched writes
//! (`client_write_many`) that group many proposals under one fsync, and
//! pinning exactly shields us from API breaks between alphas.

mod journal;
mod log_store;
mod network;
mod node;
mod runtime;
mod state_machine;
mod transport;

use std::fmt;

use coop_core::{Command, CoreError, Outcome};
use serde::{Deserialize, Serialize};

pub use journal::Journal;
pub use log_store::{open_storage, LogStore};
pub use network::Network;
pub use node::{NodeRole, RaftNode, RaftStatus, RaftTiming, ReplicaInfo, WriteError};
pub use runtime::seed_thread;
pub use state_machine::{Applied, StateMachine};
pub use transport::RaftTransportService;

/// A log entry's payload: one core command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request(pub Command);

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

/// What applying an entry returned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Response(pub Option<Result<Outcome, CoreError>>);

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        AsyncRuntime = runtime::Runtime,
);

pub type SnapshotData = std::io::Cursor<Vec<u8>>;
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;
type LogId = openraft::alias::LogIdOf<TypeConfig>;
type Vote = openraft::alias::VoteOf<TypeConfig>;
type Entry = openraft::alias::EntryOf<TypeConfig>;
type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

fn io_err(e: impl fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
