//! No acknowledged submit is lost: every job the cluster acknowledged is
//! in every replica's final state, in its member's name.

use crate::history::History;

pub fn check(h: &History) -> Result<(), String> {
    for f in &h.finals {
        for ack in &h.acks {
            match f.state.job(coop_core::JobId(ack.job)) {
                Some(job)
                    if job.member.as_str() == ack.member && job.request_id == ack.request_id => {}
                Some(job) => {
                    return Err(format!(
                        "{}: acknowledged job {} ({} {}) is there as {} {}",
                        f.replica, ack.job, ack.member, ack.request_id, job.member, job.request_id
                    ))
                }
                None => {
                    return Err(format!(
                        "{}: acknowledged job {} ({} {}) is lost",
                        f.replica, ack.job, ack.member, ack.request_id
                    ))
                }
            }
        }
    }
    Ok(())
}
