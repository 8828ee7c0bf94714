//! The fair-share allocator: who is entitled to what, and one scheduling
//! pass that places jobs and reclaims lent capacity. docs/policy.md gives
//! every formula with a worked example.
//!
//! ```text
//!  entitlement_m = floor / |A| + (1 - floor) * contribution_m / sum_A contribution
//!  dominant_m    = max_r allocated_m,r / pool_r                   (DRF)
//!  key_m         = (dominant_m + usage_weight * usage_share_m) / entitlement_m
//! ```
//!
//! A = members with demand (pending or running jobs). By stage:
//!
//! ```text
//!  shares.rs   entitlements, shares and keys from the state
//!  pass.rs     owner-first, then weighted DRF by progressive filling
//!  reclaim.rs  members below entitlement take back lent capacity
//! ```
//!
//! The allocator reads the state through a `View` and returns a `Plan`; it
//! changes nothing (`crate::apply` carries the plan out).

mod pass;
mod reclaim;
mod reserve;
mod shares;

use std::cmp::Ordering;
use std::collections::BTreeSet;

use crate::alloc::Allocation;
use crate::decision::Rule;
use crate::ids::{AllocId, JobId, NodeId};
use crate::job::Job;
use crate::node::Node;
use crate::policy::Policy;
use crate::resources::Resources;
use crate::view::{gpus_free, View};

pub(crate) use pass::pick_gpus;
pub(crate) use reserve::{allows as reservation_allows, expected_end};
pub use reserve::{earliest_fit, Reservation, MAX_EXAMINED};
pub use shares::{compute_shares, compute_shares_at, MemberShare, Shares};

/// Slack for comparing shares computed in floating point.
pub const EPS: f64 = 1e-9;

/// Request shapes remembered per pass as "found no room": anything at least
/// as large in every dimension is skipped without a node search. Bounded so
/// the check stays cheap whatever the mix of shapes.
pub(crate) const MAX_FAILED_SHAPES: usize = 64;

/// A request that found no room in a pass. A job no smaller in any
/// dimension that may run no shorter cannot find room either: free room
/// only shrinks, and a reservation lets only shorter jobs through.
#[derive(Clone, Copy)]
pub(crate) struct Shape {
    resources: Resources,
    runs_secs: u64,
}

impl Shape {
    pub fn of(job: &Job) -> Self {
        Self {
            resources: job.spec.resources,
            runs_secs: job.spec.timeout_secs.unwrap_or(u64::MAX),
        }
    }

    pub fn covers(&self, job: &Job) -> bool {
        let other = Shape::of(job);
        self.resources.fits_in(&other.resources) && other.runs_secs >= self.runs_secs
    }
}

/// One placement the pass wants, before an allocation id is given to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedPlacement {
    pub job: JobId,
    pub node: NodeId,
    pub resources: Resources,
    pub gpu_indices: Vec<u32>,
    pub rule: Rule,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedPreemption {
    pub alloc: AllocId,
    pub for_job: JobId,
    pub rule: Rule,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub placements: Vec<PlannedPlacement>,
    pub preemptions: Vec<PlannedPreemption>,
    /// Loans this pass planned and then took back for a claimant. Room they
    /// leave over is only refilled by another pass, so the caller runs one.
    pub revoked: usize,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.placements.is_empty() && self.preemptions.is_empty()
    }
}

/// The rooms a pass would now hold for large jobs (docs/policy.md §6).
pub fn reservations(view: &View<'_>, shares: &Shares) -> Vec<Reservation> {
    pass::reservations(view, shares, &shares::queues(view), &occupancy(view))
}

/// A ready node with its live allocations and their jobs, looked up once
/// per pass: the fill, the reservations and reclaim each used to look them
/// up again, which cost more than the rest of a pass on a full pool.
pub(crate) struct Occupied<'a> {
    pub node: &'a Node,
    /// With the job of each that has a timeout (when it ends).
    pub allocs: Vec<(&'a Allocation, Option<&'a Job>)>,
    /// GPU indices no live allocation holds.
    pub free_gpus: BTreeSet<u32>,
}

impl<'a> Occupied<'a> {
    pub fn of(view: &View<'a>, node: &'a Node) -> Self {
        let allocs: Vec<(&Allocation, Option<&Job>)> = view
            .node_allocs(node)
            .map(|a| {
                let timed = a.facts.timeout_secs.is_some();
                (a, timed.then(|| view.jobs.get(&a.job)).flatten())
            })
            .collect();
        let free_gpus = gpus_free(node, allocs.iter().map(|(a, _)| *a));
        Self {
            node,
            allocs,
            free_gpus,
        }
    }
}

/// Every ready node's occupancy, in id order.
pub(crate) fn occupancy<'a>(view: &View<'a>) -> Vec<Occupied<'a>> {
    view.ready_nodes().map(|n| Occupied::of(view, n)).collect()
}

/// Plans one scheduling pass. Cost: O(P log M + P log N) for P pending
/// jobs, M members and N nodes when nodes are alike (see `nodefit`).
pub fn plan(view: &View<'_>) -> Plan {
    let queues = shares::queues(view);
    let shares = shares::for_pass(view, &queues);
    let occupied = occupancy(view);
    let filled = pass::fill(view, &shares, queues, &occupied);
    reclaim::reclaim(view, &shares, filled, &occupied)
}

/// The share a request is of the pool, per dimension (gpu, cpu, memory).
pub fn share_of(r: &Resources, pool: &Resources) -> [f64; 3] {
    let f = |x: f64, total: f64| if total > 0.0 { x / total } else { 0.0 };
    [
        f(r.gpus as f64, pool.gpus as f64),
        f(r.cpu_millis as f64, pool.cpu_millis as f64),
        f(r.memory_bytes as f64, pool.memory_bytes as f64),
    ]
}

pub(crate) fn dominant(share: &[f64; 3]) -> f64 {
    share.iter().copied().fold(0.0, f64::max)
}

pub(crate) fn add(a: &[f64; 3], b: &[f64; 3]) -> [f64; 3] {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

pub(crate) fn sub(a: &[f64; 3], b: &[f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

/// Whether a dominant share this large passes the policy's member cap.
pub(crate) fn over_cap(policy: &Policy, share: &[f64; 3]) -> bool {
    policy
        .member_cap
        .is_some_and(|cap| dominant(share) > cap + EPS)
}

/// Priority key: (dominant + w * usage_share) / entitlement; +inf without entitlement.
pub fn priority_key(
    dominant_share: f64,
    usage_share: f64,
    entitlement: f64,
    policy: &Policy,
) -> f64 {
    if entitlement <= 0.0 {
        return f64::INFINITY;
    }
    (dominant_share + policy.usage_weight * usage_share) / entitlement
}

/// Total order on f64 keys (they are never NaN: entitlements are > 0 or the key is +inf).
#[derive(Clone, Copy, PartialEq)]
pub(crate) struct Key(pub f64);

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}
