//! `View`: the read-only window the allocator and the explanations see the
//! replicated state through. The state builds one and calls them; they
//! never import `ClusterState`, so there is no import circle.

use std::collections::{BTreeMap, BTreeSet};

use crate::alloc::Allocation;
use crate::ids::{AllocId, JobId, MemberId, NodeId};
use crate::job::Job;
use crate::member::Member;
use crate::node::Node;
use crate::policy::Policy;
use crate::resources::Resources;

#[derive(Clone, Copy)]
pub struct View<'a> {
    pub policy: &'a Policy,
    pub members: &'a BTreeMap<MemberId, Member>,
    pub nodes: &'a BTreeMap<NodeId, Node>,
    pub jobs: &'a BTreeMap<JobId, Job>,
    pub allocs: &'a BTreeMap<AllocId, Allocation>,
    /// Pending jobs in submission order.
    pub pending: &'a BTreeSet<JobId>,
    /// The same jobs by member, each in submission order.
    pub queued: &'a QueueByMember,
    /// The log's time: when a job started now would end (reservations).
    pub now_ms: u64,
}

impl<'a> View<'a> {
    /// The nodes that can take work, in id order.
    pub fn ready_nodes(&self) -> impl Iterator<Item = &'a Node> + 'a {
        self.nodes.values().filter(|n| n.is_ready())
    }

    /// Capacity of the ready nodes.
    pub fn pool(&self) -> Resources {
        self.ready_nodes()
            .fold(Resources::ZERO, |acc, n| acc.saturating_add(&n.capacity))
    }

    /// Pending jobs in submission order.
    pub fn pending_jobs(&self) -> impl Iterator<Item = &'a Job> + 'a {
        let jobs = self.jobs;
        self.pending.iter().filter_map(move |id| jobs.get(id))
    }

    /// The live allocations on a node.
    pub fn node_allocs(&self, node: &'a Node) -> impl Iterator<Item = &'a Allocation> + 'a {
        let allocs = self.allocs;
        node.allocs().iter().filter_map(move |a| allocs.get(a))
    }

    /// GPU indices on a node not held by a live allocation.
    pub fn free_gpu_indices(&self, node: &Node) -> BTreeSet<u32> {
        gpus_free(node, self.node_allocs(node))
    }
}

/// GPU indices on `node` that none of `allocs` (its live allocations) holds.
pub(crate) fn gpus_free<'x>(
    node: &Node,
    allocs: impl IntoIterator<Item = &'x Allocation>,
) -> BTreeSet<u32> {
    let mut free: BTreeSet<u32> = (0..node.capacity.gpus).collect();
    for a in allocs {
        for g in &a.gpu_indices {
            free.remove(g);
        }
    }
    free
}

/// The pending queue by member, each in submission order (derived from the
/// pending queue; see `ClusterState`).
pub type QueueByMember = BTreeMap<MemberId, BTreeSet<JobId>>;

/// Puts a pending job in its member's queue.
pub(crate) fn enqueue(queued: &mut QueueByMember, member: &MemberId, id: JobId) {
    queued.entry(member.clone()).or_default().insert(id);
}

/// Takes a job out of its member's queue, and the member out of the index
/// when its queue empties.
pub(crate) fn dequeue(queued: &mut QueueByMember, member: &MemberId, id: JobId) {
    if let Some(queue) = queued.get_mut(member) {
        queue.remove(&id);
        if queue.is_empty() {
            queued.remove(member);
        }
    }
}
