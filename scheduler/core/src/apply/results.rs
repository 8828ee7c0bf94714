//! Workers' reports: an allocation started, an allocation ended (with what
//! a model job produced). The allocation id is the fencing token: a report
//! about an allocation that is no longer live on that node is refused.

use crate::alloc::{AllocState, Allocation};
use crate::command::ExitStatus;
use crate::error::CoreError;
use crate::ids::{AllocId, NodeId};
use crate::job::JobState;
use crate::outcome::Outcome;
use crate::result::JobResult;
use crate::state::ClusterState;

fn live_alloc_on<'a>(
    state: &'a ClusterState,
    alloc_id: AllocId,
    node: &NodeId,
) -> Result<&'a Allocation, CoreError> {
    match state.allocs().get(&alloc_id) {
        Some(a) if &a.node == node => Ok(a),
        _ => Err(CoreError::StaleAllocation {
            alloc: alloc_id,
            node: node.clone(),
        }),
    }
}

pub(super) fn started(
    state: &mut ClusterState,
    alloc_id: AllocId,
    node: &NodeId,
    now: u64,
) -> Result<Outcome, CoreError> {
    let alloc = live_alloc_on(state, alloc_id, node)?;
    let job_id = alloc.job;
    match alloc.state {
        AllocState::Assigned => {}
        // A worker retrying a report it already made: harmless.
        AllocState::Running => {
            return Ok(Outcome::AllocStarted {
                alloc: alloc_id,
                job: job_id,
            })
        }
        state @ AllocState::Stopping => {
            return Err(CoreError::BadAllocTransition {
                alloc: alloc_id,
                state,
            });
        }
    }
    if let Some(a) = state.alloc_mut(alloc_id) {
        a.state = AllocState::Running;
    }
    if let Some(job) = state.set_job_state(job_id, JobState::Running) {
        job.started_at_ms = Some(now);
        job.record(now, format!("started on {node} (allocation {alloc_id})"));
    }
    Ok(Outcome::AllocStarted {
        alloc: alloc_id,
        job: job_id,
    })
}

pub(super) fn finished(
    state: &mut ClusterState,
    alloc_id: AllocId,
    node: &NodeId,
    exit: &ExitStatus,
    result: Option<&JobResult>,
    now: u64,
) -> Result<Outcome, CoreError> {
    live_alloc_on(state, alloc_id, node)?;
    let alloc = state
        .remove_alloc(alloc_id, now)
        .ok_or_else(|| CoreError::StaleAllocation {
            alloc: alloc_id,
            node: node.clone(),
        })?;
    if let (Some(result), Some(job)) = (result, state.job_mut(alloc.job)) {
        match result.validate().and_then(|()| result.fits(job)) {
            Ok(()) => job.result = Some(result.clone()),
            Err(e) => job.record(now, format!("result of allocation {alloc_id} dropped: {e}")),
        }
    }
    let job_state = end_run(state, &alloc, exit, now);
    Ok(Outcome::AllocFinished {
        alloc: alloc_id,
        job: alloc.job,
        job_state,
    })
}

/// Records the end of a job's run and decides what the job becomes:
/// succeeded, requeued (retries left, or preempted) or failed. A cancelled
/// job stays cancelled.
pub(super) fn end_run(
    state: &mut ClusterState,
    alloc: &Allocation,
    exit: &ExitStatus,
    now: u64,
) -> JobState {
    let alloc_id = alloc.id;
    let Some(job) = state.job_mut(alloc.job) else {
        return JobState::Failed;
    };
    if job.alloc == Some(alloc_id) {
        job.alloc = None;
    }
    // Work the job lost to the cooperative's decisions (a preemption) or
    // to the pool (a lost node): what an upheld appeal credits back.
    let lost_run = alloc.preempted || (exit.code.is_none() && exit.signal.is_none());
    if lost_run && job.state() != JobState::Cancelled {
        if let Some(start) = job.started_at_ms {
            job.lost_ms = job.lost_ms.saturating_add(now.saturating_sub(start));
        }
    }
    let (next, line) = if job.state() == JobState::Cancelled {
        (
            JobState::Cancelled,
            format!("allocation {alloc_id} stopped: {}", exit.describe()),
        )
    } else if alloc.preempted {
        // Reclaim is the cooperative's decision, not the job's failure.
        (
            JobState::Pending,
            format!(
                "allocation {alloc_id} preempted ({}); requeued without spending a retry",
                exit.describe()
            ),
        )
    } else if exit.success() {
        job.exit_code = exit.code;
        job.finished_at_ms = Some(now);
        job.message = exit.describe();
        (
            JobState::Succeeded,
            format!("allocation {alloc_id} ended: {}", exit.describe()),
        )
    } else if job.attempts < job.spec.max_retries {
        job.exit_code = exit.code;
        job.attempts += 1;
        (
            JobState::Pending,
            format!(
                "run {} ended: {}; requeued (retry {} of {})",
                alloc_id,
                exit.describe(),
                job.attempts,
                job.spec.max_retries
            ),
        )
    } else {
        job.exit_code = exit.code;
        job.attempts += 1;
        job.finished_at_ms = Some(now);
        job.message = if job.spec.max_retries == 0 {
            exit.describe()
        } else {
            format!("{} (retries exhausted)", exit.describe())
        };
        (
            JobState::Failed,
            format!("allocation {alloc_id} ended: {}", exit.describe()),
        )
    };
    job.record(now, line);
    if next != JobState::Cancelled {
        state.set_job_state(alloc.job, next);
    }
    next
}
