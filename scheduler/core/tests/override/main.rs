//! No operator override: every command that enters the log is walked, and
//! none changes members, policy, placements or results without the
//! signature its rule requires. Whoever runs a replica can propose any
//! command; `apply` on every replica (and any auditor replaying the log)
//! refuses the forged ones without changing anything.

use coop_core::testkit;
use coop_core::*;

/// What guards a command: the table every new command must join (the
/// `match` has no wildcard, so a command without a row does not compile).
#[derive(Debug, PartialEq)]
enum Guard {
    /// A member's signature over the request.
    Member,
    /// The node key its owner authorized.
    Node,
    /// Applies once, ever: the cluster's birth.
    Once,
    /// No signature, and none needed: the outcome is a pure function of
    /// the state and the published policy, so anyone replaying the log
    /// recomputes it and any deviation is visible.
    Recomputable,
    /// The leader's failure detector: unsigned because the node is silent.
    /// It can only end a node's current incarnation: its running jobs
    /// requeue (or fail, as a lost run, when their retries are used up),
    /// none disappears, the node re-registers; it cannot place, cancel or
    /// record a result. docs/security.md lists it as trusted.
    FailureDetector,
    /// A mark in the log (replicas sign the head there): unsigned, and
    /// it changes nothing but the log's time.
    Marker,
    /// Refused by every replica.
    Refused,
}

fn guard(cmd: &Command) -> Guard {
    match cmd {
        Command::Submit { .. }
        | Command::Cancel { .. }
        | Command::CancelArray { .. }
        | Command::AddNode { .. }
        | Command::AddReplica { .. }
        | Command::RemoveReplica { .. }
        | Command::Propose { .. }
        | Command::Vote { .. } => Guard::Member,
        Command::RegisterNode { .. }
        | Command::AllocStarted { .. }
        | Command::AllocFinished { .. } => Guard::Node,
        Command::Genesis { .. } => Guard::Once,
        Command::Schedule { .. } => Guard::Recomputable,
        Command::Checkpoint { .. } => Guard::Marker,
        Command::NodeLost { .. } => Guard::FailureDetector,
        Command::Unknown => Guard::Refused,
    }
}

/// The same command, signed by `mallory` (a key no member or node holds)
/// instead of whoever its rule names.
fn forge(cmd: &Command) -> Option<Command> {
    let evil = testkit::secret("mallory");
    let mut forged = cmd.clone();
    match &mut forged {
        Command::Submit {
            member,
            request_id,
            spec,
            auth,
            ..
        } => {
            *auth = evil.sign_request(
                testkit::CLUSTER,
                member,
                request_id,
                auth.issued_at_ms,
                &MemberRequest::Submit { spec },
            )
        }
        Command::Cancel {
            member,
            request_id,
            job,
            auth,
            ..
        } => {
            *auth = evil.sign_request(
                testkit::CLUSTER,
                member,
                request_id,
                auth.issued_at_ms,
                &MemberRequest::Cancel { job: *job },
            )
        }
        Command::CancelArray {
            member,
            request_id,
            job,
            auth,
            ..
        } => {
            *auth = evil.sign_request(
                testkit::CLUSTER,
                member,
                request_id,
                auth.issued_at_ms,
                &MemberRequest::CancelArray { job: *job },
            )
        }
        Command::AddNode {
            node,
            member,
            key,
            request_id,
            auth,
            ..
        } => {
            *auth = evil.sign_request(
                testkit::CLUSTER,
                member,
                request_id,
                auth.issued_at_ms,
                &MemberRequest::AddNode { node, key },
            )
        }
        Command::AddReplica {
            id,
            addr,
            member,
            request_id,
            auth,
            ..
        } => {
            *auth = evil.sign_request(
                testkit::CLUSTER,
                member,
                request_id,
                auth.issued_at_ms,
                &MemberRequest::AddReplica { id: *id, addr },
            )
        }
        Command::RemoveReplica {
            id,
            member,
            request_id,
            auth,
            ..
        } => {
            *auth = evil.sign_request(
                testkit::CLUSTER,
                member,
                request_id,
                auth.issued_at_ms,
                &MemberRequest::RemoveReplica { id: *id },
            )
        }
        Command::Propose {
            member,
            request_id,
            kind,
            auth,
            ..
        } => {
            *auth = evil.sign_request(
                testkit::CLUSTER,
                member,
                request_id,
                auth.issued_at_ms,
                &MemberRequest::Propose { kind },
            )
        }
        Command::Vote {
            member,
            request_id,
            proposal,
            yes,
            auth,
            ..
        } => {
            *auth = evil.sign_request(
                testkit::CLUSTER,
                member,
                request_id,
                auth.issued_at_ms,
                &MemberRequest::Vote {
                    proposal: *proposal,
                    yes: *yes,
                },
            )
        }
        Command::RegisterNode {
            node,
            owner,
            capacity,
            addr,
            incarnation,
            gpus,
            engines,
            auth,
            ..
        } => {
            *auth = evil.sign_node_report(
                testkit::CLUSTER,
                node,
                *incarnation,
                auth.issued_at_ms,
                &NodeReport::Register {
                    owner,
                    capacity,
                    addr,
                    gpus,
                    engines,
                },
            )
        }
        Command::AllocStarted {
            alloc,
            node,
            incarnation,
            auth,
            ..
        } => {
            *auth = evil.sign_node_report(
                testkit::CLUSTER,
                node,
                *incarnation,
                auth.issued_at_ms,
                &NodeReport::Started { alloc: *alloc },
            )
        }
        Command::AllocFinished {
            alloc,
            node,
            exit,
            result,
            incarnation,
            auth,
            ..
        } => {
            *auth = evil.sign_node_report(
                testkit::CLUSTER,
                node,
                *incarnation,
                auth.issued_at_ms,
                &NodeReport::Finished {
                    alloc: *alloc,
                    exit,
                    result: result.as_ref(),
                },
            )
        }
        Command::Genesis { .. }
        | Command::Schedule { .. }
        | Command::Checkpoint { .. }
        | Command::NodeLost { .. }
        | Command::Unknown => return None,
    }
    Some(forged)
}

fn res(cpu: u64) -> Resources {
    Resources::new(cpu, 256 << 20, 0)
}

fn next_policy() -> governance::ProposalKind {
    governance::ProposalKind::Policy {
        policy: Policy {
            version: 2,
            floor: 0.7,
            ..Policy::default()
        },
    }
}

/// A founded cluster with ana's node, a running job of ana's and a pending
/// one of bo's.
fn busy() -> (ClusterState, AllocId) {
    let mut s = ClusterState::new();
    s.apply(&testkit::genesis(&["ana", "bo"], Policy::default(), 0))
        .unwrap();
    s.apply(&testkit::add_node("ana", "box", 1)).unwrap();
    s.apply(&testkit::register("box", "ana", res(1000), 1, vec![], 2))
        .unwrap();
    let spec = |cpu| JobSpec::command(vec!["true".into()], res(cpu));
    s.apply(&testkit::submit("ana", "a1", spec(1000), 3))
        .unwrap();
    s.apply(&testkit::submit("bo", "b1", spec(500), 4)).unwrap();
    let placed = match s.apply(&Command::Schedule { now_ms: 5 }).unwrap() {
        Outcome::Scheduled { placements, .. } => placements,
        other => panic!("{other:?}"),
    };
    let alloc = placed[0].alloc;
    s.apply(&testkit::started(alloc, &NodeId::new("box"), 6))
        .unwrap();
    s.apply(&testkit::propose("ana", "p1", next_policy(), 7))
        .unwrap();
    // An array of ana's (jobs 3 and 4), for the array cancel.
    let mut array = spec(100);
    array.array = Some(ArrayRange { first: 0, last: 1 });
    s.apply(&testkit::submit("ana", "arr", array, 8)).unwrap();
    (s, alloc)
}

/// One command of every kind, each valid as signed.
fn every_command(alloc: AllocId) -> Vec<Command> {
    let spec = JobSpec::command(vec!["true".into()], res(100));
    let ok = ExitStatus {
        code: Some(0),
        signal: None,
        error: String::new(),
    };
    let replica = {
        let m = MemberId::new("ana");
        let auth = testkit::secret("ana").sign_request(
            testkit::CLUSTER,
            &m,
            "r-1",
            10,
            &MemberRequest::AddReplica {
                id: 4,
                addr: "10.0.0.4:7001",
            },
        );
        Command::AddReplica {
            id: 4,
            addr: "10.0.0.4:7001".into(),
            member: m,
            request_id: "r-1".into(),
            auth,
            now_ms: 10,
        }
    };
    let removal = {
        let m = MemberId::new("bo");
        let auth = testkit::secret("bo").sign_request(
            testkit::CLUSTER,
            &m,
            "r-2",
            10,
            &MemberRequest::RemoveReplica { id: 4 },
        );
        Command::RemoveReplica {
            id: 4,
            addr: "10.0.0.4:7001".into(),
            member: m,
            request_id: "r-2".into(),
            auth,
            now_ms: 10,
        }
    };
    vec![
        testkit::submit("ana", "a2", spec, 10),
        removal,
        testkit::propose("bo", "p2", next_policy(), 10),
        testkit::vote("bo", "v1", 1, true, 10),
        testkit::cancel("ana", "c1", JobId(1), 10),
        testkit::cancel_array("ana", "c2", JobId(4), 10),
        testkit::add_node("bo", "bo-box", 10),
        replica,
        testkit::register("box", "ana", res(1000), 2, vec![], 10),
        testkit::started(alloc, &NodeId::new("box"), 10),
        testkit::finished(alloc, &NodeId::new("box"), ok, None, 10),
        testkit::genesis(&["mallory"], Policy::default(), 10),
        Command::Schedule { now_ms: 10 },
        Command::Checkpoint { now_ms: 10 },
        Command::NodeLost {
            node: NodeId::new("box"),
            incarnation: 1,
            now_ms: 10,
        },
        Command::Unknown,
    ]
}

#[test]
fn no_command_changes_the_state_without_the_signature_its_rule_requires() {
    let (state, alloc) = busy();
    let mut guards = Vec::new();
    for cmd in every_command(alloc) {
        let g = guard(&cmd);
        match &g {
            Guard::Member | Guard::Node => {
                // Genuine: it applies (so the forged one below is refused
                // for its signature, not for something else).
                let mut genuine = state.clone();
                genuine
                    .apply(&cmd)
                    .unwrap_or_else(|e| panic!("{}: {e}", cmd.name()));
                let forged = forge(&cmd).expect("a signed command can be forged");
                let mut s = state.clone();
                let before = s.digest();
                let err = s.apply(&forged).unwrap_err();
                assert!(matches!(err, CoreError::Auth(_)), "{}: {err}", cmd.name());
                assert_eq!(s.digest(), before, "{} changed the state", cmd.name());
            }
            Guard::Once | Guard::Refused => {
                let mut s = state.clone();
                let before = s.digest();
                assert!(s.apply(&cmd).is_err(), "{}", cmd.name());
                assert_eq!(s.digest(), before, "{} changed the state", cmd.name());
            }
            Guard::Marker => {
                // At the state's own time, the state is exactly as before.
                let mut s = state.clone();
                let at_now = Command::Checkpoint {
                    now_ms: state.now_ms(),
                };
                s.apply(&at_now).unwrap();
                assert_eq!(
                    s.digest(),
                    state.digest(),
                    "{} changed the state",
                    cmd.name()
                );
            }
            Guard::Recomputable => {
                // Two replicas (or an auditor) reach the same state.
                let (mut a, mut b) = (state.clone(), state.clone());
                assert_eq!(a.apply(&cmd), b.apply(&cmd));
                assert_eq!(a.digest(), b.digest());
            }
            Guard::FailureDetector => {
                // Only the node's incarnation ends: no job disappears, no
                // result is recorded, and a job that ended did so as a lost
                // run on that node.
                let mut s = state.clone();
                s.apply(&cmd).unwrap();
                assert_eq!(s.jobs().len(), state.jobs().len());
                for j in s.jobs().values() {
                    assert!(j.result.is_none());
                    if j.state().is_terminal() {
                        assert_eq!(j.state(), JobState::Failed);
                        assert!(j.message.contains("node was lost"), "{}", j.message);
                    }
                }
                let keys = |s: &ClusterState| -> Vec<(MemberId, PublicKey)> {
                    s.members()
                        .values()
                        .map(|m| (m.id.clone(), m.public_key))
                        .collect()
                };
                assert_eq!(keys(&s), keys(&state));
                assert_eq!(s.policy(), state.policy());
            }
        }
        guards.push((cmd.name(), g));
    }
    // Every kind of command was walked.
    let mut names: Vec<_> = guards.iter().map(|(n, _)| *n).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 16, "{names:?}");
}
