//! Decisions: what a scheduling pass did to a job, and the policy rule that
//! made it do so. Kept in a bounded history for `coop status` and audit.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{AllocId, JobId, MemberId, NodeId};

/// Decisions kept in the state; older ones are dropped first.
pub const DECISIONS_KEPT: usize = 1000;

/// The rule behind a decision, as recorded in the state and on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// Placed within the member's entitlement.
    FairShare,
    /// Placed beyond the member's entitlement on idle capacity (lent).
    WorkConserving,
    /// Placed on a machine the member owns.
    OwnerFirst,
    /// Stopped to give a member below entitlement its share.
    Reclaim,
    /// Stopped to give an owner its own machine back.
    OwnerReclaim,
}

impl Rule {
    pub const ALL: [Rule; 5] = [
        Rule::FairShare,
        Rule::WorkConserving,
        Rule::OwnerFirst,
        Rule::Reclaim,
        Rule::OwnerReclaim,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::FairShare => "fair-share",
            Rule::WorkConserving => "work-conserving",
            Rule::OwnerFirst => "owner-first",
            Rule::Reclaim => "reclaim",
            Rule::OwnerReclaim => "owner-reclaim",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Place,
    Preempt,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Place => "place",
            DecisionKind::Preempt => "preempt",
        }
    }
}

impl fmt::Display for DecisionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One allocation decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub at_ms: u64,
    pub kind: DecisionKind,
    pub job: JobId,
    pub member: MemberId,
    pub alloc: AllocId,
    pub node: NodeId,
    pub rule: Rule,
    pub policy_version: u64,
}
