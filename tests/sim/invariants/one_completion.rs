//! At most one completion per job: replaying a replica's decision log
//! (as an auditor does) finds no job that finished twice, and recomputes
//! the replica's log root and state.

use std::collections::BTreeMap;

use coop_core::{ClusterState, Command, Outcome};

use crate::history::History;

pub fn check(h: &History) -> Result<(), String> {
    for f in &h.finals {
        let mut state = ClusterState::new();
        let mut completions: BTreeMap<u64, usize> = BTreeMap::new();
        for (i, leaf) in f.leaves.iter().enumerate() {
            let parsed = coop_core::decision_log::parse_leaf(leaf)
                .map_err(|e| format!("{}: leaf {i}: {e}", f.replica))?;
            let cmd: Command = serde_json::from_slice(parsed.command)
                .map_err(|e| format!("{}: leaf {i}: {e}", f.replica))?;
            let (result, again) = state.apply_logged(&cmd);
            if again != *leaf {
                return Err(format!("{}: leaf {i} does not recompute", f.replica));
            }
            if let Ok(Outcome::AllocFinished { job, job_state, .. }) = result {
                if job_state.is_terminal() {
                    *completions.entry(job.0).or_default() += 1;
                }
            }
        }
        if let Some((job, n)) = completions.iter().find(|(_, n)| **n > 1) {
            return Err(format!("{}: job {job} completed {n} times", f.replica));
        }
        if state.log_root() != f.state.log_root() {
            return Err(format!("{}: the replayed log root differs", f.replica));
        }
        if state.digest() != f.state.digest() {
            return Err(format!("{}: the replayed state differs", f.replica));
        }
    }
    Ok(())
}
