//! Properties of `apply` over random command streams.

use std::collections::{BTreeMap, BTreeSet};

use coop_core::*;
use proptest::prelude::*;

/// A command described by small numbers, resolved against the state at the
/// time it is applied, so random streams hit real jobs and allocations.
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

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..4u8, 1..8u8, 1..8u8, 0..4u8, 0..3u8).prop_map(|(node, cpu, mem, gpus, incarnation)| {
            Op::Register {
                node,
                cpu,
                mem,
                gpus,
                incarnation,
            }
        }),
        (
            0..3u8,
            0..20u8,
            1..4u8,
            1..4u8,
            0..2u8,
            0..2u8,
            any::<bool>()
        )
            .prop_map(|(member, request, cpu, mem, gpus, retries, preemptible)| {
                Op::Submit {
                    member,
                    request,
                    cpu,
                    mem,
                    gpus,
                    retries,
                    preemptible,
                }
            }),
        Just(Op::Schedule),
        any::<u8>().prop_map(|pick| Op::Start { pick }),
        (any::<u8>(), any::<bool>()).prop_map(|(pick, ok)| Op::Finish { pick, ok }),
        (0..4u8).prop_map(|node| Op::Lost { node }),
        any::<u8>().prop_map(|pick| Op::Cancel { pick }),
    ]
}

fn to_command(state: &ClusterState, op: &Op, now_ms: u64) -> Command {
    let pick_alloc = |pick: u8| -> Option<&Allocation> {
        let n = state.allocs.len();
        (n > 0).then(|| state.allocs.values().nth(pick as usize % n).unwrap())
    };
    match *op {
        Op::Register {
            node,
            cpu,
            mem,
            gpus,
            incarnation,
        } => Command::RegisterNode {
            node: NodeId::new(format!("n{node}")),
            owner: MemberId::new(format!("m{}", node % 3)),
            capacity: Resources::new(cpu as u64 * 1000, (mem as u64) << 30, gpus as u32),
            addr: "127.0.0.1:1".into(),
            incarnation: incarnation as u64,
            now_ms,
            gpus: vec![],
        },
        Op::Submit {
            member,
            request,
            cpu,
            mem,
            gpus,
            retries,
            preemptible,
        } => {
            let mut spec = JobSpec::command(
                vec!["true".into()],
                Resources::new(cpu as u64 * 1000, (mem as u64) << 30, gpus as u32),
            );
            spec.max_retries = retries as u32;
            spec.preemptible = preemptible;
            Command::Submit {
                request_id: format!("r{request}"),
                member: MemberId::new(format!("m{member}")),
                spec,
                now_ms,
            }
        }
        Op::Schedule => Command::Schedule { now_ms },
        Op::Start { pick } => match pick_alloc(pick) {
            Some(a) => Command::AllocStarted {
                alloc: a.id,
                node: a.node.clone(),
                now_ms,
            },
            None => Command::Schedule { now_ms },
        },
        Op::Finish { pick, ok } => match pick_alloc(pick) {
            Some(a) => Command::AllocFinished {
                alloc: a.id,
                node: a.node.clone(),
                exit: ExitStatus {
                    code: Some(if ok { 0 } else { 1 }),
                    signal: None,
                    error: String::new(),
                },
                now_ms,
            },
            None => Command::Schedule { now_ms },
        },
        Op::Lost { node } => {
            let id = NodeId::new(format!("n{node}"));
            let incarnation = state.nodes.get(&id).map(|n| n.incarnation).unwrap_or(0);
            Command::NodeLost {
                node: id,
                incarnation,
                now_ms,
            }
        }
        Op::Cancel { pick } => {
            let n = state.jobs.len().max(1) as u64;
            let job = JobId(pick as u64 % n + 1);
            let member = state
                .jobs
                .get(&job)
                .map(|j| j.member.clone())
                .unwrap_or(MemberId::new("m0"));
            Command::Cancel {
                job,
                member,
                now_ms,
            }
        }
    }
}

/// Applies the ops, checking the invariants after every step; returns the
/// commands it applied so the run can be replayed.
fn run(ops: &[Op]) -> (ClusterState, Vec<Command>) {
    let mut state = ClusterState::new();
    let mut log = Vec::new();
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
    for node in state.nodes.values() {
        let allocs: Vec<&Allocation> = node.allocs.iter().map(|a| &state.allocs[a]).collect();
        let sum = allocs
            .iter()
            .fold(Resources::ZERO, |acc, a| acc.saturating_add(&a.resources));
        assert_eq!(
            node.allocated, sum,
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
    for a in state.allocs.values() {
        *live_per_job.entry(a.job).or_default() += 1;
        assert!(state.nodes[&a.node].allocs.contains(&a.id));
    }
    for (job, count) in live_per_job {
        assert_eq!(count, 1, "job {job} has {count} live allocations");
    }
    for job in state.jobs.values() {
        assert_eq!(
            job.state == JobState::Pending,
            state.pending.contains(&job.id)
        );
        if let Some(a) = job.alloc {
            assert_eq!(state.allocs[&a].job, job.id);
        }
    }
    for (member, requests) in &state.requests {
        for job in requests.values() {
            assert_eq!(&state.jobs[job].member, member);
        }
    }
    let requests: usize = state.requests.values().map(|r| r.len()).sum();
    assert_eq!(
        requests,
        state.jobs.len(),
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

    #[test]
    fn scheduling_its_own_output_changes_nothing(ops in proptest::collection::vec(op(), 1..80)) {
        let (mut state, _) = run(&ops);
        state.apply(&Command::Schedule { now_ms: 1_000_000 }).unwrap();
        let once = state.clone();
        let again = state.apply(&Command::Schedule { now_ms: 1_000_000 }).unwrap();
        prop_assert_eq!(again, Outcome::Scheduled { placements: vec![], preemptions: vec![] });
        prop_assert_eq!(&state, &once);
        // Work conserving: after a pass no pending job fits in what is free
        // on a ready node (no cap in these policies, so no rule holds one).
        for id in &state.pending {
            let want = state.jobs[id].spec.resources;
            for node in state.nodes.values().filter(|n| n.state == NodeState::Ready) {
                let fits = want.fits_in(&node.free()) && state.free_gpu_indices(node).len() >= want.gpus as usize;
                prop_assert!(!fits, "job {} waits though it fits on {}", id, node.id);
            }
        }
    }
}
