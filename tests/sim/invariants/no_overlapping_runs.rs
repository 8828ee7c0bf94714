//! No two runs of one job overlap in simulated time, as the workers' own
//! events tell it (a run still open at the end lasts to the end).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::history::{History, Run};

pub fn check(h: &History) -> Result<(), String> {
    let mut by_job: BTreeMap<u64, Vec<&Run>> = BTreeMap::new();
    for r in &h.runs {
        by_job.entry(r.job).or_default().push(r);
    }
    for (job, mut runs) in by_job {
        runs.sort_by_key(|r| r.start);
        for pair in runs.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let a_end = a.end.unwrap_or(Duration::MAX);
            if b.start < a_end {
                return Err(format!(
                    "job {job}: allocation {} on {} ran {:?}..{:?} while allocation {} started on {} at {:?}",
                    a.alloc, a.node, a.start, a.end, b.alloc, b.node, b.start
                ));
            }
        }
    }
    Ok(())
}
