//! `coop bench`: a load tool for a running cluster (or a local one).
//! It prints its figures; it asserts nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use coop_proto::api::{JobSpec, Resources};

use crate::client::connect;
use crate::cmd::jobs::{get_job, submit_one};
use crate::identity::{Settings, Signer};
use crate::local::LocalCluster;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What to measure: `submit` (acknowledged submits per second),
    /// `latency` (submit-to-start on an idle worker), `failover` (from the
    /// leader's loss to the next acknowledged submit, over --trials, on a
    /// local cluster) or `audit` (replaying a journal of --jobs entries from
    /// genesis, as `coop audit verify` does; built in memory, no cluster)
    /// or `e2e` (--jobs trivial jobs submitted by --clients at once, then
    /// drained: jobs run per second end to end, and submit-to-start).
    #[arg(value_parser = ["submit", "latency", "failover", "audit", "e2e"])]
    pub what: String,
    /// Start a local 3-replica cluster (and one worker for latency, one
    /// offering --slots for e2e) instead of using --addr.
    #[arg(long)]
    pub local: bool,
    /// Concurrent clients (submit).
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Jobs to submit in all.
    #[arg(long, default_value_t = 20000)]
    pub jobs: usize,
    /// Leader losses to time (failover).
    #[arg(long, default_value_t = 10)]
    pub trials: usize,
    /// e2e --local: the slots the worker offers (0.1 CPU and 16 MiB each,
    /// what each bench job asks for).
    #[arg(long, default_value_t = 64)]
    pub slots: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub async fn run(settings: &Settings, args: BenchArgs) -> Result<i32> {
    if args.what == "audit" {
        return tokio::task::spawn_blocking(move || audit(args.jobs)).await?;
    }
    let tmp = tempfile::Builder::new().prefix("coop-bench-").tempdir()?;
    if args.what == "failover" {
        return failover(tmp.path(), args.trials.max(1)).await;
    }
    let mut cluster = None;
    let (addr, signer) = if args.local {
        let mut c = LocalCluster::start(tmp.path(), 3, &["bench"]).await?;
        if args.what == "latency" {
            c.add_worker("bench-node", "bench", 4000, 4 << 30).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if args.what == "e2e" {
            let slots = args.slots.max(1);
            c.add_worker(
                "bench-node",
                "bench",
                slots * SLOT_CPU_MILLIS,
                slots * SLOT_MEMORY,
            )
            .await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let leader = c.leader(Duration::from_secs(5)).await.unwrap_or(0);
        let a = c.addr(leader).unwrap_or_default();
        let signer = c.signer("bench")?;
        signer.read_as();
        cluster = Some(c);
        (a, signer)
    } else {
        (settings.addr.clone(), Arc::new(settings.signer(None)?))
    };
    let result = match args.what.as_str() {
        "submit" => submit_throughput(&addr, &signer, args.clients.max(1), args.jobs).await,
        "e2e" => end_to_end(&addr, &signer, args.clients.max(1), args.jobs.max(1)).await,
        _ => latency(&addr, &signer, args.jobs.min(10_000)).await,
    };
    if let Some(c) = cluster {
        c.stop().await;
    }
    result
}

/// What one bench job asks for: a worker offers its slots in these.
const SLOT_CPU_MILLIS: u64 = 100;
const SLOT_MEMORY: u64 = 16 << 20;

fn bench_spec(argv: &[&str]) -> JobSpec {
    JobSpec {
        name: "bench".into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: Default::default(),
        resources: Some(Resources {
            cpu_millis: SLOT_CPU_MILLIS,
            memory_bytes: SLOT_MEMORY,
            gpus: 0,
        }),
        max_retries: 0,
        preemptible: true,
        ..Default::default()
    }
}

async fn submit_throughput(
    addr: &str,
    signer: &Arc<Signer>,
    clients: usize,
    jobs: usize,
) -> Result<i32> {
    let client = connect(addr).await?;
    let started = Instant::now();
    let acked = submit_all(&client, signer, clients, jobs).await?;
    let secs = started.elapsed().as_secs_f64();
    let mut latencies: Vec<f64> = acked.iter().map(|(_, ms)| *ms).collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    println!(
        "submit: {} jobs acknowledged by {addr} with {clients} clients in {secs:.2} s = {:.0} submits/s (ack latency p50 {:.2} ms, p99 {:.2} ms)",
        latencies.len(),
        latencies.len() as f64 / secs,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    Ok(0)
}

/// End to end: `clients` submitters send `jobs` trivial jobs (`true`), one
/// signed submit each, as fast as they are acknowledged; then the bench
/// waits until the member has nothing pending or running. Jobs per second
/// is the jobs over the client's time from the first submit to the drain;
/// submit-to-start is the leader's clock (the submit's log time to the
/// worker's start report), from every job's record. The member should have
/// no other jobs (on --local it has none).
async fn end_to_end(addr: &str, signer: &Arc<Signer>, clients: usize, jobs: usize) -> Result<i32> {
    use coop_proto::api::{ListJobsRequest, ShareRequest};
    let client = connect(addr).await?;
    let member = signer.member.to_string();
    let outstanding = |client: crate::client::Client| {
        let member = member.clone();
        async move {
            let share = crate::client::call(&client, (), |mut c, ()| async move {
                c.share(ShareRequest {}).await
            })
            .await?;
            Ok::<_, anyhow::Error>(
                share
                    .members
                    .iter()
                    .find(|m| m.member == member)
                    .map_or(0, |m| m.pending + m.running),
            )
        }
    };
    if outstanding(client.clone()).await? > 0 {
        bail!("{member} already has jobs pending or running: e2e measures from an idle queue");
    }
    let started = Instant::now();
    let ids: std::collections::BTreeSet<u64> = submit_all(&client, signer, clients, jobs)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let submitted = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    while outstanding(client.clone()).await? > 0 {
        if Instant::now() > deadline {
            bail!("the jobs did not drain within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let listed = crate::client::call(
        &client,
        ListJobsRequest {
            state: 0,
            member: member.clone(),
            limit: u32::try_from(jobs.saturating_mul(2)).unwrap_or(u32::MAX),
        },
        |mut c, req| async move { c.list_jobs(req).await },
    )
    .await?;
    let mine: Vec<_> = listed.jobs.iter().filter(|j| ids.contains(&j.id)).collect();
    let succeeded = mine
        .iter()
        .filter(|j| crate::output::job_state(j.state) == "succeeded")
        .count();
    let mut to_start: Vec<f64> = mine
        .iter()
        .filter(|j| j.started_at_ms > 0)
        .map(|j| j.started_at_ms.saturating_sub(j.submitted_at_ms) as f64)
        .collect();
    to_start.sort_by(|a, b| a.total_cmp(b));
    println!(
        "e2e: {} jobs (`true`) via {addr} with {clients} submitters: submitted in {submitted:.2} s ({:.0} submits/s), all ended in {secs:.2} s = {:.1} jobs/s end to end; {succeeded} succeeded; submit-to-start p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ids.len(),
        ids.len() as f64 / submitted,
        ids.len() as f64 / secs,
        percentile(&to_start, 0.5),
        percentile(&to_start, 0.99),
        to_start.last().copied().unwrap_or(0.0)
    );
    Ok(0)
}

/// `jobs` trivial jobs submitted by `clients` concurrent submitters, each
/// as soon as its previous submit is acknowledged: every job's id with its
/// acknowledgement latency in milliseconds.
async fn submit_all(
    client: &crate::client::Client,
    signer: &Arc<Signer>,
    clients: usize,
    jobs: usize,
) -> Result<Vec<(u64, f64)>> {
    let next = Arc::new(AtomicU64::new(0));
    let spec = bench_spec(&["true"]);
    let run_id = crate::cmd::new_request_id();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, next, spec, run_id, signer) = (
            client.clone(),
            next.clone(),
            spec.clone(),
            run_id.clone(),
            signer.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= jobs as u64 {
                    return Ok::<_, anyhow::Error>(acked);
                }
                let t = Instant::now();
                let reply = submit_one(&client, &signer, &format!("{run_id}-{n}"), &spec).await?;
                acked.push((reply.job_id, t.elapsed().as_secs_f64() * 1000.0));
            }
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await??);
    }
    Ok(acked)
}

async fn latency(addr: &str, signer: &Signer, jobs: usize) -> Result<i32> {
    let client = connect(addr).await?;
    let spec = bench_spec(&["true"]);
    let run_id = crate::cmd::new_request_id();
    let mut starts = Vec::new();
    let mut observed = Vec::new();
    for n in 0..jobs {
        let t = Instant::now();
        let reply = submit_one(&client, signer, &format!("{run_id}-lat-{n}"), &spec).await?;
        // Poll until the worker has reported the process started.
        let deadline = Instant::now() + Duration::from_secs(30);
        let job = loop {
            let job = get_job(&client, reply.job_id, true).await?;
            if job.started_at_ms > 0 {
                break job;
            }
            if Instant::now() > deadline {
                bail!("job {} did not start within 30 s", reply.job_id);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        observed.push(t.elapsed().as_secs_f64() * 1000.0);
        starts.push(job.started_at_ms.saturating_sub(job.submitted_at_ms) as f64);
    }
    starts.sort_by(|a, b| a.total_cmp(b));
    observed.sort_by(|a, b| a.total_cmp(b));
    println!(
        "latency: {} jobs on an idle worker via {addr}: submit-to-start (leader clock: submit proposed -> worker reported start) p50 {:.1} ms, p99 {:.1} ms; client-observed submit-to-seen-running p50 {:.1} ms, p99 {:.1} ms",
        starts.len(),
        percentile(&starts, 0.5),
        percentile(&starts, 0.99),
        percentile(&observed, 0.5),
        percentile(&observed, 0.99)
    );
    Ok(0)
}

/// Leader loss to writes accepted again, on a local 3-replica cluster with
/// the default config: each trial stops the leader, then submits through a
/// surviving replica with the CLI's own retries and backoff, timing from
/// the stop to the acknowledgement; the stopped replica then rejoins.
async fn failover(dir: &std::path::Path, trials: usize) -> Result<i32> {
    let mut cluster = LocalCluster::start(dir, 3, &["bench"]).await?;
    let signer = cluster.signer("bench")?;
    signer.read_as();
    let spec = bench_spec(&["true"]);
    let run_id = crate::cmd::new_request_id();
    // One write before the first trial: genesis and a settled leader.
    let first = cluster.leader(Duration::from_secs(10)).await.unwrap_or(0);
    let client = connect(&cluster.addr(first).unwrap_or_default()).await?;
    submit_one(&client, &signer, &format!("{run_id}-warm"), &spec).await?;
    let mut times = Vec::new();
    for trial in 0..trials {
        let Some(leader) = cluster.leader(Duration::from_secs(10)).await else {
            bail!("trial {trial}: no leader");
        };
        let survivor = (leader + 1) % 3;
        let client = connect(&cluster.addr(survivor).unwrap_or_default()).await?;
        let t = Instant::now();
        let killed = cluster.kill_leader().await?;
        submit_one(&client, &signer, &format!("{run_id}-{trial}"), &spec).await?;
        let took = t.elapsed().as_secs_f64() * 1000.0;
        println!(
            "trial {:>2}: replica {} lost; writes accepted again after {took:.0} ms",
            trial + 1,
            killed + 1
        );
        times.push(took);
        cluster.restart(killed).await?;
        // Let it rejoin and catch up before the next loss.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "failover: {} trials, leader loss to the next acknowledged submit: median {:.0} ms, min {:.0} ms, max {:.0} ms",
        times.len(),
        percentile(&times, 0.5),
        times[0],
        times[times.len() - 1]
    );
    cluster.stop().await;
    Ok(0)
}

/// Builds a journal of `entries` leaves with the core (signed submits,
/// scheduling passes, node-signed started and finished reports, as a busy
/// cluster logs them), then times its replay from genesis.
fn audit(entries: usize) -> Result<i32> {
    use coop_core::decision_log::Replay;
    use coop_core::*;
    const CLUSTER: &str = "bench-audit";
    let members: Vec<(MemberId, SecretKey)> = (0..10)
        .map(|i| {
            Ok((
                MemberId::new(format!("m{i}")),
                crate::identity::generate_key()?,
            ))
        })
        .collect::<Result<_>>()?;
    let nodes: Vec<(NodeId, SecretKey)> = (0..10)
        .map(|i| {
            Ok((
                NodeId::new(format!("n{i}")),
                crate::identity::generate_key()?,
            ))
        })
        .collect::<Result<_>>()?;
    let mut live = ClusterState::new();
    let mut leaves: Vec<Vec<u8>> = Vec::with_capacity(entries);
    let mut now = 1_000u64;
    let push = |live: &mut ClusterState, leaves: &mut Vec<Vec<u8>>, cmd: Command| {
        let (_, leaf) = live.apply_logged(&cmd);
        leaves.push(leaf);
    };
    let founders = members
        .iter()
        .map(|(m, k)| Founder {
            name: m.clone(),
            key: k.public_key(),
        })
        .collect();
    push(
        &mut live,
        &mut leaves,
        Command::Genesis {
            cluster_id: CLUSTER.into(),
            policy: Policy::default(),
            members: founders,
            now_ms: now,
        },
    );
    for (i, (node, key)) in nodes.iter().enumerate() {
        let (owner, owner_key) = &members[i];
        let pk = key.public_key();
        let rid = format!("add-{node}");
        let auth = owner_key.sign_request(
            CLUSTER,
            owner,
            &rid,
            now,
            &MemberRequest::AddNode { node, key: &pk },
        );
        push(
            &mut live,
            &mut leaves,
            Command::AddNode {
                node: node.clone(),
                member: owner.clone(),
                key: pk,
                request_id: rid,
                auth,
                now_ms: now,
            },
        );
        let capacity = Resources::new(64_000, 256 << 30, 0);
        let addr = "10.0.0.1:7101".to_string();
        let auth = key.sign_node_report(
            CLUSTER,
            node,
            1,
            now,
            &NodeReport::Register {
                owner,
                capacity: &capacity,
                addr: &addr,
                gpus: &[],
                engines: &Default::default(),
            },
        );
        push(
            &mut live,
            &mut leaves,
            Command::RegisterNode {
                node: node.clone(),
                owner: owner.clone(),
                capacity,
                addr,
                incarnation: 1,
                now_ms: now,
                gpus: vec![],
                engines: Default::default(),
                auth,
            },
        );
    }
    let started = Instant::now();
    let mut n = 0u64;
    while leaves.len() < entries {
        now += 10;
        for _ in 0..50 {
            let (member, key) = &members[(n % 10) as usize];
            let spec =
                coop_core::JobSpec::command(vec!["true".into()], Resources::new(1000, 1 << 30, 0));
            let rid = format!("r{n}");
            let auth = key.sign_request(
                CLUSTER,
                member,
                &rid,
                now,
                &MemberRequest::Submit { spec: &spec },
            );
            push(
                &mut live,
                &mut leaves,
                Command::Submit {
                    request_id: rid,
                    member: member.clone(),
                    spec,
                    auth,
                    now_ms: now,
                    env_salt: None,
                },
            );
            n += 1;
        }
        push(&mut live, &mut leaves, Command::Schedule { now_ms: now });
        let allocs: Vec<(AllocId, NodeId)> = live
            .allocs()
            .values()
            .map(|a| (a.id, a.node.clone()))
            .collect();
        for (alloc, node) in allocs {
            let key = &nodes[node.as_str()[1..].parse::<usize>()?].1;
            let auth = key.sign_node_report(CLUSTER, &node, 1, now, &NodeReport::Started { alloc });
            push(
                &mut live,
                &mut leaves,
                Command::AllocStarted {
                    alloc,
                    node: node.clone(),
                    incarnation: 1,
                    auth,
                    now_ms: now,
                },
            );
            let exit = ExitStatus {
                code: Some(0),
                signal: None,
                error: String::new(),
            };
            let auth = key.sign_node_report(
                CLUSTER,
                &node,
                1,
                now,
                &NodeReport::Finished {
                    alloc,
                    exit: &exit,
                    result: None,
                },
            );
            push(
                &mut live,
                &mut leaves,
                Command::AllocFinished {
                    alloc,
                    node,
                    exit,
                    now_ms: now,
                    result: None,
                    incarnation: 1,
                    auth,
                },
            );
        }
    }
    let built = started.elapsed();
    let bytes: usize = leaves.iter().map(Vec::len).sum();
    let started = Instant::now();
    let mut replay = Replay::new();
    for (i, leaf) in leaves.iter().enumerate() {
        if let Err(e) = replay.step(i as u64, leaf) {
            bail!("the benchmark's own journal did not replay: {e}");
        }
    }
    let took = started.elapsed();
    if replay.root() != live.log_root() {
        bail!("the replay reached another root");
    }
    println!(
        "audit: replayed {} entries ({:.0} MiB, {} decisions) from genesis in {:.1} s = {:.0} entries/s (building the journal took {:.1} s)",
        leaves.len(),
        bytes as f64 / (1 << 20) as f64,
        replay.decisions,
        took.as_secs_f64(),
        leaves.len() as f64 / took.as_secs_f64(),
        built.as_secs_f64()
    );
    Ok(0)
}
