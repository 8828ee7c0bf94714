//! End to end over real sockets: 3 in-process scheduler replicas on
//! 127.0.0.1 with redb on disk, and `coop-worker` as a real process that
//! runs real jobs. No timing thresholds: every wait is for a condition,
//! bounded only so a broken build fails instead of hanging.

use coop_e2e::Proc;
use coop_e2e::StateName;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use coop_proto::api::*;
use coop_scheduler::Config;

const LIMIT: Duration = Duration::from_secs(60);

fn fast(c: &mut Config) {
    c.heartbeat_interval_ms = 100;
    c.heartbeat_timeout_ms = 1500;
}

async fn spawn_worker(node: &str, schedulers: &[String], work_dir: &Path, cpus: &str) -> Proc {
    coop_e2e::add_node(schedulers, "ana", node).await;
    let child = coop_e2e::worker(node, "ana", cpus, schedulers, work_dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("start coop-worker");
    Proc(child)
}

fn spec(argv: &[&str], cpu_millis: u64, retries: u32) -> JobSpec {
    JobSpec {
        name: String::new(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: Default::default(),
        resources: Some(Resources {
            cpu_millis,
            memory_bytes: 32 << 20,
            gpus: 0,
        }),
        max_retries: retries,
        preemptible: false,
        ..Default::default()
    }
}

/// Submits, retrying UNAVAILABLE on every given replica with the same request id.
async fn submit(addrs: &[String], member: &str, request_id: &str, spec: &JobSpec) -> u64 {
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut i = 0;
    loop {
        let mut c = coop_e2e::client(&addrs[i % addrs.len()]);
        let req = coop_e2e::submit_request(member, request_id, spec.clone());
        match c.submit(req).await {
            Ok(r) => return r.into_inner().job_id,
            Err(s) if s.code() == tonic::Code::InvalidArgument => panic!("rejected: {s}"),
            Err(_) if tokio::time::Instant::now() < deadline => {
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("submit never acknowledged: {s}"),
        }
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_runs_to_completion_and_its_logs_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(tmp.path(), 3, fast).await;
    let addrs = cluster.addrs();
    let _w = spawn_worker("w1", &addrs, &tmp.path().join("w1"), "2").await;
    let id = submit(
        &addrs,
        "ana",
        "r1",
        &spec(&["sh", "-c", "echo hello from $COOP_JOB_ID"], 500, 0),
    )
    .await;
    let j = coop_e2e::wait_job(&addrs, id, |j| {
        j.state_name() == "succeeded" || j.state_name() == "failed"
    })
    .await;
    assert_eq!(j.state_name(), "succeeded", "{j:?}");
    assert_eq!(j.node, "w1");
    // Logs come from the worker, through any replica (here a follower).
    let follower = cluster
        .replicas
        .iter()
        .flatten()
        .find(|r| !r.node.is_leader())
        .unwrap()
        .addr
        .clone();
    let logs = coop_e2e::client(&follower)
        .logs(LogsRequest {
            job_id: id,
            stream: "stdout".into(),
            offset: 0,
            max_bytes: 1024,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&logs.data),
        format!("hello from {id}\n")
    );
    // Another member may not read them, and the worker itself serves them
    // only to the job's member's own credential, not to whoever asks.
    let err = coop_e2e::client_as(&follower, Some("bo"))
        .logs(LogsRequest {
            job_id: id,
            stream: "stdout".into(),
            offset: 0,
            max_bytes: 1024,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let worker_addr = coop_e2e::client(&follower)
        .list_nodes(ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes
        .into_iter()
        .find(|n| n.id == "w1")
        .unwrap()
        .addr;
    let read = |member: &str, signer: &str| {
        let auth = coop_core::testkit::read(signer, coop_e2e::now_ms());
        coop_proto::worker::ReadLogsRequest {
            alloc_id: j.alloc_id,
            stream: "stdout".into(),
            offset: 0,
            max_bytes: 1024,
            member: member.into(),
            issued_at_ms: auth.issued_at_ms,
            signature: auth.signature.0.to_vec(),
        }
    };
    // TLS that only w1's node key can answer.
    let w1_key = coop_core::testkit::node_secret("w1").public_key().0;
    let agent = || {
        coop_proto::worker::worker_agent_client::WorkerAgentClient::new(
            coop_proto::tls::node_channel(&worker_addr, w1_key).unwrap(),
        )
    };
    // Someone expecting another node's key gets no connection: a worker
    // cannot be impersonated to a replica, nor the other way round.
    let impostor = coop_proto::tls::node_channel(
        &worker_addr,
        coop_core::testkit::node_secret("w2").public_key().0,
    )
    .unwrap();
    let err = coop_proto::worker::worker_agent_client::WorkerAgentClient::new(impostor)
        .read_logs(coop_proto::worker::ReadLogsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    // And plaintext gets nothing at all.
    let plain = tonic::transport::Channel::from_shared(format!("http://{worker_addr}"))
        .unwrap()
        .connect_lazy();
    assert!(
        coop_proto::worker::worker_agent_client::WorkerAgentClient::new(plain)
            .read_logs(coop_proto::worker::ReadLogsRequest::default())
            .await
            .is_err()
    );
    for (req, code) in [
        (
            coop_proto::worker::ReadLogsRequest {
                alloc_id: j.alloc_id,
                stream: "stdout".into(),
                ..Default::default()
            },
            tonic::Code::PermissionDenied,
        ),
        (read("bo", "bo"), tonic::Code::PermissionDenied),
        (read("ana", "bo"), tonic::Code::Unauthenticated),
    ] {
        let err = agent().read_logs(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{err}");
    }
    let own = agent().read_logs(read("ana", "ana")).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&own.get_ref().data),
        format!("hello from {id}\n")
    );
    // Bad input changes nothing.
    let mut c = coop_e2e::client(&addrs[0]);
    let before = c
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs
        .len();
    let empty = c
        .submit(coop_e2e::submit_request("ana", "bad", spec(&[], 500, 0)))
        .await
        .unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    let huge = c
        .submit(coop_e2e::submit_request(
            "ana",
            "huge",
            spec(&["true"], 64_000_000, 0),
        ))
        .await
        .unwrap_err();
    assert!(
        huge.message().contains("no node in the pool can ever hold"),
        "{huge}"
    );
    let oversized = c
        .submit(coop_e2e::submit_request(
            "ana",
            "big",
            spec(&["echo", &"x".repeat(2 << 20)], 500, 0),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        oversized.code(),
        tonic::Code::ResourceExhausted,
        "{oversized}"
    );
    let garbage = raw_call(&addrs[0], "/coop.api.v1.Coop/Submit", vec![0xff; 16])
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument, "{garbage}");
    let unknown = c
        .get_job(GetJobRequest {
            job_id: 999,
            brief: false,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let again = c.init_cluster(InitClusterRequest {}).await.unwrap_err();
    assert!(again.message().contains("already initialized"), "{again}");
    let after = c
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs
        .len();
    assert_eq!(before, after);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_during_200_submits_loses_nothing_and_runs_each_once() {
    let tmp = tempfile::tempdir().unwrap();
    // A generous heartbeat timeout: this test is about the log, and a worker
    // declared lost while 4 tests share 2 cores would rerun its jobs.
    let mut cluster = coop_e2e::replicas(tmp.path(), 3, |c| {
        fast(c);
        c.heartbeat_timeout_ms = 10_000;
    })
    .await;
    let addrs = cluster.addrs();
    let _w = spawn_worker("w1", &addrs, &tmp.path().join("w1"), "8").await;
    let ran = tmp.path().join("ran.txt");
    let cmd = format!("echo $COOP_JOB_ID >> {}", ran.display());
    let job_spec = spec(&["sh", "-c", &cmd], 100, 0);
    let mut tasks = Vec::new();
    for client_no in 0..8 {
        let addrs = addrs.clone();
        let job_spec = job_spec.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..25 {
                acked.push(submit(&addrs, "ana", &format!("c{client_no}-{n}"), &job_spec).await);
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = cluster.kill_leader().await.unwrap();
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), 200);
    let survivors: Vec<String> = cluster.addrs();
    assert!(!survivors.contains(&cluster.configs[killed].listen));
    for id in &acked {
        let j = coop_e2e::wait_job(&survivors, *id, |j| {
            j.state_name() == "succeeded" || j.state_name() == "failed"
        })
        .await;
        assert_eq!(j.state_name(), "succeeded", "{j:?}");
    }
    let mut c = coop_e2e::client(&survivors[0]);
    let all = c
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(
        all.len(),
        200,
        "exactly the acknowledged jobs exist (dedup held across retries)"
    );
    let text = std::fs::read_to_string(&ran).unwrap();
    let mut runs: BTreeMap<u64, usize> = BTreeMap::new();
    for line in text.lines() {
        *runs.entry(line.trim().parse().unwrap()).or_default() += 1;
    }
    for id in &acked {
        assert_eq!(
            runs.get(id),
            Some(&1),
            "job {id} ran {:?} times",
            runs.get(id)
        );
    }
    cluster.stop_all().await;
}

async fn applied_and_digest(addr: &str) -> (u64, String) {
    let s = coop_e2e::client(addr)
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    (s.applied_index, s.state_digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_replica_catches_up_and_a_new_one_installs_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = coop_e2e::replicas(tmp.path(), 3, |c| {
        fast(c);
        c.snapshot_every = 40;
    })
    .await;
    let leader = cluster.leader(LIMIT).await.unwrap();
    let follower = (leader + 1) % 3;
    cluster.stop(follower).await;
    let addrs = cluster.addrs();
    for n in 0..120 {
        submit(&addrs, "ana", &format!("r{n}"), &spec(&["true"], 100, 0)).await;
    }
    cluster.restart(follower).await.unwrap();
    let leader_addr = cluster.replicas[leader].as_ref().unwrap().addr.clone();
    let follower_addr = cluster.configs[follower].listen.clone();
    let target = applied_and_digest(&leader_addr).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let got = applied_and_digest(&follower_addr).await;
        if got.0 >= target.0 {
            assert_eq!(
                got.1,
                applied_and_digest(&leader_addr).await.1,
                "same state after catching up"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "restarted replica stuck at {got:?}, want {target:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A brand-new replica joins after the log was compacted: it can only
    // catch up by installing a snapshot.
    let leader_status = coop_e2e::client(&leader_addr)
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        leader_status.snapshot_index > 0,
        "the leader compacted its log"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let new_addr = listener.local_addr().unwrap().to_string();
    // Before it runs, the address answers nothing: it cannot become a voter
    // (that would cost the group its quorum), and nothing is recorded.
    let before = coop_e2e::last_log_index(&leader_addr).await;
    let dead = coop_e2e::client(&leader_addr)
        .add_replica(coop_e2e::add_replica_request("ana", 4, &new_addr))
        .await
        .unwrap_err();
    assert_eq!(dead.code(), tonic::Code::FailedPrecondition, "{dead}");
    // Unsigned, or signed by a non-member: refused.
    let mut unsigned = coop_e2e::add_replica_request("ana", 4, &new_addr);
    unsigned.signature.clear();
    let outsider = coop_e2e::add_replica_request("mallory", 4, &new_addr);
    for req in [unsigned, outsider] {
        let err = coop_e2e::client(&leader_addr)
            .add_replica(req)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    }
    assert_eq!(coop_e2e::last_log_index(&leader_addr).await, before);
    let config = Config {
        id: 4,
        listen: new_addr.clone(),
        data_dir: tmp.path().join("replica-4"),
        ..cluster.configs[0].clone()
    };
    let config = Config {
        peers: Vec::new(),
        ..config
    };
    let newcomer = coop_scheduler::Replica::start(config, listener)
        .await
        .unwrap();
    coop_e2e::client(&leader_addr)
        .add_replica(coop_e2e::add_replica_request("ana", 4, &new_addr))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let s = coop_e2e::client(&new_addr)
            .cluster_status(ClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let lead = applied_and_digest(&leader_addr).await;
        if s.applied_index >= lead.0 && s.snapshot_index > 0 {
            assert_eq!(s.state_digest, lead.1);
            assert!(s
                .replicas
                .iter()
                .any(|r| r.id == 4 && r.voter && r.added_by == "ana"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new replica stuck: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And it leaves the same way: a signed, recorded request.
    let left = coop_e2e::client(&leader_addr)
        .remove_replica(coop_e2e::remove_replica_request("bo", 4))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !left.replicas.iter().any(|r| r.id == 4 && r.voter),
        "{left:?}"
    );
    newcomer.stop().await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_workers_job_requeues_and_finishes_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(tmp.path(), 3, fast).await;
    let addrs = cluster.addrs();
    let mut w1 = spawn_worker("w1", &addrs, &tmp.path().join("w1"), "1").await;
    let id = submit(&addrs, "ana", "r1", &spec(&["sleep", "2"], 1000, 1)).await;
    let j = coop_e2e::wait_job(&addrs, id, |j| j.state_name() == "running").await;
    assert_eq!(j.node, "w1");
    let _w2 = spawn_worker("w2", &addrs, &tmp.path().join("w2"), "1").await;
    let mut c = coop_e2e::client(&addrs[0]);
    let mut nodes = 0;
    wait_for("w2 to register", || {
        nodes = futures::executor::block_on(c.list_nodes(ListNodesRequest {}))
            .map(|r| r.into_inner().nodes.len())
            .unwrap_or(0);
        nodes == 2
    })
    .await;
    // SIGKILL: no goodbye, the heartbeats just stop.
    let _ = w1.0.kill();
    let _ = w1.0.wait();
    let j = coop_e2e::wait_job(&addrs, id, |j| j.state_name() == "succeeded").await;
    assert_eq!(j.node, "w2");
    assert_eq!(j.attempts, 1);
    let nodes = c
        .list_nodes(ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(
        nodes.iter().find(|n| n.id == "w1").unwrap().state_name(),
        "lost"
    );
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_worker_stops_what_its_crashed_predecessor_left_running() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(tmp.path(), 3, fast).await;
    let addrs = cluster.addrs();
    let work = tmp.path().join("w1");
    let mut w1 = spawn_worker("w1", &addrs, &work, "1").await;
    let pidfile = tmp.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 600", pidfile.display());
    let id = submit(
        &addrs,
        "ana",
        "orphan",
        &spec(&["sh", "-c", &script], 1000, 1),
    )
    .await;
    coop_e2e::wait_job(&addrs, id, |j| j.state_name() == "running").await;
    wait_for("the job to write its pid", || pidfile.exists()).await;
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The worker dies; its job's process group lives on.
    let _ = w1.0.kill();
    let _ = w1.0.wait();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // Its successor stops the orphan before taking any work.
    let _w1 = spawn_worker("w1", &addrs, &work, "1").await;
    wait_for("the orphan to be killed", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    })
    .await;
    cluster.stop_all().await;
}

/// A worker that crashed after a run ended and before it reported the end
/// left the exit in its outbox; its successor reports it as the old
/// incarnation before registering, so the job succeeds instead of being
/// ended with the dead incarnation (and failed, with no retries left).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_that_ended_just_before_its_worker_crashed_is_reported_by_the_successor() {
    let tmp = tempfile::tempdir().unwrap();
    // A node timeout the restart cannot outlast.
    let cluster = coop_e2e::replicas(tmp.path(), 3, |c| {
        c.heartbeat_interval_ms = 100;
        c.heartbeat_timeout_ms = 60_000;
    })
    .await;
    let addrs = cluster.addrs();
    let work = tmp.path().join("w1");
    let mut w1 = spawn_worker("w1", &addrs, &work, "1").await;
    // A run reported as usual leaves nothing behind.
    let quick = submit(&addrs, "ana", "quick", &spec(&["true"], 1000, 0)).await;
    coop_e2e::wait_job(&addrs, quick, |j| j.state_name() == "succeeded").await;
    wait_for("the reported end to leave the outbox", || {
        coop_worker::outbox::load(&work).is_empty()
    })
    .await;
    let id = submit(&addrs, "ana", "ends", &spec(&["sleep", "600"], 1000, 0)).await;
    let job = coop_e2e::wait_job(&addrs, id, |j| j.state_name() == "running").await;
    // The worker dies the moment after it recorded the run's end (exit 0)
    // and before any replica heard of it: what it leaves is this entry.
    let _ = w1.0.kill();
    let _ = w1.0.wait();
    let incarnation: u64 = std::fs::read_to_string(work.join("incarnation"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let ok = coop_worker::executor::Exit {
        code: Some(0),
        signal: None,
        error: String::new(),
        result: None,
        oom_killed: false,
    };
    coop_worker::outbox::record(
        &work,
        &coop_worker::outbox::Entry::new(job.alloc_id, incarnation, &ok),
    )
    .unwrap();
    let _w1 = spawn_worker("w1", &addrs, &work, "1").await;
    let done = coop_e2e::wait_job(&addrs, id, |j| {
        matches!(j.state_name(), "succeeded" | "failed")
    })
    .await;
    assert_eq!(done.state_name(), "succeeded", "{:?}", done.history);
    assert_eq!(done.exit_code, Some(0));
    wait_for("the outbox to be emptied", || {
        coop_worker::outbox::load(&work).is_empty()
    })
    .await;
    cluster.stop_all().await;
}

/// Sends `body` as the request message of `path`, bytes as they are.
async fn raw_call(addr: &str, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(coop_e2e::channel(addr));
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// A codec that passes bytes through: for sending what no stub would.
#[derive(Default, Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// Every replica signs the log's head at each checkpoint with the key of
/// its certificate from the cluster CA; any one replica serves all three
/// signatures over one head, and the replayed journal reaches that head.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_replica_signs_the_same_checkpoint_and_the_journal_reaches_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(tmp.path(), 3, |c| {
        fast(c);
        c.checkpoint_interval_ms = 300;
    })
    .await;
    cluster.leader(LIMIT).await.unwrap();
    let addrs = cluster.addrs();
    for n in 0..5 {
        submit(&addrs, "ana", &format!("c{n}"), &spec(&["true"], 100, 0)).await;
    }
    let ca = coop_e2e::test_ca().cert_pem.clone();
    let deadline = tokio::time::Instant::now() + LIMIT;
    let (head, signed) = loop {
        let reply = coop_e2e::client(&addrs[0])
            .checkpoints(CheckpointsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.voters, 3);
        assert!(reply.conflicts.is_empty());
        let signed: Vec<coop_core::checkpoint::Signed> = reply
            .signed
            .into_iter()
            .map(|s| s.try_into().unwrap())
            .collect();
        if let Some((head, who)) = coop_core::checkpoint::latest_valid(&signed, 3) {
            if who.len() == 3 && head.size > 5 {
                break (head, signed);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no head signed by all three"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for s in signed.iter().filter(|s| s.head == head) {
        assert!(s.verifies());
        coop_proto::tls::vouches(&ca, &s.cert_pem, &s.head.signing_bytes(), &s.signature.0)
            .unwrap_or_else(|e| panic!("replica {}: {e}", s.replica));
    }
    // The journal replayed from genesis to that size gives its root and digest.
    let mut replay = coop_core::decision_log::Replay::new();
    let mut stream = coop_e2e::client(&addrs[1])
        .export_journal(ExportJournalRequest {
            from: 0,
            to: head.size,
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(chunk) = stream.message().await.unwrap() {
        for e in chunk.entries {
            replay.step(e.index, &e.leaf).unwrap();
        }
    }
    assert_eq!(replay.state.log_size(), head.size);
    assert_eq!(hex::encode(replay.root()), head.root);
    assert_eq!(replay.state.digest(), head.state_digest);
}

/// A leader cut off from its followers still believes it leads (openraft
/// steps down only on a higher term); it must turn workers away once no
/// quorum has acknowledged it within the election timeout, so they look
/// for the new leader instead of keeping jobs the rest will requeue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_without_its_quorum_turns_workers_away() {
    use coop_proto::worker::worker_gateway_client::WorkerGatewayClient;
    use coop_proto::worker::HeartbeatRequest;
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = coop_e2e::replicas(tmp.path(), 3, fast).await;
    let leader = cluster.leader(LIMIT).await.unwrap();
    let addrs = cluster.addrs();
    coop_e2e::add_node(&addrs, "ana", "box").await;
    let leader_addr = addrs[leader].clone();
    let capacity = Resources {
        cpu_millis: 1000,
        memory_bytes: 1 << 30,
        gpus: 0,
    };
    WorkerGatewayClient::new(coop_e2e::channel(&leader_addr))
        .register(coop_e2e::register_request("box", "box", "ana", capacity))
        .await
        .unwrap();
    let heartbeat = || {
        let auth = coop_core::testkit::node_secret("box").sign_node_session(
            coop_core::testkit::CLUSTER,
            &coop_core::NodeId::new("box"),
            1,
            coop_e2e::now_ms(),
        );
        HeartbeatRequest {
            node_id: "box".into(),
            incarnation: 1,
            issued_at_ms: auth.issued_at_ms,
            signature: auth.signature.0.to_vec(),
        }
    };
    WorkerGatewayClient::new(coop_e2e::channel(&leader_addr))
        .heartbeat(heartbeat())
        .await
        .expect("a leader with its quorum answers heartbeats");
    for i in 0..3 {
        if i != leader {
            cluster.stop(i).await;
        }
    }
    let deadline = tokio::time::Instant::now() + LIMIT;
    let err = loop {
        match WorkerGatewayClient::new(coop_e2e::channel(&leader_addr))
            .heartbeat(heartbeat())
            .await
        {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a leader alone kept answering heartbeats"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.message().contains("quorum"), "{err}");
}

/// A worker that reaches no leader with its quorum stops its allocations
/// before the node timeout, when the cluster would start them elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_cut_off_from_every_replica_stops_its_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(tmp.path(), 3, fast).await;
    cluster.leader(LIMIT).await.unwrap();
    let addrs = cluster.addrs();
    let _worker = spawn_worker("cut", &addrs, &tmp.path().join("w"), "1000").await;
    let pid_file = tmp.path().join("job.pid");
    let script = format!("echo $$ > {}; exec sleep 600", pid_file.display());
    submit(&addrs, "ana", "long", &spec(&["sh", "-c", &script], 100, 0)).await;
    wait_for("the job to start", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|p| !p.trim().is_empty())
    })
    .await;
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alive = |pid: i32| unsafe { libc::kill(pid, 0) } == 0;
    assert!(alive(pid));
    cluster.stop_all().await;
    wait_for("the cut-off worker to stop its job", || !alive(pid)).await;
}

/// `--array`: one submit makes a job per index, each sees its
/// COOP_ARRAY_INDEX, the array's progress shows on any of its jobs, and one
/// signed cancel ends what is left of an array.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_array_runs_each_index_and_cancels_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(dir.path(), 1, fast).await;
    let addrs = cluster.addrs();
    let work = dir.path().join("w1");
    std::fs::create_dir_all(&work).unwrap();
    let _worker = spawn_worker("w1", &addrs, &work, "4").await;
    let mut indexed = spec(&["sh", "-c", "echo index=$COOP_ARRAY_INDEX"], 100, 0);
    indexed.array = Some(ArrayRange {
        first: 10,
        last: 13,
    });
    let first = submit(&addrs, "ana", "arr-1", &indexed).await;
    let ids: Vec<u64> = (first..first + 4).collect();
    for (k, &id) in ids.iter().enumerate() {
        let j = coop_e2e::wait_job(&addrs, id, coop_e2e::ended).await;
        assert_eq!(j.state_name(), "succeeded", "{j:?}");
        let logs = coop_e2e::client(&addrs[0])
            .logs(LogsRequest {
                job_id: id,
                stream: "stdout".into(),
                offset: 0,
                max_bytes: 1024,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            String::from_utf8_lossy(&logs.data),
            format!("index={}\n", 10 + k)
        );
    }
    let full = coop_e2e::client(&addrs[0])
        .get_job(GetJobRequest {
            job_id: ids[2],
            brief: false,
        })
        .await
        .unwrap()
        .into_inner();
    let a = full.array.expect("an array job says so");
    assert_eq!(
        (a.first, a.index, a.total, a.succeeded),
        (first, 12, 4, 4),
        "{a:?}"
    );

    // An array of sleepers: four run on the four CPUs, two wait; one
    // cancel ends all six.
    let mut sleepers = spec(&["sleep", "60"], 1000, 0);
    sleepers.array = Some(ArrayRange { first: 0, last: 5 });
    let first = submit(&addrs, "ana", "arr-2", &sleepers).await;
    let running = |j: &Job| j.state_name() == "running";
    coop_e2e::wait_job(&addrs, first, running).await;
    let mut c = coop_e2e::client(&addrs[0]);
    let other = c
        .cancel(coop_e2e::cancel_array_request("bo", "bo-c", first + 1))
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::PermissionDenied, "{other:?}");
    let reply = c
        .cancel(coop_e2e::cancel_array_request("ana", "ana-c", first + 5))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.cancelled, 6);
    assert!(reply.stopping);
    for id in first..first + 6 {
        let j = coop_e2e::wait_job(&addrs, id, coop_e2e::ended).await;
        assert_eq!(j.state_name(), "cancelled", "{j:?}");
    }
    cluster.stop_all().await;
}
