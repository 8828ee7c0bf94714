//! The member and operator commands that talk to a running cluster, by area:
//! jobs (submit, status, jobs, cancel, logs), fairness (why, share, policy),
//! models (evals) and cluster (nodes, replicas).

pub mod audit;
pub mod cluster;
pub mod fairness;
pub mod governance;
pub mod jobs;
pub mod keys;
pub mod models;
pub mod submit;

use std::time::{SystemTime, UNIX_EPOCH};

pub use crate::identity::now_ms;

pub fn new_request_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{:x}", std::process::id(), nanos)
}

pub fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}
