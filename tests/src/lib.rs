//! The one harness for Coop's end-to-end tests: a local replica group
//! (real Raft on disk, real gRPC on loopback), `coop-worker` processes that
//! are killed when dropped, and clients for the replicas.
//!
//! ```text
//!  Cluster::start(n) ─▶ LocalReplicas (n replicas, one process, real sockets)
//!  worker(...)       ─▶ coop-e2e-worker process (coop_worker::cli) ─▶ Proc
//!  client(addr)      ─▶ CoopClient over a lazy channel
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use coop_proto::api::coop_client::CoopClient;
use coop_scheduler::local::LocalReplicas;
use coop_scheduler::Config;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A child process, killed and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The worker binary this package builds, next to the test executables
/// (`target/<profile>/deps/<test>` -> `target/<profile>/coop-e2e-worker`).
pub fn worker_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = dir.join("coop-e2e-worker");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with cargo test -p coop-e2e",
        bin.display()
    );
    bin
}

/// `coop-worker` as node `node` of `owner`, offering `cpus` and 4 GiB to
/// `schedulers`, working in `work_dir` with the node's testkit key; add
/// flags, then spawn. Its owner authorizes it with `add_node` first.
pub fn worker(
    node: &str,
    owner: &str,
    cpus: &str,
    schedulers: &[String],
    work_dir: impl AsRef<Path>,
) -> Command {
    coop_proto::keyfile::write(
        &work_dir.as_ref().join("node.key"),
        &coop_core::testkit::node_secret(node),
        true,
    )
    .expect("write the node key");
    std::fs::write(
        work_dir.as_ref().join("cluster-ca.pem"),
        &test_ca().cert_pem,
    )
    .expect("write the cluster CA");
    let mut cmd = Command::new(worker_bin());
    cmd.args([
        "--node-id",
        node,
        "--owner",
        owner,
        "--cpus",
        cpus,
        "--memory-bytes",
        "4294967296",
    ])
    .arg("--scheduler")
    .arg(schedulers.join(","))
    .arg("--work-dir")
    .arg(work_dir.as_ref())
    .env("RUST_LOG", "warn");
    cmd
}

/// A TLS channel presenting a replica certificate from the test CA: what
/// an authenticated peer (another replica, or whoever holds its key) uses.
pub fn replica_channel(addr: &str) -> Channel {
    let identity = test_ca().issue_replica().expect("a replica certificate");
    Channel::from_shared(format!("https://{addr}"))
        .expect("valid address")
        .tls_config(identity.client())
        .expect("TLS config")
        .connect_lazy()
}

/// A replica client that signs every read as one member.
pub type Client = CoopClient<InterceptedService<Channel, TestReader>>;

/// Signs a testkit read credential onto every request.
#[derive(Clone)]
pub struct TestReader(Option<String>);

impl tonic::service::Interceptor for TestReader {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(member) = &self.0 {
            let auth = coop_core::testkit::read(member, wall_clock_ms());
            coop_proto::read_auth::attach(
                req.metadata_mut(),
                &coop_core::MemberId::new(member),
                &auth,
            );
        }
        Ok(req)
    }
}

/// The cluster CA of every cluster this test process starts.
pub fn test_ca() -> &'static coop_proto::tls::ClusterCa {
    static CA: std::sync::OnceLock<coop_proto::tls::ClusterCa> = std::sync::OnceLock::new();
    CA.get_or_init(|| coop_proto::tls::ClusterCa::generate().expect("a test CA"))
}

/// A lazily connected TLS channel to the replica at `addr`, trusting the
/// test CA, without a client certificate (as any member's client).
pub fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("https://{addr}"))
        .expect("valid address")
        .tls_config(coop_proto::tls::client(&test_ca().cert_pem))
        .expect("TLS config")
        .connect_lazy()
}

/// A lazily connected client for the replica at `addr`, reading as ana.
pub fn client(addr: &str) -> Client {
    client_as(addr, Some("ana"))
}

/// A client reading as `member`, or with no credential at all.
pub fn client_as(addr: &str, member: Option<&str>) -> Client {
    CoopClient::with_interceptor(channel(addr), TestReader(member.map(str::to_string)))
}

/// The founding members of every test cluster, with their testkit keys.
pub const MEMBERS: &[&str] = &["ana", "ben", "bo", "cam", "dan", "olga", "pete"];

/// `n` replicas under `dir`, founded by `MEMBERS`, with `tune` applied to
/// each config (checkpoints hourly unless it says otherwise), formed into a
/// cluster with a leader; panics with the reason if that fails.
pub async fn replicas(dir: &Path, n: usize, tune: impl Fn(&mut Config)) -> LocalReplicas {
    LocalReplicas::start_with_ca(dir, n, test_ca(), |c| {
        c.cluster_id = coop_core::testkit::CLUSTER.into();
        c.members = coop_core::testkit::founders(MEMBERS);
        // Tests that count log entries ("a refused request logs nothing")
        // must not see the leader's periodic checkpoints; a test of
        // checkpoints sets its own interval in `tune`.
        c.checkpoint_interval_ms = 3_600_000;
        tune(c);
    })
    .await
    .unwrap_or_else(|e| panic!("start {n} replicas: {e}"))
}

/// A job that asks for little and does nothing (`true`).
pub fn small_job() -> coop_proto::api::JobSpec {
    coop_proto::api::JobSpec {
        argv: vec!["true".into()],
        resources: Some(coop_proto::api::Resources {
            cpu_millis: 100,
            memory_bytes: 1 << 20,
            gpus: 0,
        }),
        ..Default::default()
    }
}

/// A loopback port free right now (for a process that binds it itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("its address")
        .port()
}

/// The wall clock in milliseconds, as credentials are stamped.
pub fn now_ms() -> u64 {
    wall_clock_ms()
}

static WALL_CLOCK: std::sync::OnceLock<fn() -> u64> = std::sync::OnceLock::new();

/// Makes every later credential in this test process stamped by `clock`
/// (the simulation's); the first call wins.
pub fn set_wall_clock(clock: fn() -> u64) -> bool {
    WALL_CLOCK.set(clock).is_ok()
}

fn wall_clock_ms() -> u64 {
    if let Some(clock) = WALL_CLOCK.get() {
        return clock();
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A submit in `member`'s name, signed with its testkit key now.
pub fn submit_request(
    member: &str,
    request_id: &str,
    spec: coop_proto::api::JobSpec,
) -> coop_proto::api::SubmitRequest {
    let core = coop_core::JobSpec::try_from(&spec).expect("a spec that converts");
    let salt = coop_core::testkit::env_salt(member, request_id);
    let auth = coop_core::testkit::secret(member).sign_request(
        coop_core::testkit::CLUSTER,
        &coop_core::MemberId::new(member),
        request_id,
        wall_clock_ms(),
        &coop_core::MemberRequest::Submit {
            spec: &core.committed(&salt),
        },
    );
    coop_proto::api::SubmitRequest {
        member: member.into(),
        request_id: request_id.into(),
        spec: Some(spec),
        issued_at_ms: auth.issued_at_ms,
        signature: auth.signature.0.to_vec(),
        env_salt: salt.0.to_vec(),
    }
}

/// A cancel in `member`'s name, signed with its testkit key now.
pub fn cancel_request(member: &str, request_id: &str, job: u64) -> coop_proto::api::CancelRequest {
    signed_cancel(member, request_id, job, false)
}

/// A cancel of every unfinished job of `job`'s array, signed as `member`.
pub fn cancel_array_request(
    member: &str,
    request_id: &str,
    job: u64,
) -> coop_proto::api::CancelRequest {
    signed_cancel(member, request_id, job, true)
}

fn signed_cancel(
    member: &str,
    request_id: &str,
    job: u64,
    array: bool,
) -> coop_proto::api::CancelRequest {
    let job_id = coop_core::JobId(job);
    let request = if array {
        coop_core::MemberRequest::CancelArray { job: job_id }
    } else {
        coop_core::MemberRequest::Cancel { job: job_id }
    };
    let auth = coop_core::testkit::secret(member).sign_request(
        coop_core::testkit::CLUSTER,
        &coop_core::MemberId::new(member),
        request_id,
        wall_clock_ms(),
        &request,
    );
    coop_proto::api::CancelRequest {
        job_id: job,
        member: member.into(),
        request_id: request_id.into(),
        issued_at_ms: auth.issued_at_ms,
        signature: auth.signature.0.to_vec(),
        array,
    }
}

/// `owner` authorizes `node`'s testkit key, as `coop node add` does.
pub fn add_node_request(owner: &str, node: &str) -> coop_proto::api::AddNodeRequest {
    let request_id = format!("add-node-{node}-{}", wall_clock_ms());
    let key = coop_core::testkit::node_secret(node).public_key();
    let auth = coop_core::testkit::secret(owner).sign_request(
        coop_core::testkit::CLUSTER,
        &coop_core::MemberId::new(owner),
        &request_id,
        wall_clock_ms(),
        &coop_core::MemberRequest::AddNode {
            node: &coop_core::NodeId::new(node),
            key: &key,
        },
    );
    coop_proto::api::AddNodeRequest {
        node_id: node.into(),
        member: owner.into(),
        key: key.to_string(),
        request_id,
        issued_at_ms: auth.issued_at_ms,
        signature: auth.signature.0.to_vec(),
    }
}

/// A registration of `node` as `owner`'s, signed with `signer`'s testkit
/// node key (the node's own, or a forger's).
pub fn register_request(
    node: &str,
    signer: &str,
    owner: &str,
    capacity: coop_proto::api::Resources,
) -> coop_proto::worker::RegisterRequest {
    let addr = "127.0.0.1:1".to_string();
    let auth = coop_core::testkit::node_secret(signer).sign_node_report(
        coop_core::testkit::CLUSTER,
        &coop_core::NodeId::new(node),
        1,
        wall_clock_ms(),
        &coop_core::NodeReport::Register {
            owner: &coop_core::MemberId::new(owner),
            capacity: &coop_core::Resources::from(&capacity),
            addr: &addr,
            gpus: &[],
            engines: &Default::default(),
        },
    );
    coop_proto::worker::RegisterRequest {
        node_id: node.into(),
        owner: owner.into(),
        capacity: Some(capacity),
        addr,
        incarnation: 1,
        gpus: vec![],
        engines: None,
        issued_at_ms: auth.issued_at_ms,
        signature: auth.signature.0.to_vec(),
    }
}

/// `member` asks for replica `id` at `addr` to join, signed now.
pub fn add_replica_request(
    member: &str,
    id: u64,
    addr: &str,
) -> coop_proto::api::AddReplicaRequest {
    let request_id = format!("add-replica-{id}-{}", wall_clock_ms());
    let auth = coop_core::testkit::secret(member).sign_request(
        coop_core::testkit::CLUSTER,
        &coop_core::MemberId::new(member),
        &request_id,
        wall_clock_ms(),
        &coop_core::MemberRequest::AddReplica { id, addr },
    );
    coop_proto::api::AddReplicaRequest {
        id,
        addr: addr.into(),
        member: member.into(),
        request_id,
        issued_at_ms: auth.issued_at_ms,
        signature: auth.signature.0.to_vec(),
    }
}

/// `member` asks for replica `id` to leave, signed now.
pub fn remove_replica_request(member: &str, id: u64) -> coop_proto::api::RemoveReplicaRequest {
    let request_id = format!("remove-replica-{id}-{}", wall_clock_ms());
    let auth = coop_core::testkit::secret(member).sign_request(
        coop_core::testkit::CLUSTER,
        &coop_core::MemberId::new(member),
        &request_id,
        wall_clock_ms(),
        &coop_core::MemberRequest::RemoveReplica { id },
    );
    coop_proto::api::RemoveReplicaRequest {
        id,
        member: member.into(),
        request_id,
        issued_at_ms: auth.issued_at_ms,
        signature: auth.signature.0.to_vec(),
    }
}

/// Authorizes `node` for `owner` at the cluster; panics with the reason if refused.
pub async fn add_node(addrs: &[String], owner: &str, node: &str) {
    let req = add_node_request(owner, node);
    retry_unavailable(|| {
        let (mut c, req) = (client(&addrs[0]), req.clone());
        async move { c.add_node(req).await }
    })
    .await
    .unwrap_or_else(|s| panic!("add node {node} for {owner}: {s}"));
}

/// A wire enum's name as the core spells it, so tests read `"running"`.
pub trait StateName {
    fn state_name(&self) -> &'static str;
}

fn wire_name<T: coop_proto::convert::FromWire>(
    v: i32,
    name: fn(T) -> &'static str,
) -> &'static str {
    T::from_wire(v).map(name).unwrap_or("unknown")
}

impl StateName for coop_proto::api::Job {
    fn state_name(&self) -> &'static str {
        wire_name(self.state, coop_core::JobState::as_str)
    }
}

impl StateName for coop_proto::api::Node {
    fn state_name(&self) -> &'static str {
        wire_name(self.state, coop_core::NodeState::as_str)
    }
}

impl StateName for coop_proto::api::Explanation {
    fn state_name(&self) -> &'static str {
        wire_name(self.state, coop_core::JobState::as_str)
    }
}

/// Calls `f` until it answers something other than UNAVAILABLE (a leader
/// being elected or adopting its genesis), for up to 30 s.
pub async fn retry_unavailable<T, F, Fut>(mut f: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match f().await {
            Err(s)
                if s.code() == tonic::Code::Unavailable
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            other => return other,
        }
    }
}

/// Submits, retrying while the cluster answers UNAVAILABLE; returns the job id.
pub async fn submit(c: &Client, req: coop_proto::api::SubmitRequest) -> Result<u64, tonic::Status> {
    retry_unavailable(|| {
        let (mut c, req) = (c.clone(), req.clone());
        async move { c.submit(req).await }
    })
    .await
    .map(|r| r.into_inner().job_id)
}

/// How long a test waits for a job to reach the state it expects.
pub const JOB_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The job as one of `addrs` sees it, trying the next replica while one is
/// down or has no leader; an unknown job fails the test at once.
pub async fn job(addrs: &[String], id: u64) -> coop_proto::api::Job {
    let mut i = 0;
    loop {
        match client(&addrs[i % addrs.len()])
            .get_job(coop_proto::api::GetJobRequest {
                job_id: id,
                brief: false,
            })
            .await
        {
            Ok(r) => return r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => panic!("job {id} not found: {s}"),
            Err(_) => {
                i += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Polls the job until `pred` holds; fails the test after `JOB_WAIT`.
pub async fn wait_job(
    addrs: &[String],
    id: u64,
    pred: impl Fn(&coop_proto::api::Job) -> bool,
) -> coop_proto::api::Job {
    let deadline = tokio::time::Instant::now() + JOB_WAIT;
    loop {
        let j = job(addrs, id).await;
        if pred(&j) {
            return j;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} stuck: {j:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Whether a job has ended (succeeded, failed or cancelled).
pub fn ended(j: &coop_proto::api::Job) -> bool {
    matches!(j.state_name(), "succeeded" | "failed" | "cancelled")
}

/// The last log index the replica at `addr` holds: a refusal that costs no
/// log entry leaves it where it was.
pub async fn last_log_index(addr: &str) -> u64 {
    client(addr)
        .cluster_status(coop_proto::api::ClusterStatusRequest {})
        .await
        .expect("cluster status")
        .into_inner()
        .last_log_index
}
