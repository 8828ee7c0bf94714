//! The policy: the cooperative's published quota rules, a versioned TOML
//! document kept in the replicated state. Every decision records the
//! version it was made under. docs/policy.md states each rule with a
//! worked example.

use serde::{Deserialize, Serialize};

/// The rules, with their defaults. Unknown fields are an error, so a typo
/// never silently falls back to a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Bumped by every adopted change; 1 for the genesis policy.
    pub version: u64,
    /// Social floor: this fraction of the pool is split equally among the
    /// members with demand, contributors or not.
    #[serde(default = "defaults::floor")]
    pub floor: f64,
    /// Half-life of decayed usage and contribution, in seconds.
    #[serde(default = "defaults::half_life_secs")]
    pub half_life_secs: u64,
    /// How much decayed past usage counts against a member next to its
    /// current dominant share (0 = only what runs now).
    #[serde(default = "defaults::usage_weight")]
    pub usage_weight: f64,
    /// Reclaim grace: a preempted job gets SIGTERM, then SIGKILL this many
    /// seconds later.
    #[serde(default = "defaults::grace_secs")]
    pub grace_secs: u64,
    /// An owner's jobs go to, and reclaim, the owner's own machines first.
    #[serde(default = "defaults::owner_first")]
    pub owner_first: bool,
    /// Optional ceiling on any member's dominant share (fraction of the pool).
    #[serde(default)]
    pub member_cap: Option<f64>,
    /// Optional per-job limits.
    #[serde(default)]
    pub max_job_gpus: Option<u32>,
    #[serde(default)]
    pub max_job_runtime_secs: Option<u64>,
    /// Ended jobs leave the state this long after they ended (with their
    /// request-id entry: a retry after that creates a new job). Evaluation
    /// results stay for the leaderboards.
    #[serde(default = "defaults::job_retention_secs")]
    pub job_retention_secs: u64,
    /// GPU normalisation of contribution: this many CPU cores count as one GPU...
    #[serde(default = "defaults::cpus_per_gpu")]
    pub cpus_per_gpu: f64,
    /// ...and so does this much memory, in GiB.
    #[serde(default = "defaults::memory_gib_per_gpu")]
    pub memory_gib_per_gpu: f64,
    /// Governance: the fraction of members who must vote for a proposal
    /// to be decided by its votes.
    #[serde(default = "defaults::vote_quorum")]
    pub vote_quorum: f64,
    /// Governance: a proposal passes with more than this fraction of the
    /// votes cast (0.5: a simple majority).
    #[serde(default = "defaults::vote_threshold")]
    pub vote_threshold: f64,
    /// The remedy of an upheld appeal: credit the member's usage with the
    /// resource-seconds the job lost to preemption or lost nodes.
    #[serde(default = "defaults::yes")]
    pub appeal_credit: bool,
    /// The remedy of an upheld appeal: a job that failed because its runs
    /// were lost goes back to the queue with its retries restored.
    #[serde(default = "defaults::yes")]
    pub appeal_requeue: bool,
    /// Governance: how long a proposal is open.
    #[serde(default = "defaults::voting_period_secs")]
    pub voting_period_secs: u64,
}

mod defaults {
    pub fn yes() -> bool {
        true
    }
    pub fn vote_quorum() -> f64 {
        0.5
    }
    pub fn vote_threshold() -> f64 {
        0.5
    }
    pub fn voting_period_secs() -> u64 {
        7 * 24 * 3600
    }
    pub fn floor() -> f64 {
        0.5
    }
    pub fn half_life_secs() -> u64 {
        7 * 24 * 3600
    }
    pub fn usage_weight() -> f64 {
        0.5
    }
    pub fn grace_secs() -> u64 {
        30
    }
    pub fn owner_first() -> bool {
        true
    }
    pub fn job_retention_secs() -> u64 {
        30 * 24 * 3600
    }
    pub fn cpus_per_gpu() -> f64 {
        16.0
    }
    pub fn memory_gib_per_gpu() -> f64 {
        64.0
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            version: 1,
            floor: defaults::floor(),
            half_life_secs: defaults::half_life_secs(),
            usage_weight: defaults::usage_weight(),
            grace_secs: defaults::grace_secs(),
            owner_first: defaults::owner_first(),
            member_cap: None,
            max_job_gpus: None,
            max_job_runtime_secs: None,
            job_retention_secs: defaults::job_retention_secs(),
            cpus_per_gpu: defaults::cpus_per_gpu(),
            memory_gib_per_gpu: defaults::memory_gib_per_gpu(),
            vote_quorum: defaults::vote_quorum(),
            vote_threshold: defaults::vote_threshold(),
            voting_period_secs: defaults::voting_period_secs(),
            appeal_credit: true,
            appeal_requeue: true,
        }
    }
}

/// Why a policy document was refused; names the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PolicyError {
    #[error("policy: {message}")]
    Parse { message: String },
    #[error("policy field {field}: {problem}")]
    Field { field: String, problem: String },
}

fn field_error(field: &str, problem: impl Into<String>) -> PolicyError {
    PolicyError::Field {
        field: field.to_string(),
        problem: problem.into(),
    }
}

impl Policy {
    /// Parses and validates a policy document; the error names the field.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let policy: Policy = toml::from_str(text).map_err(|e| PolicyError::Parse {
            message: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })?;
        policy.validate()?;
        Ok(policy)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("policy always serializes")
    }

    pub fn validate(&self) -> Result<(), PolicyError> {
        let fraction = |name: &str, v: f64| {
            if v.is_finite() && (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(field_error(
                    name,
                    format!("must be between 0 and 1, got {v}"),
                ))
            }
        };
        if self.version == 0 {
            return Err(field_error("version", "must be at least 1"));
        }
        fraction("floor", self.floor)?;
        fraction("usage_weight", self.usage_weight)?;
        if let Some(cap) = self.member_cap {
            fraction("member_cap", cap)?;
            if cap == 0.0 {
                return Err(field_error("member_cap", "0 would let nobody run anything"));
            }
        }
        fraction("vote_quorum", self.vote_quorum)?;
        if self.vote_quorum == 0.0 {
            return Err(field_error(
                "vote_quorum",
                "0 would let nobody decide for everyone",
            ));
        }
        if !(self.vote_threshold.is_finite() && (0.5..1.0).contains(&self.vote_threshold)) {
            return Err(field_error(
                "vote_threshold",
                format!(
                    "must be at least 0.5 (no minority rule) and below 1, got {}",
                    self.vote_threshold
                ),
            ));
        }
        if !(60..=90 * 24 * 3600).contains(&self.voting_period_secs) {
            return Err(field_error(
                "voting_period_secs",
                "between one minute and 90 days",
            ));
        }
        if self.half_life_secs == 0 {
            return Err(field_error("half_life_secs", "must be at least 1"));
        }
        if self.grace_secs > 24 * 3600 {
            return Err(field_error("grace_secs", "at most one day"));
        }
        for (name, v) in [
            ("cpus_per_gpu", self.cpus_per_gpu),
            ("memory_gib_per_gpu", self.memory_gib_per_gpu),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(field_error(
                    name,
                    format!("must be a positive number, got {v}"),
                ));
            }
        }
        if self.max_job_runtime_secs == Some(0) {
            return Err(field_error(
                "max_job_runtime_secs",
                "must be at least 1 when set",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_round_trip() {
        let p = Policy::from_toml("version = 1\n").unwrap();
        assert_eq!(p, Policy::default());
        assert_eq!(Policy::from_toml(&p.to_toml()).unwrap(), p);
    }

    #[test]
    fn bad_fields_are_named() {
        let field = |text: &str| match Policy::from_toml(text).unwrap_err() {
            PolicyError::Field { field, .. } => field,
            PolicyError::Parse { message } => message,
        };
        assert_eq!(field("version = 1\nfloor = 1.5\n"), "floor");
        assert!(field("version = 1\nflor = 0.5\n").contains("flor"));
        let e = field("version = 1\nhalf_life_secs = \"week\"\n");
        assert!(e.contains("half_life_secs") || e.contains("integer"), "{e}");
        assert!(field("floor = 0.5\n").contains("version"));
        assert_eq!(field("version = 1\nmember_cap = 0.0\n"), "member_cap");
    }
}
