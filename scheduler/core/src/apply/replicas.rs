//! Changes of the replica group, as members asked for them: recorded in
//! the log (who, when, where) before the scheduler changes the Raft
//! membership.

use super::Time;
use crate::error::CoreError;
use crate::identity::Auth;
use crate::ids::MemberId;
use crate::outcome::Outcome;
use crate::state::{ClusterState, ReplicaChange};

pub(super) fn add(
    state: &mut ClusterState,
    id: u64,
    addr: &str,
    member: &MemberId,
    request_id: &str,
    auth: &Auth,
    at: Time,
) -> Result<Outcome, CoreError> {
    let Time { stamp, now } = at;
    state.check_add_replica(id, addr, member, request_id, auth, stamp)?;
    record(state, id, addr, true, member, now)
}

pub(super) fn remove(
    state: &mut ClusterState,
    id: u64,
    addr: &str,
    member: &MemberId,
    request_id: &str,
    auth: &Auth,
    at: Time,
) -> Result<Outcome, CoreError> {
    let Time { stamp, now } = at;
    state.check_remove_replica(id, member, request_id, auth, stamp)?;
    record(state, id, addr, false, member, now)
}

fn record(
    state: &mut ClusterState,
    id: u64,
    addr: &str,
    added: bool,
    member: &MemberId,
    now: u64,
) -> Result<Outcome, CoreError> {
    state.record_replica(ReplicaChange {
        id,
        addr: addr.to_string(),
        added,
        member: member.clone(),
        at_ms: now,
    });
    Ok(Outcome::ReplicaRecorded { id })
}
