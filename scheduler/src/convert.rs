//! Views of the replicated state as API messages: a job with its
//! allocation, reasons and decisions, and a node's assignment set. The
//! type-by-type conversions live in `coop_proto::convert`.

use coop_core::{Allocation, ClusterState, Job, MemberId};
use coop_proto::convert::wire;
use coop_proto::{api, worker};

/// A job as `viewer` may see it: with detail (reasons, history, decisions)
/// when asked for; env values only for the job's own member, never in
/// lists (`viewer` is `None` there).
pub fn job_to_proto(
    state: &ClusterState,
    job: &Job,
    viewer: Option<&MemberId>,
    with_detail: bool,
) -> api::Job {
    let mut spec = api::JobSpec::from(&job.spec);
    if viewer != Some(&job.member) {
        spec.env.clear();
    }
    let alloc = job.alloc.and_then(|a| state.allocs().get(&a));
    let (alloc_id, node) = match (alloc, &job.last_run) {
        (Some(a), _) => (a.id.0, a.node.to_string()),
        (None, Some((a, n))) => (a.0, n.to_string()),
        (None, None) => (0, String::new()),
    };
    api::Job {
        id: job.id.0,
        member: job.member.to_string(),
        state: wire::<api::JobState, _>(job.state()),
        spec: Some(spec),
        attempts: job.attempts,
        alloc_id,
        node,
        gpu_indices: alloc.map(|a| a.gpu_indices.clone()).unwrap_or_default(),
        submitted_at_ms: job.submitted_at_ms,
        started_at_ms: job.started_at_ms.unwrap_or(0),
        finished_at_ms: job.finished_at_ms.unwrap_or(0),
        exit_code: job.exit_code,
        message: job.message.clone(),
        pending_reasons: if with_detail {
            state
                .pending_reasons(job.id)
                .iter()
                .map(api::PendingReason::from)
                .collect()
        } else {
            Vec::new()
        },
        history: if with_detail {
            job.history
                .iter()
                .map(|e| api::JobEvent {
                    at_ms: e.at_ms,
                    what: e.what.clone(),
                })
                .collect()
        } else {
            Vec::new()
        },
        request_id: job.request_id.clone(),
        result: job.result.as_ref().map(api::JobResult::from),
        decisions: if with_detail {
            state
                .decisions()
                .iter()
                .filter(|d| d.job == job.id)
                .map(api::Decision::from)
                .collect()
        } else {
            Vec::new()
        },
        array: job
            .array
            .map(|place| array_status(state, job, place, with_detail)),
    }
}

/// A job's place in its array and, with `counts`, how the array's jobs
/// stand.
fn array_status(
    state: &ClusterState,
    job: &Job,
    place: coop_core::ArrayPlace,
    counts: bool,
) -> api::ArrayStatus {
    let total = job.spec.array.map_or(0, |r| r.len());
    let mut status = api::ArrayStatus {
        first: place.first.0,
        index: place.index,
        total,
        ..Default::default()
    };
    if counts {
        for j in state.array_jobs(job) {
            use coop_core::JobState as S;
            match j.state() {
                S::Pending => status.pending += 1,
                S::Succeeded => status.succeeded += 1,
                S::Failed => status.failed += 1,
                S::Cancelled => status.cancelled += 1,
                _ => status.running += 1,
            }
        }
        match state.sharded_result(job) {
            Some(Ok(merged)) => status.merged = Some(api::JobResult::from(&merged)),
            Some(Err(e)) => status.merge_error = e.to_string(),
            None => {}
        }
    }
    status
}

pub fn assignment_to_proto(state: &ClusterState, alloc: &Allocation) -> worker::Assignment {
    let job = state.job(alloc.job);
    let policy = state.policy();
    worker::Assignment {
        alloc_id: alloc.id.0,
        job_id: alloc.job.0,
        member: job.map(|j| j.member.to_string()).unwrap_or_default(),
        // The policy's runtime limit is the timeout of a job that names none.
        spec: job.map(|j| {
            let mut spec = api::JobSpec::from(&j.spec);
            spec.timeout_secs = spec.timeout_secs.or(policy.max_job_runtime_secs);
            spec
        }),
        array_index: job.and_then(|j| j.array).map(|a| a.index),
        gpu_indices: alloc.gpu_indices.clone(),
        state: wire::<api::AllocState, _>(alloc.state),
        stop_grace_ms: if alloc.preempted {
            policy.grace_secs * 1000
        } else {
            0
        },
        preempted: alloc.preempted,
        member_key: job
            .and_then(|j| state.members().get(&j.member))
            .map(|m| m.public_key.0.to_vec())
            .unwrap_or_default(),
    }
}
