//! The allocator: a pure function from the state to the placements of one
//! scheduling pass. `apply(Schedule)` carries the plan out, so every replica
//! computes the same placements from the same log.
//!
//! This is first-fit in submission order: each pending job, oldest first,
//! goes to the first ready node (by node id) with room for it. The fair-share
//! allocator replaces it.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{JobId, NodeId};
use crate::node::NodeState;
use crate::resources::Resources;
use crate::state::ClusterState;

/// One placement the pass wants, before an allocation id is given to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedPlacement {
    pub job: JobId,
    pub node: NodeId,
    pub resources: Resources,
    pub gpu_indices: Vec<u32>,
}

struct NodeRoom<'a> {
    id: &'a NodeId,
    free: Resources,
    free_gpus: BTreeSet<u32>,
}

/// Plans one first-fit pass. Cost: O(pending x ready nodes) in the worst
/// case; the pass stops early once no node has cpu and memory left.
pub fn plan_first_fit(state: &ClusterState) -> Vec<PlannedPlacement> {
    let mut rooms: Vec<NodeRoom<'_>> = state
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Ready)
        .map(|n| NodeRoom {
            id: &n.id,
            free: n.free(),
            free_gpus: state.free_gpu_indices(n),
        })
        .collect();
    let mut plan = Vec::new();
    for job_id in &state.pending {
        if rooms
            .iter()
            .all(|r| r.free.cpu_millis == 0 || r.free.memory_bytes == 0)
        {
            break;
        }
        let Some(job) = state.jobs.get(job_id) else {
            continue;
        };
        let want = job.spec.resources;
        if let Some(room) = rooms.iter_mut().find(|r| want.fits_in(&r.free)) {
            room.free = room.free.saturating_sub(&want);
            let gpu_indices: Vec<u32> = room
                .free_gpus
                .iter()
                .take(want.gpus as usize)
                .copied()
                .collect();
            for g in &gpu_indices {
                room.free_gpus.remove(g);
            }
            plan.push(PlannedPlacement {
                job: *job_id,
                node: room.id.clone(),
                resources: want,
                gpu_indices,
            });
        }
    }
    plan
}

/// Every reason a pending job waits, most important first, computed from the
/// state as it is now (so it is never stale).
pub fn pending_reasons(state: &ClusterState, job: JobId) -> Vec<String> {
    let Some(job) = state.jobs.get(&job) else {
        return vec![];
    };
    let want = job.spec.resources;
    let ready: Vec<_> = state
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Ready)
        .collect();
    let mut reasons = Vec::new();
    if ready.is_empty() {
        reasons.push("no ready node in the pool".to_string());
        return reasons;
    }
    let big_enough: Vec<_> = ready.iter().filter(|n| want.fits_in(&n.capacity)).collect();
    if big_enough.is_empty() {
        reasons.push(format!(
            "no ready node has the capacity for {want} (ready nodes: {})",
            ready.len()
        ));
        return reasons;
    }
    let mut short: BTreeMap<&'static str, usize> = BTreeMap::new();
    for n in &big_enough {
        for dim in want.shortfall(&n.free()) {
            *short.entry(dim).or_default() += 1;
        }
    }
    if short.is_empty() {
        reasons.push("resources are free now; it is placed at the next scheduling pass".into());
    } else {
        let dims: Vec<String> = short
            .iter()
            .map(|(dim, count)| {
                format!(
                    "{dim} on {count} of {} large-enough nodes",
                    big_enough.len()
                )
            })
            .collect();
        reasons.push(format!(
            "waiting for free resources: not enough {}",
            dims.join(", ")
        ));
    }
    let ahead = state.pending.range(..job.id).count();
    if ahead > 0 {
        reasons.push(format!(
            "{ahead} older pending jobs are placed first (first-fit in submission order)"
        ));
    }
    reasons
}

/// Sums what is free on ready nodes (for `cluster status` and pending reasons).
pub fn free_total(state: &ClusterState) -> Resources {
    state
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Ready)
        .fold(Resources::ZERO, |acc, n| acc.saturating_add(&n.free()))
}
