//! After the faults stop, a leader emerges and every acknowledged job
//! ends (runs to completion, or is cancelled) on every replica, and the
//! replicas reach the same applied index.

use crate::history::History;

pub fn check(h: &History) -> Result<(), String> {
    if !h.leader_at_end {
        return Err("no leader after the faults stopped".into());
    }
    if h.settled.is_none() {
        let pending: Vec<u64> = h
            .acks
            .iter()
            .filter(|a| {
                h.finals.iter().any(|f| {
                    f.state
                        .job(coop_core::JobId(a.job))
                        .is_none_or(|j| !j.state().is_terminal())
                })
            })
            .map(|a| a.job)
            .collect();
        return Err(format!(
            "acknowledged jobs {pending:?} had not ended {:?} after the faults stopped",
            crate::world::settle_within()
        ));
    }
    if h.finals.len() != crate::world::REPLICAS.len() {
        return Err(format!(
            "only {} replicas running at the end",
            h.finals.len()
        ));
    }
    let applied: Vec<u64> = h.finals.iter().map(|f| f.applied).collect();
    if applied.iter().any(|a| *a != applied[0]) {
        return Err(format!("replicas ended at applied indexes {applied:?}"));
    }
    Ok(())
}
