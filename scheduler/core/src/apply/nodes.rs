//! Nodes joining and leaving the pool: a member authorizing a node key,
//! registration signed with that key (a new worker process is a new
//! incarnation), and loss (no heartbeat within the timeout).

use std::collections::BTreeSet;

use super::Time;
use crate::command::ExitStatus;
use crate::error::{CoreError, Impossible};
use crate::identity::{Auth, NodeReport, PublicKey};
use crate::ids::{validate_name, JobId, MemberId, NodeId};
use crate::job::JobState;
use crate::node::{
    GpuInfo, Node, NodeEngines, NodeGrant, NodeState, MAX_ENGINE_INFO_LEN, MAX_NODE_CAPACITY,
};
use crate::outcome::Outcome;
use crate::resources::Resources;
use crate::state::ClusterState;

/// A member authorizes its node's key (the first time, or a new key).
pub(super) fn add(
    state: &mut ClusterState,
    node: &NodeId,
    member: &MemberId,
    key: &PublicKey,
    request_id: &str,
    auth: &Auth,
    stamp: u64,
) -> Result<Outcome, CoreError> {
    state.check_add_node(node, member, key, request_id, auth, stamp)?;
    let issued_at_ms = state
        .node_grants()
        .get(node)
        .map_or(0, |g| g.issued_at_ms)
        .max(auth.issued_at_ms);
    state.grant_node(
        node.clone(),
        NodeGrant {
            owner: member.clone(),
            key: *key,
            issued_at_ms,
        },
    );
    Ok(Outcome::NodeAdded {
        node: node.clone(),
        owner: member.clone(),
    })
}

/// What a `RegisterNode` command carries.
pub struct Registration<'a> {
    pub node: &'a NodeId,
    pub owner: &'a MemberId,
    pub capacity: Resources,
    pub addr: &'a str,
    pub incarnation: u64,
    pub gpus: &'a [GpuInfo],
    pub engines: &'a NodeEngines,
    pub auth: &'a Auth,
}

impl ClusterState {
    /// Checks a registration without applying it: signed with the key the
    /// node's owner authorized, for a capacity that is possible.
    pub fn check_register(&self, r: &Registration<'_>, now: u64) -> Result<(), CoreError> {
        check(self, r, now)
    }
}

fn check(state: &ClusterState, r: &Registration<'_>, now: u64) -> Result<(), CoreError> {
    validate_name("node", r.node.as_str())?;
    validate_name("member", r.owner.as_str())?;
    let report = NodeReport::Register {
        owner: r.owner,
        capacity: &r.capacity,
        addr: r.addr,
        gpus: r.gpus,
        engines: r.engines,
    };
    state.verify_node_report(r.node, r.incarnation, r.auth, &report, now)?;
    // A node contributes to its owner's share: the member who authorized it.
    if let Some(grant) = state.node_grants().get(r.node) {
        if &grant.owner != r.owner {
            return Err(CoreError::NodeOwned {
                node: r.node.clone(),
                owner: grant.owner.clone(),
            });
        }
    }
    if r.capacity.cpu_millis == 0 || r.capacity.memory_bytes == 0 {
        return Err(Impossible::EmptyNode.into());
    }
    if !r.capacity.fits_in(&MAX_NODE_CAPACITY) {
        return Err(Impossible::NodeTooLarge {
            node: r.node.clone(),
            offered: r.capacity,
            max: MAX_NODE_CAPACITY,
        }
        .into());
    }
    let e = r.engines;
    if (e.cuda && e.onnxruntime.is_none())
        || e.onnxruntime
            .as_ref()
            .is_some_and(|i| i.len() > MAX_ENGINE_INFO_LEN)
    {
        return Err(Impossible::EngineInventory {
            node: r.node.clone(),
        }
        .into());
    }
    if !r.gpus.is_empty() {
        let indices: BTreeSet<u32> = r.gpus.iter().map(|g| g.index).collect();
        if r.gpus.len() != r.capacity.gpus as usize || indices != (0..r.capacity.gpus).collect() {
            return Err(Impossible::GpuInventory {
                node: r.node.clone(),
                listed: r.gpus.len(),
                offered: r.capacity.gpus,
            }
            .into());
        }
    }
    if let Some(existing) = state.nodes().get(r.node) {
        if r.incarnation < existing.incarnation {
            return Err(CoreError::StaleIncarnation {
                node: r.node.clone(),
                current: existing.incarnation,
                given: r.incarnation,
            });
        }
        // Within one worker process the capacity is fixed: allocations
        // were sized against it, so a change needs a new incarnation.
        if r.incarnation == existing.incarnation
            && (r.capacity != existing.capacity
                || existing.owner != *r.owner
                || existing.engines != *r.engines)
        {
            return Err(Impossible::NodeChanged {
                node: r.node.clone(),
            }
            .into());
        }
    }
    Ok(())
}

pub(super) fn register(
    state: &mut ClusterState,
    r: Registration<'_>,
    at: Time,
) -> Result<Outcome, CoreError> {
    let Time { stamp, now } = at;
    check(state, &r, stamp)?;
    let existing = state
        .nodes()
        .get(r.node)
        .map(|n| (n.owner.clone(), n.incarnation == r.incarnation));
    let same_incarnation = existing.as_ref().is_some_and(|(_, same)| *same);
    let mut requeued = Vec::new();
    if existing.is_some() && !same_incarnation {
        // A new worker process: whatever the old one ran is gone with it.
        requeued = end_node_allocs(state, r.node, now, "its worker restarted").0;
    }
    let inventory: Vec<GpuInfo> = if r.gpus.is_empty() {
        (0..r.capacity.gpus)
            .map(|index| GpuInfo {
                index,
                ..GpuInfo::default()
            })
            .collect()
    } else {
        r.gpus.to_vec()
    };
    let node = state.insert_node(Node::new(
        r.node.clone(),
        r.owner.clone(),
        r.capacity,
        r.addr.to_string(),
        r.incarnation,
        now,
    ));
    node.owner = r.owner.clone();
    node.capacity = r.capacity;
    node.addr = r.addr.to_string();
    node.incarnation = r.incarnation;
    node.state = NodeState::Ready;
    node.gpus = inventory;
    node.engines = r.engines.clone();
    if !same_incarnation {
        node.registered_at_ms = now;
    }
    state.refresh_offered(r.owner, now);
    if let Some((prev, _)) = existing.filter(|(p, _)| p != r.owner) {
        state.refresh_offered(&prev, now);
    }
    Ok(Outcome::NodeRegistered {
        node: r.node.clone(),
        requeued,
    })
}

pub(super) fn lost(
    state: &mut ClusterState,
    node_id: &NodeId,
    incarnation: u64,
    now: u64,
) -> Result<Outcome, CoreError> {
    let node = state
        .nodes()
        .get(node_id)
        .ok_or_else(|| CoreError::UnknownNode(node_id.clone()))?;
    if node.incarnation != incarnation || node.state == NodeState::Lost {
        return Err(CoreError::StaleIncarnation {
            node: node_id.clone(),
            current: node.incarnation,
            given: incarnation,
        });
    }
    let owner = node.owner.clone();
    let (requeued, failed) = end_node_allocs(state, node_id, now, "its node was lost");
    if let Some(node) = state.node_mut(node_id) {
        node.state = NodeState::Lost;
    }
    state.mark_pass_due();
    state.refresh_offered(&owner, now);
    Ok(Outcome::NodeLost {
        node: node_id.clone(),
        requeued,
        failed,
    })
}

/// Ends every live allocation on a node as lost; their jobs requeue while
/// retries remain. Returns (requeued, failed).
fn end_node_allocs(
    state: &mut ClusterState,
    node_id: &NodeId,
    now: u64,
    why: &str,
) -> (Vec<JobId>, Vec<JobId>) {
    let allocs: Vec<_> = state
        .nodes()
        .get(node_id)
        .map(|n| n.allocs().iter().copied().collect())
        .unwrap_or_default();
    let mut requeued = Vec::new();
    let mut failed = Vec::new();
    for alloc_id in allocs {
        let Some(alloc) = state.remove_alloc(alloc_id, now) else {
            continue;
        };
        let exit = ExitStatus {
            code: None,
            signal: None,
            error: format!("allocation {alloc_id} lost: {why}"),
        };
        match super::results::end_run(state, &alloc, &exit, now) {
            JobState::Pending => requeued.push(alloc.job),
            JobState::Failed => failed.push(alloc.job),
            _ => {}
        }
    }
    (requeued, failed)
}
