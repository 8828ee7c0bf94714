//! `coop-scheduler`: a replica of Coop's scheduler. openraft glue around
//! `coop-core`, the gRPC services, and the leader driver.
//!
//! ```text
//!  coop CLI ─▶ CoopService ─┐             ┌─▶ RaftTransportService ◀─ peers
//!  workers ──▶ GatewayService ─▶ Shared ──┤
//!                               (RaftNode)└─▶ driver (leader: Schedule, NodeLost)
//! ```

pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod convert;
pub mod driver;
pub mod error;
pub mod gateway;
pub mod local;
pub mod metrics;
pub mod raft;
pub mod replica;
pub mod shared;
pub mod witness;

pub use config::Config;
pub use replica::Replica;
