//! `coop-scheduler`: a replica of Coop's scheduler. openraft glue around
//! `coop-core`, the gRPC services, and the leader driver.

pub mod raft;
