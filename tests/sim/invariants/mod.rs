//! The invariants, one per file, each judged over a run's history.

pub mod no_lost_acks;
pub mod no_overlapping_runs;
pub mod one_completion;
pub mod one_job_per_request;
pub mod progress;
pub mod same_state_at_same_index;

use crate::history::History;

/// An invariant's check: why it does not hold, if it does not.
pub type Check = fn(&History) -> Result<(), String>;

/// Every invariant's name and check.
pub const ALL: &[(&str, Check)] = &[
    ("no acknowledged submit is lost", no_lost_acks::check),
    (
        "one job per (member, request id)",
        one_job_per_request::check,
    ),
    ("no two runs of one job overlap", no_overlapping_runs::check),
    ("at most one completion per job", one_completion::check),
    (
        "same state at the same applied index",
        same_state_at_same_index::check,
    ),
    ("after the faults, a leader and progress", progress::check),
];
