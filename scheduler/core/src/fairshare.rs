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
//! A = members with demand (pending or running jobs). The pass is weighted
//! DRF by progressive filling (Ghodsi et al., NSDI 2011): repeatedly serve
//! the member with the lowest key, placing the oldest job of its queue that
//! fits anywhere. It is work conserving: a member is only passed over when
//! none of its jobs fits, or a rule (the cap) holds it. Then members below
//! entitlement whose jobs still wait reclaim preemptible allocations from
//! members above theirs.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use crate::ids::{AllocId, JobId, MemberId, NodeId};
use crate::job::Job;
use crate::ledger::Usage;
use crate::node::{Node, NodeState};
use crate::nodefit::FitTree;
use crate::policy::Policy;
use crate::resources::Resources;
use crate::state::ClusterState;

/// Slack for comparing shares computed in floating point.
pub const EPS: f64 = 1e-9;

/// The rule behind a decision, as recorded in the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Placed within the member's entitlement.
    FairShare,
    /// Placed beyond the member's entitlement on idle capacity (lent).
    WorkConserving,
    /// Placed on a machine the member owns.
    OwnerFirst,
    /// Stopped to give a member below entitlement its share.
    Reclaim,
    /// Stopped to give an owner its own machine back.
    OwnerReclaim,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::FairShare => "fair-share",
            Rule::WorkConserving => "work-conserving",
            Rule::OwnerFirst => "owner-first",
            Rule::Reclaim => "reclaim",
            Rule::OwnerReclaim => "owner-reclaim",
        }
    }
}

/// One member's standing, as `coop share` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberShare {
    pub member: MemberId,
    pub pending: usize,
    pub running: usize,
    /// Fraction of the pool the member is entitled to (0 without demand).
    pub entitlement: f64,
    pub floor_part: f64,
    pub contribution_part: f64,
    pub allocated: Resources,
    /// allocated / pool, per dimension (gpu, cpu, mem).
    pub share: [f64; 3],
    pub dominant_share: f64,
    pub usage: Usage,
    /// max over dimensions of the member's part of all decayed usage.
    pub usage_share: f64,
    pub contribution: f64,
    /// Lower is served first.
    pub key: f64,
}

impl MemberShare {
    pub fn has_demand(&self) -> bool {
        self.pending + self.running > 0
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Shares {
    /// Capacity of the ready nodes.
    pub pool: Resources,
    pub members: BTreeMap<MemberId, MemberShare>,
}

/// The share a request is of the pool, per dimension.
pub fn share_of(r: &Resources, pool: &Resources) -> [f64; 3] {
    let f = |x: f64, total: f64| if total > 0.0 { x / total } else { 0.0 };
    [
        f(r.gpus as f64, pool.gpus as f64),
        f(r.cpu_millis as f64, pool.cpu_millis as f64),
        f(r.memory_bytes as f64, pool.memory_bytes as f64),
    ]
}

fn dominant(share: &[f64; 3]) -> f64 {
    share.iter().copied().fold(0.0, f64::max)
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

/// Everyone's entitlement and share, from the state as it is.
pub fn compute_shares(state: &ClusterState) -> Shares {
    let policy = &state.policy;
    let pool = state
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Ready)
        .fold(Resources::ZERO, |acc, n| acc.saturating_add(&n.capacity));
    let mut pending: BTreeMap<&MemberId, usize> = BTreeMap::new();
    for id in &state.pending {
        if let Some(job) = state.jobs.get(id) {
            *pending.entry(&job.member).or_default() += 1;
        }
    }
    let mut running: BTreeMap<&MemberId, usize> = BTreeMap::new();
    for alloc in state.allocs.values() {
        if let Some(job) = state.jobs.get(&alloc.job) {
            *running.entry(&job.member).or_default() += 1;
        }
    }
    let active: Vec<&MemberId> = state
        .members
        .keys()
        .filter(|m| pending.contains_key(m) || running.contains_key(m))
        .collect();
    let total_contribution: f64 = active.iter().map(|m| state.members[*m].contribution).sum();
    let mut total_usage = [0.0f64; 3];
    for m in state.members.values() {
        for (d, t) in total_usage.iter_mut().enumerate() {
            *t += m.usage.get(d);
        }
    }
    let n_active = active.len() as f64;
    let mut members = BTreeMap::new();
    for (id, m) in &state.members {
        let has_demand = pending.contains_key(id) || running.contains_key(id);
        let (floor_part, contribution_part) = if has_demand {
            let floor_part = policy.floor / n_active;
            // With no contribution anywhere, the rest is split equally too.
            let c = if total_contribution > 0.0 {
                m.contribution / total_contribution
            } else {
                1.0 / n_active
            };
            (floor_part, (1.0 - policy.floor) * c)
        } else {
            (0.0, 0.0)
        };
        let entitlement = floor_part + contribution_part;
        let share = share_of(&m.allocated, &pool);
        let dominant_share = dominant(&share);
        let usage_share = (0..3)
            .map(|d| {
                if total_usage[d] > 0.0 {
                    m.usage.get(d) / total_usage[d]
                } else {
                    0.0
                }
            })
            .fold(0.0, f64::max);
        members.insert(
            id.clone(),
            MemberShare {
                member: id.clone(),
                pending: pending.get(id).copied().unwrap_or(0),
                running: running.get(id).copied().unwrap_or(0),
                entitlement,
                floor_part,
                contribution_part,
                allocated: m.allocated,
                share,
                dominant_share,
                usage: m.usage,
                usage_share,
                contribution: m.contribution,
                key: priority_key(dominant_share, usage_share, entitlement, policy),
            },
        );
    }
    Shares { pool, members }
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

/// A ready node's room during a pass.
struct Room<'a> {
    node: &'a Node,
    free: Resources,
    free_gpus: BTreeSet<u32>,
}

impl Room<'_> {
    /// The GPU indices a job would get here, if it fits.
    fn pick_gpus(&self, job: &Job) -> Option<Vec<u32>> {
        let want = job.spec.resources;
        if !want.fits_in(&self.free) {
            return None;
        }
        let model = job.spec.gpu_model.as_deref();
        let min_mem = job.spec.gpu_min_memory_bytes;
        let picked: Vec<u32> = self
            .free_gpus
            .iter()
            .copied()
            .filter(|i| {
                (model.is_none() && min_mem.is_none()) || self.node.gpu_matches(*i, model, min_mem)
            })
            .take(want.gpus as usize)
            .collect();
        (picked.len() == want.gpus as usize).then_some(picked)
    }
}

/// Total order on f64 keys (they are never NaN: entitlements are > 0 or the key is +inf).
#[derive(Clone, Copy, PartialEq)]
struct Key(f64);

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

/// Plans one scheduling pass. Cost: O(P log M + P log N) for P pending
/// jobs, M members and N nodes when nodes are alike (see `nodefit`); each
/// member's queue is walked once, because a job that does not fit cannot
/// fit later in the same pass (free capacity only shrinks during it).
pub fn plan(state: &ClusterState) -> Plan {
    let policy = &state.policy;
    let shares = compute_shares(state);
    let pool = shares.pool;
    let mut pass = Pass {
        rooms: state
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Ready)
            .map(|n| Room {
                node: n,
                free: n.free(),
                free_gpus: state.free_gpu_indices(n),
            })
            .collect(),
        tree: FitTree::new(&[]),
        out: Plan::default(),
    };
    pass.tree = FitTree::new(&pass.rooms.iter().map(|r| r.free).collect::<Vec<_>>());
    let mut owned: BTreeMap<&MemberId, Vec<usize>> = BTreeMap::new();
    for (i, r) in pass.rooms.iter().enumerate() {
        owned.entry(&r.node.owner).or_default().push(i);
    }
    let mut queues: BTreeMap<&MemberId, Vec<&Job>> = BTreeMap::new();
    for id in &state.pending {
        if let Some(job) = state.jobs.get(id) {
            queues.entry(&job.member).or_default().push(job);
        }
    }
    let mut cursor: BTreeMap<&MemberId, usize> = queues.keys().map(|m| (*m, 0)).collect();
    let mut share_now: BTreeMap<&MemberId, [f64; 3]> = queues
        .keys()
        .map(|m| (*m, shares.members[*m].share))
        .collect();
    let mut by_key: Vec<&MemberId> = queues.keys().copied().collect();
    by_key.sort_by(|a, b| {
        shares.members[*a]
            .key
            .total_cmp(&shares.members[*b].key)
            .then(a.cmp(b))
    });

    // Owners first, on their own machines, up to their entitlement: a
    // contributor never waits for its own idle machine, and never takes
    // more of it than its share while others wait.
    if policy.owner_first {
        for member in &by_key {
            let Some(mine) = owned.get(member) else {
                continue;
            };
            let entitlement = shares.members[*member].entitlement;
            let queue = &queues[member];
            let pos = cursor.get_mut(member).expect("queued");
            while *pos < queue.len() {
                let job = queue[*pos];
                let after = add(&share_now[member], &share_of(&job.spec.resources, &pool));
                if dominant(&after) > entitlement + EPS || over_cap(policy, &after) {
                    break;
                }
                let Some((i, gpus)) = mine
                    .iter()
                    .find_map(|&i| pass.rooms[i].pick_gpus(job).map(|g| (i, g)))
                else {
                    break;
                };
                pass.place(job, i, gpus, Rule::OwnerFirst);
                share_now.insert(member, after);
                *pos += 1;
            }
        }
    }

    // Weighted DRF by progressive filling over everyone's queues.
    let mut heap = BinaryHeap::new();
    for m in &by_key {
        let s = &shares.members[*m];
        heap.push(Reverse((
            Key(priority_key(
                dominant(&share_now[m]),
                s.usage_share,
                s.entitlement,
                policy,
            )),
            *m,
        )));
    }
    // Request shapes that found no room this pass: anything at least as
    // large in every dimension cannot fit either.
    let mut failed: Vec<Resources> = Vec::new();
    let mut unplaced: BTreeMap<&MemberId, Vec<&Job>> = BTreeMap::new();
    while let Some(Reverse((_, member))) = heap.pop() {
        let s = &shares.members[member];
        let queue = &queues[member];
        let pos = cursor.get_mut(member).expect("queued");
        let mut placed = None;
        while *pos < queue.len() {
            let job = queue[*pos];
            *pos += 1;
            let want = job.spec.resources;
            let after = add(&share_now[member], &share_of(&want, &pool));
            if over_cap(policy, &after) {
                unplaced.entry(member).or_default().push(job);
                continue;
            }
            let constrained = job.spec.has_gpu_constraints();
            if !constrained && failed.iter().any(|f| f.fits_in(&want)) {
                unplaced.entry(member).or_default().push(job);
                continue;
            }
            let own = if policy.owner_first {
                owned.get(member).and_then(|mine| {
                    mine.iter()
                        .find_map(|&i| pass.rooms[i].pick_gpus(job).map(|g| (i, g)))
                })
            } else {
                None
            };
            match own.or_else(|| pass.find(job)) {
                Some((i, gpus)) => {
                    placed = Some((job, i, gpus, after));
                    break;
                }
                None => {
                    if !constrained && failed.len() < 64 {
                        failed.push(want);
                    }
                    unplaced.entry(member).or_default().push(job);
                }
            }
        }
        let Some((job, i, gpus, after)) = placed else {
            continue;
        };
        let rule = if policy.owner_first && pass.rooms[i].node.owner == *member {
            Rule::OwnerFirst
        } else if dominant(&after) <= s.entitlement + EPS {
            Rule::FairShare
        } else {
            Rule::WorkConserving
        };
        pass.place(job, i, gpus, rule);
        share_now.insert(member, after);
        heap.push(Reverse((
            Key(priority_key(
                dominant(&after),
                s.usage_share,
                s.entitlement,
                policy,
            )),
            member,
        )));
    }
    // Jobs never reached (their member's turn ended early) wait too.
    for (member, queue) in &queues {
        let pos = cursor[member];
        unplaced
            .entry(member)
            .or_default()
            .extend(queue[pos..].iter().copied());
    }
    let Pass { rooms, mut out, .. } = pass;
    reclaim(
        state, &shares, &rooms, &share_now, &unplaced, &owned, &mut out,
    );
    out
}

fn over_cap(policy: &Policy, share: &[f64; 3]) -> bool {
    policy
        .member_cap
        .is_some_and(|cap| dominant(share) > cap + EPS)
}

/// The rooms of one pass and the placements made in them so far.
struct Pass<'a> {
    rooms: Vec<Room<'a>>,
    tree: FitTree,
    out: Plan,
}

impl<'a> Pass<'a> {
    /// The leftmost room the job fits in, with the GPUs it would get.
    fn find(&self, job: &Job) -> Option<(usize, Vec<u32>)> {
        let mut picked = None;
        let leaf = self.tree.find(&job.spec.resources, &mut |i| {
            picked = self.rooms[i].pick_gpus(job);
            picked.is_some()
        })?;
        picked.map(|g| (leaf, g))
    }

    fn place(&mut self, job: &Job, i: usize, gpus: Vec<u32>, rule: Rule) {
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

/// Something reclaim can take back: a running allocation (preempted), or a
/// loan this very pass planned (simply not made). Counting this pass's
/// loans keeps the pass a fixed point: the next pass, seeing them as
/// allocations, would otherwise preempt them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Taken {
    Alloc(AllocId),
    Loan(JobId),
}

struct Victim<'a> {
    what: Taken,
    resources: Resources,
    gpu_indices: &'a [u32],
    member: &'a MemberId,
}

/// Members below entitlement whose jobs still wait take back preemptible
/// allocations from the members furthest above theirs. A claim is only
/// made within the claimant's entitlement, and a victim is only taken
/// while its member is above its own, so two members never preempt each
/// other back and forth.
fn reclaim(
    state: &ClusterState,
    shares: &Shares,
    rooms: &[Room<'_>],
    share_now: &BTreeMap<&MemberId, [f64; 3]>,
    unplaced: &BTreeMap<&MemberId, Vec<&Job>>,
    owned: &BTreeMap<&MemberId, Vec<usize>>,
    out: &mut Plan,
) {
    let policy = &state.policy;
    let pool = shares.pool;
    let mut now: BTreeMap<&MemberId, [f64; 3]> =
        shares.members.iter().map(|(m, s)| (m, s.share)).collect();
    for (m, s) in share_now {
        now.insert(*m, *s);
    }
    let above = |now: &BTreeMap<&MemberId, [f64; 3]>, m: &MemberId| {
        dominant(&now[m]) > shares.members[m].entitlement + EPS
    };
    let mut claimants: Vec<(&MemberId, &Vec<&Job>)> = unplaced
        .iter()
        .map(|(m, jobs)| (*m, jobs))
        .filter(|(m, _)| dominant(&now[*m]) + EPS < shares.members[*m].entitlement)
        .collect();
    if claimants.is_empty() {
        return;
    }
    claimants.sort_by(|a, b| {
        shares.members[a.0]
            .key
            .total_cmp(&shares.members[b.0].key)
            .then(a.0.cmp(b.0))
    });
    let planned = out.placements.clone();
    let node_index: BTreeMap<&NodeId, usize> = rooms
        .iter()
        .enumerate()
        .map(|(i, r)| (&r.node.id, i))
        .collect();
    // Per node: what is already being freed, and what could be taken back,
    // computed once. Members only fall during reclaim, so one not above its
    // entitlement now never becomes a victim in this pass.
    struct NodeView<'a> {
        incoming: Resources,
        incoming_gpus: BTreeSet<u32>,
        candidates: Vec<Victim<'a>>,
        /// incoming plus every candidate: an upper bound on what reclaim could free here.
        potential: Resources,
        /// What is free now, not counting what is still being vacated.
        free_now: Resources,
    }
    let mut views: Vec<NodeView<'_>> = rooms
        .iter()
        .map(|room| NodeView {
            incoming: room.free,
            incoming_gpus: room.free_gpus.clone(),
            candidates: Vec::new(),
            potential: Resources::ZERO,
            free_now: room.free,
        })
        .collect();
    for (i, room) in rooms.iter().enumerate() {
        for a in room.node.allocs.iter().filter_map(|a| state.allocs.get(a)) {
            let v = &mut views[i];
            if a.state == crate::alloc::AllocState::Stopping {
                v.incoming = v.incoming.saturating_add(&a.resources);
                v.incoming_gpus.extend(a.gpu_indices.iter().copied());
            } else if let Some(j) = state.jobs.get(&a.job) {
                if j.spec.preemptible && above(&now, &j.member) {
                    v.candidates.push(Victim {
                        what: Taken::Alloc(a.id),
                        resources: a.resources,
                        gpu_indices: &a.gpu_indices,
                        member: &j.member,
                    });
                }
            }
        }
    }
    for p in &planned {
        let Some(&i) = node_index.get(&p.node) else {
            continue;
        };
        let Some(j) = state.jobs.get(&p.job) else {
            continue;
        };
        if p.rule == Rule::WorkConserving && above(&now, &j.member) {
            views[i].candidates.push(Victim {
                what: Taken::Loan(p.job),
                resources: p.resources,
                gpu_indices: &p.gpu_indices,
                member: &j.member,
            });
        }
    }
    for v in &mut views {
        v.potential = v
            .candidates
            .iter()
            .fold(v.incoming, |acc, c| acc.saturating_add(&c.resources));
    }
    let fits = |room: &Room<'_>, job: &Job, free: Resources, gpus: &BTreeSet<u32>| {
        if !job.spec.resources.fits_in(&free) {
            return false;
        }
        Room {
            node: room.node,
            free,
            free_gpus: gpus.clone(),
        }
        .pick_gpus(job)
        .is_some()
    };
    let loans: BTreeMap<JobId, Resources> = planned.iter().map(|p| (p.job, p.resources)).collect();
    let mut revoked: BTreeSet<JobId> = BTreeSet::new();
    // Claims only get harder during the pass (victims fall toward their
    // entitlement, room gets reserved), so a shape that found no room
    // cannot find it later: do not scan every node for it again.
    let mut failed: Vec<Resources> = Vec::new();
    for (member, jobs) in claimants {
        let entitlement = shares.members[member].entitlement;
        let mine: Vec<usize> = if policy.owner_first {
            owned.get(member).cloned().unwrap_or_default()
        } else {
            Vec::new()
        };
        // Every waiting job that keeps the member within its entitlement
        // claims room, in queue order, so the whole floor comes back within
        // one grace period rather than one job per pass.
        for job in jobs {
            let job_share = share_of(&job.spec.resources, &pool);
            let after = add(&now[member], &job_share);
            if dominant(&after) > entitlement + EPS || over_cap(policy, &after) {
                continue;
            }
            let constrained = job.spec.has_gpu_constraints();
            if !constrained && failed.iter().any(|f| f.fits_in(&job.spec.resources)) {
                continue;
            }
            let mut claimed_here = false;
            let order = mine
                .iter()
                .copied()
                .chain((0..rooms.len()).filter(|i| !mine.contains(i)));
            for i in order {
                let room = &rooms[i];
                let view = &views[i];
                if !job.spec.resources.fits_in(&view.potential) {
                    continue;
                }
                let mut free = view.incoming;
                let mut free_gpus = view.incoming_gpus.clone();
                let mut chosen: Vec<Taken> = Vec::new();
                // Shares of the victims as they would be, without copying everyone's.
                let mut trial: BTreeMap<&MemberId, [f64; 3]> = BTreeMap::new();
                if !fits(room, job, free, &free_gpus) {
                    // Loans first (nothing runs yet), then the furthest above
                    // entitlement, newest first.
                    let mut victims: Vec<(bool, f64, &Victim<'_>)> = view
                        .candidates
                        .iter()
                        .filter(|c| c.member != member && above(&now, c.member))
                        .map(|c| {
                            let loan = matches!(c.what, Taken::Loan(_));
                            (
                                loan,
                                dominant(&now[c.member]) / shares.members[c.member].entitlement,
                                c,
                            )
                        })
                        .collect();
                    victims.sort_by(|a, b| {
                        b.0.cmp(&a.0)
                            .then(b.1.total_cmp(&a.1))
                            .then(match (b.2.what, a.2.what) {
                                (Taken::Alloc(x), Taken::Alloc(y)) => x.cmp(&y),
                                (Taken::Loan(x), Taken::Loan(y)) => x.cmp(&y),
                                _ => std::cmp::Ordering::Equal,
                            })
                    });
                    for (_, _, v) in victims {
                        let current = *trial.get(v.member).unwrap_or(&now[v.member]);
                        // Take only while the victim is still above its entitlement.
                        if dominant(&current) <= shares.members[v.member].entitlement + EPS {
                            continue;
                        }
                        free = free.saturating_add(&v.resources);
                        free_gpus.extend(v.gpu_indices.iter().copied());
                        trial.insert(v.member, sub(&current, &share_of(&v.resources, &pool)));
                        chosen.push(v.what);
                        if fits(room, job, free, &free_gpus) {
                            break;
                        }
                    }
                    if chosen.is_empty() || !fits(room, job, free, &free_gpus) {
                        continue;
                    }
                }
                let rule = if policy.owner_first && room.node.owner == *member {
                    Rule::OwnerReclaim
                } else {
                    Rule::Reclaim
                };
                let mut preempts = false;
                for taken in &chosen {
                    match taken {
                        Taken::Alloc(alloc) => {
                            preempts = true;
                            out.preemptions.push(PlannedPreemption {
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
                let picked = Room {
                    node: room.node,
                    free,
                    free_gpus: free_gpus.clone(),
                }
                .pick_gpus(job)
                .unwrap_or_default();
                for g in &picked {
                    free_gpus.remove(g);
                }
                // Room that is already free (or freed by revoking loans) is
                // used now; room still being vacated is reserved for this job,
                // so the next claim does not count on it too and a later pass,
                // seeing it on its way, preempts nothing more.
                // Room free right now (plus revoked loans) is used now;
                // room still being vacated is reserved for this job.
                let free_now = chosen.iter().fold(views[i].free_now, |acc, t| match t {
                    Taken::Loan(j) => {
                        acc.saturating_add(&loans.get(j).copied().unwrap_or_default())
                    }
                    Taken::Alloc(_) => acc,
                });
                let immediate = !preempts && job.spec.resources.fits_in(&free_now);
                if immediate {
                    out.placements.push(PlannedPlacement {
                        job: job.id,
                        node: room.node.id.clone(),
                        resources: job.spec.resources,
                        gpu_indices: picked,
                        rule: Rule::FairShare,
                    });
                }
                let view = &mut views[i];
                view.free_now = free_now.saturating_sub(&job.spec.resources);
                view.incoming = free.saturating_sub(&job.spec.resources);
                view.incoming_gpus = free_gpus;
                view.candidates.retain(|c| !chosen.contains(&c.what));
                view.potential = view
                    .candidates
                    .iter()
                    .fold(view.incoming, |acc, c| acc.saturating_add(&c.resources));
                now.extend(trial);
                let claimed = add(&now[member], &job_share);
                now.insert(member, claimed);
                claimed_here = true;
                break;
            }
            if !claimed_here && !constrained && failed.len() < 64 {
                failed.push(job.spec.resources);
            }
        }
    }
    if !revoked.is_empty() {
        out.placements.retain(|p| !revoked.contains(&p.job));
        out.revoked = revoked.len();
    }
}

fn add(a: &[f64; 3], b: &[f64; 3]) -> [f64; 3] {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

fn sub(a: &[f64; 3], b: &[f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
