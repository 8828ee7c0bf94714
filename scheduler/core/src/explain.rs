//! Why a job waits: every reason, its place in its member's queue, the
//! member's dominant share against its entitlement, and what would let it
//! start. Computed from the state as it is, so it is never stale, and by
//! the same functions the allocator uses, so it cannot disagree with it.

use serde::{Deserialize, Serialize};

use crate::alloc::AllocState;
use crate::fairshare::{compute_shares, share_of, EPS};
use crate::ids::{JobId, MemberId};
use crate::job::JobState;
use crate::node::NodeState;
use crate::state::ClusterState;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub job: JobId,
    pub member: MemberId,
    pub state: JobState,
    /// Every reason the job waits, most fundamental first (empty unless pending).
    pub reasons: Vec<String>,
    /// 1-based position among the member's pending jobs (0 unless pending).
    pub queue_position: usize,
    pub queue_length: usize,
    pub dominant_share: f64,
    pub entitlement: f64,
    /// What would let it start.
    pub would_start: Vec<String>,
    pub policy_version: u64,
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

pub fn explain(state: &ClusterState, job_id: JobId) -> Option<Explanation> {
    let job = state.jobs.get(&job_id)?;
    let shares = compute_shares(state);
    let me = shares.members.get(&job.member);
    let mut e = Explanation {
        job: job_id,
        member: job.member.clone(),
        state: job.state,
        reasons: Vec::new(),
        queue_position: 0,
        queue_length: 0,
        dominant_share: me.map(|m| m.dominant_share).unwrap_or(0.0),
        entitlement: me.map(|m| m.entitlement).unwrap_or(0.0),
        would_start: Vec::new(),
        policy_version: state.policy.version,
    };
    if job.state != JobState::Pending {
        return Some(e);
    }
    let mine: Vec<JobId> = state
        .pending
        .iter()
        .copied()
        .filter(|id| state.jobs.get(id).is_some_and(|j| j.member == job.member))
        .collect();
    e.queue_length = mine.len();
    e.queue_position = mine
        .iter()
        .position(|id| *id == job_id)
        .map(|p| p + 1)
        .unwrap_or(0);
    let want = job.spec.resources;
    let ready: Vec<_> = state
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Ready)
        .collect();
    if ready.is_empty() {
        e.reasons.push("no ready node in the pool".into());
        e.would_start.push("a worker joins the pool".into());
        return Some(e);
    }
    let model = job.spec.gpu_model.as_deref();
    let min_mem = job.spec.gpu_min_memory_bytes;
    let big_enough: Vec<_> = ready
        .iter()
        .filter(|n| {
            want.fits_in(&n.capacity) && n.matching_gpus(model, min_mem) >= want.gpus as usize
        })
        .collect();
    if big_enough.is_empty() {
        let what = if job.spec.has_gpu_constraints() {
            format!("{want} with {} matching GPUs", want.gpus)
        } else {
            want.to_string()
        };
        e.reasons.push(format!(
            "no ready node can hold {what} even when idle ({} ready nodes)",
            ready.len()
        ));
        e.would_start
            .push(format!("a node that can hold {what} joins the pool"));
    } else {
        let fits_now: Vec<_> = big_enough
            .iter()
            .filter(|n| {
                let free_gpus = state.free_gpu_indices(n);
                want.fits_in(&n.free())
                    && free_gpus
                        .iter()
                        .filter(|i| n.gpu_matches(**i, model, min_mem))
                        .count()
                        >= want.gpus as usize
            })
            .collect();
        if fits_now.is_empty() {
            let mut short = std::collections::BTreeMap::<&str, usize>::new();
            for n in &big_enough {
                for dim in want.shortfall(&n.free()) {
                    *short.entry(dim).or_default() += 1;
                }
            }
            let dims: Vec<String> = short.iter().map(|(d, c)| format!("{d} on {c}")).collect();
            e.reasons.push(format!(
                "the {} nodes that can hold it are busy: not enough free {}",
                big_enough.len(),
                if dims.is_empty() {
                    "matching GPUs".to_string()
                } else {
                    dims.join(", ")
                }
            ));
            e.would_start
                .push(format!("{want} frees up on one of those nodes"));
        } else {
            e.reasons.push(format!(
                "room is free on {} nodes now; it is placed at the next scheduling pass",
                fits_now.len()
            ));
        }
    }
    let job_share = share_of(&want, &shares.pool)
        .iter()
        .copied()
        .fold(0.0, f64::max);
    if let (Some(cap), Some(m)) = (state.policy.member_cap, me) {
        if m.dominant_share + job_share > cap + EPS {
            e.reasons.push(format!(
                "member cap: {}'s dominant share {} plus this job's {} would pass the cap of {} (policy v{})",
                job.member,
                pct(m.dominant_share),
                pct(job_share),
                pct(cap),
                state.policy.version
            ));
            e.would_start.push(format!(
                "{}'s running jobs end, bringing its share under the cap",
                job.member
            ));
        }
    }
    if let Some(m) = me {
        let ahead: Vec<String> = shares
            .members
            .values()
            .filter(|o| o.member != job.member && o.pending > 0 && o.key < m.key)
            .map(|o| {
                format!(
                    "{} ({} of {})",
                    o.member,
                    pct(o.dominant_share),
                    pct(o.entitlement)
                )
            })
            .collect();
        if !ahead.is_empty() {
            e.reasons.push(format!(
                "fair share: {} has {} of the pool against an entitlement of {}; members further below theirs go first: {}",
                job.member,
                pct(m.dominant_share),
                pct(m.entitlement),
                ahead.join(", ")
            ));
        }
        if m.dominant_share + EPS < m.entitlement {
            let stopping = state
                .allocs
                .values()
                .filter(|a| a.preempted && a.state == AllocState::Stopping)
                .count();
            if stopping > 0 {
                e.reasons.push(format!(
                    "reclaim under way: {stopping} preempted allocations are stopping (grace {} s)",
                    state.policy.grace_secs
                ));
            } else {
                e.would_start.push(format!(
                    "{} is below its entitlement: a preemptible job of a member above its own is reclaimed when one can make room",
                    job.member
                ));
            }
        } else {
            e.would_start.push(format!(
                "{}'s share falls back toward its entitlement of {}, or others' demand drops",
                job.member,
                pct(m.entitlement)
            ));
        }
    }
    if e.queue_position > 1 {
        e.reasons.push(format!(
            "{} older jobs of {} are ahead of it in {}'s queue",
            e.queue_position - 1,
            job.member,
            job.member
        ));
    }
    Some(e)
}
