//! Democratic member control: the policy and the member set change only by
//! proposals that members vote on, one member one vote. The rules for
//! deciding are fields of the policy in force (`vote_quorum`,
//! `vote_threshold`, `voting_period_secs`), so changing them is itself a
//! policy proposal. Every proposal, vote and tally is decided inside
//! `apply`, by the log's `now`, so every replica and auditor agrees.
//!
//! A proposal passes when enough members voted (at least `vote_quorum` of
//! the members) and more than `vote_threshold` of the votes cast are yes.
//! It is decided as soon as its outcome is certain whatever the members
//! who have not voted do, and otherwise at its deadline. Only the votes of
//! current members count: a removed member's vote is dropped from the tally.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::PublicKey;
use crate::ids::MemberId;
use crate::policy::Policy;

pub type ProposalId = u64;

/// What a proposal would change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum ProposalKind {
    /// Adopt this policy (its version must be the next one).
    Policy { policy: Policy },
    /// Admit a new member with this key.
    Admit { member: MemberId, key: PublicKey },
    /// Remove a member: its waiting jobs are cancelled, its running ones
    /// stopped after the grace, its nodes leave the pool; its history stays.
    Remove { member: MemberId },
    /// A member contests a decision about its own job (a preemption, a
    /// loss, a wait); upheld, it gets the remedy the policy defines.
    Appeal {
        job: crate::ids::JobId,
        reason: String,
    },
}

impl ProposalKind {
    /// Every kind's name, as `name` gives it.
    pub const NAMES: [&'static str; 4] = ["policy", "admit", "remove", "appeal"];

    pub fn name(&self) -> &'static str {
        match self {
            Self::Policy { .. } => "policy",
            Self::Admit { .. } => "admit",
            Self::Remove { .. } => "remove",
            Self::Appeal { .. } => "appeal",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Policy { policy } => format!("adopt policy version {}", policy.version),
            Self::Admit { member, key } => format!("admit {member} (key {key})"),
            Self::Remove { member } => format!("remove {member}"),
            Self::Appeal { job, reason } => format!("appeal for job {job}: {reason}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalStatus {
    Open,
    Adopted,
    Rejected,
    /// The deadline passed without the quorum.
    Expired,
    /// It could not take effect when it passed (another policy version was
    /// adopted first, the name was taken, the member was gone).
    Void,
}

impl ProposalStatus {
    pub const ALL: [ProposalStatus; 5] = [
        Self::Open,
        Self::Adopted,
        Self::Rejected,
        Self::Expired,
        Self::Void,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Adopted => "adopted",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Void => "void",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub id: ProposalId,
    pub kind: ProposalKind,
    pub proposer: MemberId,
    pub request_id: String,
    pub created_at_ms: u64,
    pub deadline_ms: u64,
    /// Every vote cast (a member votes once).
    pub votes: BTreeMap<MemberId, bool>,
    pub status: ProposalStatus,
    /// Why it ended as it did, with the tally.
    pub outcome: String,
    pub decided_at_ms: Option<u64>,
}

/// The count that decides a proposal, over the current members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub yes: usize,
    pub no: usize,
    /// Current members: who may vote.
    pub eligible: usize,
}

impl Tally {
    pub fn cast(&self) -> usize {
        self.yes + self.no
    }

    /// Votes needed for the quorum.
    pub fn quorum(&self, policy: &Policy) -> usize {
        ((policy.vote_quorum * self.eligible as f64).ceil() as usize).max(1)
    }

    fn passes(&self, yes: usize, cast: usize, policy: &Policy) -> bool {
        cast >= self.quorum(policy) && yes as f64 > policy.vote_threshold * cast as f64
    }

    /// Passed whatever the members who have not voted do: even if they all
    /// abstain (the quorum is already met) or all vote no.
    pub fn certainly_passes(&self, policy: &Policy) -> bool {
        self.passes(self.yes, self.cast(), policy) && self.passes(self.yes, self.eligible, policy)
    }

    /// Failed whatever they do: even if they all vote yes.
    pub fn certainly_fails(&self, policy: &Policy) -> bool {
        let remaining = self.eligible - self.cast();
        !self.passes(self.yes + remaining, self.eligible, policy)
    }

    /// The decision at the deadline.
    pub fn at_deadline(&self, policy: &Policy) -> ProposalStatus {
        if self.cast() < self.quorum(policy) {
            ProposalStatus::Expired
        } else if self.passes(self.yes, self.cast(), policy) {
            ProposalStatus::Adopted
        } else {
            ProposalStatus::Rejected
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} yes, {} no of {} members",
            self.yes, self.no, self.eligible
        )
    }
}

/// What a policy would change, computed on the current state: each
/// member's entitlement now and under it, and what the next pass would do.
#[derive(Clone, Debug, PartialEq)]
pub struct WhatIf {
    pub entitlements: Vec<(MemberId, f64, f64)>,
    pub would_place: usize,
    pub would_preempt: usize,
}

impl crate::state::ClusterState {
    /// The what-if of adopting `policy` now (`at_ms`: the time of the read).
    pub fn what_if(&self, policy: &Policy, at_ms: u64) -> WhatIf {
        let before = self.shares_at(at_ms);
        let mut after_state = self.clone();
        after_state.set_policy(policy.clone(), false);
        let after = after_state.shares_at(at_ms);
        let entitlements = before
            .members
            .iter()
            .map(|(m, s)| {
                let a = after.members.get(m).map_or(0.0, |x| x.entitlement);
                (m.clone(), s.entitlement, a)
            })
            .collect();
        let now = at_ms.max(self.now_ms());
        let (would_place, would_preempt) =
            match after_state.apply(&crate::command::Command::Schedule { now_ms: now }) {
                Ok(crate::outcome::Outcome::Scheduled {
                    placements,
                    preemptions,
                }) => (placements.len(), preemptions.len()),
                _ => (0, 0),
            };
        WhatIf {
            entitlements,
            would_place,
            would_preempt,
        }
    }
}
