//! A scheduling pass, carried out: the allocator (`crate::fairshare`)
//! plans; this records every placement and preemption with the rule and
//! policy version that decided it.

use crate::alloc::{AllocState, Allocation};
use crate::decision::{Decision, DecisionKind};
use crate::fairshare::Plan;
use crate::job::JobState;
use crate::outcome::{Outcome, Placement, Preemption};
use crate::state::ClusterState;

/// Most extra passes one `Schedule` runs after a pass that revoked loans
/// (see `pass`): keeps a pathological state from looping.
const MAX_EXTRA_ROUNDS: usize = 8;

pub(super) fn pass(state: &mut ClusterState, now: u64) -> Outcome {
    super::jobs::expire(state, now);
    state.accrue_all(now);
    // Carrying a plan out never sets the flag again; room that frees up
    // later does (`remove_alloc`), and so does new demand.
    state.clear_pass_due();
    let plan = state.plan();
    let mut revoked = plan.revoked;
    let (mut placements, mut preemptions) = carry_out(state, plan, now);
    // A pass that took back loans may leave room only another pass can
    // fill; carry on until a pass takes nothing back, so scheduling the
    // result again changes nothing. Each round satisfies a claim.
    let mut rounds = 0;
    while revoked > 0 && rounds < MAX_EXTRA_ROUNDS {
        rounds += 1;
        let plan = state.plan();
        if plan.is_empty() {
            break;
        }
        revoked = plan.revoked;
        let (more_placements, more_preemptions) = carry_out(state, plan, now);
        placements.extend(more_placements);
        preemptions.extend(more_preemptions);
    }
    Outcome::Scheduled {
        placements,
        preemptions,
    }
}

/// Applies a plan: its placements, then its preemptions.
fn carry_out(state: &mut ClusterState, plan: Plan, now: u64) -> (Vec<Placement>, Vec<Preemption>) {
    let version = state.policy().version;
    let mut placements = Vec::with_capacity(plan.placements.len());
    for p in plan.placements {
        let Some(member) = state.job(p.job).map(|j| j.member.clone()) else {
            continue;
        };
        let alloc_id = state.next_alloc_id();
        state.insert_alloc(
            Allocation {
                id: alloc_id,
                job: p.job,
                node: p.node.clone(),
                resources: p.resources,
                gpu_indices: p.gpu_indices.clone(),
                state: AllocState::Assigned,
                created_at_ms: now,
                rule: p.rule,
                preempted: false,
                facts: Default::default(),
            },
            &member,
            now,
        );
        if let Some(job) = state.set_job_state(p.job, JobState::Assigned) {
            job.alloc = Some(alloc_id);
            job.last_run = Some((alloc_id, p.node.clone()));
            job.record(
                now,
                format!(
                    "placed on {} as allocation {alloc_id} (rule: {}, policy v{version})",
                    p.node, p.rule
                ),
            );
        }
        state.decide(Decision {
            at_ms: now,
            kind: DecisionKind::Place,
            job: p.job,
            member,
            alloc: alloc_id,
            node: p.node.clone(),
            rule: p.rule,
            policy_version: version,
        });
        placements.push(Placement {
            job: p.job,
            alloc: alloc_id,
            node: p.node,
            resources: p.resources,
            gpu_indices: p.gpu_indices,
            rule: p.rule,
        });
    }
    let grace = state.policy().grace_secs;
    let mut preemptions = Vec::with_capacity(plan.preemptions.len());
    for p in plan.preemptions {
        let Some(alloc) = state.alloc_mut(p.alloc) else {
            continue;
        };
        alloc.state = AllocState::Stopping;
        alloc.preempted = true;
        let (job_id, node) = (alloc.job, alloc.node.clone());
        let for_member = state
            .job(p.for_job)
            .map(|j| j.member.to_string())
            .unwrap_or_else(|| "?".into());
        let Some(job) = state.job_mut(job_id) else {
            continue;
        };
        job.record(
            now,
            format!(
                "preempted on {node} (rule: {}, policy v{version}) for job {} of {for_member}; grace {grace} s",
                p.rule, p.for_job
            ),
        );
        let victim = job.member.clone();
        state.decide(Decision {
            at_ms: now,
            kind: DecisionKind::Preempt,
            job: job_id,
            member: victim.clone(),
            alloc: p.alloc,
            node,
            rule: p.rule,
            policy_version: version,
        });
        preemptions.push(Preemption {
            alloc: p.alloc,
            job: job_id,
            victim,
            for_job: p.for_job,
            rule: p.rule,
        });
    }
    (placements, preemptions)
}
