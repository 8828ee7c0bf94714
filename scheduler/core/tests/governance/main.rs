//! Governance with exact outcomes: one member, one vote; the quorum, the
//! threshold and the voting period are the policy's; a proposal is decided
//! when its outcome is certain or at its deadline. docs/governance.md
//! states these rules and works these examples.

use coop_core::governance::{ProposalKind, ProposalStatus};
use coop_core::testkit;
use coop_core::*;

const MEMBERS: &[&str] = &["ana", "bo", "cam", "dan", "eve"];
const DAY_MS: u64 = 24 * 3600 * 1000;

fn founded() -> ClusterState {
    let mut s = ClusterState::new();
    s.apply(&testkit::genesis(MEMBERS, Policy::default(), 0))
        .unwrap();
    s
}

fn policy_v2(floor: f64) -> ProposalKind {
    ProposalKind::Policy {
        policy: Policy {
            version: 2,
            floor,
            ..Policy::default()
        },
    }
}

fn propose(s: &mut ClusterState, who: &str, kind: ProposalKind, now: u64) -> u64 {
    match s.apply(&testkit::propose(who, &format!("p-{now}"), kind, now)) {
        Ok(Outcome::Proposed { proposal, .. }) => proposal,
        other => panic!("{other:?}"),
    }
}

fn vote(s: &mut ClusterState, who: &str, id: u64, yes: bool, now: u64) -> ProposalStatus {
    match s.apply(&testkit::vote(who, &format!("v-{who}-{id}"), id, yes, now)) {
        Ok(Outcome::Voted { status, .. }) => status,
        other => panic!("{who} voting on {id}: {other:?}"),
    }
}

fn status(s: &ClusterState, id: u64) -> ProposalStatus {
    s.proposals()[&id].status
}

#[test]
fn a_policy_is_adopted_as_soon_as_a_majority_of_a_quorum_is_certain() {
    let mut s = founded();
    let id = propose(&mut s, "ana", policy_v2(0.7), 10);
    // Quorum: half of 5 members, rounded up: 3 votes.
    assert_eq!(vote(&mut s, "ana", id, true, 11), ProposalStatus::Open);
    assert_eq!(vote(&mut s, "bo", id, true, 12), ProposalStatus::Open);
    assert_eq!(vote(&mut s, "cam", id, true, 13), ProposalStatus::Adopted);
    assert_eq!(s.policy().version, 2);
    assert_eq!(s.policy().floor, 0.7);
    assert_eq!(
        s.proposals()[&id].outcome,
        "adopted: 3 yes, 0 no of 5 members"
    );
    // A decided proposal takes no more votes.
    let late = s.apply(&testkit::vote("dan", "v-late", id, false, 14));
    assert!(
        matches!(late, Err(CoreError::ProposalClosed { .. })),
        "{late:?}"
    );
}

#[test]
fn without_the_quorum_a_proposal_expires_at_its_deadline() {
    let mut s = founded();
    let id = propose(&mut s, "ana", policy_v2(0.6), 10);
    vote(&mut s, "ana", id, true, 11);
    vote(&mut s, "bo", id, true, 12);
    // Any command after the deadline decides it, by the log's time.
    testkit::advance(&mut s, 10 + 7 * DAY_MS);
    assert_eq!(status(&s, id), ProposalStatus::Expired);
    assert_eq!(
        s.proposals()[&id].outcome,
        "expired: 2 yes, 0 no of 5 members, below the quorum of 3"
    );
    assert_eq!(s.policy().version, 1);
}

#[test]
fn a_tie_is_rejected_at_the_deadline_and_a_certain_loss_at_once() {
    let mut s = founded();
    let id = propose(&mut s, "ana", policy_v2(0.6), 10);
    vote(&mut s, "ana", id, true, 11);
    vote(&mut s, "bo", id, true, 12);
    vote(&mut s, "cam", id, false, 13);
    // 2 yes, 2 no: eve's yes would still pass it (3 of 5), so it waits.
    assert_eq!(vote(&mut s, "dan", id, false, 14), ProposalStatus::Open);
    testkit::advance(&mut s, 10 + 7 * DAY_MS);
    assert_eq!(status(&s, id), ProposalStatus::Rejected);
    // Three no of five: nothing can make it pass, so it ends at once.
    let id2 = propose(&mut s, "bo", policy_v2(0.6), 8 * DAY_MS);
    vote(&mut s, "ana", id2, false, 8 * DAY_MS + 1);
    vote(&mut s, "cam", id2, false, 8 * DAY_MS + 2);
    assert_eq!(
        vote(&mut s, "dan", id2, false, 8 * DAY_MS + 3),
        ProposalStatus::Rejected
    );
}

#[test]
fn one_member_one_vote() {
    let mut s = founded();
    let id = propose(&mut s, "ana", policy_v2(0.6), 10);
    vote(&mut s, "ana", id, true, 11);
    let before = s.digest();
    // Again, even with another request id and another answer.
    let again = s.apply(&testkit::vote("ana", "other-request", id, false, 12));
    assert_eq!(
        again,
        Err(CoreError::AlreadyVoted {
            member: MemberId::new("ana"),
            id
        })
    );
    assert_eq!(s.digest(), before);
    // A vote in ana's name signed by someone else is refused.
    let mut forged = testkit::vote("bo", "f", id, true, 12);
    if let Command::Vote { member, .. } = &mut forged {
        *member = MemberId::new("cam");
    }
    assert!(matches!(s.apply(&forged), Err(CoreError::Auth(_))));
    // A non-member cannot vote.
    let outsider = s.apply(&testkit::vote("mallory", "m", id, true, 12));
    assert!(matches!(outsider, Err(CoreError::Auth(_))), "{outsider:?}");
}

#[test]
fn the_rules_for_changing_the_rules_change_by_the_rules() {
    let mut s = founded();
    // Unanimity from now on.
    let id = propose(
        &mut s,
        "ana",
        ProposalKind::Policy {
            policy: Policy {
                version: 2,
                vote_quorum: 1.0,
                vote_threshold: 0.75,
                ..Policy::default()
            },
        },
        10,
    );
    for m in ["ana", "bo", "cam"] {
        vote(&mut s, m, id, true, 11);
    }
    assert_eq!(status(&s, id), ProposalStatus::Adopted);
    // Four yes of five is no longer enough: every member must vote, and
    // more than three quarters of them yes.
    let next = ProposalKind::Policy {
        policy: Policy {
            version: 3,
            vote_quorum: 1.0,
            vote_threshold: 0.75,
            floor: 0.6,
            ..Policy::default()
        },
    };
    let id = propose(&mut s, "bo", next, 20);
    for m in ["ana", "bo", "cam", "dan"] {
        assert_eq!(vote(&mut s, m, id, true, 21), ProposalStatus::Open);
    }
    assert_eq!(vote(&mut s, "eve", id, true, 22), ProposalStatus::Adopted);
    assert_eq!(s.policy().version, 3);
}

#[test]
fn a_removed_members_vote_no_longer_counts_and_it_cannot_act() {
    let mut s = founded();
    // Eve's node runs a job of ana's; eve has a job waiting.
    s.apply(&testkit::add_node("eve", "eve-box", 1)).unwrap();
    s.apply(&testkit::register(
        "eve-box",
        "eve",
        Resources::new(1000, 1 << 30, 0),
        1,
        vec![],
        2,
    ))
    .unwrap();
    let spec = |cpu| JobSpec::command(vec!["true".into()], Resources::new(cpu, 1 << 20, 0));
    s.apply(&testkit::submit("ana", "a1", spec(1000), 3))
        .unwrap();
    s.apply(&Command::Schedule { now_ms: 4 }).unwrap();
    s.apply(&testkit::submit("eve", "e1", spec(500), 5))
        .unwrap();
    // A policy proposal eve supports, still open.
    let p = propose(&mut s, "eve", policy_v2(0.6), 10);
    vote(&mut s, "eve", p, true, 11);
    // The members remove eve.
    let r = propose(
        &mut s,
        "ana",
        ProposalKind::Remove {
            member: MemberId::new("eve"),
        },
        12,
    );
    for m in ["ana", "bo", "cam"] {
        vote(&mut s, m, r, true, 13);
    }
    assert_eq!(status(&s, r), ProposalStatus::Adopted);
    assert!(!s.members().contains_key(&MemberId::new("eve")));
    assert!(s.former_members().contains_key(&MemberId::new("eve")));
    // Her waiting job is cancelled; her node left the pool and ana's job
    // on it is back in the queue.
    assert_eq!(s.jobs()[&JobId(2)].state(), JobState::Cancelled);
    assert_eq!(s.jobs()[&JobId(1)].state(), JobState::Pending);
    assert_eq!(s.nodes()[&NodeId::new("eve-box")].state, NodeState::Lost);
    // Her vote on the open proposal no longer counts: 4 members now.
    let t = s.tally(&s.proposals()[&p]);
    assert_eq!((t.yes, t.no, t.eligible), (0, 0, 4));
    // And she can no longer submit, vote or register her node.
    assert!(s
        .apply(&testkit::submit("eve", "e2", spec(100), 14))
        .is_err());
    assert!(s.apply(&testkit::vote("eve", "v", p, true, 14)).is_err());
    assert!(s
        .apply(&testkit::register(
            "eve-box",
            "eve",
            Resources::new(1000, 1 << 30, 0),
            2,
            vec![],
            15
        ))
        .is_err());
}

#[test]
fn a_member_is_admitted_by_vote_with_one_key() {
    let mut s = founded();
    let fay = testkit::secret("fay").public_key();
    // A key already held by a member would give its holder two votes.
    let dup = s.apply(&testkit::propose(
        "ana",
        "dup",
        ProposalKind::Admit {
            member: MemberId::new("fay"),
            key: testkit::secret("bo").public_key(),
        },
        9,
    ));
    assert!(matches!(dup, Err(CoreError::BadProposal(_))), "{dup:?}");
    let id = propose(
        &mut s,
        "ana",
        ProposalKind::Admit {
            member: MemberId::new("fay"),
            key: fay,
        },
        10,
    );
    for m in ["ana", "bo", "dan"] {
        vote(&mut s, m, id, true, 11);
    }
    assert_eq!(status(&s, id), ProposalStatus::Adopted);
    let spec = JobSpec::command(vec!["true".into()], Resources::new(100, 1 << 20, 0));
    s.apply(&testkit::submit("fay", "f1", spec, 12)).unwrap();
}

#[test]
fn two_policy_proposals_for_one_version_the_second_is_void() {
    let mut s = founded();
    let a = propose(&mut s, "ana", policy_v2(0.6), 10);
    let b = propose(&mut s, "bo", policy_v2(0.8), 11);
    for m in ["ana", "bo", "cam"] {
        vote(&mut s, m, a, true, 12);
    }
    for m in ["ana", "bo", "cam"] {
        vote(&mut s, m, b, true, 13);
    }
    assert_eq!(status(&s, a), ProposalStatus::Adopted);
    assert_eq!(status(&s, b), ProposalStatus::Void);
    assert_eq!(s.policy().floor, 0.6);
    assert!(s.proposals()[&b].outcome.contains("next version is 3"));
}

#[test]
fn an_upheld_appeal_credits_the_lost_work_and_requeues_the_job() {
    let mut s = founded();
    s.apply(&testkit::add_node("bo", "box", 1)).unwrap();
    s.apply(&testkit::register(
        "box",
        "bo",
        Resources::new(2000, 1 << 30, 0),
        1,
        vec![],
        2,
    ))
    .unwrap();
    let spec = JobSpec::command(vec!["train".into()], Resources::new(2000, 1 << 20, 0));
    s.apply(&testkit::submit("ana", "a1", spec, 3)).unwrap();
    s.apply(&Command::Schedule { now_ms: 4 }).unwrap();
    let alloc = *s.allocs().keys().next().unwrap();
    s.apply(&testkit::started(alloc, &NodeId::new("box"), 1_000))
        .unwrap();
    // An hour into its run, its node is lost; it had no retries: failed.
    testkit::advance(&mut s, 3_601_000);
    s.apply(&Command::NodeLost {
        node: NodeId::new("box"),
        incarnation: 1,
        now_ms: 3_601_000,
    })
    .unwrap();
    let job = &s.jobs()[&JobId(1)];
    assert_eq!(job.state(), JobState::Failed);
    assert_eq!(job.lost_ms, 3_600_000);
    // Only ana may appeal it.
    let foreign = s.apply(&testkit::propose(
        "bo",
        "x",
        ProposalKind::Appeal {
            job: JobId(1),
            reason: "not mine".into(),
        },
        3_601_001,
    ));
    assert!(
        matches!(foreign, Err(CoreError::NotOwner { .. })),
        "{foreign:?}"
    );
    let id = propose(
        &mut s,
        "ana",
        ProposalKind::Appeal {
            job: JobId(1),
            reason: "an hour of training lost to a node that vanished".into(),
        },
        3_601_002,
    );
    let usage_before = s.members()[&MemberId::new("ana")].usage.cpu;
    for m in ["bo", "cam", "dan"] {
        vote(&mut s, m, id, true, 3_601_003);
    }
    assert_eq!(status(&s, id), ProposalStatus::Adopted);
    assert_eq!(
        s.proposals()[&id].outcome,
        "adopted: 3 yes, 0 no of 5 members; ana's usage credited with 3600.0 s of the job's resources; job 1 requeued with its retries restored"
    );
    let job = &s.jobs()[&JobId(1)];
    assert_eq!(job.state(), JobState::Pending);
    assert_eq!((job.attempts, job.lost_ms), (0, 0));
    // 2 cores for an hour, taken back: the credit (7,200 core-seconds) is
    // more than the usage left after decay, so it ends at zero, not below.
    assert!(
        usage_before > 7_000.0 && usage_before < 7_200.0,
        "{usage_before}"
    );
    assert_eq!(s.members()[&MemberId::new("ana")].usage.cpu, 0.0);
}
