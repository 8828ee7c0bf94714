//! The cluster's birth: its id, the genesis policy and the founding
//! members, adopted once. Later changes come only through member votes.

use std::collections::BTreeSet;

use crate::command::Founder;
use crate::error::CoreError;
use crate::ids::{validate_name, MemberId};
use crate::outcome::Outcome;
use crate::policy::Policy;
use crate::state::ClusterState;

/// Most founding members one genesis may list.
const MAX_FOUNDERS: usize = 1000;

fn check(cluster_id: &str, policy: &Policy, founders: &[Founder]) -> Result<(), CoreError> {
    validate_name("cluster", cluster_id)?;
    policy.validate()?;
    if founders.is_empty() || founders.len() > MAX_FOUNDERS {
        return Err(CoreError::Genesis(format!(
            "list 1 to {MAX_FOUNDERS} founding members"
        )));
    }
    let mut names = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for f in founders {
        validate_name("member", f.name.as_str())?;
        if !names.insert(&f.name) {
            return Err(CoreError::Genesis(format!("{} is listed twice", f.name)));
        }
        // One key, one member: otherwise one holder would have two votes.
        if !keys.insert(f.key) {
            return Err(CoreError::Genesis(format!(
                "{}'s key is another founder's too",
                f.name
            )));
        }
    }
    Ok(())
}

pub(super) fn genesis(
    state: &mut ClusterState,
    cluster_id: &str,
    policy: &Policy,
    founders: &[Founder],
    now: u64,
) -> Result<Outcome, CoreError> {
    if state.genesis_adopted() {
        return Err(CoreError::GenesisAdopted {
            version: state.policy().version,
        });
    }
    check(cluster_id, policy, founders)?;
    state.found(cluster_id, founders, now);
    state.set_policy(policy.clone(), true);
    let owners: BTreeSet<MemberId> = state.nodes().values().map(|n| n.owner.clone()).collect();
    for owner in owners {
        state.refresh_offered(&owner, now);
    }
    Ok(Outcome::PolicyAdopted {
        version: policy.version,
    })
}
