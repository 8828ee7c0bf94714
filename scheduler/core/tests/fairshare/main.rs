//! Scenario tests from hand-worked tables; docs/policy.md walks through
//! the same numbers.

use coop_core::testkit;
use coop_core::*;

const GIB: u64 = 1 << 30;

/// Contribution counts GPUs only, so the examples stay about GPUs.
fn gpu_policy() -> Policy {
    Policy {
        floor: 0.5,
        cpus_per_gpu: 1e12,
        memory_gib_per_gpu: 1e12,
        grace_secs: 30,
        ..Policy::default()
    }
}

fn state_with(policy: Policy) -> ClusterState {
    let mut s = ClusterState::new();
    s.apply(&testkit::genesis(&["ana", "bea", "cai", "dan"], policy, 0))
        .unwrap();
    s
}

fn register(s: &mut ClusterState, node: &str, owner: &str, gpus: u32, now_ms: u64) {
    s.apply(&testkit::add_node(owner, node, now_ms))
        .and_then(|_| {
            s.apply(&testkit::register(
                node,
                owner,
                Resources::new(gpus as u64 * 8000, gpus as u64 * 32 * GIB, gpus),
                1,
                vec![],
                now_ms,
            ))
        })
        .unwrap();
}

fn submit_gpu_jobs(
    s: &mut ClusterState,
    member: &str,
    n: usize,
    preemptible: bool,
    now_ms: u64,
) -> Vec<JobId> {
    (0..n)
        .map(|i| {
            let mut spec = JobSpec::command(vec!["train".into()], Resources::new(1000, 4 * GIB, 1));
            spec.preemptible = preemptible;
            match s
                .apply(&testkit::submit(
                    member,
                    &format!("{member}-{now_ms}-{i}"),
                    spec,
                    now_ms,
                ))
                .unwrap()
            {
                Outcome::Submitted { job, .. } => job,
                other => panic!("{other:?}"),
            }
        })
        .collect()
}

fn schedule(s: &mut ClusterState, now_ms: u64) -> (Vec<Placement>, Vec<Preemption>) {
    match s.apply(&Command::Schedule { now_ms }).unwrap() {
        Outcome::Scheduled {
            placements,
            preemptions,
        } => (placements, preemptions),
        other => panic!("{other:?}"),
    }
}

fn gpus_of(s: &ClusterState, member: &str) -> u32 {
    s.members()[&MemberId::new(member)].allocated().gpus
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

/// docs/policy.md, example 1: members contributing 0, 1 and 3 GPUs, floor 0.5.
#[test]
fn entitlements_and_steady_shares_for_contributions_0_1_3() {
    let mut s = state_with(gpu_policy());
    register(&mut s, "b-node", "bea", 1, 0);
    register(&mut s, "c-node", "cai", 3, 0);
    for m in ["ana", "bea", "cai"] {
        submit_gpu_jobs(&mut s, m, 4, false, 60_000);
    }
    let (placed, preempted) = schedule(&mut s, 60_000);
    assert!(preempted.is_empty());
    let shares = s.shares();
    let e = |m: &str| shares.members[&MemberId::new(m)].entitlement;
    // floor/3 each, plus (1 - floor) split 0 : 1/4 : 3/4.
    assert!(close(e("ana"), 1.0 / 6.0), "{}", e("ana"));
    assert!(close(e("bea"), 1.0 / 6.0 + 0.125), "{}", e("bea"));
    assert!(close(e("cai"), 1.0 / 6.0 + 0.375), "{}", e("cai"));
    // Progressive filling over 4 GPUs (each job is 1/4 of the pool):
    // ana 0 -> 1.5, bea 0 -> 0.857, cai 0 -> 0.462 (ties by name),
    // then cai 0.462 -> 0.923: ana 1, bea 1, cai 2.
    assert_eq!(placed.len(), 4);
    assert_eq!(
        (gpus_of(&s, "ana"), gpus_of(&s, "bea"), gpus_of(&s, "cai")),
        (1, 1, 2)
    );
    // Owners run on their own machines first.
    let bea_job = placed
        .iter()
        .find(|p| s.jobs()[&p.job].member.as_str() == "bea")
        .unwrap();
    assert_eq!(
        (bea_job.node.as_str(), bea_job.rule.as_str()),
        ("b-node", "owner-first")
    );
    // Nobody can reclaim within its entitlement: the shares are steady.
    assert_eq!(schedule(&mut s, 61_000), (vec![], vec![]));
    // ana's jobs are 1-4; job 1 runs, so job 3 is second of three waiting.
    let why = s.explain(JobId(3)).unwrap();
    assert_eq!((why.queue_position, why.queue_length), (2, 3));
    assert!(
        why.reasons
            .iter()
            .any(|r| matches!(r, PendingReason::NodesBusy { .. })),
        "{:?}",
        why.reasons
    );
}

/// docs/policy.md, example 2: a burst on an idle pool uses all of it, then
/// yields to the owners within one grace period.
#[test]
fn a_burst_fills_the_idle_pool_then_yields_to_the_owners() {
    let mut s = state_with(gpu_policy());
    register(&mut s, "b-node", "bea", 1, 0);
    register(&mut s, "c-node", "cai", 3, 0);
    let burst = submit_gpu_jobs(&mut s, "dan", 4, true, 1_000);
    let (placed, _) = schedule(&mut s, 1_000);
    assert_eq!(placed.len(), 4, "work conserving: the idle pool is used");
    // dan is the only member with demand, so its entitlement is the pool.
    let rules: Vec<&str> = placed.iter().map(|p| p.rule.as_str()).collect();
    assert_eq!(rules, vec!["fair-share"; 4]);
    for p in &placed {
        s.apply(&testkit::started(p.alloc, &p.node, 1_100)).unwrap();
    }
    // The owners submit. Entitlements become dan 1/6, bea 7/24, cai 13/24;
    // each owner reclaims on its own machine what keeps it within its
    // entitlement: bea one GPU (1/4 <= 7/24), cai two (2/4 <= 13/24).
    submit_gpu_jobs(&mut s, "bea", 2, false, 2_000);
    submit_gpu_jobs(&mut s, "cai", 4, false, 2_000);
    let (placed, preempted) = schedule(&mut s, 2_000);
    assert!(placed.is_empty());
    let summary: Vec<(String, &str)> = preempted
        .iter()
        .map(|p| (s.allocs()[&p.alloc].node.to_string(), p.rule.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("b-node".to_string(), "owner-reclaim"),
            ("c-node".to_string(), "owner-reclaim"),
            ("c-node".to_string(), "owner-reclaim")
        ]
    );
    assert!(preempted.iter().all(|p| burst.contains(&p.job)));
    // A second pass while they stop changes nothing: the room is on its way.
    assert_eq!(schedule(&mut s, 2_500), (vec![], vec![]));
    // The workers stop them (SIGTERM, then SIGKILL after the grace).
    for p in &preempted {
        let node = s.allocs()[&p.alloc].node.clone();
        let killed = ExitStatus {
            code: None,
            signal: Some(15),
            error: String::new(),
        };
        s.apply(&testkit::finished(p.alloc, &node, killed, None, 3_000))
            .unwrap();
        let job = &s.jobs()[&p.job];
        assert_eq!(
            (job.state(), job.attempts),
            (JobState::Pending, 0),
            "requeued without spending a retry"
        );
        // What the preemption cost it, for an appeal to credit back.
        assert!(job.lost_ms > 0, "lost work recorded: {}", job.lost_ms);
    }
    // Within one grace period the owners have their share.
    let (placed, preempted) = schedule(&mut s, 3_000);
    let owners: Vec<&str> = placed
        .iter()
        .map(|p| s.jobs()[&p.job].member.as_str())
        .collect();
    assert_eq!(owners, vec!["bea", "cai", "cai"]);
    assert!(preempted.is_empty());
    // Steady: dan 1 GPU (lent, above its 1/6), bea 1, cai 2.
    assert_eq!(
        (gpus_of(&s, "dan"), gpus_of(&s, "bea"), gpus_of(&s, "cai")),
        (1, 1, 2)
    );
    assert_eq!(schedule(&mut s, 5_000), (vec![], vec![]));
    // Every decision names its rule and policy version.
    assert!(s.decisions().iter().all(|d| d.policy_version == 1));
}

#[test]
fn the_cap_holds_a_member_back_and_says_so() {
    let mut s = state_with(Policy {
        member_cap: Some(0.5),
        ..gpu_policy()
    });
    register(&mut s, "n", "bea", 4, 0);
    submit_gpu_jobs(&mut s, "ana", 4, false, 1_000);
    let (placed, _) = schedule(&mut s, 1_000);
    assert_eq!(placed.len(), 2, "ana stops at half the pool");
    let why = s.explain(JobId(3)).unwrap();
    assert!(
        why.reasons
            .iter()
            .any(|r| matches!(r, PendingReason::MemberCap { .. })),
        "{:?}",
        why.reasons
    );
}

#[test]
fn gpu_constraints_match_the_inventory() {
    let mut s = state_with(gpu_policy());
    let gpu = |index, model: &str, gib: u64| GpuInfo {
        index,
        uuid: format!("GPU-{index}"),
        model: model.into(),
        memory_bytes: gib * GIB,
    };
    s.apply(&testkit::add_node("bea", "mixed", 0))
        .and_then(|_| {
            s.apply(&testkit::register(
                "mixed",
                "bea",
                Resources::new(16_000, 64 * GIB, 2),
                1,
                vec![gpu(0, "NVIDIA T4", 16), gpu(1, "NVIDIA A100-SXM4-80GB", 80)],
                0,
            ))
        })
        .unwrap();
    let mut spec = JobSpec::command(vec!["x".into()], Resources::new(1000, GIB, 1));
    spec.gpu_model = Some("a100".into());
    s.apply(&testkit::submit("ana", "1", spec.clone(), 1))
        .unwrap();
    let (placed, _) = schedule(&mut s, 2);
    assert_eq!(placed[0].gpu_indices, vec![1]);
    spec.gpu_model = None;
    spec.gpu_min_memory_bytes = Some(100 * GIB);
    let err = s.apply(&testkit::submit("ana", "2", spec, 3)).unwrap_err();
    assert!(matches!(err, CoreError::Impossible(_)), "{err}");
}

#[test]
fn the_genesis_policy_is_adopted_once() {
    let mut s = state_with(gpu_policy());
    let again = s.apply(&testkit::genesis(&["mallory"], Policy::default(), 5));
    assert!(matches!(
        again,
        Err(CoreError::GenesisAdopted { version: 1 })
    ));
    assert_eq!(s.policy(), &gpu_policy());
}

/// `coop share` accrues every ledger to the time of the read, so a member
/// who has not acted lately is shown with the contribution its machines
/// have earned since; nothing is written.
#[test]
fn shares_are_accrued_to_the_read_and_write_nothing() {
    let mut s = state_with(gpu_policy());
    register(&mut s, "b-node", "bea", 1, 0);
    submit_gpu_jobs(&mut s, "ana", 1, false, 10);
    submit_gpu_jobs(&mut s, "bea", 1, false, 10);
    let before = s.digest();
    let bea = MemberId::new("bea");
    let stored = s.shares().members[&bea].contribution;
    let later = s.shares_at(3_600_000).members[&bea].contribution;
    assert_eq!(s.digest(), before, "a read changed the state");
    // One GPU offered for an hour, decayed by a week's half-life: just under 3600.
    assert!(stored < 1.0, "{stored}");
    assert!(later > 3590.0 && later < 3600.0, "{later}");
}
