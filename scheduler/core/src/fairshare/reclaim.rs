//! Stage 3: reclaim. Members below entitlement whose jobs still wait take
//! back preemptible allocations from the members furthest above theirs. A
//! claim is only made within the claimant's entitlement, and a victim is
//! only taken while its member is above its own, so two members never
//! preempt each other back and forth.
//!
//! Loans this very pass planned count as victims too (they are simply not
//! made): the next pass, seeing them as allocations, would otherwise
//! preempt them, and the pass would not be a fixed point.

use std::collections::{BTreeMap, BTreeSet};

use crate::alloc::AllocState;
use crate::decision::Rule;
use crate::ids::{AllocId, JobId, MemberId, NodeId};
use crate::job::Job;
use crate::resources::Resources;
use crate::view::View;

use super::pass::{pick_gpus, Filled, Room};
use super::reserve::{allows, consume};
use super::Occupied;
use super::{
    add, dominant, over_cap, share_of, sub, Key, Plan, PlannedPlacement, PlannedPreemption, Shape,
    Shares, EPS, MAX_FAILED_SHAPES,
};

/// Something reclaim can take back: a running allocation (preempted), or a
/// loan this very pass planned (simply not made).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Taken {
    Alloc(AllocId),
    Loan(JobId),
}

impl Taken {
    /// A total order for ties: allocations by id, then loans by job.
    fn order(self) -> (u8, u64) {
        match self {
            Taken::Alloc(a) => (0, a.0),
            Taken::Loan(j) => (1, j.0),
        }
    }
}

struct Victim<'a> {
    what: Taken,
    resources: Resources,
    gpu_indices: &'a [u32],
    member: &'a MemberId,
    /// When it was placed: the later, the less work a preemption loses
    /// (a loan of this pass has run not at all).
    placed_at_ms: u64,
}

impl Victim<'_> {
    fn is_loan(&self) -> bool {
        matches!(self.what, Taken::Loan(_))
    }
}

/// Per node: what is already being freed, and what could be taken back.
/// Members only fall during reclaim, so one not above its entitlement now
/// never becomes a victim in this pass.
struct NodeView<'a> {
    /// Free now plus what is being vacated (stopping allocations).
    incoming: Resources,
    incoming_gpus: BTreeSet<u32>,
    candidates: Vec<Victim<'a>>,
    /// incoming plus every candidate: an upper bound on what reclaim could free here.
    potential: Resources,
    /// What is free now, not counting what is still being vacated.
    free_now: Resources,
}

impl NodeView<'_> {
    fn refresh_potential(&mut self) {
        self.potential = self
            .candidates
            .iter()
            .fold(self.incoming, |acc, c| acc.saturating_add(&c.resources));
    }
}

/// The standing of every member during reclaim, as claims are made.
struct Standing<'s, 'a> {
    shares: &'s Shares,
    now: BTreeMap<&'a MemberId, [f64; 3]>,
}

impl Standing<'_, '_> {
    /// Whether a member is above its entitlement (a former member, whose
    /// allocations may outlive its membership, has none).
    fn above(&self, m: &MemberId) -> bool {
        match (self.now.get(m), self.shares.members.get(m)) {
            (Some(now), Some(s)) => dominant(now) > s.entitlement + EPS,
            _ => false,
        }
    }

    fn below(&self, m: &MemberId) -> bool {
        dominant(&self.now[m]) + EPS < self.shares.members[m].entitlement
    }
}

/// A claim that found room on one node.
#[derive(Clone)]
struct Claim<'a> {
    node: usize,
    chosen: Vec<Taken>,
    free: Resources,
    free_gpus: BTreeSet<u32>,
    /// The victims' shares after the take.
    trial: BTreeMap<&'a MemberId, [f64; 3]>,
}

impl<'a> Claim<'a> {
    /// Takes a victim: its room is freed, its member's share falls.
    fn take(&mut self, v: &Victim<'a>, current: [f64; 3], pool: &Resources) {
        self.free = self.free.saturating_add(&v.resources);
        self.free_gpus.extend(v.gpu_indices.iter().copied());
        self.trial
            .insert(v.member, sub(&current, &share_of(&v.resources, pool)));
        self.chosen.push(v.what);
    }

    /// Undoes `take` for a victim the claim turned out not to need.
    fn give_back(&mut self, v: &Victim<'a>, pool: &Resources) {
        self.free = self.free.saturating_sub(&v.resources);
        for g in v.gpu_indices {
            self.free_gpus.remove(g);
        }
        if let Some(share) = self.trial.get_mut(v.member) {
            *share = add(share, &share_of(&v.resources, pool));
        }
        self.chosen.retain(|t| *t != v.what);
    }
}

/// Runs reclaim over what the filling stages left and returns the final plan.
pub(super) fn reclaim<'a>(
    view: &View<'a>,
    shares: &Shares,
    filled: Filled<'a>,
    occupied: &[Occupied<'a>],
) -> Plan {
    let Filled {
        rooms,
        mut plan,
        share_now,
        unplaced,
        owned,
        mut held,
    } = filled;
    let mut standing = Standing {
        shares,
        now: shares.members.iter().map(|(m, s)| (m, s.share)).collect(),
    };
    for (m, s) in &share_now {
        standing.now.insert(*m, *s);
    }
    let mut claimants: Vec<(&MemberId, &Vec<&Job>)> = unplaced
        .iter()
        .map(|(m, jobs)| (*m, jobs))
        .filter(|(m, _)| standing.below(m))
        .collect();
    if claimants.is_empty() {
        return plan;
    }
    claimants.sort_by(|a, b| {
        shares.members[a.0]
            .key
            .total_cmp(&shares.members[b.0].key)
            .then(a.0.cmp(b.0))
    });
    // Only this pass's loans can be taken back among its placements.
    let planned: Vec<PlannedPlacement> = plan
        .placements
        .iter()
        .filter(|p| p.rule == Rule::WorkConserving)
        .cloned()
        .collect();
    let mut views = node_views(view, &rooms, occupied, &planned, &standing);
    let loans: BTreeMap<JobId, Resources> = planned.iter().map(|p| (p.job, p.resources)).collect();
    let mut revoked: BTreeSet<JobId> = BTreeSet::new();
    // Claims only get harder during the pass (victims fall toward their
    // entitlement, room gets reserved), so a shape that found no room
    // cannot find it later: do not scan every node for it again.
    let mut failed: Vec<Shape> = Vec::new();
    for (member, jobs) in claimants {
        let entitlement = shares.members[member].entitlement;
        let mine: &[usize] = match owned.get(member) {
            Some(mine) if view.policy.owner_first => mine,
            _ => &[],
        };
        // Every waiting job that keeps the member within its entitlement
        // claims room, in queue order, so the whole floor comes back within
        // one grace period rather than one job per pass.
        for job in jobs {
            let job_share = share_of(&job.spec.resources, &shares.pool);
            let after = add(&standing.now[member], &job_share);
            if dominant(&after) > entitlement + EPS || over_cap(view.policy, &after) {
                continue;
            }
            let constrained = job.spec.has_node_constraints();
            if !constrained && failed.iter().any(|f| f.covers(job)) {
                continue;
            }
            let order = mine
                .iter()
                .copied()
                .chain((0..rooms.len()).filter(|i| !mine.contains(i)));
            let claim = order
                .filter(|&i| job.spec.resources.fits_in(&views[i].potential))
                .filter(|&i| held[i].as_ref().is_none_or(|r| allows(r, job, view.now_ms)))
                .find_map(|i| try_node(&rooms[i], &views[i], i, job, member, &standing));
            let Some(claim) = claim else {
                if !constrained && failed.len() < MAX_FAILED_SHAPES {
                    failed.push(Shape::of(job));
                }
                continue;
            };
            let room = &rooms[claim.node];
            if let Some(r) = &mut held[claim.node] {
                consume(r, job, view.now_ms);
            }
            let rule = if view.policy.owner_first && room.node.owner == *member {
                Rule::OwnerReclaim
            } else {
                Rule::Reclaim
            };
            commit(
                job,
                view.policy.owner_first,
                room,
                &mut views[claim.node],
                claim,
                rule,
                &loans,
                &mut revoked,
                &mut plan,
                &mut standing,
            );
            let claimed = add(&standing.now[member], &job_share);
            standing.now.insert(member, claimed);
        }
    }
    if !revoked.is_empty() {
        plan.placements.retain(|p| !revoked.contains(&p.job));
        plan.revoked = revoked.len();
    }
    plan
}

/// What each node is freeing and what could be taken back on it.
fn node_views<'a>(
    view: &View<'a>,
    rooms: &[Room<'a>],
    occupied: &[Occupied<'a>],
    planned: &'a [PlannedPlacement],
    standing: &Standing<'_, '_>,
) -> Vec<NodeView<'a>> {
    let mut views: Vec<NodeView<'a>> = rooms
        .iter()
        .map(|room| NodeView {
            incoming: room.free,
            incoming_gpus: room.free_gpus.clone(),
            candidates: Vec::new(),
            potential: Resources::ZERO,
            free_now: room.free,
        })
        .collect();
    for (v, o) in views.iter_mut().zip(occupied) {
        for &(a, _) in &o.allocs {
            if a.state == AllocState::Stopping {
                v.incoming = v.incoming.saturating_add(&a.resources);
                v.incoming_gpus.extend(a.gpu_indices.iter().copied());
            } else if a.facts.preemptible && standing.above(&a.facts.member) {
                v.candidates.push(Victim {
                    what: Taken::Alloc(a.id),
                    resources: a.resources,
                    gpu_indices: &a.gpu_indices,
                    member: &a.facts.member,
                    placed_at_ms: a.created_at_ms,
                });
            }
        }
    }
    let node_index: BTreeMap<&NodeId, usize> = rooms
        .iter()
        .enumerate()
        .map(|(i, r)| (&r.node.id, i))
        .collect();
    for p in planned.iter().filter(|p| p.rule == Rule::WorkConserving) {
        let (Some(&i), Some(j)) = (node_index.get(&p.node), view.jobs.get(&p.job)) else {
            continue;
        };
        if standing.above(&j.member) {
            views[i].candidates.push(Victim {
                what: Taken::Loan(p.job),
                resources: p.resources,
                gpu_indices: &p.gpu_indices,
                member: &j.member,
                placed_at_ms: u64::MAX,
            });
        }
    }
    for v in &mut views {
        v.refresh_potential();
    }
    views
}

/// Whether the job can be given room on this node by taking victims, and
/// which. The fewest preemptions first: a loan of this pass (nothing runs
/// yet) or a single allocation that frees enough on its own, the one that
/// loses the least work (placed last); otherwise one victim at a time until
/// the job fits, each time loans first, then the member furthest above its
/// entitlement (by the ratio share / entitlement, counting this claim's
/// takes), its newest allocation first.
fn try_node<'a>(
    room: &Room<'_>,
    nv: &NodeView<'a>,
    index: usize,
    job: &Job,
    member: &MemberId,
    standing: &Standing<'_, 'a>,
) -> Option<Claim<'a>> {
    let mut claim = Claim {
        node: index,
        chosen: Vec::new(),
        free: nv.incoming,
        free_gpus: nv.incoming_gpus.clone(),
        trial: BTreeMap::new(),
    };
    let fits = |c: &Claim<'_>| pick_gpus(room.node, job, &c.free, &c.free_gpus).is_some();
    if fits(&claim) {
        return Some(claim);
    }
    let shares = standing.shares;
    let victims: Vec<&Victim<'a>> = nv
        .candidates
        .iter()
        .filter(|c| c.member != member && standing.above(c.member))
        .collect();
    let single = victims
        .iter()
        .filter(|v| {
            let free = claim.free.saturating_add(&v.resources);
            if !job.spec.resources.fits_in(&free) {
                return false;
            }
            if job.spec.resources.gpus == 0 {
                return true;
            }
            // Only a GPU job needs the indices checked (model, memory).
            let mut free_gpus = claim.free_gpus.clone();
            free_gpus.extend(v.gpu_indices.iter().copied());
            pick_gpus(room.node, job, &free, &free_gpus).is_some()
        })
        .max_by_key(|v| (v.is_loan(), v.placed_at_ms, v.what.order()));
    if let Some(v) = single {
        claim.take(v, standing.now[v.member], &shares.pool);
        return Some(claim);
    }
    // Several victims: re-ranked after every take, so the room comes from
    // whoever is furthest above its entitlement at that moment, not from
    // whoever was before this claim began (docs/policy.md §6).
    let mut rest = victims;
    let mut taken: Vec<&Victim<'a>> = Vec::new();
    loop {
        let current =
            |v: &Victim<'a>| *claim.trial.get(v.member).unwrap_or(&standing.now[v.member]);
        let rank = |v: &Victim<'a>| {
            let ratio = dominant(&current(v)) / shares.members[v.member].entitlement;
            (v.is_loan(), Key(ratio), v.what.order().1)
        };
        // Taken only while its member is still above its entitlement
        // before this take (docs/policy.md §6).
        let next = rest
            .iter()
            .enumerate()
            .filter(|(_, v)| dominant(&current(v)) > shares.members[v.member].entitlement + EPS)
            .max_by_key(|(_, v)| rank(v))
            .map(|(k, _)| k)?;
        let v = rest.swap_remove(next);
        let now = current(v);
        claim.take(v, now, &shares.pool);
        taken.push(v);
        if fits(&claim) {
            // A later, larger take can make an earlier one needless: give
            // back every victim, first taken first, without which the job
            // still fits, so no preemption frees more than it needs.
            for v in taken.iter().rev().skip(1).rev() {
                let mut without = claim.clone();
                without.give_back(v, &shares.pool);
                if fits(&without) {
                    claim = without;
                }
            }
            return Some(claim);
        }
    }
}

/// Records a claim: its preemptions and revoked loans, the placement when
/// the room is free right now, and the room held for it on the node.
#[allow(clippy::too_many_arguments)]
fn commit<'a>(
    job: &Job,
    owner_first: bool,
    room: &Room<'_>,
    nv: &mut NodeView<'a>,
    claim: Claim<'a>,
    rule: Rule,
    loans: &BTreeMap<JobId, Resources>,
    revoked: &mut BTreeSet<JobId>,
    plan: &mut Plan,
    standing: &mut Standing<'_, 'a>,
) {
    let mut preempts = false;
    for taken in &claim.chosen {
        match taken {
            Taken::Alloc(alloc) => {
                preempts = true;
                plan.preemptions.push(PlannedPreemption {
                    alloc: *alloc,
                    for_job: job.id,
                    rule,
                });
            }
            Taken::Loan(loaned) => {
                revoked.insert(*loaned);
            }
        }
    }
    let mut free_gpus = claim.free_gpus;
    let picked = pick_gpus(room.node, job, &claim.free, &free_gpus).unwrap_or_default();
    for g in &picked {
        free_gpus.remove(g);
    }
    // Room free right now (plus revoked loans) is used now; room still
    // being vacated is reserved for this job, so the next claim does not
    // count on it too and a later pass, seeing it on its way, preempts
    // nothing more.
    let free_now = claim.chosen.iter().fold(nv.free_now, |acc, t| match t {
        Taken::Loan(j) => acc.saturating_add(&loans.get(j).copied().unwrap_or_default()),
        Taken::Alloc(_) => acc,
    });
    if !preempts && job.spec.resources.fits_in(&free_now) {
        // The rule that places it: a claim on the member's own machine is
        // owner-first, like any placement there.
        let rule = if owner_first && room.node.owner == job.member {
            Rule::OwnerFirst
        } else {
            Rule::FairShare
        };
        plan.placements.push(PlannedPlacement {
            job: job.id,
            node: room.node.id.clone(),
            resources: job.spec.resources,
            gpu_indices: picked,
            rule,
        });
    }
    nv.free_now = free_now.saturating_sub(&job.spec.resources);
    nv.incoming = claim.free.saturating_sub(&job.spec.resources);
    nv.incoming_gpus = free_gpus;
    nv.candidates.retain(|c| !claim.chosen.contains(&c.what));
    nv.refresh_potential();
    standing.now.extend(claim.trial);
}
