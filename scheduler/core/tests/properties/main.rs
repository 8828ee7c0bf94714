//! Properties of `apply` over random command streams.

use std::collections::{BTreeMap, BTreeSet};

use coop_core::testkit;
use coop_core::*;
use proptest::prelude::*;

/// A command described by small numbers, resolved against the state at the
/// time it is applied, so random streams hit real jobs and allocations.
/// Everyone the random histories name: the submitters and node owners
/// m0..m2, and the members of the fixed settings.
const MEMBERS: &[&str] = &[
    "m0", "m1", "m2", "m3", "m4", "landlord", "newcomer", "b0", "b1", "b2",
];

/// A cluster founded by `MEMBERS` under `policy`.
fn founded(policy: Policy) -> ClusterState {
    let mut s = ClusterState::new();
    s.apply(&testkit::genesis(MEMBERS, policy, 0)).unwrap();
    s
}

/// A ready node of `capacity`, authorized and registered by "landlord", a
/// member without demand.
fn landlord_node(s: &mut ClusterState, node: &str, capacity: Resources) {
    s.apply(&testkit::add_node("landlord", node, 0)).unwrap();
    s.apply(&testkit::register(node, "landlord", capacity, 1, vec![], 0))
        .unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Register {
        node: u8,
        cpu: u8,
        mem: u8,
        gpus: u8,
        incarnation: u8,
    },
    Submit {
        member: u8,
        request: u8,
        cpu: u8,
        mem: u8,
        gpus: u8,
        retries: u8,
        preemptible: bool,
        timeout: Option<u8>,
    },
    Schedule,
    Start {
        pick: u8,
    },
    Finish {
        pick: u8,
        ok: bool,
    },
    Lost {
        node: u8,
    },
    Cancel {
        pick: u8,
    },
}

/// How many nodes the ops name (n0..n3).
const NODES: u8 = 4;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..NODES, 1..8u8, 1..8u8, 0..4u8, 0..3u8).prop_map(
            |(node, cpu, mem, gpus, incarnation)| {
                Op::Register {
                    node,
                    cpu,
                    mem,
                    gpus,
                    incarnation,
                }
            }
        ),
        (
            0..3u8,
            0..20u8,
            1..4u8,
            1..4u8,
            0..2u8,
            0..2u8,
            any::<bool>(),
            proptest::option::of(1..4u8)
        )
            .prop_map(
                |(member, request, cpu, mem, gpus, retries, preemptible, timeout)| {
                    Op::Submit {
                        member,
                        request,
                        cpu,
                        mem,
                        gpus,
                        retries,
                        preemptible,
                        timeout,
                    }
                }
            ),
        Just(Op::Schedule),
        any::<u8>().prop_map(|pick| Op::Start { pick }),
        (any::<u8>(), any::<bool>()).prop_map(|(pick, ok)| Op::Finish { pick, ok }),
        (0..4u8).prop_map(|node| Op::Lost { node }),
        any::<u8>().prop_map(|pick| Op::Cancel { pick }),
    ]
}

fn to_command(state: &ClusterState, op: &Op, now_ms: u64) -> Command {
    let pick_alloc = |pick: u8| -> Option<&Allocation> {
        let n = state.allocs().len();
        (n > 0).then(|| state.allocs().values().nth(pick as usize % n).unwrap())
    };
    match *op {
        Op::Register {
            node,
            cpu,
            mem,
            gpus,
            incarnation,
        } => testkit::register(
            &format!("n{node}"),
            &format!("m{}", node % 3),
            Resources::new(cpu as u64 * 1000, (mem as u64) << 30, gpus as u32),
            incarnation as u64,
            vec![],
            now_ms,
        ),
        Op::Submit {
            member,
            request,
            cpu,
            mem,
            gpus,
            retries,
            preemptible,
            timeout,
        } => {
            let mut spec = JobSpec::command(
                vec!["true".into()],
                Resources::new(cpu as u64 * 1000, (mem as u64) << 30, gpus as u32),
            );
            spec.max_retries = retries as u32;
            spec.preemptible = preemptible;
            spec.timeout_secs = timeout.map(u64::from);
            testkit::submit(&format!("m{member}"), &format!("r{request}"), spec, now_ms)
        }
        Op::Schedule => Command::Schedule { now_ms },
        Op::Start { pick } => match pick_alloc(pick) {
            Some(a) => testkit::started(a.id, &a.node, now_ms),
            None => Command::Schedule { now_ms },
        },
        Op::Finish { pick, ok } => match pick_alloc(pick) {
            Some(a) => testkit::finished(
                a.id,
                &a.node,
                ExitStatus {
                    code: Some(if ok { 0 } else { 1 }),
                    signal: None,
                    error: String::new(),
                },
                None,
                now_ms,
            ),
            None => Command::Schedule { now_ms },
        },
        Op::Lost { node } => {
            let id = NodeId::new(format!("n{node}"));
            let incarnation = state.nodes().get(&id).map(|n| n.incarnation).unwrap_or(0);
            Command::NodeLost {
                node: id,
                incarnation,
                now_ms,
            }
        }
        Op::Cancel { pick } => {
            let n = state.jobs().len().max(1) as u64;
            let job = JobId(pick as u64 % n + 1);
            let member = state
                .jobs()
                .get(&job)
                .map(|j| j.member.clone())
                .unwrap_or(MemberId::new("m0"));
            testkit::cancel(member.as_str(), &format!("c{now_ms}"), job, now_ms)
        }
    }
}

/// Applies the ops, checking the invariants after every step; returns the
/// commands it applied so the run can be replayed.
fn run(ops: &[Op]) -> (ClusterState, Vec<Command>) {
    run_under(Policy::default(), ops)
}

/// The same under `policy`.
fn run_under(policy: Policy, ops: &[Op]) -> (ClusterState, Vec<Command>) {
    let mut state = ClusterState::new();
    let genesis = testkit::genesis(MEMBERS, policy, 0);
    state.apply(&genesis).unwrap();
    let mut log = vec![genesis];
    // Every node the ops can name is authorized by its owner up front.
    for node in 0..NODES {
        let add = testkit::add_node(&format!("m{}", node % 3), &format!("n{node}"), 0);
        state.apply(&add).unwrap();
        log.push(add);
    }
    for (i, op) in ops.iter().enumerate() {
        let cmd = to_command(&state, op, i as u64 * 10);
        let before = state.clone();
        let result = state.apply(&cmd);
        if result.is_err() {
            assert_eq!(
                state, before,
                "a refused command changed the state: {cmd:?}"
            );
        }
        check_invariants(&state);
        log.push(cmd);
    }
    (state, log)
}

fn check_invariants(state: &ClusterState) {
    let mut live_per_job: BTreeMap<JobId, usize> = BTreeMap::new();
    for node in state.nodes().values() {
        let allocs: Vec<&Allocation> = node.allocs().iter().map(|a| &state.allocs()[a]).collect();
        let sum = allocs
            .iter()
            .fold(Resources::ZERO, |acc, a| acc.saturating_add(&a.resources));
        assert_eq!(
            node.allocated(),
            sum,
            "node {} allocated differs from its allocations",
            node.id
        );
        // Capacity may shrink on re-registration only together with a new
        // incarnation, which ends every allocation; so this always holds.
        assert!(
            sum.fits_in(&node.capacity),
            "node {} over-committed: {sum} > {}",
            node.id,
            node.capacity
        );
        let mut gpus = BTreeSet::new();
        for a in &allocs {
            assert_eq!(a.gpu_indices.len() as u32, a.resources.gpus);
            for g in &a.gpu_indices {
                assert!(*g < node.capacity.gpus);
                assert!(gpus.insert(*g), "gpu {g} of {} given twice", node.id);
            }
        }
    }
    for a in state.allocs().values() {
        *live_per_job.entry(a.job).or_default() += 1;
        assert!(state.nodes()[&a.node].allocs().contains(&a.id));
    }
    for (job, count) in live_per_job {
        assert_eq!(count, 1, "job {job} has {count} live allocations");
    }
    for job in state.jobs().values() {
        assert_eq!(
            job.state() == JobState::Pending,
            state.pending().contains(&job.id)
        );
        if let Some(a) = job.alloc {
            assert_eq!(state.allocs()[&a].job, job.id);
        }
    }
    for (member, requests) in state.requests() {
        for job in requests.values() {
            assert_eq!(&state.jobs()[job].member, member);
        }
    }
    let requests: usize = state.requests().values().map(|r| r.len()).sum();
    assert_eq!(
        requests,
        state.jobs().len(),
        "dedup: one job per (member, request id)"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn invariants_hold_and_apply_is_deterministic(ops in proptest::collection::vec(op(), 1..120)) {
        let (state, log) = run(&ops);
        let mut replay = ClusterState::new();
        for cmd in &log {
            let _ = replay.apply(cmd);
        }
        prop_assert_eq!(replay.to_snapshot_bytes(), state.to_snapshot_bytes());
        // Through the log's encoding too.
        let mut decoded = ClusterState::new();
        for cmd in &log {
            let bytes = serde_json::to_vec(cmd).unwrap();
            let back: Command = serde_json::from_slice(&bytes).unwrap();
            let _ = decoded.apply(&back);
        }
        prop_assert_eq!(decoded.digest(), state.digest());
    }

    /// The decision log: a journal of the history replays from genesis to
    /// the same state digest after every entry, and to the same root.
    #[test]
    fn the_journal_replays_to_the_same_state_at_every_entry(ops in proptest::collection::vec(op(), 1..80)) {
        let (_, log) = run(&ops);
        let mut live = ClusterState::new();
        let mut replay = coop_core::decision_log::Replay::new();
        for (i, cmd) in log.iter().enumerate() {
            let (_, leaf) = live.apply_logged(cmd);
            replay.step(i as u64, &leaf).unwrap();
            prop_assert_eq!(replay.state.digest(), live.digest());
        }
        prop_assert_eq!(replay.root(), live.log_root());
    }

    #[test]
    fn scheduling_its_own_output_changes_nothing(ops in proptest::collection::vec(op(), 1..80)) {
        let (mut state, _) = run(&ops);
        state.apply(&Command::Schedule { now_ms: 1_000_000 }).unwrap();
        let once = state.clone();
        // At the log's time: a later stamp would accrue more (the log's time
        // moves at most MAX_STEP_MS per command).
        let again = state.apply(&Command::Schedule { now_ms: state.now_ms() }).unwrap();

        prop_assert_eq!(again, Outcome::Scheduled { placements: vec![], preemptions: vec![] });
        prop_assert_eq!(&state, &once);
        // Work conserving: after a pass no pending job fits in what is free
        // on a ready node, unless a rule holds the room: there is no cap in
        // these policies, so the only ones are a reclaim, which reserves the
        // free room of a node where preempted allocations are stopping, and
        // a reservation for a large job.
        let held: BTreeSet<NodeId> = state.reservations().into_iter().map(|r| r.node).collect();
        for id in state.pending() {
            let want = state.jobs()[id].spec.resources;
            let reserving = |n: &Node| held.contains(&n.id) || n.allocs().iter().any(|a| state.allocs()[a].state == AllocState::Stopping);
            for node in state.nodes().values().filter(|n| n.state == NodeState::Ready && !reserving(n)) {
                let fits = want.fits_in(&node.free()) && state.free_gpu_indices(node).len() >= want.gpus as usize;
                prop_assert!(!fits, "job {} waits though it fits on {}", id, node.id);
            }
        }
    }
}

/// A single large node owned by a member without demand, `n` members with
/// saturated demand of one job shape each, equal entitlements (floor 1),
/// no usage history: the textbook DRF setting.
fn drf_setting(shapes: &[(u64, u64)]) -> ClusterState {
    let mut s = founded(Policy {
        floor: 1.0,
        usage_weight: 0.0,
        ..Policy::default()
    });
    landlord_node(&mut s, "big", Resources::new(64_000, 256 << 30, 0));
    for (m, (cpu, mem_gib)) in shapes.iter().enumerate() {
        for j in 0..200 {
            let spec = JobSpec::command(
                vec!["x".into()],
                Resources::new(cpu * 1000, mem_gib << 30, 0),
            );
            s.apply(&testkit::submit(&format!("m{m}"), &format!("{j}"), spec, 1))
                .unwrap();
        }
    }
    s.apply(&Command::Schedule { now_ms: 2 }).unwrap();
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// DRF's sharing incentive: with equal entitlements each member gets at
    /// least what a static 1/n split would give it (up to one job), and
    /// envy-freeness: no member could run more of its jobs with another's
    /// allocation (up to one job).
    #[test]
    fn drf_sharing_incentive_and_envy_freeness(shapes in proptest::collection::vec((1..8u64, 1..32u64), 2..5)) {
        let s = drf_setting(&shapes);
        let n = shapes.len() as f64;
        let cap = Resources::new(64_000, 256 << 30, 0);
        let alloc = |m: usize| s.members()[&MemberId::new(format!("m{m}"))].allocated();
        let dom = |cpu: u64, mem: u64| (cpu as f64 / cap.cpu_millis as f64).max(mem as f64 / cap.memory_bytes as f64);
        // Jobs are indivisible, so a member can fall short by at most the
        // largest job anyone runs.
        let largest = shapes.iter().map(|(c, m)| dom(c * 1000, m << 30)).fold(0.0, f64::max);
        for (i, (cpu, mem)) in shapes.iter().enumerate() {
            let (cpu, mem) = (cpu * 1000, mem << 30);
            let got = alloc(i).cpu_millis / cpu;
            let mine = dom(alloc(i).cpu_millis, alloc(i).memory_bytes);
            // What a static 1/n slice of the pool would hold of i's jobs.
            let static_jobs = ((cap.cpu_millis as f64 / n) / cpu as f64)
                .min((cap.memory_bytes as f64 / n) / mem as f64)
                .floor();
            let static_share = static_jobs * dom(cpu, mem);
            prop_assert!(
                mine + largest + 1e-9 >= static_share,
                "m{i} holds {mine:.4} of the pool, a 1/n split {static_share:.4}"
            );
            for j in 0..shapes.len() {
                if i == j {
                    continue;
                }
                let other = alloc(j);
                let could = (other.cpu_millis / cpu).min(other.memory_bytes / mem);
                // Envy-free up to one job: j's bundle holds no more of i's
                // work than i has, plus the indivisibility slack.
                let envied = could as f64 * dom(cpu, mem);
                prop_assert!(
                    envied <= mine + largest + 1e-9,
                    "m{i} ({got} jobs) envies m{j}, whose bundle holds {could} of its jobs"
                );
            }
        }
    }

    /// The floor guarantee: a member with no machines whose demand reaches
    /// its entitlement gets it back from preemptible borrowers within one
    /// grace period (one pass to preempt, the stops, one pass to place).
    #[test]
    fn floor_comes_back_within_one_grace_period(floor in 0.2f64..1.0, borrowers in 1..4usize, cores in 8..32u64) {
        let mut s = founded(Policy { floor, ..Policy::default() });
        landlord_node(&mut s, "n", Resources::new(cores * 1000, 1024 << 30, 0));
        let submit = |s: &mut ClusterState, member: &str, n: u64, preemptible: bool, now_ms: u64| {
            for j in 0..n {
                let mut spec = JobSpec::command(vec!["x".into()], Resources::new(1000, 1 << 30, 0));
                spec.preemptible = preemptible;
                s.apply(&testkit::submit(member, &format!("{member}-{now_ms}-{j}"), spec, now_ms))
                .unwrap();
            }
        };
        for b in 0..borrowers {
            submit(&mut s, &format!("b{b}"), cores, true, 1);
        }
        s.apply(&Command::Schedule { now_ms: 2 }).unwrap();
        prop_assert_eq!(s.nodes()[&NodeId::new("n")].free().cpu_millis, 0);
        submit(&mut s, "newcomer", cores, false, 3);
        s.apply(&Command::Schedule { now_ms: 4 }).unwrap();
        let stopping: Vec<(AllocId, NodeId)> = s
            .allocs()
            .values()
            .filter(|a| a.state == AllocState::Stopping)
            .map(|a| (a.id, a.node.clone()))
            .collect();
        for (alloc, node) in stopping {
            let exit = ExitStatus { code: None, signal: Some(15), error: String::new() };
            s.apply(&testkit::finished(alloc, &node, exit, None, 5)).unwrap();
        }
        s.apply(&Command::Schedule { now_ms: 6 }).unwrap();
        let shares = s.shares();
        let me = &shares.members[&MemberId::new("newcomer")];
        let job = 1.0 / cores as f64;
        prop_assert!(
            me.dominant_share + job > me.entitlement - 1e-9,
            "newcomer has {} of an entitlement of {}",
            me.dominant_share,
            me.entitlement
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// No preemption frees more than needed: on a full node, the victims a
    /// claim takes are irreducible (without any one of them the job would
    /// not fit), and one victim is taken whenever one frees enough alone.
    #[test]
    fn no_preemption_frees_more_than_needed(
        sizes in proptest::collection::vec(1..8u64, 1..12),
        idle in 0..3u64,
        ask in 1..16u64,
    ) {
        let mut s = founded(Policy { floor: 1.0, ..Policy::default() });
        let held: u64 = sizes.iter().sum();
        let cores = held + idle;
        // Entitled to half the node: a claim within it.
        let ask = ask.min(cores / 2).max(1);
        landlord_node(&mut s, "n", Resources::new(cores * 1000, 1024 << 30, 0));
        for (j, c) in sizes.iter().enumerate() {
            let mut spec = JobSpec::command(vec!["x".into()], Resources::new(c * 1000, 1 << 30, 0));
            spec.preemptible = true;
            s.apply(&testkit::submit("b0", &format!("b{j}"), spec, 1)).unwrap();
        }
        s.apply(&Command::Schedule { now_ms: 2 }).unwrap();
        let spec = JobSpec::command(vec!["x".into()], Resources::new(ask * 1000, 1 << 30, 0));
        s.apply(&testkit::submit("newcomer", "claim", spec, 3)).unwrap();
        let Outcome::Scheduled { preemptions, .. } = s.apply(&Command::Schedule { now_ms: 4 }).unwrap() else {
            panic!("a pass outcome");
        };
        let freed: Vec<u64> = preemptions
            .iter()
            .map(|p| s.allocs()[&p.alloc].resources.cpu_millis / 1000)
            .collect();
        let total: u64 = freed.iter().sum();
        if !freed.is_empty() {
            prop_assert!(idle + total >= ask, "victims {freed:?} and {idle} idle do not make {ask}");
        }
        for (k, f) in freed.iter().enumerate() {
            prop_assert!(
                idle + total - f < ask,
                "victim {k} ({f} cores) of {freed:?} is needless: {idle} idle, {ask} asked"
            );
        }
        let single = sizes.iter().any(|c| idle + c >= ask);
        if single && !freed.is_empty() {
            prop_assert_eq!(freed.len(), 1, "one victim frees enough alone, but {:?} were taken", freed);
        }
    }
}

/// A setting where reservations matter: `nodes` nodes of `cores` cores,
/// filled by b0's non-preemptible jobs with the given timeouts (started at
/// once), a newcomer whose `big` job cannot fit now, and more jobs of b0
/// queued behind it. Returns the state just before the pass under test.
fn reservation_setting(
    nodes: usize,
    cores: u64,
    held: &[Option<u64>],
    big: u64,
    extra: &[(u64, Option<u64>)],
) -> ClusterState {
    let mut s = founded(Policy {
        floor: 1.0,
        ..Policy::default()
    });
    for n in 0..nodes {
        let node = format!("n{n}");
        landlord_node(&mut s, &node, Resources::new(cores * 1000, 1024 << 30, 0));
    }
    let submit = |s: &mut ClusterState,
                  member: &str,
                  tag: String,
                  cpu: u64,
                  timeout: Option<u64>,
                  now_ms: u64| {
        let mut spec = JobSpec::command(vec!["x".into()], Resources::new(cpu * 1000, 1 << 30, 0));
        spec.timeout_secs = timeout;
        s.apply(&testkit::submit(member, &tag, spec, now_ms))
            .unwrap();
    };
    for (j, timeout) in held.iter().enumerate() {
        submit(&mut s, "b0", format!("h{j}"), 1, *timeout, 1_000);
    }
    s.apply(&Command::Schedule { now_ms: 1_000 }).unwrap();
    let allocs: Vec<(AllocId, NodeId)> = s
        .allocs()
        .values()
        .map(|a| (a.id, a.node.clone()))
        .collect();
    for (a, node) in allocs {
        s.apply(&testkit::started(a, &node, 1_000)).unwrap();
    }
    submit(&mut s, "newcomer", "big".into(), big, None, 2_000);
    for (j, (cpu, timeout)) in extra.iter().enumerate() {
        submit(&mut s, "b0", format!("e{j}"), *cpu, *timeout, 3_000);
    }
    s
}

/// Nodes, cores per node, held jobs' timeouts, the big job's cores, and
/// b0's queued jobs (cores, timeout).
type Setting = (usize, u64, Vec<Option<u64>>, u64, Vec<(u64, Option<u64>)>);

fn setting() -> impl Strategy<Value = Setting> {
    (1..3usize, 2..8u64).prop_flat_map(|(nodes, cores)| {
        (
            Just(nodes),
            Just(cores),
            proptest::collection::vec(
                proptest::option::weighted(0.8, 1..200u64),
                1..(nodes * cores as usize + 1),
            ),
            1..(cores + 1),
            proptest::collection::vec((1..3u64, proptest::option::weighted(0.8, 1..300u64)), 0..8),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Reservations never delay the reserved job: after a pass, a reserved
    /// job still waiting fits on its node no later than its reservation said.
    #[test]
    fn reservations_never_delay_the_reserved_job((nodes, cores, held, big, extra) in setting()) {
        let mut state = reservation_setting(nodes, cores, &held, big, &extra);
        let reserved = state.reservations();
        state.apply(&Command::Schedule { now_ms: state.now_ms() }).unwrap();
        for r in &reserved {
            if state.jobs()[&r.job].state() != JobState::Pending {
                continue;
            }
            let start = state.earliest_fit(r.job, &r.node);
            prop_assert!(
                start.is_some_and(|t| t <= r.start_ms),
                "job {} was held {} from {} ms, now fits there at {:?}", r.job, r.node, r.start_ms, start
            );
        }
    }

    /// Backfill never violates a reservation: every job the pass starts on a
    /// held node (other than the one it is held for) ends by its timeout
    /// before the reservation starts, or fits, with the others that do not,
    /// in the room the reserved job leaves spare.
    #[test]
    fn backfill_never_violates_a_reservation((nodes, cores, held, big, extra) in setting()) {
        let mut state = reservation_setting(nodes, cores, &held, big, &extra);
        let reserved = state.reservations();
        let now = state.now_ms();
        let Outcome::Scheduled { placements, .. } = state.apply(&Command::Schedule { now_ms: now }).unwrap() else {
            panic!("a pass outcome");
        };
        for r in &reserved {
            let mut beside = Resources::ZERO;
            for p in placements.iter().filter(|p| p.node == r.node && p.job != r.job) {
                let job = &state.jobs()[&p.job];
                let ends = job.spec.timeout_secs.map(|t| now + t * 1000);
                if ends.is_none_or(|e| e > r.start_ms) {
                    beside = beside.saturating_add(&job.spec.resources);
                }
            }
            prop_assert!(
                beside.fits_in(&r.spare),
                "jobs running past {} ms on {} take {} beside job {}, spare {}", r.start_ms, r.node, beside, r.job, r.spare
            );
        }
    }
}

/// Makes a `why` change through real commands: each ended allocation's
/// node reports it ended (a success, or a preempted job's stop), and a
/// joining node is authorized by its member and registers.
fn make(s: &mut ClusterState, change: &WouldStart) {
    let now = s.now_ms();
    for id in change.ended() {
        let a = s.allocs()[id].clone();
        let incarnation = s.nodes()[&a.node].incarnation;
        let exit = ExitStatus {
            code: Some(0),
            signal: None,
            error: String::new(),
        };
        s.apply(&testkit::finished_in(
            a.id,
            &a.node,
            incarnation,
            exit,
            None,
            now,
        ))
        .unwrap();
    }
    if let WouldStart::CapRaised { to, .. } = change {
        // The members vote the policy in, one vote each until adopted.
        let policy = Policy {
            version: s.policy().version + 1,
            member_cap: Some(*to),
            ..s.policy().clone()
        };
        let members: Vec<String> = s.members().keys().map(|m| m.as_str().to_string()).collect();
        let Ok(Outcome::Proposed { proposal, .. }) = s.apply(&testkit::propose(
            &members[0],
            "raise-the-cap",
            governance::ProposalKind::Policy { policy },
            now,
        )) else {
            panic!("a proposal to raise the cap is accepted");
        };
        for m in &members {
            if s.policy().member_cap == Some(*to) {
                break;
            }
            s.apply(&testkit::vote(m, &format!("cap-{m}"), proposal, true, now))
                .unwrap();
        }
        assert_eq!(
            s.policy().member_cap,
            Some(*to),
            "the members adopt the cap"
        );
    }
    if let WouldStart::NodeJoins { member, ask } = change {
        // The name `why` gives the joining node (node order is by id).
        let node = "a-new-node";
        let gpus = ask.gpu_inventory();
        s.apply(&testkit::add_node(member.as_str(), node, now))
            .unwrap();
        s.apply(&testkit::register(
            node,
            member.as_str(),
            ask.resources,
            1,
            gpus,
            now,
        ))
        .unwrap();
    }
}

/// Whether a scheduling pass applied now places the job.
fn placed_next_pass(s: &ClusterState, job: JobId) -> bool {
    let mut s = s.clone();
    let now_ms = s.now_ms();
    match s.apply(&Command::Schedule { now_ms }) {
        Ok(Outcome::Scheduled { placements, .. }) => placements.iter().any(|p| p.job == job),
        _ => false,
    }
}

/// `why`'s claims about a pending job hold: "placed at the next pass"
/// exactly when a pass applied now places it, and each change, made
/// through real commands, lets a pass place it.
fn why_holds(state: &ClusterState, job: JobId) -> Result<(), TestCaseError> {
    let e = state.explain(job).unwrap();
    let next_pass = e
        .reasons
        .iter()
        .any(|r| matches!(r, PendingReason::PlacedNextPass { .. }));
    prop_assert_eq!(next_pass, placed_next_pass(state, job), "{:?}", e);
    for change in &e.would_start {
        let mut s = state.clone();
        make(&mut s, change);
        prop_assert!(
            placed_next_pass(&s, job),
            "{} does not place job {}: {:?}",
            change,
            job,
            e
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// `why` is computed, not guessed: each "it starts when" change, made
    /// through real commands, lets the allocator's pass place the job, and
    /// "placed at the next pass" is said only of a job the pass places.
    #[test]
    fn every_would_start_change_places_the_job(
        ops in proptest::collection::vec(op(), 1..100),
        capped in any::<bool>(),
    ) {
        let policy = Policy {
            member_cap: capped.then_some(0.5),
            ..Policy::default()
        };
        let (state, _) = run_under(policy, &ops);
        for job in state.pending().iter().copied().take(8) {
            why_holds(&state, job)?;
        }
    }
}

/// A job of `cpu` cores for `member` in the contention setting.
type Ask = (u8, u64, bool, Option<u64>);

/// Landlord nodes filled by b0 and b1 (jobs of 1-4 cores, some
/// preemptible, some with timeouts), then later demand from b0, b1 and
/// newcomer, and one pass (reclaim may preempt: its victims are left
/// stopping). Under a cap of one half when `capped`.
fn contention_setting(
    nodes: usize,
    cores: u64,
    fill: &[Ask],
    late: &[Ask],
    capped: bool,
) -> ClusterState {
    let mut s = founded(Policy {
        floor: 0.5,
        member_cap: capped.then_some(0.5),
        ..Policy::default()
    });
    for n in 0..nodes {
        landlord_node(
            &mut s,
            &format!("n{n}"),
            Resources::new(cores * 1000, 1024 << 30, 0),
        );
    }
    let who = ["b0", "b1", "newcomer"];
    let submit =
        |s: &mut ClusterState, tag: String, (m, cpu, preemptible, timeout): Ask, now_ms: u64| {
            let mut spec =
                JobSpec::command(vec!["x".into()], Resources::new(cpu * 1000, 1 << 30, 0));
            spec.preemptible = preemptible;
            spec.timeout_secs = timeout;
            // An ask the pool refuses (too large) is simply not queued.
            let _ = s.apply(&testkit::submit(who[m as usize % 3], &tag, spec, now_ms));
        };
    for (j, ask) in fill.iter().enumerate() {
        submit(
            &mut s,
            format!("f{j}"),
            (ask.0 % 2, ask.1, ask.2, ask.3),
            1_000,
        );
    }
    s.apply(&Command::Schedule { now_ms: 1_000 }).unwrap();
    let allocs: Vec<(AllocId, NodeId)> = s
        .allocs()
        .values()
        .map(|a| (a.id, a.node.clone()))
        .collect();
    for (a, node) in allocs {
        s.apply(&testkit::started(a, &node, 1_000)).unwrap();
    }
    for (j, ask) in late.iter().enumerate() {
        submit(&mut s, format!("l{j}"), *ask, 2_000);
    }
    s.apply(&Command::Schedule { now_ms: 2_000 }).unwrap();
    s
}

fn contention_ask() -> impl Strategy<Value = Ask> {
    (
        0..3u8,
        1..5u64,
        any::<bool>(),
        proptest::option::weighted(0.5, 1..300u64),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The same under contention, where reclaim, reservations, the cap and
    /// the members' order all decide: every "it starts when" change, made
    /// through real commands, lets the allocator's pass place the job.
    #[test]
    fn why_changes_place_the_job_under_contention(
        nodes in 1..3usize,
        cores in 2..8u64,
        fill in proptest::collection::vec(contention_ask(), 1..16),
        late in proptest::collection::vec(contention_ask(), 1..10),
        capped in any::<bool>(),
    ) {
        let state = contention_setting(nodes, cores, &fill, &late, capped);
        for job in state.pending().iter().copied() {
            why_holds(&state, job)?;
        }
    }
}
