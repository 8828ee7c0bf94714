//! The policy in force: the genesis policy, adopted once. Later changes
//! come only through member votes.

use crate::error::CoreError;
use crate::ids::MemberId;
use crate::outcome::Outcome;
use crate::policy::Policy;
use crate::state::ClusterState;

pub(super) fn adopt_genesis(
    state: &mut ClusterState,
    policy: &Policy,
    now: u64,
) -> Result<Outcome, CoreError> {
    if state.genesis_adopted() {
        return Err(CoreError::GenesisAdopted {
            version: state.policy().version,
        });
    }
    policy.validate()?;
    // Bring every ledger up to now under the old rates first.
    state.accrue_all(now);
    state.set_policy(policy.clone(), true);
    let owners: std::collections::BTreeSet<MemberId> =
        state.nodes().values().map(|n| n.owner.clone()).collect();
    for owner in owners {
        state.refresh_offered(&owner, now);
    }
    Ok(Outcome::PolicyAdopted {
        version: policy.version,
    })
}
