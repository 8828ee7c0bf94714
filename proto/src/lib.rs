//! `coop-proto`: the gRPC API (members, workers, raft transport) generated
//! from `proto/coop/*.proto`, and the one table of conversions between its
//! messages and coop-core's types (`convert`), used by the scheduler, the
//! worker and the CLI alike.

/// Generated code, nested as the proto packages are (`coop.api.v1`, ...).
pub mod coop {
    pub mod api {
        pub mod v1 {
            tonic::include_proto!("coop.api.v1");
        }
    }
    pub mod worker {
        pub mod v1 {
            tonic::include_proto!("coop.worker.v1");
        }
    }
    pub mod raft {
        pub mod v1 {
            tonic::include_proto!("coop.raft.v1");
        }
    }
}

pub use coop::api::v1 as api;
pub use coop::raft::v1 as raft;
pub use coop::worker::v1 as worker;

pub mod convert;
pub mod disk;
pub mod keyfile;
pub mod metrics_http;
pub mod net;
pub mod read_auth;
pub mod status;
pub mod tls;

/// Largest gRPC message any Coop service accepts or sends: big enough for a
/// batch of raft entries or a log chunk, small enough that one request
/// cannot exhaust a replica's memory.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Metadata key carrying the leader's address on a "not leader" answer.
pub const LEADER_METADATA: &str = "coop-leader";

include!(concat!(env!("OUT_DIR"), "/rpcs.rs"));
