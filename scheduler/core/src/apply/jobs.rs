//! Jobs entering and leaving the state: submit, cancel, and the expiry of
//! ended jobs after the policy's retention.

use super::Time;
use crate::error::CoreError;
use crate::identity::Auth;
use crate::ids::{JobId, MemberId};
use crate::job::{Job, JobSpec, JobState};
use crate::outcome::Outcome;
use crate::result::JobResult;
use crate::state::ClusterState;

/// Ended jobs checked for expiry per scheduling pass: bounds the work a
/// pass spends on housekeeping whatever the history.
const EXPIRY_SCAN: usize = 1000;

pub(super) fn submit(
    state: &mut ClusterState,
    request_id: &str,
    member: &MemberId,
    spec: &JobSpec,
    env_salt: Option<&crate::job::EnvSalt>,
    auth: &Auth,
    at: Time,
) -> Result<Outcome, CoreError> {
    let Time { stamp, now } = at;
    if let Some(job) = state.check_submit(request_id, member, spec, env_salt, auth, stamp)? {
        return Ok(Outcome::Submitted {
            job,
            existing: true,
        });
    }
    // A salt matters only to a job with env values; without any, the job
    // is its public form already (and the digest needs no copy).
    let salt = env_salt.copied().filter(
        |_| matches!(&spec.kind, crate::job::JobKind::Command { env, .. } if !env.is_empty()),
    );
    // An array's jobs take consecutive ids from the first, which names the
    // array; each is an ordinary job to the allocator.
    let count = spec.array.map_or(1, |r| r.len());
    let first = JobId(state.last_job_id() + 1);
    if let Some(m) = state.member_mut(member, now) {
        m.jobs_submitted += u64::from(count);
    }
    for k in 0..count {
        let id = state.next_job_id();
        let mut job = Job::new(
            id,
            member.clone(),
            request_id.to_string(),
            spec.clone(),
            salt,
            now,
        );
        job.array = spec.array.map(|r| crate::job::ArrayPlace {
            first,
            index: r.first + k,
        });
        state.insert_job(job);
    }
    Ok(Outcome::Submitted {
        job: first,
        existing: false,
    })
}

pub(super) fn cancel(
    state: &mut ClusterState,
    job_id: JobId,
    member: &MemberId,
    request_id: &str,
    auth: &Auth,
    at: Time,
) -> Result<Outcome, CoreError> {
    let Time { stamp, now } = at;
    state.check_cancel(job_id, member, request_id, auth, stamp)?;
    let why = format!("cancelled by {member}");
    let alloc = end_cancelled(state, job_id, now, why.clone(), why, false);
    Ok(Outcome::Cancelled {
        job: job_id,
        stopping: alloc,
    })
}

pub(super) fn cancel_array(
    state: &mut ClusterState,
    job_id: JobId,
    member: &MemberId,
    request_id: &str,
    auth: &Auth,
    at: Time,
) -> Result<Outcome, CoreError> {
    let Time { stamp, now } = at;
    let jobs = state.check_cancel_array(job_id, member, request_id, auth, stamp)?;
    let first = state
        .job(job_id)
        .and_then(|j| j.array)
        .map_or(job_id, |a| a.first);
    let why = format!("cancelled by {member} with its array");
    let stopping = jobs
        .iter()
        .filter_map(|&id| end_cancelled(state, id, now, why.clone(), why.clone(), false))
        .collect();
    Ok(Outcome::ArrayCancelled {
        first,
        cancelled: jobs,
        stopping,
    })
}

/// Ends a job as cancelled, with `message` and the history line `line`; its
/// allocation, if any, starts stopping (`preempted` when the job did
/// nothing wrong, so a stop does not count against it). Returns that
/// allocation.
pub(super) fn end_cancelled(
    state: &mut ClusterState,
    job_id: JobId,
    now: u64,
    message: String,
    line: String,
    preempted: bool,
) -> Option<crate::ids::AllocId> {
    let alloc = state.job(job_id).and_then(|j| j.alloc);
    if let Some(a) = alloc.and_then(|a| state.alloc_mut(a)) {
        a.state = crate::alloc::AllocState::Stopping;
        a.preempted |= preempted;
    }
    if let Some(job) = state.set_job_state(job_id, JobState::Cancelled) {
        job.finished_at_ms = Some(now);
        job.message = message;
        job.record(now, line);
    }
    alloc
}

/// Removes jobs that ended more than the policy's retention ago, a bounded
/// number per pass (evaluation results are kept for the leaderboards).
pub(super) fn expire(state: &mut ClusterState, now: u64) {
    let retention_ms = state.policy().job_retention_secs.saturating_mul(1000);
    let cutoff = now.saturating_sub(retention_ms);
    if cutoff == 0 {
        return;
    }
    // A cursor walks the jobs round-robin, so jobs kept for good
    // (evaluation results) never hold back the expiry of later ones.
    let scanned: Vec<&Job> = state
        .jobs()
        .range(JobId(state.expiry_cursor())..)
        .map(|(_, j)| j)
        .take(EXPIRY_SCAN)
        .collect();
    let cursor = match scanned.last() {
        Some(last) if scanned.len() == EXPIRY_SCAN => last.id.0 + 1,
        _ => 0,
    };
    let expired: Vec<JobId> = scanned
        .into_iter()
        .filter(|j| j.state().is_terminal() && j.alloc.is_none())
        .filter(|j| j.finished_at_ms.is_some_and(|t| t < cutoff))
        .filter(|j| !matches!(j.result, Some(JobResult::Evaluation { .. })))
        .map(|j| j.id)
        .collect();
    state.set_expiry_cursor(cursor);
    for id in expired {
        state.remove_job(id);
    }
}
