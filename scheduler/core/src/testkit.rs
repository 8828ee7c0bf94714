//! Deterministic members for tests, benchmarks and examples: keys derived
//! from names, a genesis listing them, and signed requests. Behind the
//! `testkit` feature; a key anyone can derive from a name is never a real
//! member's.

use sha2::{Digest, Sha256};

use crate::command::{Command, ExitStatus, Founder};
use crate::identity::{MemberRequest, NodeReport, SecretKey};
use crate::ids::{AllocId, JobId, MemberId, NodeId};
use crate::job::JobSpec;
use crate::node::{GpuInfo, NodeEngines};
use crate::policy::Policy;
use crate::resources::Resources;
use crate::result::JobResult;

/// The cluster id tests use.
pub const CLUSTER: &str = "test-cluster";

/// The same key for the same name, always.
pub fn secret(name: &str) -> SecretKey {
    let seed: [u8; 32] = Sha256::digest(format!("coop-testkit:{name}")).into();
    SecretKey::from_bytes(&seed)
}

pub fn founders(names: &[&str]) -> Vec<Founder> {
    names
        .iter()
        .map(|n| Founder {
            name: MemberId::new(*n),
            key: secret(n).public_key(),
        })
        .collect()
}

/// Genesis of `CLUSTER` with these founders and this policy.
pub fn genesis(names: &[&str], policy: Policy, now_ms: u64) -> Command {
    Command::Genesis {
        cluster_id: CLUSTER.into(),
        policy,
        members: founders(names),
        now_ms,
    }
}

/// The env salt a testkit member derives for a request (as the CLI does
/// from its secret key).
pub fn env_salt(member: &str, request_id: &str) -> crate::job::EnvSalt {
    let h: [u8; 32] = Sha256::digest(format!("coop-testkit-salt:{member}:{request_id}")).into();
    crate::job::EnvSalt(h[..16].try_into().expect("16 of 32 bytes"))
}

/// A submit signed by `member`'s testkit key, issued at `now_ms`; its env
/// values travel privately, committed to in what the member signs.
pub fn submit(member: &str, request_id: &str, spec: JobSpec, now_ms: u64) -> Command {
    let m = MemberId::new(member);
    let salt = env_salt(member, request_id);
    let auth = secret(member).sign_request(
        CLUSTER,
        &m,
        request_id,
        now_ms,
        &MemberRequest::Submit {
            spec: &spec.committed(&salt),
        },
    );
    Command::Submit {
        request_id: request_id.into(),
        member: m,
        spec,
        auth,
        now_ms,
        env_salt: Some(salt),
    }
}

/// A cancel signed by `member`'s testkit key, issued at `now_ms`.
pub fn cancel(member: &str, request_id: &str, job: JobId, now_ms: u64) -> Command {
    let m = MemberId::new(member);
    let auth = secret(member).sign_request(
        CLUSTER,
        &m,
        request_id,
        now_ms,
        &MemberRequest::Cancel { job },
    );
    Command::Cancel {
        job,
        member: m,
        request_id: request_id.into(),
        auth,
        now_ms,
    }
}

/// `member` cancels every unfinished job of `job`'s array, signed with its key.
pub fn cancel_array(member: &str, request_id: &str, job: JobId, now_ms: u64) -> Command {
    let m = MemberId::new(member);
    let auth = secret(member).sign_request(
        CLUSTER,
        &m,
        request_id,
        now_ms,
        &MemberRequest::CancelArray { job },
    );
    Command::CancelArray {
        job,
        member: m,
        request_id: request_id.into(),
        auth,
        now_ms,
    }
}

/// A read credential of `member`'s testkit key, issued at `now_ms`.
pub fn read(member: &str, now_ms: u64) -> crate::identity::Auth {
    secret(member).sign_read(CLUSTER, &MemberId::new(member), now_ms)
}

/// A node's key, derived from its name like a member's.
pub fn node_secret(node: &str) -> SecretKey {
    let seed: [u8; 32] = Sha256::digest(format!("coop-testkit-node:{node}")).into();
    SecretKey::from_bytes(&seed)
}

/// `owner` authorizes `node`'s testkit key, issued at `now_ms`.
pub fn add_node(owner: &str, node: &str, now_ms: u64) -> Command {
    let (m, n) = (MemberId::new(owner), NodeId::new(node));
    let key = node_secret(node).public_key();
    let request_id = format!("add-node-{node}");
    let auth = secret(owner).sign_request(
        CLUSTER,
        &m,
        &request_id,
        now_ms,
        &MemberRequest::AddNode {
            node: &n,
            key: &key,
        },
    );
    Command::AddNode {
        node: n,
        member: m,
        key,
        request_id,
        auth,
        now_ms,
    }
}

/// `node` registers as `owner`'s, signed with its testkit key.
pub fn register(
    node: &str,
    owner: &str,
    capacity: Resources,
    incarnation: u64,
    gpus: Vec<GpuInfo>,
    now_ms: u64,
) -> Command {
    register_with_engines(
        node,
        owner,
        capacity,
        incarnation,
        gpus,
        NodeEngines::default(),
        now_ms,
    )
}

/// `register`, for a worker that offers `engines` beyond tract.
pub fn register_with_engines(
    node: &str,
    owner: &str,
    capacity: Resources,
    incarnation: u64,
    gpus: Vec<GpuInfo>,
    engines: NodeEngines,
    now_ms: u64,
) -> Command {
    let (n, owner) = (NodeId::new(node), MemberId::new(owner));
    let addr = "127.0.0.1:1".to_string();
    let auth = node_secret(node).sign_node_report(
        CLUSTER,
        &n,
        incarnation,
        now_ms,
        &NodeReport::Register {
            owner: &owner,
            capacity: &capacity,
            addr: &addr,
            gpus: &gpus,
            engines: &engines,
        },
    );
    Command::RegisterNode {
        node: n,
        owner,
        capacity,
        addr,
        incarnation,
        now_ms,
        gpus,
        engines,
        auth,
    }
}

/// `node` reports that `alloc` started, signed with its testkit key.
pub fn started(alloc: AllocId, node: &NodeId, now_ms: u64) -> Command {
    let auth = node_secret(node.as_str()).sign_node_report(
        CLUSTER,
        node,
        1,
        now_ms,
        &NodeReport::Started { alloc },
    );
    Command::AllocStarted {
        alloc,
        node: node.clone(),
        incarnation: 1,
        auth,
        now_ms,
    }
}

/// `node` reports that `alloc` ended, signed with its testkit key.
pub fn finished(
    alloc: AllocId,
    node: &NodeId,
    exit: ExitStatus,
    result: Option<JobResult>,
    now_ms: u64,
) -> Command {
    finished_in(alloc, node, 1, exit, result, now_ms)
}

/// The same from the node's given incarnation.
pub fn finished_in(
    alloc: AllocId,
    node: &NodeId,
    incarnation: u64,
    exit: ExitStatus,
    result: Option<JobResult>,
    now_ms: u64,
) -> Command {
    let auth = node_secret(node.as_str()).sign_node_report(
        CLUSTER,
        node,
        incarnation,
        now_ms,
        &NodeReport::Finished {
            alloc,
            exit: &exit,
            result: result.as_ref(),
        },
    );
    Command::AllocFinished {
        alloc,
        node: node.clone(),
        exit,
        now_ms,
        result,
        incarnation,
        auth,
    }
}

/// A proposal signed by `member`'s testkit key, issued at `now_ms`.
pub fn propose(
    member: &str,
    request_id: &str,
    kind: crate::governance::ProposalKind,
    now_ms: u64,
) -> Command {
    let m = MemberId::new(member);
    let auth = secret(member).sign_request(
        CLUSTER,
        &m,
        request_id,
        now_ms,
        &MemberRequest::Propose { kind: &kind },
    );
    Command::Propose {
        member: m,
        request_id: request_id.into(),
        kind,
        auth,
        now_ms,
    }
}

/// A vote signed by `member`'s testkit key, issued at `now_ms`.
pub fn vote(member: &str, request_id: &str, proposal: u64, yes: bool, now_ms: u64) -> Command {
    let m = MemberId::new(member);
    let auth = secret(member).sign_request(
        CLUSTER,
        &m,
        request_id,
        now_ms,
        &MemberRequest::Vote { proposal, yes },
    );
    Command::Vote {
        member: m,
        request_id: request_id.into(),
        proposal,
        yes,
        auth,
        now_ms,
    }
}

/// Brings the log's time to `to_ms` the way a leader catches up after a
/// quiet spell: one `Schedule` per `MAX_STEP_MS`.
pub fn advance(state: &mut crate::ClusterState, to_ms: u64) {
    while state.now_ms() < to_ms {
        state
            .apply(&Command::Schedule { now_ms: to_ms })
            .expect("a pass is always taken");
    }
}

/// The benchmarks' cluster: `nodes` nodes of 64 cores and 256 GiB (every
/// 4th with 8 GPUs) owned round-robin by `members` members, and `jobs`
/// pending jobs of 1-8 cores, 2-32 GiB, one in five asking for 1-2 GPUs,
/// half preemptible, from a fixed xorshift mix (the same state every run).
pub fn bench_cluster(nodes: usize, members: usize, jobs: usize) -> crate::ClusterState {
    const GIB: u64 = 1 << 30;
    let names: Vec<String> = (0..members).map(|m| format!("member-{m:04}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut s = crate::ClusterState::new();
    s.apply(&genesis(&names, Policy::default(), 0))
        .expect("genesis applies");
    for n in 0..nodes {
        let gpus = if n % 4 == 0 { 8 } else { 0 };
        let owner = format!("member-{:04}", n % members);
        let node = format!("node-{n:05}");
        s.apply(&add_node(&owner, &node, 0))
            .and_then(|_| {
                s.apply(&register(
                    &node,
                    &owner,
                    Resources::new(64_000, 256 * GIB, gpus),
                    1,
                    vec![],
                    0,
                ))
            })
            .expect("a node joins");
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for j in 0..jobs {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let cpu = 1000 * (1 + x % 8);
        let mem = GIB * (2 + (x >> 8) % 31);
        let gpus = if (x >> 16).is_multiple_of(5) {
            1 + ((x >> 20) % 2) as u32
        } else {
            0
        };
        let mut spec = JobSpec::command(
            vec!["python".into(), "eval.py".into()],
            Resources::new(cpu, mem, gpus),
        );
        spec.preemptible = (x >> 24).is_multiple_of(2);
        let member = format!("member-{:04}", (x >> 32) as usize % members);
        s.apply(&submit(&member, &format!("r{j}"), spec, 1_000))
            .expect("a submit applies");
    }
    s
}
