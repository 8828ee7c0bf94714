//! The member and operator commands that talk to a running cluster, by area:
//! jobs (submit, status, jobs, cancel, logs), fairness (why, share, policy),
//! models (evals) and cluster (nodes, replicas).

pub mod cluster;
pub mod fairness;
pub mod jobs;
pub mod models;
pub mod submit;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};

pub fn member_or_default(member: Option<String>) -> Result<String> {
    match member
        .or_else(|| std::env::var("USER").ok())
        .filter(|m| !m.is_empty())
    {
        Some(m) => Ok(m),
        None => bail!("say who you are: --member NAME or COOP_MEMBER"),
    }
}

pub fn new_request_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{:x}", std::process::id(), nanos)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}
