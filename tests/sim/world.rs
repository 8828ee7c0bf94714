//! One seeded simulated run: three real replicas and two real workers
//! (`Replica::start_with_clock`, `Worker::start`) over turmoil's network
//! and clock, a client submitting, retrying and cancelling, and a fault
//! schedule drawn from the seed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use coop_proto::api::coop_client::CoopClient;
use coop_proto::net::{Conn, Incoming, Listener};
use coop_scheduler::clock::Clock;
use coop_scheduler::raft::RaftNode;
use coop_scheduler::{Config, Replica};
use tonic::transport::{Channel, Endpoint};

use crate::history::{self, Ack, Final, History, Sample};

pub const REPLICAS: [&str; 3] = ["r1", "r2", "r3"];
pub const WORKERS: [&str; 2] = ["w1", "w2"];
const PORT: u16 = 7000;
const WORKER_PORT: u16 = 7100;
/// How long the faults go on, then how long the cluster has to settle.
const FAULTS_FOR: Duration = Duration::from_secs(12);
const SETTLE_WITHIN: Duration = Duration::from_secs(40);
const JOBS: usize = 24;

pub fn settle_within() -> Duration {
    SETTLE_WITHIN
}
const MEMBERS: [&str; 3] = ["ana", "ben", "cam"];

/// A small deterministic generator (SplitMix64) for the load and faults.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5eed_c00b)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }
}

/// The faults a schedule is made of.
#[derive(Clone, Debug)]
enum Fault {
    /// A replica's host goes down, and comes back after a while.
    CrashReplica(usize),
    /// The leader is cut off from the other replicas while workers and
    /// clients still reach it.
    IsolateLeader,
    /// A worker is cut off from everyone.
    IsolateWorker(usize),
    /// A worker's host goes down (its processes with it) and comes back.
    CrashWorker(usize),
    /// Every link delays messages by up to this long.
    Delay(Duration),
    /// A host's system clock is off by this many seconds (either way):
    /// a replica (0-2) or a worker (3-4).
    Skew(usize, i64),
    /// A replica's system clock jumps forward ten minutes.
    Jump(usize),
    /// A replica's disk takes this long for every write.
    SlowDisk(usize, Duration),
}

fn draw(rng: &mut Rng) -> Fault {
    match rng.below(9) {
        0 => Fault::CrashReplica(rng.below(3) as usize),
        1 => Fault::IsolateLeader,
        2 => Fault::IsolateWorker(rng.below(2) as usize),
        3 => Fault::CrashWorker(rng.below(2) as usize),
        4 | 5 => Fault::Delay(rng.millis(20, 400)),
        6 => Fault::Skew(rng.below(5) as usize, rng.below(61) as i64 - 30),
        7 => Fault::SlowDisk(rng.below(3) as usize, rng.millis(20, 500)),
        _ => Fault::Jump(rng.below(3) as usize),
    }
}

/// The simulation's epoch: a fixed instant, so a seed replays the same
/// times (2027-01-15).
const EPOCH_SECS: u64 = 1_800_000_000;

/// The simulated wall clock of the host running now, in milliseconds.
fn sim_ms() -> u64 {
    turmoil::since_epoch().unwrap_or_default().as_millis() as u64
}

/// What ends a fault, and when. A partition holds the segments on its
/// links and delivers them when it heals, as TCP's retransmissions would:
/// turmoil's dropping partitions and random link failures cut bytes out of
/// the middle of a TCP stream, which no real network does to TCP, so they
/// are not used. A call across a held link gets no answer: to the code it
/// is a lost message until its deadline.
enum Undo {
    Bounce(String),
    Release(Vec<(String, String)>),
    Latency,
    Disk(String),
}

type Registry = Arc<Mutex<BTreeMap<String, RaftNode>>>;
type Skews = Arc<Mutex<[i64; 5]>>;

/// Installs the simulated network as this process's transport (once).
fn install_network() {
    coop_proto::net::set_dialer(Arc::new(|target: String| {
        Box::pin(async move {
            let s = turmoil::net::TcpStream::connect(target).await?;
            Ok(Conn::new(s))
        })
    }));
}

fn listener(host: &str, port: u16) -> impl std::future::Future<Output = std::io::Result<Listener>> {
    let addr = format!("{host}:{port}");
    async move {
        let l = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
        let incoming: Incoming = Box::pin(futures::stream::unfold(l, |l| async move {
            let conn = l.accept().await.map(|(s, _)| Conn::new(s));
            Some((conn, l))
        }));
        Ok(Listener::Other { addr, incoming })
    }
}

fn replica_config(i: usize, dir: &Path) -> Config {
    let peers = REPLICAS
        .iter()
        .enumerate()
        .map(|(j, r)| format!("{}={r}:{PORT}", j + 1))
        .collect();
    let mut c = coop_scheduler::local::local_config(
        i as u64 + 1,
        format!("{}:{PORT}", REPLICAS[i]),
        dir.join(REPLICAS[i]),
        peers,
    );
    c.metrics_listen = None;
    c.cluster_id = coop_core::testkit::CLUSTER.into();
    c.members = coop_core::testkit::founders(&MEMBERS);
    c.checkpoint_interval_ms = 3_600_000;
    c.tls = Some(
        coop_scheduler::local::issue(
            coop_e2e::test_ca(),
            &dir.join(format!("tls-{}", REPLICAS[i])),
        )
        .expect("issue a replica certificate"),
    );
    c
}

fn worker_config(i: usize, dir: &Path) -> coop_worker::config::WorkerConfig {
    let node = WORKERS[i];
    let work = dir.join(node);
    std::fs::create_dir_all(&work).expect("worker dir");
    coop_proto::keyfile::write(
        &work.join("node.key"),
        &coop_core::testkit::node_secret(node),
        true,
    )
    .expect("node key");
    std::fs::write(work.join("cluster-ca.pem"), &coop_e2e::test_ca().cert_pem).expect("CA");
    coop_worker::config::WorkerConfig {
        node_id: node.into(),
        owner: MEMBERS[i].into(),
        schedulers: REPLICAS.iter().map(|r| format!("{r}:{PORT}")).collect(),
        listen: format!("0.0.0.0:{WORKER_PORT}"),
        advertise: Some(format!("{node}:{WORKER_PORT}")),
        work_dir: work.clone(),
        cpu_millis: Some(2000),
        memory_bytes: Some(4 << 30),
        gpus: Some(0),
        stop_grace_ms: 300,
        key_file: Some(work.join("node.key")),
        ca_file: Some(work.join("cluster-ca.pem")),
        ..Default::default()
    }
}

fn tls_channel(addr: &str) -> Channel {
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .expect("an address")
        .tls_config(coop_proto::tls::client(&coop_e2e::test_ca().cert_pem))
        .expect("TLS")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(3));
    coop_proto::net::lazy_channel(endpoint)
}

/// Whether a refusal is worth a retry (no leader, a broken connection, a
/// deadline), as the CLI decides.
fn retryable(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable
        || coop_proto::status::broke(s)
        || coop_proto::status::timed_out(s)
}

/// Calls `f` on replicas in turn until one answers or it is not worth
/// retrying; None when it gave up.
async fn with_retries<T, F, Fut>(rng: &mut Rng, mut f: F) -> Option<Result<T, tonic::Status>>
where
    F: FnMut(CoopClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    for attempt in 0..40 {
        let addr = format!("{}:{PORT}", REPLICAS[rng.below(3) as usize]);
        match f(CoopClient::new(tls_channel(&addr))).await {
            Ok(r) => return Some(Ok(r.into_inner())),
            Err(s) if retryable(&s) => {
                tracing::debug!(target: "sim", %s, "retry");
                tokio::time::sleep(Duration::from_millis(50 + 25 * attempt.min(8))).await
            }
            Err(s) => return Some(Err(s)),
        }
    }
    None
}

/// The load: authorize the workers, then submit jobs (some retried with
/// the same request id, some cancelled).
async fn load(seed: u64, out: Arc<Mutex<History>>) -> turmoil::Result {
    let mut rng = Rng::new(seed.wrapping_mul(31));
    // The cluster elects its first leader and founds itself first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, node) in WORKERS.iter().enumerate() {
        let req = coop_e2e::add_node_request(MEMBERS[i], node);
        match with_retries(&mut rng, |mut c| {
            let req = req.clone();
            async move { c.add_node(req).await }
        })
        .await
        {
            Some(Ok(_)) => {}
            other => return Err(format!("add node {node}: {other:?}").into()),
        }
    }
    for n in 0..JOBS {
        let member = MEMBERS[n % MEMBERS.len()];
        let request_id = format!("sim-{n}");
        let mut spec = coop_e2e::small_job();
        if rng.below(3) == 0 {
            spec.argv = vec!["sleep".into(), "0.2".into()];
        }
        let req = coop_e2e::submit_request(member, &request_id, spec);
        out.lock().unwrap().load_at =
            format!("submit {request_id} at {:?}", turmoil::sim_elapsed());
        let reply = with_retries(&mut rng, |mut c| {
            let req = req.clone();
            async move { c.submit(req).await }
        })
        .await;
        match reply {
            Some(Ok(r)) => {
                let ack = Ack {
                    member: member.into(),
                    request_id: request_id.clone(),
                    job: r.job_id,
                };
                out.lock().unwrap().acks.push(ack.clone());
                // A client that never saw the answer sends it again.
                if rng.below(4) == 0 {
                    if let Some(Ok(again)) = with_retries(&mut rng, |mut c| {
                        let req = req.clone();
                        async move { c.submit(req).await }
                    })
                    .await
                    {
                        out.lock().unwrap().repeats.push(Ack {
                            job: again.job_id,
                            ..ack.clone()
                        });
                    }
                }
                if rng.below(6) == 0 {
                    let cancel =
                        coop_e2e::cancel_request(member, &format!("{request_id}-cancel"), r.job_id);
                    if let Some(Ok(_)) = with_retries(&mut rng, |mut c| {
                        let cancel = cancel.clone();
                        async move { c.cancel(cancel).await }
                    })
                    .await
                    {
                        out.lock().unwrap().cancelled.push(r.job_id);
                    }
                }
            }
            // A leader whose clock is far off refuses what members sign
            // with theirs, and says so: not acknowledged, nothing owed.
            Some(Err(s))
                if s.code() == tonic::Code::Unauthenticated
                    && s.message().contains("check your clock") => {}
            Some(Err(s)) => return Err(format!("submit {request_id} refused: {s}").into()),
            // Never acknowledged: the client gave up; nothing is owed.
            None => {}
        }
        tokio::time::sleep(rng.millis(50, 400)).await;
    }
    out.lock().unwrap().load_at = "done".into();
    Ok(())
}

fn data_root() -> tempfile::TempDir {
    // Each simulated disk write is a real fsync: on tmpfs where there is one.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("a temp dir")
}

/// Runs seed `seed` to the end; the history, or why the simulation itself
/// failed (a host's software returned an error).
pub fn run(seed: u64) -> Result<History, String> {
    install_network();
    crate::os::install();
    coop_e2e::set_wall_clock(sim_ms);
    // openraft's election timeouts, drawn on this thread.
    coop_scheduler::raft::seed_thread(seed);
    history::RUNS.with(|r| r.borrow_mut().clear());
    let dir = data_root();
    let mut rng = Rng::new(seed);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .tick_duration(Duration::from_millis(10))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .simulation_duration(FAULTS_FOR + SETTLE_WITHIN + Duration::from_secs(60))
        .enable_tokio_io()
        .build();
    let registry: Registry = Arc::default();
    let skews: Skews = Arc::default();
    for (i, name) in REPLICAS.iter().enumerate() {
        let config = replica_config(i, dir.path());
        let (registry, skews) = (registry.clone(), skews.clone());
        sim.host(*name, move || {
            let (config, registry, skews) = (config.clone(), registry.clone(), skews.clone());
            async move {
                let listener = listener(REPLICAS[i], PORT).await?;
                let source = skews.clone();
                let clock = Clock::from_source(Arc::new(move || {
                    let base = turmoil::since_epoch().unwrap_or_default().as_micros() as i64;
                    (base + source.lock().unwrap()[i] * 1_000_000) as u64
                }));
                let replica = Replica::start_with_clock(config, listener, clock)
                    .await
                    .map_err(|e| e.to_string())?;
                if i == 0 {
                    // Forms the cluster on first boot; a no-op after.
                    let _ = replica.initialize().await;
                }
                registry
                    .lock()
                    .unwrap()
                    .insert(REPLICAS[i].to_string(), replica.node.clone());
                // Runs until the simulation crashes the host or ends.
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    let mut worker_dirs: Vec<PathBuf> = Vec::new();
    for (i, name) in WORKERS.iter().enumerate() {
        let config = worker_config(i, dir.path());
        worker_dirs.push(config.work_dir.clone());
        let skews = skews.clone();
        sim.host(*name, move || {
            let (config, skews) = (config.clone(), skews.clone());
            async move {
                let listener = listener(WORKERS[i], WORKER_PORT).await?;
                let clock = Arc::new(move || {
                    let skew = skews.lock().unwrap()[REPLICAS.len() + i];
                    (sim_ms() as i64 + skew * 1000) as u64
                });
                let _worker = coop_worker::Worker::start_with_clock(config, listener, clock)
                    .await
                    .map_err(|e| e.to_string())?;
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    let out = Arc::new(Mutex::new(History::default()));
    {
        let out = out.clone();
        sim.client("load", load(seed, out));
    }

    // The fault schedule: one fault at a time, from 3 s in until FAULTS_FOR.
    let mut at = Duration::from_secs(3);
    let mut schedule = Vec::new();
    while at < FAULTS_FOR {
        let fault = draw(&mut rng);
        let lasts = rng.millis(300, 4000);
        schedule.push((at, fault, lasts));
        at += lasts + rng.millis(200, 1500);
    }
    let mut schedule = schedule.into_iter().peekable();
    let mut undo: Option<(Duration, Undo)> = None;
    let mut load_done = false;
    let mut last_sample = Duration::ZERO;
    let mut settled = None;
    let leader = |registry: &Registry| -> Option<String> {
        registry
            .lock()
            .unwrap()
            .iter()
            .find(|(_, n)| n.is_leader())
            .map(|(name, _)| name.clone())
    };
    loop {
        let now = sim.elapsed();
        if let Some((until, _)) = &undo {
            if now >= *until {
                let (_, u) = undo.take().expect("checked");
                match u {
                    Undo::Bounce(host) => sim.bounce(host),
                    Undo::Release(pairs) => {
                        for (a, b) in pairs {
                            sim.release(a, b);
                        }
                    }
                    Undo::Latency => sim.set_max_message_latency(Duration::from_millis(5)),
                    Undo::Disk(host) => crate::os::slow_disk(&host, None),
                }
            }
        }
        if undo.is_none() && schedule.peek().is_some_and(|(at, _, _)| now >= *at) {
            let (_, fault, lasts) = schedule.next().expect("peeked");
            let until = now + lasts;
            out.lock().unwrap().faults.push(format!(
                "{now:?}: {fault:?} for {lasts:?} (leader {:?})",
                leader(&registry)
            ));
            match fault {
                Fault::CrashReplica(i) => {
                    registry.lock().unwrap().remove(REPLICAS[i]);
                    sim.crash(REPLICAS[i]);
                    undo = Some((until, Undo::Bounce(REPLICAS[i].into())));
                }
                Fault::IsolateLeader => {
                    if let Some(l) = leader(&registry) {
                        let pairs: Vec<_> = REPLICAS
                            .iter()
                            .filter(|r| **r != l)
                            .map(|r| (l.clone(), r.to_string()))
                            .collect();
                        for (a, b) in &pairs {
                            sim.hold(a.as_str(), b.as_str());
                        }
                        undo = Some((until, Undo::Release(pairs)));
                    }
                }
                Fault::IsolateWorker(i) => {
                    let pairs: Vec<_> = REPLICAS
                        .iter()
                        .map(|r| (WORKERS[i].to_string(), r.to_string()))
                        .collect();
                    for (a, b) in &pairs {
                        sim.hold(a.as_str(), b.as_str());
                    }
                    undo = Some((until, Undo::Release(pairs)));
                }
                Fault::CrashWorker(i) => {
                    sim.crash(WORKERS[i]);
                    // The host is gone, and every process on it.
                    coop_worker::executor::kill_orphans(&worker_dirs[i]);
                    history::host_down(WORKERS[i], now);
                    undo = Some((until, Undo::Bounce(WORKERS[i].into())));
                }
                Fault::Delay(d) => {
                    sim.set_max_message_latency(d);
                    undo = Some((until, Undo::Latency));
                }
                Fault::Skew(i, secs) => skews.lock().unwrap()[i] = secs,
                Fault::Jump(i) => skews.lock().unwrap()[i] += 600,
                Fault::SlowDisk(i, d) => {
                    crate::os::slow_disk(REPLICAS[i], Some(d));
                    undo = Some((until, Undo::Disk(REPLICAS[i].into())));
                }
            }
        }
        if now >= FAULTS_FOR && undo.is_none() && out.lock().unwrap().faults_ended.is_zero() {
            // The operators fix the clocks too.
            *skews.lock().unwrap() = [0; 5];
            out.lock().unwrap().faults_ended = now;
        }
        if now >= last_sample + Duration::from_millis(1000) {
            last_sample = now;
            let mut h = out.lock().unwrap();
            for (name, node) in registry.lock().unwrap().iter() {
                let applied = node.state_machine().read();
                h.samples.push(Sample {
                    replica: name.clone(),
                    applied: applied.last_applied.map(|l| l.index).unwrap_or(0),
                    digest: applied.state.digest(),
                });
            }
        }
        let faults_over = !out.lock().unwrap().faults_ended.is_zero();
        if faults_over && load_done && settled.is_none() && all_ended(&registry, &out) {
            settled = Some(now);
        }
        if let Some(at) = settled {
            // A little longer: nothing further may happen (no new entries,
            // no run starting again).
            if now >= at + Duration::from_secs(2) && same_index(&registry) {
                break;
            }
        }
        if faults_over && now > out.lock().unwrap().faults_ended + SETTLE_WITHIN {
            break;
        }
        match sim.step() {
            Ok(done) => load_done = load_done || done,
            Err(e) => return Err(format!("seed {seed}: the simulation failed: {e}")),
        }
    }
    let mut h = std::mem::take(&mut *out.lock().unwrap());
    h.settled = settled;
    h.leader_at_end = leader(&registry).is_some();
    h.runs = history::RUNS.with(|r| r.borrow().clone());
    for (name, node) in registry.lock().unwrap().iter() {
        let sm = node.state_machine();
        let applied = sm.read();
        let size = applied.state.log_size();
        let leaves = sm
            .journal()
            .read(0, size, usize::MAX)
            .map(|l| l.into_iter().map(|(_, b)| b).collect())
            .unwrap_or_default();
        h.finals.push(Final {
            replica: name.clone(),
            applied: applied.last_applied.map(|l| l.index).unwrap_or(0),
            state: applied.state.clone(),
            leaves,
        });
    }
    registry.lock().unwrap().clear();
    drop(sim);
    Ok(h)
}

/// Whether every replica runs, all at one applied index.
fn same_index(registry: &Registry) -> bool {
    let registry = registry.lock().unwrap();
    let applied: Vec<Option<u64>> = registry
        .values()
        .map(|n| n.state_machine().read().last_applied.map(|l| l.index))
        .collect();
    registry.len() == REPLICAS.len() && applied.iter().all(|a| *a == applied[0])
}

/// Whether every replica runs, all at one applied index, and every
/// acknowledged job has ended on each.
fn all_ended(registry: &Registry, out: &Arc<Mutex<History>>) -> bool {
    let acks: Vec<u64> = out.lock().unwrap().acks.iter().map(|a| a.job).collect();
    if !same_index(registry) {
        return false;
    }
    let registry = registry.lock().unwrap();
    registry.values().all(|node| {
        let applied = node.state_machine().read();
        acks.iter().all(|j| {
            applied
                .state
                .job(coop_core::JobId(*j))
                .is_some_and(|job| job.state().is_terminal())
        })
    })
}
