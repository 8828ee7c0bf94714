//! One job per (member, request id): a retried submit names the job the
//! first one made, and no state holds two jobs for one request id.

use crate::history::{jobs_by_request, History};

pub fn check(h: &History) -> Result<(), String> {
    for again in &h.repeats {
        let first = h
            .acks
            .iter()
            .find(|a| a.member == again.member && a.request_id == again.request_id)
            .ok_or_else(|| format!("a repeat of {} was never acknowledged", again.request_id))?;
        if first.job != again.job {
            return Err(format!(
                "{} {}: acknowledged as job {}, then as job {}",
                again.member, again.request_id, first.job, again.job
            ));
        }
    }
    for f in &h.finals {
        for ((member, request_id), jobs) in jobs_by_request(&f.state) {
            if jobs.len() > 1 {
                return Err(format!(
                    "{}: {member} {request_id} made jobs {jobs:?}",
                    f.replica
                ));
            }
        }
    }
    Ok(())
}
