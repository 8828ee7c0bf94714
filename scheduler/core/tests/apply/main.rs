//! Unit scenarios for `ClusterState::apply`: each asserts the exact outcome.

use coop_core::testkit;
use coop_core::*;

/// Everyone these scenarios name.
const MEMBERS: &[&str] = &["ana", "bo", "bea", "owner", "landlord", "newcomer"];

/// A cluster founded by `MEMBERS` under `policy`.
fn founded(policy: Policy) -> ClusterState {
    let mut s = ClusterState::new();
    s.apply(&testkit::genesis(MEMBERS, policy, 0)).unwrap();
    s
}

fn new_state() -> ClusterState {
    founded(Policy::default())
}

fn res(cpu: u64, mem_mi: u64, gpus: u32) -> Resources {
    Resources::new(cpu, mem_mi << 20, gpus)
}

fn submit(
    state: &mut ClusterState,
    req: &str,
    member: &str,
    r: Resources,
) -> Result<Outcome, CoreError> {
    state.apply(&testkit::submit(
        member,
        req,
        JobSpec::command(vec!["true".into()], r),
        10,
    ))
}

fn register(
    state: &mut ClusterState,
    node: &str,
    cap: Resources,
    incarnation: u64,
) -> Result<Outcome, CoreError> {
    state
        .apply(&testkit::add_node("owner", node, 5))
        .and_then(|_| {
            state.apply(&testkit::register(
                node,
                "owner",
                cap,
                incarnation,
                vec![],
                5,
            ))
        })
}

fn placements(outcome: Outcome) -> Vec<Placement> {
    match outcome {
        Outcome::Scheduled { placements, .. } => placements,
        other => panic!("expected Scheduled, got {other:?}"),
    }
}

#[test]
fn retried_request_returns_the_first_job() {
    let mut s = new_state();
    assert_eq!(
        submit(&mut s, "r1", "ana", res(100, 64, 0)),
        Ok(Outcome::Submitted {
            job: JobId(1),
            existing: false
        })
    );
    assert_eq!(
        submit(&mut s, "r1", "ana", res(100, 64, 0)),
        Ok(Outcome::Submitted {
            job: JobId(1),
            existing: true
        })
    );
    // The same request id from another member is another request.
    assert_eq!(
        submit(&mut s, "r1", "bo", res(100, 64, 0)),
        Ok(Outcome::Submitted {
            job: JobId(2),
            existing: false
        })
    );
    assert_eq!(s.jobs().len(), 2);
}

#[test]
fn bad_submissions_change_nothing() {
    let mut s = new_state();
    register(&mut s, "n1", res(2000, 1024, 0), 1).unwrap();
    let before = s.digest();
    let empty = testkit::submit("ana", "x", JobSpec::command(vec![], res(100, 64, 0)), 10);
    assert!(matches!(
        s.apply(&empty),
        Err(CoreError::InvalidSpec(SpecError::EmptyCommand))
    ));
    assert!(matches!(
        submit(&mut s, "a", "ana", res(0, 64, 0)),
        Err(CoreError::InvalidSpec(_))
    ));
    assert!(matches!(
        submit(&mut s, "b", "ana", res(100, 0, 0)),
        Err(CoreError::InvalidSpec(_))
    ));
    assert!(matches!(
        submit(&mut s, "c", "ana", res(3000, 64, 0)),
        Err(CoreError::Impossible(_))
    ));
    assert!(matches!(
        submit(&mut s, "d", "ana", res(100, 64, 1)),
        Err(CoreError::Impossible(_))
    ));
    assert!(matches!(
        submit(&mut s, "e", "bad name", res(100, 64, 0)),
        Err(CoreError::Auth(AuthError::UnknownMember { .. }))
    ));
    assert!(matches!(
        submit(&mut s, "", "ana", res(100, 64, 0)),
        Err(CoreError::BadRequestId)
    ));
    assert_eq!(s.apply(&Command::Unknown), Err(CoreError::UnknownCommand));
    assert_eq!(
        s.apply(&testkit::cancel("ana", "cancel", JobId(9), 11)),
        Err(CoreError::UnknownJob(JobId(9)))
    );
    assert_eq!(s.digest(), before);
}

#[test]
fn drf_serves_the_member_with_the_lower_dominant_share_first() {
    let mut s = new_state();
    register(&mut s, "a", res(1000, 1024, 1), 1).unwrap();
    register(&mut s, "b", res(2000, 1024, 0), 1).unwrap();
    submit(&mut s, "1", "ana", res(1000, 512, 1)).unwrap();
    submit(&mut s, "2", "ana", res(1000, 512, 0)).unwrap();
    submit(&mut s, "3", "bo", res(1000, 512, 0)).unwrap();
    submit(&mut s, "4", "bo", res(1000, 512, 0)).unwrap();
    let got = placements(s.apply(&Command::Schedule { now_ms: 20 }).unwrap());
    let summary: Vec<(u64, &str, Vec<u32>)> = got
        .iter()
        .map(|p| (p.job.0, p.node.as_str(), p.gpu_indices.clone()))
        .collect();
    // ana's first job takes the pool's only GPU: a dominant share of 100%,
    // so bo (0%) is served next, twice, before ana's second job.
    assert_eq!(
        summary,
        vec![(1, "a", vec![0]), (3, "b", vec![]), (4, "b", vec![])]
    );
    assert_eq!(s.jobs()[&JobId(2)].state(), JobState::Pending);
    let reasons = s.pending_reasons(JobId(2));
    // ana already holds the whole GPU share: this job would take it past
    // its entitlement, and both nodes are full.
    assert!(
        matches!(reasons[0], PendingReason::AboveEntitlement { .. })
            && matches!(reasons[1], PendingReason::NodesBusy { .. }),
        "{reasons:?}"
    );
    // Nothing changes on a second pass.
    assert!(placements(s.apply(&Command::Schedule { now_ms: 21 }).unwrap()).is_empty());
}

#[test]
fn stale_reports_are_rejected_and_completion_recorded_once() {
    let mut s = new_state();
    register(&mut s, "a", res(1000, 1024, 0), 1).unwrap();
    submit(&mut s, "1", "ana", res(1000, 512, 0)).unwrap();
    let p = placements(s.apply(&Command::Schedule { now_ms: 20 }).unwrap());
    let alloc = p[0].alloc;
    let node = NodeId::new("a");
    // Another node of the same owner, properly signed, but not the one
    // the allocation is on.
    register(&mut s, "b", res(1000, 1024, 0), 1).unwrap();
    assert_eq!(
        s.apply(&testkit::started(alloc, &NodeId::new("b"), 21)),
        Err(CoreError::StaleAllocation {
            alloc,
            node: NodeId::new("b")
        })
    );
    s.apply(&testkit::started(alloc, &node, 21)).unwrap();
    let ok = ExitStatus {
        code: Some(0),
        signal: None,
        error: String::new(),
    };
    assert_eq!(
        s.apply(&testkit::finished(alloc, &node, ok.clone(), None, 30)),
        Ok(Outcome::AllocFinished {
            alloc,
            job: JobId(1),
            job_state: JobState::Succeeded
        })
    );
    assert_eq!(
        s.apply(&testkit::finished(alloc, &node, ok, None, 31)),
        Err(CoreError::StaleAllocation { alloc, node })
    );
    assert_eq!(s.nodes()[&NodeId::new("a")].allocated(), Resources::ZERO);
}

#[test]
fn lost_node_requeues_within_retry_limit() {
    let mut s = new_state();
    register(&mut s, "a", res(2000, 1024, 0), 1).unwrap();
    let mut spec = JobSpec::command(vec!["sleep".into(), "9".into()], res(1000, 512, 0));
    spec.max_retries = 1;
    s.apply(&testkit::submit("ana", "1", spec, 1)).unwrap();
    submit(&mut s, "2", "ana", res(1000, 512, 0)).unwrap();
    s.apply(&Command::Schedule { now_ms: 2 }).unwrap();
    // A NodeLost about an older incarnation is stale.
    assert!(matches!(
        s.apply(&Command::NodeLost {
            node: NodeId::new("a"),
            incarnation: 0,
            now_ms: 3
        }),
        Err(CoreError::StaleIncarnation { .. })
    ));
    assert_eq!(
        s.apply(&Command::NodeLost {
            node: NodeId::new("a"),
            incarnation: 1,
            now_ms: 3
        }),
        Ok(Outcome::NodeLost {
            node: NodeId::new("a"),
            requeued: vec![JobId(1)],
            failed: vec![JobId(2)]
        })
    );
    assert!(s.allocs().is_empty());
    assert_eq!(s.jobs()[&JobId(1)].state(), JobState::Pending);
    assert_eq!(s.jobs()[&JobId(2)].state(), JobState::Failed);
    // Nothing is placed on a lost node; a re-registered one gets the job back.
    assert!(placements(s.apply(&Command::Schedule { now_ms: 4 }).unwrap()).is_empty());
    register(&mut s, "a", res(2000, 1024, 0), 2).unwrap();
    let p = placements(s.apply(&Command::Schedule { now_ms: 5 }).unwrap());
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].job, JobId(1));
}

#[test]
fn cancel_stops_the_run_and_holds_resources_until_confirmed() {
    let mut s = new_state();
    register(&mut s, "a", res(1000, 1024, 0), 1).unwrap();
    submit(&mut s, "1", "ana", res(1000, 512, 0)).unwrap();
    submit(&mut s, "2", "ana", res(1000, 512, 0)).unwrap();
    let p = placements(s.apply(&Command::Schedule { now_ms: 2 }).unwrap());
    let alloc = p[0].alloc;
    assert!(matches!(
        s.apply(&testkit::cancel("bo", "cancel", JobId(1), 3)),
        Err(CoreError::NotOwner { .. })
    ));
    assert_eq!(
        s.apply(&testkit::cancel("ana", "cancel", JobId(1), 3)),
        Ok(Outcome::Cancelled {
            job: JobId(1),
            stopping: Some(alloc)
        })
    );
    assert_eq!(s.allocs()[&alloc].state, AllocState::Stopping);
    assert!(placements(s.apply(&Command::Schedule { now_ms: 4 }).unwrap()).is_empty());
    let killed = ExitStatus {
        code: None,
        signal: Some(9),
        error: String::new(),
    };
    s.apply(&testkit::finished(
        alloc,
        &NodeId::new("a"),
        killed,
        None,
        5,
    ))
    .unwrap();
    assert_eq!(s.jobs()[&JobId(1)].state(), JobState::Cancelled);
    assert_eq!(
        placements(s.apply(&Command::Schedule { now_ms: 6 }).unwrap()).len(),
        1
    );
}

#[test]
fn snapshot_round_trips() {
    let mut s = new_state();
    register(&mut s, "a", res(1000, 1024, 2), 1).unwrap();
    submit(&mut s, "1", "ana", res(500, 512, 1)).unwrap();
    s.apply(&Command::Schedule { now_ms: 2 }).unwrap();
    // One placed, one still waiting: the derived caches (an allocation's
    // job facts, the queue by member) must come back from the snapshot too.
    submit(&mut s, "2", "ana", res(1000, 1024, 2)).unwrap();
    assert_eq!(s.pending().len(), 1);
    let bytes = s.to_snapshot_bytes();
    let back = ClusterState::from_snapshot_bytes(&bytes).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.to_snapshot_bytes(), bytes);
    assert!(ClusterState::from_snapshot_bytes(b"{not json").is_err());
}

#[test]
fn unknown_command_tag_decodes_to_unknown() {
    let cmd: Command = serde_json::from_str(r#"{"type":"from_the_future","x":1}"#).unwrap();
    assert_eq!(cmd, Command::Unknown);
}

#[test]
fn ended_jobs_leave_the_state_after_the_retention() {
    let mut s = founded(Policy {
        job_retention_secs: 100,
        ..Policy::default()
    });
    register(&mut s, "a", res(2000, 1024, 0), 1).unwrap();
    submit(&mut s, "old", "ana", res(100, 64, 0)).unwrap();
    submit(&mut s, "waiting", "ana", res(100, 64, 0)).unwrap();
    s.apply(&testkit::cancel("ana", "cancel", JobId(1), 20))
        .unwrap();
    // Not yet: ended 20 ms in, kept for 100 s.
    s.apply(&Command::Schedule { now_ms: 50_000 }).unwrap();
    assert!(s.jobs().contains_key(&JobId(1)));
    // After the retention the ended job and its request id go; the running one stays.
    s.apply(&Command::Schedule { now_ms: 200_000 }).unwrap();
    assert!(!s.jobs().contains_key(&JobId(1)));
    assert!(s.jobs().contains_key(&JobId(2)));
    assert_eq!(s.request(&MemberId::new("ana"), "old"), None);
    // A retry of the expired request is a new job.
    assert_eq!(
        submit(&mut s, "old", "ana", res(100, 64, 0)),
        Ok(Outcome::Submitted {
            job: JobId(3),
            existing: false
        })
    );
}

/// A registration with an absurd capacity is refused before apply builds
/// anything from it (it used to build a table of 2^32 GPUs and abort).
#[test]
fn absurd_node_capacity_is_refused_and_changes_nothing() {
    let mut s = new_state();
    s.apply(&testkit::add_node("owner", "huge", 5)).unwrap();
    let before = s.digest();
    for cap in [
        Resources::new(1000, 1 << 30, u32::MAX),
        Resources::new(u64::MAX, 1 << 30, 0),
        Resources::new(1000, u64::MAX, 0),
    ] {
        assert!(
            matches!(
                s.apply(&testkit::register("huge", "owner", cap, 1, vec![], 5)),
                Err(CoreError::Impossible(Impossible::NodeTooLarge { .. }))
            ),
            "{cap}"
        );
    }
    assert_eq!(s.digest(), before);
}

#[test]
fn an_endless_timeout_is_refused() {
    let mut s = new_state();
    let mut spec = JobSpec::command(vec!["true".into()], res(100, 64, 0));
    spec.timeout_secs = Some(u64::MAX);
    let r = s.apply(&testkit::submit("ana", "t", spec, 1));
    assert_eq!(r, Err(CoreError::InvalidSpec(SpecError::BadTimeout)));
}

/// A retried request id returns the first job; the same id with another
/// spec is an error that names that job, never a silent success.
#[test]
fn a_reused_request_id_with_another_spec_names_the_first_job() {
    let mut s = new_state();
    submit(&mut s, "r1", "ana", res(100, 64, 0)).unwrap();
    let before = s.digest();
    assert_eq!(
        submit(&mut s, "r1", "ana", res(200, 64, 0)),
        Err(CoreError::RequestIdReused {
            request_id: "r1".into(),
            job: JobId(1)
        })
    );
    assert_eq!(s.digest(), before);
}

#[test]
fn cancels_are_checked_before_the_log() {
    let mut s = new_state();
    submit(&mut s, "r1", "ana", res(100, 64, 0)).unwrap();
    let check = |s: &ClusterState, job: u64, member: &str| match testkit::cancel(
        member,
        "c",
        JobId(job),
        10,
    ) {
        Command::Cancel {
            job,
            member,
            request_id,
            auth,
            now_ms,
        } => s.check_cancel(job, &member, &request_id, &auth, now_ms),
        other => panic!("{other:?}"),
    };
    assert_eq!(check(&s, 9, "ana"), Err(CoreError::UnknownJob(JobId(9))));
    assert_eq!(
        check(&s, 1, "bo"),
        Err(CoreError::NotOwner {
            job: JobId(1),
            owner: MemberId::new("ana")
        })
    );
    assert_eq!(check(&s, 1, "ana"), Ok(()));
    // Only members, signing with their own key, may ask at all.
    assert!(matches!(
        check(&s, 1, "mallory"),
        Err(CoreError::Auth(AuthError::UnknownMember { .. }))
    ));
}

/// Nobody acts in a member's name: a request signed with another key, or
/// altered after signing, or replayed long after, is refused by `apply`.
#[test]
fn forged_altered_and_stale_requests_are_refused() {
    let mut s = new_state();
    let before = s.digest();
    let spec = JobSpec::command(vec!["true".into()], res(100, 64, 0));
    // Signed by bo's key in ana's name.
    let Command::Submit { auth, .. } = testkit::submit("bo", "f1", spec.clone(), 10) else {
        unreachable!()
    };
    let forged = Command::Submit {
        request_id: "f1".into(),
        member: MemberId::new("ana"),
        spec: spec.clone(),
        auth,
        now_ms: 10,
        env_salt: None,
    };
    assert_eq!(
        s.apply(&forged),
        Err(CoreError::Auth(AuthError::BadSignature {
            member: MemberId::new("ana")
        }))
    );
    // Ana's own request with its spec changed on the way.
    let Command::Submit { auth, .. } = testkit::submit("ana", "f2", spec.clone(), 10) else {
        unreachable!()
    };
    let mut bigger = spec.clone();
    bigger.resources.cpu_millis = 64_000;
    let altered = Command::Submit {
        request_id: "f2".into(),
        member: MemberId::new("ana"),
        spec: bigger,
        auth,
        now_ms: 10,
        env_salt: None,
    };
    assert!(matches!(
        s.apply(&altered),
        Err(CoreError::Auth(AuthError::BadSignature { .. }))
    ));
    // A genuine request replayed after the skew window.
    let mut stale = testkit::submit("ana", "f3", spec, 10);
    if let Command::Submit { now_ms, .. } = &mut stale {
        *now_ms = 10 + identity::MAX_CLOCK_SKEW_MS + 1;
    }
    assert!(matches!(
        s.apply(&stale),
        Err(CoreError::Auth(AuthError::Stale { .. }))
    ));
    assert_eq!(s.digest(), before);
}

/// The leader proposes a pass when the core says one is due: after demand
/// or supply changed and something could move, and not again until then.
#[test]
fn a_pass_is_due_only_after_a_change_that_could_move_something() {
    let mut s = new_state();
    submit(&mut s, "r1", "ana", res(100, 64, 0)).unwrap();
    assert!(!s.pass_due(), "no ready node: nothing can move");
    register(&mut s, "n1", res(1000, 1024, 0), 1).unwrap();
    assert!(s.pass_due());
    s.apply(&Command::Schedule { now_ms: 20 }).unwrap();
    assert!(!s.pass_due(), "a pass clears it");
    // A job too large for any free room, with nothing preemptible: not due.
    submit(&mut s, "r2", "ana", res(1000, 64, 0)).unwrap();
    assert!(!s.pass_due());
    // The running job ends: its room is free again, so the waiting one could start.
    let alloc = *s.allocs().keys().next().unwrap();
    s.apply(&testkit::finished(
        alloc,
        &NodeId::new("n1"),
        ExitStatus {
            code: Some(0),
            signal: None,
            error: String::new(),
        },
        None,
        30,
    ))
    .unwrap();
    assert!(s.pass_due());
}

/// Authorizes `node` for `owner` with `key` (not necessarily the node's own).
fn add_node_with_key(
    s: &mut ClusterState,
    owner: &str,
    node: &str,
    key: PublicKey,
    issued_at: u64,
) -> Result<Outcome, CoreError> {
    let (m, n) = (MemberId::new(owner), NodeId::new(node));
    let request_id = format!("add-{node}-{issued_at}");
    let auth = testkit::secret(owner).sign_request(
        testkit::CLUSTER,
        &m,
        &request_id,
        issued_at,
        &MemberRequest::AddNode {
            node: &n,
            key: &key,
        },
    );
    s.apply(&Command::AddNode {
        node: n,
        member: m,
        key,
        request_id,
        auth,
        now_ms: issued_at,
    })
}

#[test]
fn only_an_authorized_node_key_registers_and_reports() {
    let mut s = new_state();
    let cap = res(1000, 1024, 0);
    // Not authorized by anyone: refused, and nothing changes.
    let before = s.digest();
    let r = s.apply(&testkit::register("a", "owner", cap, 1, vec![], 5));
    assert_eq!(
        r,
        Err(CoreError::Auth(AuthError::UnknownNode {
            node: NodeId::new("a")
        }))
    );
    assert_eq!(s.digest(), before);
    // Authorized with another key than the one that signs: refused.
    add_node_with_key(
        &mut s,
        "owner",
        "a",
        testkit::node_secret("x").public_key(),
        5,
    )
    .unwrap();
    let before = s.digest();
    let r = s.apply(&testkit::register("a", "owner", cap, 1, vec![], 6));
    assert!(
        matches!(r, Err(CoreError::Auth(AuthError::BadNodeSignature { .. }))),
        "{r:?}"
    );
    assert_eq!(s.digest(), before);
    // The owner replaces the key with the node's own: it registers.
    add_node_with_key(
        &mut s,
        "owner",
        "a",
        testkit::node_secret("a").public_key(),
        7,
    )
    .unwrap();
    s.apply(&testkit::register("a", "owner", cap, 1, vec![], 8))
        .unwrap();
    // It cannot register as someone else's.
    let r = s.apply(&testkit::register("a", "ana", cap, 2, vec![], 9));
    assert!(matches!(r, Err(CoreError::NodeOwned { .. })), "{r:?}");
    // A report for its allocation signed by another node's key is refused.
    submit(&mut s, "1", "ana", res(1000, 512, 0)).unwrap();
    let p = placements(s.apply(&Command::Schedule { now_ms: 20 }).unwrap());
    let forged = match testkit::started(p[0].alloc, &NodeId::new("a"), 21) {
        Command::AllocStarted {
            alloc,
            node,
            incarnation,
            now_ms,
            ..
        } => Command::AllocStarted {
            auth: testkit::node_secret("x").sign_node_report(
                testkit::CLUSTER,
                &node,
                incarnation,
                now_ms,
                &NodeReport::Started { alloc },
            ),
            alloc,
            node,
            incarnation,
            now_ms,
        },
        other => panic!("{other:?}"),
    };
    let before = s.digest();
    assert!(matches!(
        s.apply(&forged),
        Err(CoreError::Auth(AuthError::BadNodeSignature { .. }))
    ));
    assert_eq!(s.digest(), before);
    s.apply(&testkit::started(p[0].alloc, &NodeId::new("a"), 21))
        .unwrap();
}

#[test]
fn a_node_is_its_owners_alone_and_an_old_grant_cannot_come_back() {
    let mut s = new_state();
    let (old, new) = (
        testkit::node_secret("old").public_key(),
        testkit::node_secret("new").public_key(),
    );
    add_node_with_key(&mut s, "owner", "a", old, 10).unwrap();
    // Another member cannot authorize (take over) the owner's node.
    assert_eq!(
        add_node_with_key(&mut s, "ana", "a", new, 11),
        Err(CoreError::NodeOwned {
            node: NodeId::new("a"),
            owner: MemberId::new("owner")
        })
    );
    // The owner rotates the key; a replay of the older grant is refused.
    add_node_with_key(&mut s, "owner", "a", new, 20).unwrap();
    assert_eq!(
        add_node_with_key(&mut s, "owner", "a", old, 10),
        Err(CoreError::GrantOutdated {
            node: NodeId::new("a")
        })
    );
    assert_eq!(s.node_grants()[&NodeId::new("a")].key, new);
    // A non-member's signature authorizes nothing.
    let r = add_node_with_key(&mut s, "stranger", "b", old, 21);
    assert!(
        matches!(r, Err(CoreError::Auth(AuthError::UnknownMember { .. }))),
        "{r:?}"
    );
}

/// A leader clock that jumps a month forward moves the log's time by one
/// step only: the command does exactly what a command one step later does.
/// A job that ended is not expired (its request id still names it), usage
/// accrues for one step and not the month, and the member's retry, signed
/// by a correct clock, is refused as stale rather than making a second job.
#[test]
fn a_leader_clock_jump_moves_the_logs_time_one_step() {
    let mut s = new_state();
    register(&mut s, "n1", res(1000, 1024, 0), 1).unwrap();
    submit(&mut s, "r1", "ana", res(100, 64, 0)).unwrap();
    submit(&mut s, "r2", "bo", res(100, 64, 0)).unwrap();
    let p = placements(s.apply(&Command::Schedule { now_ms: 20 }).unwrap());
    let node = NodeId::new("n1");
    for pl in &p {
        s.apply(&testkit::started(pl.alloc, &node, 21)).unwrap();
    }
    let ana = p.iter().find(|pl| pl.job == JobId(1)).unwrap().alloc;
    let ok = ExitStatus {
        code: Some(0),
        signal: None,
        error: String::new(),
    };
    s.apply(&testkit::finished(ana, &node, ok, None, 30))
        .unwrap();
    let month = 31 * 24 * 3600 * 1000;
    assert!(month > s.policy().job_retention_secs * 1000);

    let mut one_step = s.clone();
    one_step
        .apply(&Command::Schedule {
            now_ms: 30 + MAX_STEP_MS,
        })
        .unwrap();
    s.apply(&Command::Schedule { now_ms: 30 + month }).unwrap();
    assert_eq!(s.now_ms(), 30 + MAX_STEP_MS);
    assert_eq!(s, one_step);
    assert_eq!(s.jobs()[&JobId(1)].state(), JobState::Succeeded);

    let mut retry = testkit::submit(
        "ana",
        "r1",
        JobSpec::command(vec!["true".into()], res(100, 64, 0)),
        40,
    );
    if let Command::Submit { now_ms, .. } = &mut retry {
        *now_ms = 30 + month + 1;
    }
    let before = s.digest();
    assert!(matches!(
        s.apply(&retry),
        Err(CoreError::Auth(AuthError::Stale { .. }))
    ));
    assert_eq!(s.digest(), before);
    assert_eq!(s.jobs().len(), 2);
}

/// After a quiet hour the log's time lags the leader's clock (it moves one
/// step per command), yet a fresh request is taken: freshness is checked
/// against the stamp, the clock the member had to agree with.
#[test]
fn after_a_quiet_hour_a_fresh_request_is_taken() {
    let mut s = new_state();
    submit(&mut s, "r1", "ana", res(100, 64, 0)).unwrap();
    let hour = 3_600_000;
    let fresh = testkit::submit(
        "ana",
        "r2",
        JobSpec::command(vec!["true".into()], res(100, 64, 0)),
        10 + hour,
    );
    assert_eq!(
        s.apply(&fresh),
        Ok(Outcome::Submitted {
            job: JobId(2),
            existing: false
        })
    );
    assert_eq!(s.now_ms(), 10 + MAX_STEP_MS);
    testkit::advance(&mut s, 10 + hour);
    assert_eq!(s.now_ms(), 10 + hour);
}

/// An array submit makes one job per index under one request id, each an
/// ordinary job with its place; a retry returns the same array; a cancel
/// of the array ends its unfinished jobs and is its member's alone.
#[test]
fn an_array_is_one_submit_and_one_cancel() {
    let mut s = new_state();
    let mut spec = JobSpec::command(vec!["true".into()], res(100, 64, 0));
    spec.array = Some(ArrayRange { first: 5, last: 9 });
    let first = match s
        .apply_logged(&testkit::submit("ana", "arr", spec.clone(), 10))
        .0
    {
        Ok(Outcome::Submitted {
            job,
            existing: false,
        }) => job,
        other => panic!("{other:?}"),
    };
    let ids: Vec<JobId> = (first.0..first.0 + 5).map(JobId).collect();
    for (k, id) in ids.iter().enumerate() {
        let j = s.job(*id).expect("every index is a job");
        assert_eq!(
            j.array,
            Some(ArrayPlace {
                first,
                index: 5 + k as u32
            })
        );
        assert_eq!(j.state(), JobState::Pending);
        assert_eq!(j.leaves.len(), 1, "the submit is each job's decision");
    }
    assert_eq!(s.last_job_id(), ids[4].0);
    // A retry of the same request is the same array, not another one.
    assert_eq!(
        s.apply(&testkit::submit("ana", "arr", spec.clone(), 11)),
        Ok(Outcome::Submitted {
            job: first,
            existing: true
        })
    );
    assert_eq!(s.last_job_id(), ids[4].0);
    // Bad ranges are refused before anything is made.
    for (a, b) in [(3, 2), (0, coop_core::job::MAX_ARRAY_JOBS)] {
        let mut bad = spec.clone();
        bad.array = Some(ArrayRange { first: a, last: b });
        assert_eq!(
            s.apply(&testkit::submit("ana", &format!("bad{a}"), bad, 12)),
            Err(CoreError::InvalidSpec(SpecError::Array))
        );
    }
    // One job of it ends on its own; the array cancel ends the other four.
    s.apply(&testkit::cancel("ana", "c1", ids[1], 20)).unwrap();
    assert!(matches!(
        s.apply(&testkit::cancel_array("bo", "c2", ids[3], 21)),
        Err(CoreError::NotOwner { .. })
    ));
    match s.apply(&testkit::cancel_array("ana", "c3", ids[3], 22)) {
        Ok(Outcome::ArrayCancelled {
            first: f,
            cancelled,
            stopping,
        }) => {
            assert_eq!(f, first);
            assert_eq!(cancelled, vec![ids[0], ids[2], ids[3], ids[4]]);
            assert!(stopping.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert!(ids
        .iter()
        .all(|id| s.job(*id).unwrap().state() == JobState::Cancelled));
    assert!(matches!(
        s.apply(&testkit::cancel_array("ana", "c4", ids[0], 23)),
        Err(CoreError::AlreadyEnded { .. })
    ));
    // A lone job is not an array.
    let lone = match submit(&mut s, "lone", "ana", res(100, 64, 0)).unwrap() {
        Outcome::Submitted { job, .. } => job,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        s.apply(&testkit::cancel_array("ana", "c5", lone, 24)),
        Err(CoreError::NotAnArray(lone))
    );
}

/// An evaluation of one model on `d.csv`, split into `shards`.
fn sharded_evaluation(shards: u32) -> JobSpec {
    let mut spec = JobSpec::command(vec!["unused".into()], res(100, 64, 0));
    spec.kind = JobKind::Evaluation {
        models: vec![Artifact {
            uri: "m.onnx".into(),
            sha256: None,
        }],
        dataset: Artifact {
            uri: "d.csv".into(),
            sha256: None,
        },
        label_column: "label".into(),
        task: EvalTask::Classification,
        metrics: vec!["accuracy".into()],
        options: ModelOptions {
            shards,
            ..Default::default()
        },
    };
    spec.array = (shards > 0).then(|| ArrayRange {
        first: 0,
        last: shards - 1,
    });
    spec
}

/// What a worker reports for shard `index` of `of` over `labels`, scoring
/// `pred`.
fn shard_result(index: u32, of: u32, labels: &[f64], pred: &[f64]) -> JobResult {
    let (start, end) = ShardPart::range(index, of, labels.len() as u64);
    let (start, end) = (start as usize, end as usize);
    let tally = Tally::of(
        EvalTask::Classification,
        &pred[start..end],
        &labels[start..end],
    );
    JobResult::Evaluation {
        dataset: "d.csv".into(),
        dataset_sha256: "d".repeat(64),
        rows: (end - start) as u64,
        task: EvalTask::Classification,
        scores: vec![ModelScore {
            model: "m.onnx".into(),
            sha256: "m".repeat(64),
            metrics: tally.metrics(["accuracy"]),
            error: None,
            seconds: 0.5,
            tally: Some(tally),
        }],
        ensemble: None,
        engine: "tract".into(),
        shard: Some(ShardPart {
            index,
            of,
            first_row: start as u64,
            dataset_rows: labels.len() as u64,
        }),
    }
}

#[test]
fn a_sharded_evaluation_merges_its_shards_and_a_failed_shard_reruns_alone() {
    let mut s = new_state();
    register(&mut s, "a", res(1000, 1024, 0), 1).unwrap();
    let node = NodeId::new("a");
    let mut spec = sharded_evaluation(3);
    spec.max_retries = 1;
    let first = match s.apply(&testkit::submit("ana", "ev", spec, 10)) {
        Ok(Outcome::Submitted { job, .. }) => job,
        other => panic!("{other:?}"),
    };
    let labels: Vec<f64> = (0..10).map(|i| f64::from(i % 3)).collect();
    let pred: Vec<f64> = (0..10).map(|i| f64::from(i % 3 * (i % 2))).collect();
    let placed = placements(s.apply(&Command::Schedule { now_ms: 20 }).unwrap());
    assert_eq!(placed.len(), 3, "the shards run side by side");
    let ok = ExitStatus {
        code: Some(0),
        signal: None,
        error: String::new(),
    };
    let failed = ExitStatus {
        code: Some(1),
        ..ok.clone()
    };
    for p in &placed {
        s.apply(&testkit::started(p.alloc, &node, 21)).unwrap();
    }
    // A result naming another shard is not taken for this one.
    let wrong = shard_result(2, 3, &labels, &pred);
    assert!(wrong.fits(s.job(placed[0].job).unwrap()).is_err());
    assert_eq!(wrong.fits(s.job(placed[2].job).unwrap()), Ok(()));
    for p in &placed {
        let i = s.job(p.job).unwrap().array.unwrap().index;
        let (exit, result) = if i == 1 {
            (failed.clone(), None)
        } else {
            (ok.clone(), Some(shard_result(i, 3, &labels, &pred)))
        };
        s.apply(&testkit::finished(p.alloc, &node, exit, result, 30))
            .unwrap();
    }
    // Shard 1 failed: it waits to run again, alone; nothing is merged yet.
    let shard1 = JobId(first.0 + 1);
    assert_eq!(s.job(shard1).unwrap().state(), JobState::Pending);
    assert!(s.leaderboards(None).is_empty());
    assert_eq!(s.sharded_result(s.job(first).unwrap()), None);
    let again = placements(s.apply(&Command::Schedule { now_ms: 40 }).unwrap());
    assert_eq!(
        again.iter().map(|p| p.job).collect::<Vec<_>>(),
        vec![shard1]
    );
    s.apply(&testkit::started(again[0].alloc, &node, 41))
        .unwrap();
    s.apply(&testkit::finished(
        again[0].alloc,
        &node,
        ok,
        Some(shard_result(1, 3, &labels, &pred)),
        50,
    ))
    .unwrap();
    // One entry, merged from the three, equal to scoring every row at once.
    let whole = Tally::of(EvalTask::Classification, &pred, &labels);
    let boards = s.leaderboards(None);
    assert_eq!(boards.len(), 1);
    let entries = &boards[0].entries;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].job, entries[0].shards, entries[0].rows),
        (first, 3, 10)
    );
    assert_eq!(entries[0].score.metrics, whole.metrics(["accuracy"]));
    assert_eq!(entries[0].finished_at_ms, 50);
    let merged = s.sharded_result(s.job(JobId(first.0 + 2)).unwrap());
    assert!(matches!(
        merged,
        Some(Ok(JobResult::Evaluation {
            rows: 10,
            shard: None,
            ..
        }))
    ));
}

#[test]
fn a_model_job_is_an_array_only_as_its_shards() {
    let mut s = new_state();
    let mut bad = Vec::new();
    // An evaluation's array other than 0..shards.
    let mut spec = sharded_evaluation(3);
    spec.array = Some(ArrayRange { first: 1, last: 3 });
    bad.push(spec);
    let mut spec = sharded_evaluation(3);
    spec.array = None;
    bad.push(spec);
    // An array of an unsharded evaluation.
    let mut spec = sharded_evaluation(0);
    spec.array = Some(ArrayRange { first: 0, last: 1 });
    bad.push(spec);
    // Too many shards.
    bad.push(sharded_evaluation(coop_core::job::MAX_SHARDS + 1));
    for (i, spec) in bad.into_iter().enumerate() {
        assert!(
            matches!(
                s.apply(&testkit::submit("ana", &format!("b{i}"), spec, 10)),
                Err(CoreError::InvalidSpec(SpecError::Shards(_)))
            ),
            "case {i}"
        );
    }
    assert!(s.jobs().is_empty());
}
