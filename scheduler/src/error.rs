//! The one table from scheduler errors to gRPC statuses.

use coop_core::CoreError;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::raft::WriteError;

pub fn core_status(e: &CoreError) -> Status {
    let code = match e {
        CoreError::InvalidSpec(_)
        | CoreError::InvalidName(_)
        | CoreError::BadReplica { .. }
        | CoreError::BadRequestId
        | CoreError::Impossible(_) => Code::InvalidArgument,
        CoreError::UnknownJob(_) | CoreError::UnknownNode(_) | CoreError::UnknownProposal(_) => {
            Code::NotFound
        }
        CoreError::NotAnArray(_) => Code::InvalidArgument,
        CoreError::BadProposal(_) => Code::InvalidArgument,
        CoreError::ProposalClosed { .. } => Code::FailedPrecondition,
        CoreError::AlreadyVoted { .. } => Code::AlreadyExists,
        CoreError::NotOwner { .. } | CoreError::NodeOwned { .. } => Code::PermissionDenied,
        CoreError::GrantOutdated { .. } => Code::FailedPrecondition,
        CoreError::RequestIdReused { .. } => Code::AlreadyExists,
        CoreError::AlreadyEnded { .. }
        | CoreError::StaleAllocation { .. }
        | CoreError::BadAllocTransition { .. }
        | CoreError::StaleIncarnation { .. } => Code::FailedPrecondition,
        CoreError::Policy(_) | CoreError::GenesisAdopted { .. } | CoreError::Genesis(_) => {
            Code::FailedPrecondition
        }
        CoreError::Auth(coop_core::AuthError::BadKey { .. }) => Code::InvalidArgument,
        CoreError::Auth(_) => Code::Unauthenticated,
        CoreError::UnknownCommand => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// "Not the leader" is UNAVAILABLE (retryable) with the leader's address in
/// metadata, so a worker can go straight there.
pub fn not_leader(leader_addr: Option<&str>) -> Status {
    let mut status = Status::unavailable(match leader_addr {
        Some(addr) => format!("not the leader; the leader is at {addr}"),
        None => "no leader elected yet; retry shortly".to_string(),
    });
    if let Some(v) = leader_addr.and_then(|a| MetadataValue::try_from(a).ok()) {
        status.metadata_mut().insert(coop_proto::LEADER_METADATA, v);
    }
    status
}

pub fn write_status(e: &WriteError) -> Status {
    match e {
        WriteError::NotLeader { leader_addr, .. } => not_leader(leader_addr.as_deref()),
        WriteError::Uncertain => Status::unavailable(e.to_string()),
        WriteError::Fatal(_) => Status::internal(e.to_string()),
    }
}

/// Why a replica (or a local cluster of them) could not start or form.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("storage: {0}")]
    Storage(String),
    #[error("start raft: {0}")]
    Raft(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tls: {0}")]
    Tls(String),
    #[error("cluster already initialized")]
    AlreadyInitialized,
    #[error("no leader elected within {0:?}")]
    NoLeader(std::time::Duration),
}

impl StartError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
        let what = what.into();
        move |source| StartError::Io { what, source }
    }
}
