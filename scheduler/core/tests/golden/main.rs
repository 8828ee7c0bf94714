//! Golden scenarios: each file under `scheduler/core/testdata/` gives a
//! cluster, a list of commands, and the decisions and `why` text expected,
//! in the style of etcd-raft's and raft-rs's data-driven tests.
//!
//! After an intended change of behaviour, regenerate the expected output
//! with `REWRITE=1 cargo test -p coop-core --test golden` and review the diff.
//!
//! Directives (every one takes an optional `at=MS`, the log's time; the
//! time otherwise stays where the last directive left it):
//!
//! ```text
//! genesis members=(ana,bea,...)   input: the genesis policy's TOML; founds the
//!                   cluster with those members (testkit keys)
//! node id= owner= [gpus=] [cpu=] [mem=] [gpu-model=] [gpu-mem=] [incarnation=]
//!      [engines=onnxruntime|cuda]   ONNX Runtime (with its CUDA provider) besides tract
//! submit member= [n=] [gpus=] [cpu=] [mem=] [preemptible] [gpu-model=] [gpu-mem=] [timeout=SECS]
//!      [engine=auto|tract|onnxruntime]   a model (inference) job on that engine
//! schedule          one pass: every placement and preemption, with its rule
//! start job=        the worker reports the job's allocation started
//! finish job= [exit=]   ... and ended (exit code, 0 by default)
//! lost node=        the node missed its heartbeats
//! cancel job= member=   signed by that member's key
//! forge member= as=     a submit in `member`'s name signed with `as`'s key
//! why job=          the explanation `coop why` prints
//! share             entitlement, its parts, and the share of each member with demand
//! held              what each member holds, in GPUs, CPUs and memory
//! keys              each member with demand's ordering key and its parts
//! reservations      the rooms a pass now holds for large jobs
//! ```

use coop_core::resources::{format_bytes, format_cpu, parse_bytes, parse_cpu};
use coop_core::testkit;
use coop_core::*;
use datadriven::{walk, TestCase};

struct Scenario {
    state: ClusterState,
    now_ms: u64,
    requests: u64,
}

fn arg(tc: &TestCase, name: &str) -> Option<String> {
    tc.args.get(name).and_then(|v| v.first()).cloned()
}

fn num(tc: &TestCase, name: &str, default: u64) -> u64 {
    arg(tc, name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

fn flag(tc: &TestCase, name: &str) -> bool {
    tc.args.contains_key(name)
}

fn bytes(tc: &TestCase, name: &str, default: u64) -> u64 {
    arg(tc, name).map_or(default, |v| parse_bytes(&v).expect("a memory amount"))
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

impl Scenario {
    fn new() -> Self {
        Self {
            state: ClusterState::new(),
            now_ms: 0,
            requests: 0,
        }
    }

    fn apply(&mut self, cmd: Command) -> Result<Outcome, CoreError> {
        self.state.apply(&cmd)
    }

    fn run(&mut self, tc: &TestCase) -> String {
        self.now_ms = num(tc, "at", self.now_ms);
        let out = match tc.directive.as_str() {
            "genesis" => self.genesis(tc),
            "forge" => self.forge(tc),
            "node" => self.node(tc),
            "submit" => self.submit(tc),
            "schedule" => self.schedule(),
            "start" => self.report(tc, false),
            "finish" => self.report(tc, true),
            "lost" => self.lost(tc),
            "cancel" => self.cancel(tc),
            "why" => self.why(tc),
            "share" => self.share(),
            "held" => self.held(),
            "keys" => self.keys(),
            "reservations" => self.reservations(),
            other => panic!("unknown directive {other}"),
        };
        format!("{}\n", out.trim_end())
    }

    fn genesis(&mut self, tc: &TestCase) -> String {
        let policy = match Policy::from_toml(&tc.input) {
            Ok(p) => p,
            Err(e) => return format!("error: {e}"),
        };
        let members: Vec<&str> = tc
            .args
            .get("members")
            .expect("members=(...)")
            .iter()
            .map(String::as_str)
            .collect();
        match self.apply(testkit::genesis(&members, policy, self.now_ms)) {
            Ok(Outcome::PolicyAdopted { version }) => format!("adopted policy v{version}"),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("error: {e}"),
        }
    }

    fn node(&mut self, tc: &TestCase) -> String {
        let gpus = num(tc, "gpus", 0) as u32;
        let cpu = arg(tc, "cpu").map_or(u64::from(gpus.max(1)) * 8000, |c| {
            parse_cpu(&c).expect("a cpu amount")
        });
        let mem = bytes(tc, "mem", u64::from(gpus.max(1)) * (32 << 30));
        let inventory: Vec<GpuInfo> = match arg(tc, "gpu-model") {
            Some(model) => (0..gpus)
                .map(|index| GpuInfo {
                    index,
                    uuid: String::new(),
                    model: model.clone(),
                    memory_bytes: bytes(tc, "gpu-mem", 16 << 30),
                })
                .collect(),
            None => Vec::new(),
        };
        let node = arg(tc, "id").expect("id=");
        let owner = arg(tc, "owner").expect("owner=");
        // Its owner authorizes the node's key first, as `coop node add` does.
        if !self
            .state
            .node_grants()
            .contains_key(&NodeId::new(node.clone()))
        {
            if let Err(e) = self.apply(testkit::add_node(&owner, &node, self.now_ms)) {
                return format!("error: {e}");
            }
        }
        let engines = match arg(tc, "engines").as_deref() {
            None => NodeEngines::default(),
            Some(e) => NodeEngines {
                onnxruntime: Some("1.23.2".into()),
                cuda: e == "cuda",
            },
        };
        match self.apply(testkit::register_with_engines(
            &node,
            &owner,
            Resources::new(cpu, mem, gpus),
            num(tc, "incarnation", 1),
            inventory,
            engines,
            self.now_ms,
        )) {
            Ok(Outcome::NodeRegistered { requeued, .. }) if requeued.is_empty() => {
                format!("registered {node}")
            }
            Ok(Outcome::NodeRegistered { requeued, .. }) => {
                format!("registered {node}; requeued {}", ids(&requeued))
            }
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("error: {e}"),
        }
    }

    fn submit(&mut self, tc: &TestCase) -> String {
        let member = arg(tc, "member").expect("member=");
        let resources = Resources::new(
            arg(tc, "cpu").map_or(1000, |c| parse_cpu(&c).expect("a cpu amount")),
            bytes(tc, "mem", 4 << 30),
            num(tc, "gpus", 0) as u32,
        );
        let mut jobs = Vec::new();
        for _ in 0..num(tc, "n", 1) {
            let mut spec = JobSpec::command(vec!["work".into()], resources);
            if let Some(engine) = arg(tc, "engine") {
                let artifact = |uri: &str| Artifact {
                    uri: uri.into(),
                    sha256: None,
                };
                spec.kind = JobKind::Inference {
                    model: artifact("model.onnx"),
                    input: artifact("rows.csv"),
                    output: "out.npy".into(),
                    options: ModelOptions {
                        engine: Engine::parse(&engine).expect("auto, tract or onnxruntime"),
                        ..ModelOptions::default()
                    },
                };
            }
            spec.preemptible = flag(tc, "preemptible");
            spec.timeout_secs = arg(tc, "timeout").map(|_| num(tc, "timeout", 0));
            spec.gpu_model = arg(tc, "gpu-model");
            spec.gpu_min_memory_bytes = arg(tc, "gpu-mem").map(|_| bytes(tc, "gpu-mem", 0));
            self.requests += 1;
            let request_id = format!("r{}", self.requests);
            match self.apply(testkit::submit(&member, &request_id, spec, self.now_ms)) {
                Ok(Outcome::Submitted { job, .. }) => jobs.push(job),
                Ok(other) => return format!("{other:?}"),
                Err(e) => return format!("error: {e}"),
            }
        }
        format!("submitted {}", ids(&jobs))
    }

    fn forge(&mut self, tc: &TestCase) -> String {
        let member = MemberId::new(arg(tc, "member").expect("member="));
        let signer = arg(tc, "as").expect("as=");
        let spec = JobSpec::command(vec!["work".into()], Resources::new(1000, 1 << 30, 0));
        let Command::Submit { auth, .. } =
            testkit::submit(&signer, "forged", spec.clone(), self.now_ms)
        else {
            unreachable!("testkit::submit makes a submit")
        };
        let forged = Command::Submit {
            request_id: "forged".into(),
            member,
            spec,
            auth,
            now_ms: self.now_ms,
            env_salt: None,
        };
        match self.apply(forged) {
            Ok(other) => format!("accepted: {other:?}"),
            Err(e) => format!("error: {e}"),
        }
    }

    fn member_of(&self, job: JobId) -> String {
        self.state
            .job(job)
            .map_or("?".into(), |j| j.member.to_string())
    }

    fn schedule(&mut self) -> String {
        let outcome = self.apply(Command::Schedule {
            now_ms: self.now_ms,
        });
        let (placements, preemptions) = match outcome {
            Ok(Outcome::Scheduled {
                placements,
                preemptions,
            }) => (placements, preemptions),
            Ok(other) => return format!("{other:?}"),
            Err(e) => return format!("error: {e}"),
        };
        let mut lines = Vec::new();
        for p in &placements {
            lines.push(format!(
                "place job {} of {} on {} by {}",
                p.job,
                self.member_of(p.job),
                p.node,
                p.rule
            ));
        }
        for p in &preemptions {
            let node = &self.state.allocs()[&p.alloc].node;
            lines.push(format!(
                "preempt job {} of {} on {} for job {} of {} by {}",
                p.job,
                p.victim,
                node,
                p.for_job,
                self.member_of(p.for_job),
                p.rule
            ));
        }
        if lines.is_empty() {
            "nothing to do".into()
        } else {
            lines.join("\n")
        }
    }

    fn live_alloc(&self, job: JobId) -> Option<(AllocId, NodeId)> {
        let alloc = self.state.job(job)?.alloc?;
        Some((alloc, self.state.allocs().get(&alloc)?.node.clone()))
    }

    fn report(&mut self, tc: &TestCase, finished: bool) -> String {
        let job = JobId(num(tc, "job", 0));
        let Some((alloc, node)) = self.live_alloc(job) else {
            return format!("job {job} has no live allocation");
        };
        let cmd = if finished {
            let code = num(tc, "exit", 0) as i32;
            testkit::finished(
                alloc,
                &node,
                ExitStatus {
                    code: Some(code),
                    signal: None,
                    error: String::new(),
                },
                None,
                self.now_ms,
            )
        } else {
            testkit::started(alloc, &node, self.now_ms)
        };
        match self.apply(cmd) {
            Ok(_) => format!(
                "job {job} is {}",
                self.state.job(job).map_or("gone", |j| j.state().as_str())
            ),
            Err(e) => format!("error: {e}"),
        }
    }

    fn lost(&mut self, tc: &TestCase) -> String {
        let node = NodeId::new(arg(tc, "node").expect("node="));
        let incarnation = self.state.nodes().get(&node).map_or(0, |n| n.incarnation);
        match self.apply(Command::NodeLost {
            node,
            incarnation,
            now_ms: self.now_ms,
        }) {
            Ok(Outcome::NodeLost {
                requeued, failed, ..
            }) => format!("requeued {}; failed {}", ids(&requeued), ids(&failed)),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("error: {e}"),
        }
    }

    fn cancel(&mut self, tc: &TestCase) -> String {
        let member = arg(tc, "member").expect("member=");
        self.requests += 1;
        let request_id = format!("r{}", self.requests);
        let job = JobId(num(tc, "job", 0));
        match self.apply(testkit::cancel(&member, &request_id, job, self.now_ms)) {
            Ok(Outcome::Cancelled { job, stopping }) => match stopping {
                Some(a) => format!("cancelled job {job}; stopping allocation {a}"),
                None => format!("cancelled job {job}"),
            },
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("error: {e}"),
        }
    }

    fn why(&self, tc: &TestCase) -> String {
        let job = JobId(num(tc, "job", 0));
        let Some(e) = self.state.explain(job) else {
            return format!("unknown job {job}");
        };
        if e.state != JobState::Pending {
            return format!("job {job} is {}", e.state);
        }
        let mut out = vec![
            format!(
                "job {job} of {}: position {} of {}; share {} of entitlement {} (policy v{})",
                e.member,
                e.queue_position,
                e.queue_length,
                pct(e.dominant_share),
                pct(e.entitlement),
                e.policy_version
            ),
            "because:".to_string(),
        ];
        out.extend(e.reasons.iter().map(|r| format!("- {r}")));
        if !e.would_start.is_empty() {
            out.push("it starts when:".into());
            out.extend(e.would_start.iter().map(|w| format!("- {w}")));
        }
        out.join("\n")
    }

    /// One line per member with demand.
    fn per_member(&self, line: impl Fn(&coop_core::fairshare::MemberShare) -> String) -> String {
        let shares = self.state.shares();
        let lines: Vec<String> = shares
            .members
            .values()
            .filter(|m| m.has_demand())
            .map(line)
            .collect();
        listing(lines, "no member has demand")
    }

    fn share(&self) -> String {
        self.per_member(|m| {
            format!(
                "{}: entitled {} (floor {} + contribution {}), dominant share {}, running {}, pending {}",
                m.member,
                pct(m.entitlement),
                pct(m.floor_part),
                pct(m.contribution_part),
                pct(m.dominant_share),
                m.running,
                m.pending
            )
        })
    }

    fn reservations(&self) -> String {
        let lines: Vec<String> = self
            .state
            .reservations()
            .iter()
            .map(|r| {
                format!(
                    "job {} of {} on {} from {} s (spare {})",
                    r.job,
                    r.member,
                    r.node,
                    r.start_ms / 1000,
                    r.spare
                )
            })
            .collect();
        listing(lines, "none")
    }

    fn keys(&self) -> String {
        self.per_member(|m| {
            format!(
                "{}: key {:.3} = (dominant {} + usage_weight * usage share {}) / entitlement {}",
                m.member,
                m.key,
                pct(m.dominant_share),
                pct(m.usage_share),
                pct(m.entitlement),
            )
        })
    }

    fn held(&self) -> String {
        let lines: Vec<String> = self
            .state
            .members()
            .values()
            .map(|m| {
                let a = m.allocated();
                format!(
                    "{}: {} gpus, {} cpus, {}",
                    m.id,
                    a.gpus,
                    format_cpu(a.cpu_millis),
                    format_bytes(a.memory_bytes)
                )
            })
            .collect();
        lines.join("\n")
    }
}

/// The lines, or what to say when there are none.
fn listing(lines: Vec<String>, none: &str) -> String {
    if lines.is_empty() {
        none.into()
    } else {
        lines.join("\n")
    }
}

fn ids(jobs: &[JobId]) -> String {
    if jobs.is_empty() {
        return "none".into();
    }
    jobs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn golden_scenarios() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");
    walk(dir, |f| {
        let mut scenario = Scenario::new();
        f.run(|tc| scenario.run(tc));
    });
}
