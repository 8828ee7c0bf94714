//! Chaos with the real binaries: three `coop-scheduler` processes and two
//! `coop-worker` processes on loopback, with TLS, under a load of submits,
//! while the leader, followers and workers are killed (SIGKILL) and paused
//! (SIGSTOP, then SIGCONT) and restarted. The invariants are checked from
//! outside, through the API and the jobs' own records:
//!
//! - every acknowledged submit is there, and its request id still names it;
//! - no two runs of one job overlap in time (each run appends its start and
//!   a heartbeat to a file of its own);
//! - once the faults stop, a leader emerges, every job ends, and the
//!   replicas agree: same applied index, state digest and log root.
//!
//! The schedule of faults comes from a seed (`COOP_CHAOS_SEED`, printed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use coop_e2e::{Proc, StateName};
use coop_proto::api::{ClusterStatusRequest, JobSpec, Resources};

/// The longest anything here waits for the cluster to come back.
const LIMIT: Duration = Duration::from_secs(120);

fn scheduler_bin() -> PathBuf {
    coop_e2e::worker_bin().with_file_name("coop-e2e-scheduler")
}

struct Replicas {
    dir: PathBuf,
    addrs: Vec<String>,
    procs: Vec<Option<Proc>>,
}

impl Replicas {
    fn start(dir: &Path) -> Self {
        let addrs: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", coop_e2e::free_port()))
            .collect();
        let mut r = Replicas {
            dir: dir.to_path_buf(),
            addrs,
            procs: (0..3).map(|_| None).collect(),
        };
        for i in 0..3 {
            let tls = dir.join(format!("tls-{i}"));
            std::fs::create_dir_all(&tls).unwrap();
            coop_scheduler::local::issue(coop_e2e::test_ca(), &tls).unwrap();
            r.spawn(i);
        }
        r
    }

    fn spawn(&mut self, i: usize) {
        let peers: Vec<String> = self
            .addrs
            .iter()
            .enumerate()
            .map(|(j, a)| format!("{}={a}", j + 1))
            .collect();
        let members: Vec<String> = coop_e2e::MEMBERS
            .iter()
            .map(|m| format!("{m}={}", coop_core::testkit::secret(m).public_key()))
            .collect();
        let mut cmd = Command::new(scheduler_bin());
        cmd.arg("--id")
            .arg((i + 1).to_string())
            .arg("--listen")
            .arg(&self.addrs[i])
            .arg("--peers")
            .arg(peers.join(","))
            .arg("--data-dir")
            .arg(self.dir.join(format!("data-{i}")))
            .arg("--tls-dir")
            .arg(self.dir.join(format!("tls-{i}")))
            .arg("--cluster-id")
            .arg(coop_core::testkit::CLUSTER)
            .arg("--member")
            .arg(members.join(","))
            .env("RUST_LOG", "error")
            .stdout(Stdio::null());
        if i == 0 {
            cmd.arg("--init");
        }
        self.procs[i] = Some(Proc(cmd.spawn().expect("start coop-scheduler")));
    }

    fn pid(&self, i: usize) -> Option<i32> {
        self.procs[i].as_ref().map(|p| p.0.id() as i32)
    }

    /// The replica the others follow, by its own answer.
    async fn leader(&self) -> Option<usize> {
        for (i, addr) in self.addrs.iter().enumerate() {
            if self.procs[i].is_none() {
                continue;
            }
            let mut c = coop_e2e::client(addr);
            let ask = c.cluster_status(ClusterStatusRequest {});
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(500), ask).await {
                let r = r.into_inner();
                if r.leader_id == Some(r.answered_by) {
                    return Some(i);
                }
            }
        }
        None
    }
}

fn signal(pid: Option<i32>, sig: i32) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) on a child of this process; no memory is shared.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// A tiny deterministic generator for the fault schedule.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A job that records its start and a heartbeat every 50 ms for about a
/// second in `records/TAG`, then ends.
fn recording_job(records: &Path, tag: &str) -> JobSpec {
    let script = format!(
        "f={}/{tag}; echo start $(date +%s%N) >> $f; i=0; while [ $i -lt 20 ]; do echo alive $(date +%s%N) >> $f; sleep 0.05; i=$((i+1)); done",
        records.display()
    );
    JobSpec {
        argv: vec!["sh".into(), "-c".into(), script],
        resources: Some(Resources {
            cpu_millis: 250,
            memory_bytes: 16 << 20,
            gpus: 0,
        }),
        max_retries: 10,
        ..Default::default()
    }
}

/// Submits through any replica, retrying what is retryable with the same
/// request id; the job id, or None if no replica took it in time.
async fn submit(addrs: &[String], request_id: &str, spec: &JobSpec) -> Option<u64> {
    let req = coop_e2e::submit_request("ana", request_id, spec.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    while tokio::time::Instant::now() < deadline {
        let mut c = coop_e2e::client(&addrs[i % addrs.len()]);
        let call = c.submit(req.clone());
        match tokio::time::timeout(Duration::from_secs(3), call).await {
            Ok(Ok(r)) => return Some(r.into_inner().job_id),
            // Refused by a replica (not for want of a leader, nor a broken
            // connection or a deadline): a real error.
            Ok(Err(s))
                if s.code() != tonic::Code::Unavailable
                    && !coop_proto::status::broke(&s)
                    && !coop_proto::status::timed_out(&s) =>
            {
                panic!("submit {request_id}: {s}")
            }
            _ => {}
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Each run's [start, last heartbeat] in a job's record, in order.
fn runs(record: &str) -> Vec<(u128, u128)> {
    let mut out: Vec<(u128, u128)> = Vec::new();
    for line in record.lines() {
        let mut parts = line.split_whitespace();
        let (Some(what), Some(t)) = (parts.next(), parts.next().and_then(|t| t.parse().ok()))
        else {
            continue;
        };
        match what {
            "start" => out.push((t, t)),
            "alive" => {
                if let Some(last) = out.last_mut() {
                    last.1 = last.1.max(t);
                }
            }
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_invariants_hold_through_kills_and_pauses_of_the_real_binaries() {
    let seed: u64 = std::env::var("COOP_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    println!(
        "chaos seed {seed} (replay: COOP_CHAOS_SEED={seed} cargo test -p coop-e2e --test chaos)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let records = tmp.path().join("records");
    std::fs::create_dir_all(&records).unwrap();
    let mut replicas = Replicas::start(tmp.path());
    let addrs = replicas.addrs.clone();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while replicas.leader().await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no leader at start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut workers: Vec<(String, PathBuf, Option<Proc>)> = Vec::new();
    for node in ["w1", "w2"] {
        let work = tmp.path().join(node);
        std::fs::create_dir_all(&work).unwrap();
        coop_e2e::add_node(&addrs, "ana", node).await;
        let p = coop_e2e::worker(node, "ana", "2", &addrs, &work)
            .stdout(Stdio::null())
            .spawn()
            .expect("start coop-worker");
        workers.push((node.to_string(), work, Some(Proc(p))));
    }

    // The load: a submit every 100 ms for the whole run of faults.
    let load = {
        let addrs = addrs.clone();
        let records = records.clone();
        tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            for n in 0..120 {
                let tag = format!("c{n}");
                if let Some(id) = submit(&addrs, &tag, &recording_job(&records, &tag)).await {
                    acked.insert(tag, id);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            acked
        })
    };

    // The faults.
    let mut rng = Lcg(seed);
    for round in 0..8 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let leader = replicas.leader().await;
        let fault = rng.below(5);
        match (fault, leader) {
            (0, Some(l)) => {
                println!("round {round}: SIGKILL the leader, replica {}", l + 1);
                replicas.procs[l] = None;
                tokio::time::sleep(Duration::from_millis(1000)).await;
                replicas.spawn(l);
            }
            (1, Some(l)) => {
                println!(
                    "round {round}: SIGSTOP the leader, replica {}, for 2 s",
                    l + 1
                );
                signal(replicas.pid(l), libc::SIGSTOP);
                tokio::time::sleep(Duration::from_secs(2)).await;
                signal(replicas.pid(l), libc::SIGCONT);
            }
            (2, Some(l)) => {
                let f = (l + 1 + rng.below(2) as usize) % 3;
                println!("round {round}: SIGKILL follower replica {}, then SIGSTOP it after its restart for 1 s", f + 1);
                replicas.procs[f] = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
                replicas.spawn(f);
                tokio::time::sleep(Duration::from_millis(500)).await;
                signal(replicas.pid(f), libc::SIGSTOP);
                tokio::time::sleep(Duration::from_secs(1)).await;
                signal(replicas.pid(f), libc::SIGCONT);
            }
            (3, _) => {
                let w = rng.below(2) as usize;
                println!(
                    "round {round}: SIGKILL worker {}, restart after 1 s",
                    workers[w].0
                );
                workers[w].2 = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let p = coop_e2e::worker(&workers[w].0, "ana", "2", &addrs, &workers[w].1)
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("restart coop-worker");
                workers[w].2 = Some(Proc(p));
            }
            _ => {
                let w = rng.below(2) as usize;
                println!("round {round}: SIGSTOP worker {} for 3 s", workers[w].0);
                let pid = workers[w].2.as_ref().map(|p| p.0.id() as i32);
                signal(pid, libc::SIGSTOP);
                tokio::time::sleep(Duration::from_secs(3)).await;
                signal(pid, libc::SIGCONT);
            }
        }
    }
    let acked = load.await.unwrap();
    println!("{} submits acknowledged", acked.len());
    assert!(!acked.is_empty());

    // Faults over: a leader emerges and every job ends.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while replicas.leader().await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader after the faults"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut rerun = 0;
    for (tag, id) in &acked {
        let job = coop_e2e::wait_job(&addrs, *id, coop_e2e::ended).await;
        // No acknowledged submit is lost, and its request id still names it.
        assert_eq!(&job.request_id, tag, "job {id}");
        assert_eq!(
            submit(&addrs, tag, &recording_job(&records, tag)).await,
            Some(*id)
        );
        *outcomes.entry(job.state_name()).or_default() += 1;
        // No two runs of one job overlap.
        let record = std::fs::read_to_string(records.join(tag)).unwrap_or_default();
        let runs = runs(&record);
        rerun += usize::from(runs.len() > 1);
        for pair in runs.windows(2) {
            assert!(
                pair[0].1 < pair[1].0,
                "job {id} ({tag}): a run started at {} while the one started at {} was alive until {}",
                pair[1].0,
                pair[0].0,
                pair[0].1
            );
        }
    }
    println!("outcomes: {outcomes:?}; jobs run more than once: {rerun}");

    // The replicas agree once they have applied the same entries.
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let mut seen = Vec::new();
        for addr in &addrs {
            let mut c = coop_e2e::client(addr);
            if let Ok(r) = c.cluster_status(ClusterStatusRequest {}).await {
                let r = r.into_inner();
                seen.push((r.applied_index, r.state_digest, r.log_root));
            }
        }
        if seen.len() == 3 && seen.iter().all(|s| s.0 == seen[0].0) {
            assert!(
                seen.iter().all(|s| s == &seen[0]),
                "replicas at one applied index differ: {seen:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replicas never reached one applied index: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(workers);
    drop(replicas);
}

/// The overlap check sees a run that started while another was alive.
#[test]
fn runs_are_read_from_a_record() {
    let record = "start 10\nalive 20\nalive 30\nstart 25\nalive 40\n";
    assert_eq!(runs(record), vec![(10, 30), (25, 40)]);
    assert!(runs(record).windows(2).any(|p| p[0].1 >= p[1].0));
}
