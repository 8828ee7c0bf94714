//! Stage 2: the progressive-filling pass. Owners first on their own
//! machines up to their entitlement, then weighted DRF (Ghodsi et al.,
//! NSDI 2011): repeatedly serve the member with the lowest key, placing the
//! oldest job of its queue that fits anywhere. Work conserving: a member is
//! only passed over when none of its jobs fits, or the cap holds it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use crate::decision::Rule;
use crate::ids::{JobId, MemberId};
use crate::job::Job;
use crate::node::Node;
use crate::nodefit::FitTree;
use crate::view::View;

use super::reserve::{self, allows, consume, Reservation};
use super::shares::Queues;
use super::Occupied;
use super::{
    add, dominant, over_cap, priority_key, share_of, Key, Plan, PlannedPlacement, Shape, Shares,
    EPS, MAX_FAILED_SHAPES,
};
use crate::resources::Resources;

/// A ready node's room during a pass.
pub(super) struct Room<'a> {
    pub node: &'a Node,
    pub free: Resources,
    pub free_gpus: BTreeSet<u32>,
}

impl Room<'_> {
    /// The GPU indices a job would get here, if it fits.
    pub fn pick_gpus(&self, job: &Job) -> Option<Vec<u32>> {
        pick_gpus(self.node, job, &self.free, &self.free_gpus)
    }
}

/// The GPU indices a job would get on `node` given what is free there.
pub(crate) fn pick_gpus(
    node: &Node,
    job: &Job,
    free: &Resources,
    free_gpus: &BTreeSet<u32>,
) -> Option<Vec<u32>> {
    let want = job.spec.resources;
    if !want.fits_in(free) || !node.runs(&job.spec) {
        return None;
    }
    let model = job.spec.gpu_model.as_deref();
    let min_mem = job.spec.gpu_min_memory_bytes;
    let picked: Vec<u32> = free_gpus
        .iter()
        .copied()
        .filter(|i| (model.is_none() && min_mem.is_none()) || node.gpu_matches(*i, model, min_mem))
        .take(want.gpus as usize)
        .collect();
    (picked.len() == want.gpus as usize).then_some(picked)
}

/// What the filling stages leave for reclaim.
pub(super) struct Filled<'a> {
    pub rooms: Vec<Room<'a>>,
    pub plan: Plan,
    /// Each member's share after this pass's placements.
    pub share_now: BTreeMap<&'a MemberId, [f64; 3]>,
    /// Each member's jobs this pass could not place, in queue order.
    pub unplaced: BTreeMap<&'a MemberId, Vec<&'a Job>>,
    /// The rooms each member owns.
    pub owned: BTreeMap<&'a MemberId, Vec<usize>>,
    /// Per room, the reservation holding it, with what is left of its spare.
    pub held: Vec<Option<Reservation>>,
}

/// The rooms of one pass and the placements made in them so far.
struct Pass<'a> {
    rooms: Vec<Room<'a>>,
    tree: FitTree,
    out: Plan,
    held: Vec<Option<Reservation>>,
    /// The jobs the reservations are for.
    reserved: BTreeSet<JobId>,
    /// Per request shape, the leftmost room a job of that shape could
    /// still take: free room only shrinks in a pass and a reservation only
    /// gets stricter, so the rooms left of the last fit never take that
    /// shape again, and the next search starts there. The result is the
    /// same leftmost fit, found without re-descending into full rooms.
    starts: BTreeMap<ShapeKey, usize>,
    now_ms: u64,
}

/// What decides whether a room takes a job without GPU constraints: its
/// request and how long it may run (reservations let shorter jobs in).
type ShapeKey = (u64, u64, u32, Option<u64>);

impl<'a> Pass<'a> {
    fn new(view: &View<'a>, occupied: &[Occupied<'a>]) -> Self {
        let rooms: Vec<Room<'a>> = occupied
            .iter()
            .map(|o| Room {
                node: o.node,
                free: o.node.free(),
                free_gpus: o.free_gpus.clone(),
            })
            .collect();
        let tree = FitTree::new(&rooms.iter().map(|r| r.free).collect::<Vec<_>>());
        let held = rooms.iter().map(|_| None).collect();
        Self {
            rooms,
            tree,
            out: Plan::default(),
            held,
            reserved: BTreeSet::new(),
            starts: BTreeMap::new(),
            now_ms: view.now_ms,
        }
    }

    /// This pass's reservations, made before anything is placed (whether a
    /// job fits anywhere now is this pass's own search), and held.
    fn reserve(
        &mut self,
        view: &View<'a>,
        shares: &Shares,
        queues: &Queues<'a>,
        occupied: &[Occupied<'a>],
    ) {
        for r in reserve::plan(view, shares, queues, occupied, |job| {
            self.find(job).is_some()
        }) {
            if let Some(i) = self.rooms.iter().position(|room| room.node.id == r.node) {
                self.reserved.insert(r.job);
                self.held[i] = Some(r);
            }
        }
    }

    /// The GPUs the job would get in room `i`, if it fits there and does
    /// not delay the room's reservation.
    fn fit(&self, i: usize, job: &Job) -> Option<Vec<u32>> {
        if let Some(r) = &self.held[i] {
            if !allows(r, job, self.now_ms) {
                return None;
            }
        }
        self.rooms[i].pick_gpus(job)
    }

    /// The leftmost room the job fits in, with the GPUs it would get.
    fn find(&mut self, job: &Job) -> Option<(usize, Vec<u32>)> {
        // A GPU model or memory, an engine, or a reservation of its own, makes a job
        // unlike others of its shape: it searches from the left.
        let key =
            (!job.spec.has_node_constraints() && !self.reserved.contains(&job.id)).then(|| {
                let r = job.spec.resources;
                (r.cpu_millis, r.memory_bytes, r.gpus, job.spec.timeout_secs)
            });
        let start = key.and_then(|k| self.starts.get(&k).copied()).unwrap_or(0);
        let mut picked = None;
        let leaf = self.tree.find_from(start, &job.spec.resources, &mut |i| {
            picked = self.fit(i, job);
            picked.is_some()
        });
        // Every test run in debug checks the shortcut against the search
        // from the left.
        debug_assert_eq!(
            leaf,
            self.tree
                .find(&job.spec.resources, &mut |i| self.fit(i, job).is_some()),
            "a search from a remembered start finds the leftmost fit"
        );
        if let Some(k) = key {
            self.starts.insert(k, leaf.unwrap_or(self.rooms.len()));
        }
        picked.map(|g| (leaf.expect("picked in a leaf"), g))
    }

    /// The first of `mine` the job fits in.
    fn find_in(&self, mine: &[usize], job: &Job) -> Option<(usize, Vec<u32>)> {
        mine.iter().find_map(|&i| self.fit(i, job).map(|g| (i, g)))
    }

    fn place(&mut self, job: &Job, i: usize, gpus: Vec<u32>, rule: Rule) {
        if let Some(r) = &mut self.held[i] {
            consume(r, job, self.now_ms);
        }
        let room = &mut self.rooms[i];
        room.free = room.free.saturating_sub(&job.spec.resources);
        for g in &gpus {
            room.free_gpus.remove(g);
        }
        self.tree.update(i, room.free);
        self.out.placements.push(PlannedPlacement {
            job: job.id,
            node: room.node.id.clone(),
            resources: job.spec.resources,
            gpu_indices: gpus,
            rule,
        });
    }
}

/// Each member's pending jobs in submission order, and how far the pass got.
struct Walk<'a> {
    jobs: Queues<'a>,
    cursor: BTreeMap<&'a MemberId, usize>,
}

/// One pass's filling stages and what they share.
struct Fill<'v, 'a> {
    view: &'v View<'a>,
    shares: &'v Shares,
    /// Members with waiting jobs, lowest key first.
    by_key: Vec<&'a MemberId>,
    /// The rooms each member owns.
    owned: BTreeMap<&'a MemberId, Vec<usize>>,
    queues: Walk<'a>,
    pass: Pass<'a>,
    /// Each member's share as placements are made.
    share_now: BTreeMap<&'a MemberId, [f64; 3]>,
}

/// The reservations a pass would make now (display and tests).
pub(super) fn reservations(
    view: &View<'_>,
    shares: &Shares,
    queues: &Queues<'_>,
    occupied: &[Occupied<'_>],
) -> Vec<Reservation> {
    let mut pass = Pass::new(view, occupied);
    reserve::plan(view, shares, queues, occupied, |job| {
        pass.find(job).is_some()
    })
}

/// Runs owner-first and the DRF fill; what is left goes to reclaim.
pub(super) fn fill<'a>(
    view: &View<'a>,
    shares: &Shares,
    jobs: Queues<'a>,
    occupied: &[Occupied<'a>],
) -> Filled<'a> {
    let mut pass = Pass::new(view, occupied);
    pass.reserve(view, shares, &jobs, occupied);
    let mut owned: BTreeMap<&MemberId, Vec<usize>> = BTreeMap::new();
    for (i, r) in pass.rooms.iter().enumerate() {
        owned.entry(&r.node.owner).or_default().push(i);
    }
    let cursor = jobs.keys().map(|m| (*m, 0)).collect();
    let share_now = jobs
        .keys()
        .map(|m| (*m, shares.members[*m].share))
        .collect();
    let mut by_key: Vec<&MemberId> = jobs.keys().copied().collect();
    shares.sort_by_key(&mut by_key);
    let mut f = Fill {
        view,
        shares,
        by_key,
        owned,
        queues: Walk { jobs, cursor },
        pass,
        share_now,
    };
    if view.policy.owner_first {
        f.owner_first();
    }
    let mut unplaced = f.drf();
    // Jobs never reached (their member's turn ended early) wait too.
    for (member, queue) in &f.queues.jobs {
        let pos = f.queues.cursor[member];
        unplaced
            .entry(member)
            .or_default()
            .extend(queue[pos..].iter().copied());
    }
    Filled {
        rooms: f.pass.rooms,
        plan: f.pass.out,
        share_now: f.share_now,
        unplaced,
        owned: f.owned,
        held: f.pass.held,
    }
}

impl<'a> Fill<'_, 'a> {
    /// Owners first, on their own machines, up to their entitlement: a
    /// contributor never waits for its own idle machine, and never takes
    /// more of it than its share while others wait. The owner's whole queue
    /// is walked in order: a job that does not fit its machines, or would
    /// take it past its entitlement or the cap, keeps its place for the DRF
    /// stage, and the owner's later jobs still go first on its machines
    /// (ending the turn there would let others fill an owner's idle machine
    /// because its oldest job is too large for it; docs/policy.md §4).
    fn owner_first(&mut self) {
        let pool = self.shares.pool;
        for member in &self.by_key {
            let Some(mine) = self.owned.get(member) else {
                continue;
            };
            let entitlement = self.shares.members[*member].entitlement;
            // Every job takes some cpu: a member at its entitlement places none.
            if dominant(&self.share_now[member]) + EPS >= entitlement {
                continue;
            }
            let queue = self.queues.jobs.get_mut(member).expect("queued");
            let mut failed: Vec<Shape> = Vec::new();
            let mut placed: BTreeSet<JobId> = BTreeSet::new();
            for &job in queue.iter() {
                if mine
                    .iter()
                    .all(|&i| self.pass.rooms[i].free.cpu_millis == 0)
                {
                    break;
                }
                let want = job.spec.resources;
                let after = add(&self.share_now[member], &share_of(&want, &pool));
                if dominant(&after) > entitlement + EPS || over_cap(self.view.policy, &after) {
                    continue;
                }
                let constrained = job.spec.has_node_constraints();
                if !constrained && failed.iter().any(|f| f.covers(job)) {
                    continue;
                }
                let Some((i, gpus)) = self.pass.find_in(mine, job) else {
                    if !constrained && failed.len() < MAX_FAILED_SHAPES {
                        failed.push(Shape::of(job));
                    }
                    continue;
                };
                self.pass.place(job, i, gpus, Rule::OwnerFirst);
                self.share_now.insert(member, after);
                placed.insert(job.id);
            }
            queue.retain(|j| !placed.contains(&j.id));
        }
    }

    /// Weighted DRF by progressive filling over everyone's queues. Returns
    /// the jobs it passed over. Each member's queue is walked once: a job
    /// that does not fit cannot fit later in the same pass (free capacity
    /// only shrinks).
    fn drf(&mut self) -> BTreeMap<&'a MemberId, Vec<&'a Job>> {
        let policy = self.view.policy;
        let shares = self.shares;
        let pool = shares.pool;
        let key_of = |member: &MemberId, share: &[f64; 3]| {
            let s = &shares.members[member];
            Key(priority_key(
                dominant(share),
                s.usage_share,
                s.entitlement,
                policy,
            ))
        };
        let mut heap: BinaryHeap<Reverse<(Key, &MemberId)>> = self
            .by_key
            .iter()
            .map(|m| Reverse((key_of(m, &self.share_now[m]), *m)))
            .collect();
        // Request shapes that found no room this pass: anything at least as
        // large in every dimension cannot fit either.
        let mut failed: Vec<Shape> = Vec::new();
        let mut unplaced: BTreeMap<&MemberId, Vec<&Job>> = BTreeMap::new();
        while let Some(Reverse((_, member))) = heap.pop() {
            let queue = &self.queues.jobs[member];
            let pos = self.queues.cursor.get_mut(member).expect("queued");
            let mut placed = None;
            while *pos < queue.len() {
                let job = queue[*pos];
                *pos += 1;
                let want = job.spec.resources;
                let after = add(&self.share_now[member], &share_of(&want, &pool));
                let constrained = job.spec.has_node_constraints();
                if over_cap(policy, &after)
                    || (!constrained && failed.iter().any(|f| f.covers(job)))
                {
                    unplaced.entry(member).or_default().push(job);
                    continue;
                }
                let own = match self.owned.get(member) {
                    Some(mine) if policy.owner_first => self.pass.find_in(mine, job),
                    _ => None,
                };
                match own.or_else(|| self.pass.find(job)) {
                    Some((i, gpus)) => {
                        placed = Some((job, i, gpus, after));
                        break;
                    }
                    None => {
                        if !constrained && failed.len() < MAX_FAILED_SHAPES {
                            failed.push(Shape::of(job));
                        }
                        unplaced.entry(member).or_default().push(job);
                    }
                }
            }
            let Some((job, i, gpus, after)) = placed else {
                continue;
            };
            // Beyond its entitlement a member's job is a loan even on its own
            // machine: reclaim must see it as one this very pass, or the next
            // pass would preempt what this one placed.
            let within = dominant(&after) <= shares.members[member].entitlement + EPS;
            let rule = if !within {
                Rule::WorkConserving
            } else if policy.owner_first && self.pass.rooms[i].node.owner == *member {
                Rule::OwnerFirst
            } else {
                Rule::FairShare
            };
            self.pass.place(job, i, gpus, rule);
            self.share_now.insert(member, after);
            heap.push(Reverse((key_of(member, &after), member)));
        }
        unplaced
    }
}
