//! `CoreError`: why `apply` refused a command. A refused command changes
//! nothing. Callers match variants; the scheduler maps them to gRPC codes
//! in one table (`coop_scheduler::error`).

use serde::{Deserialize, Serialize};

use crate::alloc::AllocState;
use crate::ids::{AllocId, JobId, MemberId, NameError, NodeId};
use crate::job::{JobState, SpecError};
use crate::policy::PolicyError;
use crate::resources::Resources;

/// Longest client request id accepted (it is kept in the dedup table).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A request that can never be satisfied by this pool or policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Impossible {
    #[error("the policy (version {version}) allows at most {max} GPUs per job")]
    MaxJobGpus { max: u32, version: u64 },
    #[error("the policy (version {version}) allows runs of at most {max} s")]
    MaxRuntime { max: u64, version: u64 },
    #[error("no node in the pool has {gpus} GPUs matching the constraints")]
    NoMatchingGpus { gpus: u32 },
    #[error("no node in the pool can ever hold {want} (largest node: {largest})")]
    NoNodeLargeEnough { want: Resources, largest: Resources },
    #[error("no node in the pool has both {want} and the GPUs or engine the job asks for: some have one, others the room")]
    NoNodeHasAll { want: Resources },
    #[error("no node in the pool has {engine}: a member whose worker has it can add one, or run the job with --engine tract and no GPUs")]
    NoEngine { engine: String },
    #[error("node {node} advertises the CUDA provider without ONNX Runtime, or an engine description longer than {max} bytes", max = crate::node::MAX_ENGINE_INFO_LEN)]
    EngineInventory { node: NodeId },
    #[error("a node must offer some cpu and memory")]
    EmptyNode,
    #[error("node {node} lists {listed} GPUs but offers {offered}; indices must be 0..{offered}")]
    GpuInventory {
        node: NodeId,
        listed: usize,
        offered: u32,
    },
    #[error("node {node} changed capacity or owner without restarting its worker")]
    NodeChanged { node: NodeId },
    #[error("node {node} offers {offered}; a node may offer at most {max}")]
    NodeTooLarge {
        node: NodeId,
        offered: Resources,
        max: Resources,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "type", content = "detail", rename_all = "snake_case")]
pub enum CoreError {
    #[error("invalid job: {0}")]
    InvalidSpec(#[from] SpecError),
    #[error("invalid name: {0}")]
    InvalidName(#[from] NameError),
    #[error("request id must be 1 to {MAX_REQUEST_ID_LEN} bytes")]
    BadRequestId,
    #[error("request id {request_id:?} was used for job {job} with a different spec; use a new request id")]
    RequestIdReused { request_id: String, job: JobId },
    #[error("impossible request: {0}")]
    Impossible(#[from] Impossible),
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    #[error("job {0} is not one of an array's jobs")]
    NotAnArray(JobId),
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    #[error("job {job} belongs to member {owner}")]
    NotOwner { job: JobId, owner: MemberId },
    #[error("unknown proposal {0}")]
    UnknownProposal(u64),
    #[error("proposal {id} is {status}: it takes no more votes")]
    ProposalClosed { id: u64, status: String },
    #[error("{member} already voted on proposal {id}: one member, one vote")]
    AlreadyVoted { member: MemberId, id: u64 },
    #[error("bad proposal: {0}")]
    BadProposal(String),
    #[error("replica {id} at {addr:?}: ids start at 1 and the address is HOST:PORT")]
    BadReplica { id: u64, addr: String },
    #[error("node {node} belongs to member {owner}: only its owner authorizes it")]
    NodeOwned { node: NodeId, owner: MemberId },
    #[error("node {node} was authorized later than this request was issued: sign a new one")]
    GrantOutdated { node: NodeId },
    #[error("job {job} already ended as {state}")]
    AlreadyEnded { job: JobId, state: JobState },
    #[error("stale report: allocation {alloc} is not live on node {node}")]
    StaleAllocation { alloc: AllocId, node: NodeId },
    #[error("allocation {alloc} is {state}, not assigned")]
    BadAllocTransition { alloc: AllocId, state: AllocState },
    #[error("stale node event: node {node} is at incarnation {current}, not {given}")]
    StaleIncarnation {
        node: NodeId,
        current: u64,
        given: u64,
    },
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("the genesis policy was adopted already (version {version} is in force); changes go through a member vote")]
    GenesisAdopted { version: u64 },
    #[error("unknown command: this replica is older than the log")]
    UnknownCommand,
    #[error("{0}")]
    Auth(#[from] crate::identity::AuthError),
    #[error("bad genesis: {0}")]
    Genesis(String),
}

/// A snapshot that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("corrupt snapshot: {0}")]
pub struct SnapshotError(#[from] serde_json::Error);
