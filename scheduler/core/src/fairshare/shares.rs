//! Stage 1: every member's entitlement (social floor plus contribution),
//! current share of the pool, decayed usage share and ordering key.

use std::collections::BTreeMap;

use crate::ids::MemberId;
use crate::job::Job;
use crate::ledger::Usage;
use crate::resources::Resources;
use crate::view::View;

use super::{dominant, priority_key, share_of};

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

impl Shares {
    /// Lowest key first, ties by name: the order every stage serves members in.
    pub(crate) fn sort_by_key(&self, members: &mut [&MemberId]) {
        members.sort_by(|a, b| {
            self.members[*a]
                .key
                .total_cmp(&self.members[*b].key)
                .then(a.cmp(b))
        });
    }
}

/// Each member's waiting jobs in submission order: one walk of the queue
/// per pass, shared by the shares, the reservations and the fill.
pub(crate) type Queues<'a> = BTreeMap<&'a MemberId, Vec<&'a Job>>;

pub(crate) fn queues<'a>(view: &View<'a>) -> Queues<'a> {
    view.queued
        .iter()
        .map(|(m, ids)| (m, ids.iter().filter_map(|id| view.jobs.get(id)).collect()))
        .filter(|(_, q): &(_, Vec<&Job>)| !q.is_empty())
        .collect()
}

/// Each member's live allocations (a walk over them all: display only).
fn running<'a>(view: &View<'a>) -> BTreeMap<&'a MemberId, usize> {
    let mut running: BTreeMap<&MemberId, usize> = BTreeMap::new();
    for alloc in view.allocs.values() {
        *running.entry(&alloc.facts.member).or_default() += 1;
    }
    running
}

/// Everyone's entitlement and share, from the state as it is.
pub fn compute_shares(view: &View<'_>) -> Shares {
    compute_shares_at(view, None)
}

/// The same with every ledger accrued to `at_ms` (display only: `coop
/// share` at the time of the read, so entitlements do not drift between
/// members who acted recently and members who did not).
pub fn compute_shares_at(view: &View<'_>, at_ms: Option<u64>) -> Shares {
    let mut shares = compute(view, at_ms, &queues(view));
    for (m, n) in running(view) {
        if let Some(s) = shares.members.get_mut(m) {
            s.running = n;
        }
    }
    shares
}

/// The shares a pass works with. It needs no count of running jobs, only
/// whether a member holds anything (`running` is left 0): counting them
/// costs a member lookup per live allocation, which a pass need not pay.
pub(crate) fn for_pass(view: &View<'_>, queues: &Queues<'_>) -> Shares {
    compute(view, None, queues)
}

fn compute(view: &View<'_>, at_ms: Option<u64>, queues: &Queues<'_>) -> Shares {
    let policy = view.policy;
    let pool = view.pool();
    // Demand: jobs waiting or anything allocated (every allocation holds
    // some cpu, so a member holds something exactly when a job of its runs).
    let has_demand = |m: &MemberId| {
        queues.contains_key(m)
            || view
                .members
                .get(m)
                .is_some_and(|m| m.allocated() != Resources::ZERO)
    };
    let ledgers: BTreeMap<&MemberId, (Usage, f64)> = view
        .members
        .iter()
        .map(|(id, m)| match at_ms {
            Some(t) => (id, m.accrued(t, policy)),
            None => (id, (m.usage, m.contribution)),
        })
        .collect();
    let active: Vec<&MemberId> = view.members.keys().filter(|m| has_demand(m)).collect();
    let total_contribution: f64 = active.iter().map(|m| ledgers[*m].1).sum();
    let mut total_usage = [0.0f64; 3];
    for (usage, _) in ledgers.values() {
        for (d, t) in total_usage.iter_mut().enumerate() {
            *t += usage.get(d);
        }
    }
    let n_active = active.len() as f64;
    let mut members = BTreeMap::new();
    for (id, m) in view.members {
        let (usage, contribution) = ledgers[id];
        let (floor_part, contribution_part) = if has_demand(id) {
            let floor_part = policy.floor / n_active;
            // With no contribution anywhere, the rest is split equally too.
            let c = if total_contribution > 0.0 {
                contribution / total_contribution
            } else {
                1.0 / n_active
            };
            (floor_part, (1.0 - policy.floor) * c)
        } else {
            (0.0, 0.0)
        };
        let entitlement = floor_part + contribution_part;
        let share = share_of(&m.allocated(), &pool);
        let dominant_share = dominant(&share);
        let usage_share = (0..3)
            .map(|d| {
                if total_usage[d] > 0.0 {
                    usage.get(d) / total_usage[d]
                } else {
                    0.0
                }
            })
            .fold(0.0, f64::max);
        members.insert(
            id.clone(),
            MemberShare {
                member: id.clone(),
                pending: queues.get(id).map_or(0, Vec::len),
                running: 0,
                entitlement,
                floor_part,
                contribution_part,
                allocated: m.allocated(),
                share,
                dominant_share,
                usage,
                usage_share,
                contribution,
                key: priority_key(dominant_share, usage_share, entitlement, policy),
            },
        );
    }
    Shares { pool, members }
}
