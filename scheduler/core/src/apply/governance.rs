//! Proposals and votes (see `crate::governance` for the rules). A proposal
//! is checked when it is made and again when it takes effect; a vote is
//! counted, and the proposal decided as soon as its outcome is certain;
//! `settle_due` decides the ones whose deadline passed.

use super::Time;
use crate::error::CoreError;
use crate::governance::{Proposal, ProposalId, ProposalKind, ProposalStatus};
use crate::identity::{Auth, MemberRequest};
use crate::ids::{validate_name, MemberId};
use crate::job::JobState;
use crate::outcome::Outcome;
use crate::state::ClusterState;

/// Why a proposal could not take effect now, if it could not.
fn conflict(state: &ClusterState, kind: &ProposalKind) -> Option<String> {
    match kind {
        ProposalKind::Policy { policy } => {
            let next = state.policy().version + 1;
            (policy.version != next).then(|| {
                format!(
                    "it proposes policy version {}, but the next version is {next}",
                    policy.version
                )
            })
        }
        ProposalKind::Admit { member, key } => {
            if state.members().contains_key(member) {
                Some(format!("{member} is a member already"))
            } else if state.members().values().any(|m| m.public_key == *key) {
                // One key, one member: otherwise one holder has two votes.
                Some(format!("{key} is another member's key"))
            } else {
                None
            }
        }
        ProposalKind::Remove { member } => {
            (!state.members().contains_key(member)).then(|| format!("{member} is not a member"))
        }
        ProposalKind::Appeal { job, .. } => state
            .job(*job)
            .is_none()
            .then(|| format!("job {job} is no longer in the record")),
    }
}

/// Longest appeal reason.
const MAX_REASON: usize = 1000;

fn check_propose(
    state: &ClusterState,
    member: &MemberId,
    request_id: &str,
    kind: &ProposalKind,
    auth: &Auth,
    now: u64,
) -> Result<Option<ProposalId>, CoreError> {
    state.verify(
        member,
        request_id,
        auth,
        &MemberRequest::Propose { kind },
        now,
    )?;
    if let Some(p) = state
        .proposals()
        .values()
        .find(|p| &p.proposer == member && p.request_id == request_id)
    {
        return if &p.kind == kind {
            Ok(Some(p.id))
        } else {
            Err(CoreError::BadProposal(format!(
                "request id {request_id} already made proposal {}",
                p.id
            )))
        };
    }
    match kind {
        ProposalKind::Policy { policy } => policy.validate()?,
        ProposalKind::Admit { member, .. } => validate_name("member", member.as_str())?,
        ProposalKind::Remove { .. } => {}
        ProposalKind::Appeal { job, reason } => {
            let j = state.job(*job).ok_or(CoreError::UnknownJob(*job))?;
            // A member appeals decisions about its own jobs only.
            if &j.member != member {
                return Err(CoreError::NotOwner {
                    job: *job,
                    owner: j.member.clone(),
                });
            }
            if reason.trim().is_empty() || reason.len() > MAX_REASON {
                return Err(CoreError::BadProposal(format!(
                    "give a reason of 1 to {MAX_REASON} bytes"
                )));
            }
        }
    }
    if let Some(why) = conflict(state, kind) {
        return Err(CoreError::BadProposal(why));
    }
    Ok(None)
}

impl ClusterState {
    /// Checks a proposal without applying it (the receiving replica does).
    pub fn check_propose(
        &self,
        member: &MemberId,
        request_id: &str,
        kind: &ProposalKind,
        auth: &Auth,
        now: u64,
    ) -> Result<(), CoreError> {
        check_propose(self, member, request_id, kind, auth, now).map(|_| ())
    }

    /// Checks a vote without applying it.
    pub fn check_vote(
        &self,
        member: &MemberId,
        request_id: &str,
        proposal: ProposalId,
        yes: bool,
        auth: &Auth,
        now: u64,
    ) -> Result<(), CoreError> {
        self.verify(
            member,
            request_id,
            auth,
            &MemberRequest::Vote { proposal, yes },
            now,
        )?;
        let p = self
            .proposals()
            .get(&proposal)
            .ok_or(CoreError::UnknownProposal(proposal))?;
        if p.status != ProposalStatus::Open || now >= p.deadline_ms {
            let status = if p.status == ProposalStatus::Open {
                "past its deadline"
            } else {
                p.status.as_str()
            };
            return Err(CoreError::ProposalClosed {
                id: proposal,
                status: status.into(),
            });
        }
        if p.votes.contains_key(member) {
            return Err(CoreError::AlreadyVoted {
                member: member.clone(),
                id: proposal,
            });
        }
        Ok(())
    }
}

pub(super) fn propose(
    state: &mut ClusterState,
    member: &MemberId,
    request_id: &str,
    kind: &ProposalKind,
    auth: &Auth,
    at: Time,
) -> Result<Outcome, CoreError> {
    let Time { stamp, now } = at;
    if let Some(id) = check_propose(state, member, request_id, kind, auth, stamp)? {
        return Ok(Outcome::Proposed {
            proposal: id,
            existing: true,
        });
    }
    let id = state.proposals().keys().next_back().map_or(1, |k| k + 1);
    let deadline_ms = now.saturating_add(state.policy().voting_period_secs.saturating_mul(1000));
    state.proposals_mut().insert(
        id,
        Proposal {
            id,
            kind: kind.clone(),
            proposer: member.clone(),
            request_id: request_id.to_string(),
            created_at_ms: now,
            deadline_ms,
            votes: Default::default(),
            status: ProposalStatus::Open,
            outcome: String::new(),
            decided_at_ms: None,
        },
    );
    Ok(Outcome::Proposed {
        proposal: id,
        existing: false,
    })
}

pub(super) fn vote(
    state: &mut ClusterState,
    member: &MemberId,
    request_id: &str,
    proposal: ProposalId,
    yes: bool,
    auth: &Auth,
    at: Time,
) -> Result<Outcome, CoreError> {
    let Time { stamp, now } = at;
    state.check_vote(member, request_id, proposal, yes, auth, stamp)?;
    if let Some(p) = state.proposals_mut().get_mut(&proposal) {
        p.votes.insert(member.clone(), yes);
    }
    let status = settle(state, proposal, now, false);
    Ok(Outcome::Voted { proposal, status })
}

/// Decides every open proposal whose deadline has passed.
pub(super) fn settle_due(state: &mut ClusterState, now: u64) {
    let due: Vec<ProposalId> = state
        .proposals()
        .values()
        .filter(|p| p.status == ProposalStatus::Open && p.deadline_ms <= now)
        .map(|p| p.id)
        .collect();
    for id in due {
        settle(state, id, now, true);
    }
}

/// Decides a proposal if its outcome is certain (or its deadline passed),
/// and enacts it if adopted. Returns its status.
fn settle(state: &mut ClusterState, id: ProposalId, now: u64, deadline: bool) -> ProposalStatus {
    let Some(p) = state.proposals().get(&id) else {
        return ProposalStatus::Void;
    };
    if p.status != ProposalStatus::Open {
        return p.status;
    }
    let tally = state.tally(p);
    let policy = state.policy();
    let decided = if tally.certainly_passes(policy) {
        Some(ProposalStatus::Adopted)
    } else if tally.certainly_fails(policy) && !deadline {
        Some(ProposalStatus::Rejected)
    } else if deadline {
        Some(tally.at_deadline(policy))
    } else {
        None
    };
    let Some(mut status) = decided else {
        return ProposalStatus::Open;
    };
    let kind = p.kind.clone();
    let mut outcome = match status {
        ProposalStatus::Adopted => format!("adopted: {tally}"),
        ProposalStatus::Expired => format!(
            "expired: {tally}, below the quorum of {}",
            tally.quorum(policy)
        ),
        _ => format!("rejected: {tally}"),
    };
    if status == ProposalStatus::Adopted {
        if let Some(why) = conflict(state, &kind) {
            status = ProposalStatus::Void;
            outcome = format!("passed ({tally}) but void: {why}");
        } else if let Some(remedy) = enact(state, &kind, id, now) {
            outcome = format!("{outcome}; {remedy}");
        }
    }
    if let Some(p) = state.proposals_mut().get_mut(&id) {
        p.status = status;
        p.outcome = outcome;
        p.decided_at_ms = Some(now);
    }
    status
}

/// Makes an adopted proposal take effect; says what an appeal's remedy was.
fn enact(
    state: &mut ClusterState,
    kind: &ProposalKind,
    id: ProposalId,
    now: u64,
) -> Option<String> {
    match kind {
        ProposalKind::Policy { policy } => state.set_policy(policy.clone(), false),
        ProposalKind::Admit { member, key } => state.admit(member.clone(), *key, now),
        ProposalKind::Remove { member } => remove(state, member, now),
        ProposalKind::Appeal { job, .. } => return Some(redress(state, *job, id, now)),
    }
    None
}

/// The remedy of an upheld appeal, as the policy defines it: the member's
/// usage is credited with the resource-seconds the job lost, and a job that
/// failed because its runs were lost goes back to the queue with its
/// retries restored.
fn redress(
    state: &mut ClusterState,
    job_id: crate::ids::JobId,
    id: ProposalId,
    now: u64,
) -> String {
    let policy = state.policy().clone();
    let Some(job) = state.job(job_id) else {
        return "no remedy: the job is gone".into();
    };
    let (member, resources, lost_ms, failed_lost) = (
        job.member.clone(),
        job.spec.resources,
        job.lost_ms,
        job.state() == JobState::Failed && job.lost_ms > 0,
    );
    let mut done = Vec::new();
    if policy.appeal_credit && lost_ms > 0 {
        let secs = lost_ms as f64 / 1000.0;
        if let Some(m) = state.member_mut(&member, now) {
            let mut credit = crate::ledger::Usage::default();
            credit.add(&resources, secs);
            m.usage.gpu = (m.usage.gpu - credit.gpu).max(0.0);
            m.usage.cpu = (m.usage.cpu - credit.cpu).max(0.0);
            m.usage.mem = (m.usage.mem - credit.mem).max(0.0);
            done.push(format!(
                "{member}'s usage credited with {secs:.1} s of the job's resources"
            ));
        }
        if let Some(j) = state.job_mut(job_id) {
            j.lost_ms = 0;
        }
    }
    if policy.appeal_requeue && failed_lost {
        if let Some(j) = state.set_job_state(job_id, JobState::Pending) {
            j.attempts = 0;
            j.finished_at_ms = None;
            j.message = format!("requeued by upheld appeal {id}");
            j.record(
                now,
                format!("requeued with its retries restored by upheld appeal {id}"),
            );
            done.push(format!("job {job_id} requeued with its retries restored"));
        }
    }
    if done.is_empty() {
        "the job lost no work, so there was nothing to credit".into()
    } else {
        done.join("; ")
    }
}

/// A member leaves: its waiting jobs are cancelled, its running ones are
/// stopped after the policy's grace, its nodes leave the pool (others'
/// jobs on them requeue), and its record moves to the former members.
fn remove(state: &mut ClusterState, member: &MemberId, now: u64) {
    let jobs: Vec<_> = state
        .jobs()
        .values()
        .filter(|j| &j.member == member && !j.state().is_terminal())
        .map(|j| j.id)
        .collect();
    for id in jobs {
        super::jobs::end_cancelled(
            state,
            id,
            now,
            format!("{member} was removed by member vote"),
            format!("cancelled: {member} was removed by member vote"),
            true,
        );
    }
    let nodes: Vec<_> = state
        .nodes()
        .values()
        .filter(|n| &n.owner == member && n.state == crate::node::NodeState::Ready)
        .map(|n| (n.id.clone(), n.incarnation))
        .collect();
    for (node, incarnation) in nodes {
        // Others' jobs there did nothing wrong: they requeue like preempted
        // ones, without using a retry.
        let allocs: Vec<_> = state
            .nodes()
            .get(&node)
            .map(|n| n.allocs().iter().copied().collect())
            .unwrap_or_default();
        for a in allocs {
            if let Some(a) = state.alloc_mut(a) {
                a.preempted = true;
            }
        }
        let _ = super::nodes::lost(state, &node, incarnation, now);
    }
    state.retire_member(member);
}
