//! Members: who shares the pool, with their decayed usage and contribution.

use serde::{Deserialize, Serialize};

use crate::identity::PublicKey;
use crate::ids::MemberId;
use crate::ledger::{decay_factor, Usage};
use crate::policy::Policy;
use crate::resources::Resources;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub id: MemberId,
    /// The key every request in this member's name must be signed with.
    pub public_key: PublicKey,
    pub first_seen_ms: u64,
    pub jobs_submitted: u64,
    /// Sum of the member's live allocations (derived: changed only by
    /// `attach`/`detach`, from `ClusterState`'s insert/remove pair).
    allocated: Resources,
    /// Decayed resource-seconds the member has used.
    pub usage: Usage,
    /// Decayed GPU-equivalent-seconds the member's ready nodes have offered.
    pub contribution: f64,
    /// GPU-equivalents per second the member's ready nodes offer now.
    pub offered: f64,
    /// When `usage` and `contribution` were last brought up to date.
    pub accrued_at_ms: u64,
}

impl Member {
    pub(crate) fn new(id: MemberId, public_key: PublicKey, now_ms: u64) -> Self {
        Self {
            id,
            public_key,
            first_seen_ms: now_ms,
            jobs_submitted: 0,
            allocated: Resources::ZERO,
            usage: Usage::default(),
            contribution: 0.0,
            offered: 0.0,
            accrued_at_ms: now_ms,
        }
    }

    pub fn allocated(&self) -> Resources {
        self.allocated
    }

    pub(crate) fn attach(&mut self, resources: &Resources) {
        self.allocated = self.allocated.saturating_add(resources);
    }

    pub(crate) fn detach(&mut self, resources: &Resources) {
        self.allocated = self.allocated.saturating_sub(resources);
    }

    /// The decayed usage and contribution as they will be at `now_ms` at
    /// the current rates, without changing anything (for display).
    pub fn accrued(&self, now_ms: u64, policy: &Policy) -> (Usage, f64) {
        if now_ms <= self.accrued_at_ms {
            return (self.usage, self.contribution);
        }
        let dt = now_ms - self.accrued_at_ms;
        let factor = decay_factor(dt, policy);
        let secs = dt as f64 / 1000.0;
        let mut usage = self.usage;
        usage.decay(factor);
        usage.add(&self.allocated, secs);
        (usage, self.contribution * factor + self.offered * secs)
    }

    /// Brings the decayed ledger up to `now_ms` at the current rates.
    pub(crate) fn accrue(&mut self, now_ms: u64, policy: &Policy) {
        let (usage, contribution) = self.accrued(now_ms, policy);
        self.usage = usage;
        self.contribution = contribution;
        self.accrued_at_ms = self.accrued_at_ms.max(now_ms);
    }
}
