//! Stage 1b: reservations for large jobs, with Slurm's backfill as the
//! model. Without them every freed core goes to smaller queued jobs, and a
//! member below its entitlement whose job needs a whole node waits for as
//! long as others keep submitting non-preemptible work.
//!
//! ```text
//!  for each member m below its entitlement, lowest key first:
//!    J   = m's oldest waiting job, if it keeps m within its entitlement and
//!          the cap and fits on no node now
//!    T_n = the earliest time J fits on ready node n, counting what is free,
//!          what is being stopped (now) and each allocation's expected end
//!          (its start + its job's timeout; never, without a timeout)
//!    reserve the node with the least finite T_n (ties by node id), one
//!    reservation per node; at most MAX_EXAMINED jobs examined per pass
//!  another job K may start on a reserved node only if
//!    now + timeout_K <= T  (it ends before J starts), or
//!    K fits in spare = free_at(T) - J  (it does not delay J; spare shrinks)
//! ```
//!
//! Reservations are recomputed from the state at every pass (nothing is
//! stored), so `why` and `status` show exactly what the pass honours.

use std::collections::BTreeSet;

use crate::alloc::{AllocState, Allocation};
use crate::ids::{AllocId, JobId, MemberId, NodeId};
use crate::job::Job;
use crate::node::Node;
use crate::resources::Resources;
use crate::view::View;

use super::shares::Queues;
use super::Occupied;
use super::{add, dominant, over_cap, share_of, Shares, EPS};

/// The most jobs one pass examines for a reservation (Slurm bounds its
/// backfill scan the same way, `bf_max_job_test`): each costs a walk over
/// the ready nodes.
pub const MAX_EXAMINED: usize = 64;

/// Room held on one node for a large job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub job: JobId,
    pub member: MemberId,
    pub node: NodeId,
    /// When the job is expected to fit there (log time, ms).
    pub start_ms: u64,
    pub resources: Resources,
    /// What the node will have free at `start_ms` beyond the job's needs:
    /// room other jobs may use without delaying it.
    pub spare: Resources,
}

/// When a job started now would end at the latest: `None` without a timeout.
fn ends_by(job: &Job, now_ms: u64) -> Option<u64> {
    job.spec
        .timeout_secs
        .map(|t| now_ms.saturating_add(t.saturating_mul(1000)))
}

/// Whether `job`, started now on a node held by `r`, leaves before the
/// reserved job needs the room (or is that job).
fn out_of_the_way(r: &Reservation, job: &Job, now_ms: u64) -> bool {
    job.id == r.job || ends_by(job, now_ms).is_some_and(|end| end <= r.start_ms)
}

/// Whether `job` may start on a node held by `r` without delaying it.
pub(crate) fn allows(r: &Reservation, job: &Job, now_ms: u64) -> bool {
    out_of_the_way(r, job, now_ms) || job.spec.resources.fits_in(&r.spare)
}

/// Records that `job` started on a node held by `r`.
pub(crate) fn consume(r: &mut Reservation, job: &Job, now_ms: u64) {
    if !out_of_the_way(r, job, now_ms) {
        r.spare = r.spare.saturating_sub(&job.spec.resources);
    }
}

/// This pass's reservations, in the order they were made. `fits_now`
/// answers whether a job fits on some ready node as the pass begins.
pub(super) fn plan(
    view: &View<'_>,
    shares: &Shares,
    queues: &Queues<'_>,
    occupied: &[Occupied<'_>],
    mut fits_now: impl FnMut(&Job) -> bool,
) -> Vec<Reservation> {
    let now = view.now_ms;
    let mut members: Vec<&MemberId> = queues.keys().copied().collect();
    shares.sort_by_key(&mut members);
    // Only nodes where something is due to end can hold a job later; their
    // timelines are built once, when the first job is examined.
    let mut timed: Option<Vec<Timeline<'_>>> = None;
    let mut taken: BTreeSet<&NodeId> = BTreeSet::new();
    let mut out = Vec::new();
    let mut examined = 0;
    for member in members {
        if examined == MAX_EXAMINED {
            break;
        }
        let standing = &shares.members[member];
        let Some(&job) = queues[member].first() else {
            continue;
        };
        let after = add(
            &standing.share,
            &share_of(&job.spec.resources, &shares.pool),
        );
        if dominant(&standing.share) + EPS >= standing.entitlement
            || dominant(&after) > standing.entitlement + EPS
            || over_cap(view.policy, &after)
        {
            continue;
        }
        examined += 1;
        // A job that fits somewhere now needs no reservation: it is placed
        // in its member's turn (and a loan in its way is withdrawn).
        if fits_now(job) {
            continue;
        }
        let timed = timed.get_or_insert_with(|| {
            occupied
                .iter()
                .map(|o| Timeline::of(o, now))
                .filter(|tl| !tl.ends.is_empty())
                .collect()
        });
        let best = timed
            .iter()
            .filter(|tl| !taken.contains(&tl.node.id))
            .filter_map(|tl| fits_at(tl, job, now).map(|(t, free)| (t, tl.node, free)))
            .min_by(|a, b| a.0.cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
        if let Some((start_ms, node, free)) = best {
            taken.insert(&node.id);
            out.push(Reservation {
                job: job.id,
                member: member.clone(),
                node: node.id.clone(),
                start_ms,
                resources: job.spec.resources,
                spare: free.saturating_sub(&job.spec.resources),
            });
        }
    }
    out
}

/// When an allocation is expected to end at the latest: now if it is being
/// stopped, else its start plus its job's timeout; `None` without one.
pub(crate) fn expected_end(view: &View<'_>, a: &Allocation, now: u64) -> Option<u64> {
    ends(a, view.jobs.get(&a.job), now)
}

fn ends(a: &Allocation, job: Option<&Job>, now: u64) -> Option<u64> {
    if a.state == AllocState::Stopping {
        return Some(now);
    }
    let j = job?;
    let started = j.started_at_ms.unwrap_or(now);
    let end = started.saturating_add(j.spec.timeout_secs?.saturating_mul(1000));
    Some(end.max(now))
}

/// What ends on a node, and when: allocations being stopped (now) and
/// those whose job has a timeout (its start + the timeout), soonest first.
/// Built once per pass; allocations without a timeout never end here.
struct Timeline<'a> {
    node: &'a Node,
    free_gpus: &'a BTreeSet<u32>,
    ends: Vec<(u64, AllocId, Resources, &'a [u32])>,
}

impl<'a> Timeline<'a> {
    fn of(occupied: &'a Occupied<'_>, now: u64) -> Self {
        let mut ends: Vec<(u64, AllocId, Resources, &'a [u32])> = occupied
            .allocs
            .iter()
            .filter_map(|(a, job)| {
                let end = ends(a, *job, now)?;
                Some((end, a.id, a.resources, a.gpu_indices.as_slice()))
            })
            .collect();
        ends.sort_unstable_by_key(|e| (e.0, e.1));
        Self {
            node: occupied.node,
            free_gpus: &occupied.free_gpus,
            ends,
        }
    }
}

/// The earliest time `job` could start on `node` as its allocations end
/// (the log's time when it fits now); `None` if never.
pub fn earliest_fit(view: &View<'_>, node: &Node, job: &Job) -> Option<u64> {
    let now = view.now_ms;
    let occupied = Occupied::of(view, node);
    fits_at(&Timeline::of(&occupied, now), job, now).map(|(t, _)| t)
}

/// The earliest time `job` fits on the timeline's node, and what is free
/// then; `None` if it never does.
fn fits_at(tl: &Timeline<'_>, job: &Job, now: u64) -> Option<(u64, Resources)> {
    let node = tl.node;
    let want = job.spec.resources;
    if !want.fits_in(&node.capacity) || !node.runs(&job.spec) {
        return None;
    }
    let model = job.spec.gpu_model.as_deref();
    let min_mem = job.spec.gpu_min_memory_bytes;
    let matching = |gpus: &mut dyn Iterator<Item = &u32>| {
        gpus.filter(|&&i| node.gpu_matches(i, model, min_mem))
            .count() as u32
    };
    let mut free = node.free();
    // Free GPUs are only looked up for a job that asks for some.
    let mut gpus = if want.gpus == 0 {
        0
    } else {
        matching(&mut tl.free_gpus.iter())
    };
    let fits = |free: &Resources, gpus: u32| want.fits_in(free) && gpus >= want.gpus;
    if fits(&free, gpus) {
        return Some((now, free));
    }
    for &(end, _, resources, held) in &tl.ends {
        free = free.saturating_add(&resources);
        if want.gpus > 0 {
            gpus += matching(&mut held.iter());
        }
        if fits(&free, gpus) {
            return Some((end, free));
        }
    }
    None
}
