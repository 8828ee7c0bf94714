//! `coop dev` and `coop demo`: Coop on this machine with no setup.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use coop_proto::api::{
    propose_request, AppealChange, ClusterStatusRequest, GetPolicyRequest, JobSpec,
    ListJobsRequest, LogsRequest, ProposeRequest, Resources, VoteRequest,
};

use crate::client::connect;
use crate::cmd::jobs::{submit_one, wait_for};
use crate::cmd::new_request_id;
use crate::identity::{generate_key, load_key, write_key, Settings};
use crate::local::{LocalCluster, Members};
use crate::output::job_state;

/// `coop dev`: one replica and one worker, founded by you alone: your
/// member name (COOP_MEMBER, the context's, or $USER, else `dev`) with
/// your key, which is created if you have none yet.
pub async fn dev(settings: &Settings, data_dir: Option<PathBuf>, port: u16) -> Result<i32> {
    let member = settings.member(None).unwrap_or_else(|_| "dev".into());
    let key = match load_key(&settings.key) {
        Ok(k) => k,
        Err(_) if !settings.key.exists() => {
            let k = generate_key()?;
            write_key(&settings.key, &k, false)?;
            println!("created your member key: {}", settings.key.display());
            k
        }
        Err(e) => return Err(e),
    };
    let tmp;
    let dir = match data_dir {
        Some(d) => d,
        None => {
            tmp = tempfile::Builder::new().prefix("coop-dev-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| anyhow::anyhow!("port {port} is taken ({e}); pass --port 0 for a free one"))?;
    let addr = listener.local_addr()?.to_string();
    // Your dev cluster's CA lives with your config and is reused by every
    // `coop dev`, so the CA your CLI pins on first contact stays valid.
    let ca_dir = crate::identity::config_dir().join("dev-ca");
    let ca = match coop_proto::tls::ClusterCa::load(&ca_dir) {
        Ok(ca) => ca,
        Err(_) => {
            let ca = coop_proto::tls::ClusterCa::generate()?;
            ca.save(&ca_dir)?;
            ca
        }
    };
    let tls = coop_scheduler::local::issue(&ca, &dir.join("tls"))?;
    crate::client::trust_ca_pem(ca.cert_pem.clone());
    std::fs::create_dir_all(dir.join("worker"))?;
    std::fs::write(dir.join("worker").join("cluster-ca.pem"), &ca.cert_pem)?;
    let config = coop_scheduler::Config {
        id: 1,
        listen: addr.clone(),
        data_dir: dir.join("replica-1"),
        tls: Some(tls),
        // Each new dev cluster is a new history: its own id, so that the
        // head `coop audit checkpoint` remembers for one is never taken
        // for another's (a restart on the same --data-dir keeps its id).
        cluster_id: dev_cluster_id()?,
        // Checkpoints every second, so `coop audit` never waits long here.
        checkpoint_interval_ms: 1000,
        members: vec![coop_core::Founder {
            name: coop_core::MemberId::new(member.clone()),
            key: key.public_key(),
        }],
        ..Default::default()
    };
    let replica = coop_scheduler::Replica::start(config, listener).await?;
    match replica.initialize().await {
        Ok(()) | Err(coop_scheduler::error::StartError::AlreadyInitialized) => {}
        Err(e) => return Err(e.into()),
    }
    replica
        .node
        .wait_for_leader(Duration::from_secs(10))
        .await
        .ok_or_else(|| anyhow::anyhow!("the replica did not become leader"))?;
    let wl = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    // You authorize your own machine as your node, as `coop node add` does.
    let signer = crate::identity::Signer::new(coop_core::MemberId::new(member.clone()), key);
    crate::local::authorize_node(&addr, &signer, "dev-node", &dir.join("worker")).await?;
    let worker = coop_worker::Worker::start(
        coop_worker::WorkerConfig {
            node_id: "dev-node".into(),
            owner: member.clone(),
            schedulers: vec![addr.clone()],
            work_dir: dir.join("worker"),
            ..Default::default()
        },
        wl,
    )
    .await?;
    println!(
        "coop dev: one replica and one worker, data in {}",
        dir.display()
    );
    println!("scheduler address: {addr}");
    println!("founding member: {member} (key {})", settings.key.display());
    println!("try:  export COOP_ADDR={addr} COOP_MEMBER={member}");
    println!("      coop submit --wait -- echo hello");
    println!("Ctrl-C stops it.");
    tokio::signal::ctrl_c().await?;
    worker.stop();
    replica.stop().await;
    Ok(0)
}

/// `coop-dev-` and 8 random hex digits.
fn dev_cluster_id() -> Result<String> {
    crate::local::fresh_cluster_id("coop-dev")
}

fn demo_spec(member: &str, n: usize) -> JobSpec {
    JobSpec {
        name: format!("{member}-{n}"),
        argv: vec![
            "sh".into(),
            "-c".into(),
            format!("echo \"job $COOP_JOB_ID ({member} #{n}) ran on $(hostname)\"; sleep 1"),
        ],
        env: Default::default(),
        resources: Some(Resources {
            cpu_millis: 500,
            memory_bytes: 128 << 20,
            gpus: 0,
        }),
        max_retries: 2,
        preemptible: false,
        ..Default::default()
    }
}

pub async fn demo() -> Result<i32> {
    let started = Instant::now();
    let tmp = tempfile::Builder::new().prefix("coop-demo-").tempdir()?;
    println!(
        "== starting 3 scheduler replicas and 2 workers (data in {})",
        tmp.path().display()
    );
    let mut cluster = LocalCluster::start(tmp.path(), 3, &["ana", "ben", "cam"]).await?;
    // The demo reads as ana (her logs and status are hers to see).
    cluster.signer("ana")?.read_as();
    cluster.add_worker("node-ana", "ana", 2000, 2 << 30).await?;
    cluster.add_worker("node-ben", "ben", 2000, 2 << 30).await?;
    let leader = cluster.leader(Duration::from_secs(5)).await.unwrap_or(0);
    println!("   leader is replica {}", leader + 1);
    println!(
        "   replicas talk mutual TLS under the cluster's own CA (fingerprint {}…)",
        &coop_proto::tls::fingerprint(&cluster.replicas.ca_pem)?[..23]
    );
    println!("   ana and ben each authorized their machine's node key (coop node add): only that key can act as the node");
    // Talk to a follower: writes are forwarded, and it survives the leader's death.
    let follower = (leader + 1) % 3;
    let addr = cluster.addr(follower).unwrap_or_default();
    let client = connect(&addr).await?;
    let mut acked = Vec::new();
    println!(
        "== ana and ben submit 16 jobs (0.5 cpu, 1 s each) through replica {}",
        follower + 1
    );
    for n in 0..16 {
        let member = if n % 2 == 0 { "ana" } else { "ben" };
        if n == 8 {
            let killed = cluster.kill_leader().await?;
            println!(
                "== killed the leader, replica {}, after 8 acknowledged submits",
                killed + 1
            );
        }
        let signer = cluster.signer(member)?;
        let reply = submit_one(&client, &signer, &new_request_id(), &demo_spec(member, n)).await?;
        acked.push(reply.job_id);
        println!("   {member} submitted job {}", reply.job_id);
    }
    let new_leader = cluster.leader(Duration::from_secs(10)).await;
    match new_leader {
        Some(l) => println!(
            "== replica {} leads now; waiting for every acknowledged job",
            l + 1
        ),
        None => bail!("no new leader was elected"),
    }
    let mut failed = 0;
    for id in &acked {
        let job = tokio::time::timeout(Duration::from_secs(60), wait_for(&client, *id, false))
            .await
            .map_err(|_| anyhow::anyhow!("job {id} did not finish within 60 s"))??;
        if job_state(job.state) != "succeeded" {
            failed += 1;
        }
        println!(
            "   job {:>2} {:<9} {:<6} on {:<9} attempts {}",
            job.id,
            job_state(job.state),
            job.member,
            job.node,
            job.attempts
        );
    }
    let mut c = client.clone();
    let all = c
        .list_jobs(ListJobsRequest::default())
        .await
        .map_err(crate::client::explain)?
        .into_inner()
        .jobs;
    let logs = c
        .logs(LogsRequest {
            job_id: acked[0],
            stream: "stdout".into(),
            offset: 0,
            max_bytes: 4096,
        })
        .await
        .map_err(crate::client::explain)?
        .into_inner();
    println!(
        "== coop logs {}: {}",
        acked[0],
        String::from_utf8_lossy(&logs.data).trim()
    );
    println!("== summary");
    println!(
        "   acknowledged {} · present {} · succeeded {} · failed {}",
        acked.len(),
        all.len(),
        acked.len() - failed,
        failed
    );
    println!(
        "   leader failover survived; took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let lost = acked
        .iter()
        .filter(|id| !all.iter().any(|j| j.id == **id))
        .count();
    if lost > 0 || failed > 0 || all.len() != acked.len() {
        println!("   FAILED: {lost} acknowledged jobs missing, {failed} did not succeed");
        cluster.stop().await;
        return Ok(1);
    }
    println!("   every acknowledged job is present and ran to completion");
    let mut code = fair_share_act(&client, &addr, &cluster.members).await?;
    if code == 0 {
        code = evaluation_act(&client, &addr, &cluster.members, tmp.path()).await?;
    }
    if code == 0 {
        code = governance_act(&client, &addr, &cluster.members).await?;
    }
    cluster.stop().await;
    Ok(code)
}

/// Act four: the policy changes only by member vote. Ana proposes a higher
/// floor; everyone sees its what-if; ben and ana vote yes and it is
/// adopted, in the log, with the tally.
async fn governance_act(
    client: &crate::client::Client,
    addr: &str,
    members: &Members,
) -> Result<i32> {
    use coop_core::governance::ProposalKind;
    println!();
    println!("== governance: ana proposes a higher floor (policy version 2), members vote");
    // Some demand, so that entitlements are at stake.
    for who in ["ana", "cam", "cam"] {
        let req = members[who]
            .submit(client, &new_request_id(), sleeper(3, true))
            .await?;
        client
            .clone()
            .submit(req)
            .await
            .map_err(crate::client::explain)?;
    }
    let text = "version = 2\nfloor = 0.8\ngrace_secs = 2\n";
    let kind = ProposalKind::Policy {
        policy: coop_core::Policy::from_toml(text)?,
    };
    let id = propose_as(
        client,
        members,
        "ana",
        &kind,
        propose_request::Change::PolicyToml(text.into()),
    )
    .await?;
    println!("== coop proposals (with the what-if the core computes on the current state)");
    crate::cmd::governance::proposals(addr, crate::output::Format::Table, false).await?;
    for who in ["ben", "ana"] {
        let status = vote_yes(client, members, who, id).await?;
        println!("   {who} votes yes: the proposal is {status}");
    }
    let policy = client
        .clone()
        .get_policy(GetPolicyRequest {})
        .await
        .map_err(crate::client::explain)?
        .into_inner();
    if policy.version != 2 {
        println!(
            "   FAILED: policy version {} in force, not 2",
            policy.version
        );
        return Ok(1);
    }
    println!(
        "== coop policy show: version {} is in force, by member vote",
        policy.version
    );
    let status = client
        .clone()
        .cluster_status(ClusterStatusRequest {})
        .await
        .map_err(crate::client::explain)?
        .into_inner();
    println!(
        "   every decision so far is a leaf of the decision log: {} entries, root {}…",
        status.log_size,
        &status.log_root[..16]
    );
    if appeal_act(client, addr, members).await? != 0 {
        return Ok(1);
    }
    audit_act(addr).await
}

/// Cam appeals the preemption of one of his burst jobs; ana and ben uphold
/// it, and the policy's remedy (a usage credit) is applied and recorded.
async fn appeal_act(client: &crate::client::Client, addr: &str, members: &Members) -> Result<i32> {
    let jobs = client
        .clone()
        .list_jobs(ListJobsRequest {
            member: "cam".into(),
            ..Default::default()
        })
        .await
        .map_err(crate::client::explain)?
        .into_inner()
        .jobs;
    // Lists are compact: the history comes with each job on its own.
    let mut preempted = None;
    for j in &jobs {
        let full = client
            .clone()
            .get_job(coop_proto::api::GetJobRequest {
                job_id: j.id,
                brief: false,
            })
            .await
            .map_err(crate::client::explain)?
            .into_inner();
        if full.history.iter().any(|h| h.what.contains("preempted")) {
            preempted = Some(full);
            break;
        }
    }
    let Some(job) = preempted else {
        println!("   (no preempted job of cam's to appeal)");
        return Ok(0);
    };
    println!();
    println!(
        "== cam appeals the preemption of his job {} (coop appeal {} --reason ...)",
        job.id, job.id
    );
    let kind = coop_core::governance::ProposalKind::Appeal {
        job: coop_core::JobId(job.id),
        reason: "preempted mid-run; I ask for the lost time back".into(),
    };
    let id = propose_as(
        client,
        members,
        "cam",
        &kind,
        propose_request::Change::Appeal(AppealChange {
            job_id: job.id,
            reason: "preempted mid-run; I ask for the lost time back".into(),
        }),
    )
    .await?;
    for who in ["ana", "ben"] {
        vote_yes(client, members, who, id).await?;
        println!("   {who} votes to uphold it");
    }
    println!("== coop appeals");
    crate::cmd::governance::proposals(addr, crate::output::Format::Table, true).await?;
    Ok(0)
}

/// `who` proposes `kind` (sent as `change`), signed with its key; the
/// proposal's id.
async fn propose_as(
    client: &crate::client::Client,
    members: &Members,
    who: &str,
    kind: &coop_core::governance::ProposalKind,
    change: propose_request::Change,
) -> Result<u64> {
    let request_id = new_request_id();
    let auth = members[who]
        .sign(
            client,
            &request_id,
            &coop_core::MemberRequest::Propose { kind },
        )
        .await?;
    Ok(client
        .clone()
        .propose(ProposeRequest {
            member: who.into(),
            request_id,
            issued_at_ms: auth.issued_at_ms,
            signature: auth.signature.0.to_vec(),
            change: Some(change),
        })
        .await
        .map_err(crate::client::explain)?
        .into_inner()
        .proposal_id)
}

/// `who` votes yes on proposal `id`, signed with its key; the proposal's
/// status after the vote.
async fn vote_yes(
    client: &crate::client::Client,
    members: &Members,
    who: &str,
    id: u64,
) -> Result<String> {
    let request_id = new_request_id();
    let auth = members[who]
        .sign(
            client,
            &request_id,
            &coop_core::MemberRequest::Vote {
                proposal: id,
                yes: true,
            },
        )
        .await?;
    Ok(client
        .clone()
        .vote(VoteRequest {
            member: who.into(),
            request_id,
            proposal_id: id,
            yes: true,
            issued_at_ms: auth.issued_at_ms,
            signature: auth.signature.0.to_vec(),
        })
        .await
        .map_err(crate::client::explain)?
        .into_inner()
        .status)
}

/// Act five: anyone can recompute every decision. The journal is exported
/// and replayed offline; a copy with one flipped byte fails, naming the
/// entry.
async fn audit_act(addr: &str) -> Result<i32> {
    use crate::output::Format;
    println!();
    println!("== coop audit checkpoint: the log's head, signed by the live replicas (a majority makes it valid)");
    if crate::cmd::audit::checkpoint(addr, Format::Table).await? != 0 {
        println!("   FAILED: no valid checkpoint");
        return Ok(1);
    }
    println!();
    println!("== coop audit: export the journal, replay it from genesis offline");
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("journal.bin");
    crate::cmd::audit::export(addr, Format::Table, &file).await?;
    println!("== coop audit verify --journal journal.bin");
    let offline = |journal| crate::cmd::audit::VerifyOptions {
        journal: Some(journal),
        ..Default::default()
    };
    if crate::cmd::audit::verify(addr, Format::Table, offline(&file)).await? != 0 {
        println!("   FAILED: an honest journal did not verify");
        return Ok(1);
    }
    // Flip one byte inside a leaf about two thirds of the way in.
    let mut bytes = std::fs::read(&file)?;
    let start = bytes.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut at = start;
    let mut entries = Vec::new();
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at + 8..at + 12].try_into()?) as usize;
        entries.push((at + 12, len));
        at += 12 + len;
    }
    let (leaf_at, len) = entries[entries.len() * 2 / 3];
    bytes[leaf_at + len / 2] ^= 0x01;
    let forged = dir.path().join("journal-forged.bin");
    std::fs::write(&forged, &bytes)?;
    println!(
        "== the same journal with one byte flipped (entry {}), verified again",
        entries.len() * 2 / 3
    );
    if crate::cmd::audit::verify(addr, Format::Table, offline(&forged)).await? == 0 {
        println!("   FAILED: a forged journal verified");
        return Ok(1);
    }
    Ok(0)
}

/// Act three: three ONNX classifiers and their ensemble scored on one
/// dataset by a worker, shown as a leaderboard.
async fn evaluation_act(
    client: &crate::client::Client,
    addr: &str,
    members: &Members,
    dir: &std::path::Path,
) -> Result<i32> {
    use coop_worker::model::examples;
    println!();
    println!(
        "== model evaluation: three ONNX classifiers and their ensemble on one labelled dataset"
    );
    let models = examples::classifiers(dir)?;
    let data = examples::dataset(dir)?;
    let artifact = |p: &std::path::Path| coop_proto::api::Artifact {
        uri: p.display().to_string(),
        sha256: None,
    };
    let spec = JobSpec {
        name: "points-eval".into(),
        resources: Some(Resources {
            cpu_millis: 500,
            memory_bytes: 256 << 20,
            gpus: 0,
        }),
        evaluation: Some(coop_proto::api::EvaluationSpec {
            models: models.iter().map(|m| artifact(m)).collect(),
            dataset: Some(artifact(&data)),
            label_column: "label".into(),
            task: coop_proto::api::EvalTask::Classification as i32,
            metrics: vec![],
            options: None,
        }),
        ..Default::default()
    };
    let id = submit_one(client, &members["ana"], &new_request_id(), &spec)
        .await?
        .job_id;
    let job = tokio::time::timeout(Duration::from_secs(60), wait_for(client, id, false))
        .await
        .map_err(|_| anyhow::anyhow!("evaluation job {id} did not finish within 60 s"))??;
    if job_state(job.state) != "succeeded" {
        println!(
            "   FAILED: evaluation job {id} {}: {}",
            job_state(job.state),
            job.message
        );
        return Ok(1);
    }
    // The same evaluation split in 3 shards, which run side by side and
    // merge into one entry per model: the same scores, from the shards'
    // tallies.
    println!("== the same evaluation as 3 shards (coop submit ... --shards 3)");
    let mut sharded = spec.clone();
    sharded.name = "points-eval-sharded".into();
    sharded.array = Some(coop_proto::api::ArrayRange { first: 0, last: 2 });
    sharded.max_retries = 2;
    if let Some(e) = sharded.evaluation.as_mut() {
        e.options = Some(coop_proto::api::ModelOptions {
            shards: 3,
            ..Default::default()
        });
    }
    let first = submit_one(client, &members["ana"], &new_request_id(), &sharded)
        .await?
        .job_id;
    let started = Instant::now();
    loop {
        let j = crate::cmd::jobs::get_job(client, first, false).await?;
        let a = j.array.unwrap_or_default();
        if a.merged.is_some() {
            println!(
                "   shards {first}-{}: all 3 succeeded and merged",
                first + 2
            );
            break;
        }
        if a.failed + a.cancelled > 0 || !a.merge_error.is_empty() {
            println!("   FAILED: sharded evaluation {first}: {a:?}");
            return Ok(1);
        }
        if started.elapsed() > Duration::from_secs(60) {
            println!("   FAILED: sharded evaluation {first} did not finish within 60 s");
            return Ok(1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("== coop evals");
    crate::cmd::models::evals(addr, crate::output::Format::Table, None).await?;
    Ok(0)
}

fn sleeper(secs: u32, preemptible: bool) -> JobSpec {
    JobSpec {
        argv: vec!["sleep".into(), secs.to_string()],
        resources: Some(Resources {
            cpu_millis: 500,
            memory_bytes: 64 << 20,
            gpus: 0,
        }),
        preemptible,
        ..Default::default()
    }
}

/// Act two: cam, who contributes no machine, bursts onto the idle pool;
/// ana and ben, who do, take their share back by preemption.
async fn fair_share_act(
    client: &crate::client::Client,
    addr: &str,
    members: &Members,
) -> Result<i32> {
    println!();
    println!(
        "== fair share: cam (no machines) bursts 8 preemptible jobs onto the idle pool (4 cpus)"
    );
    let mut cams = Vec::new();
    for _ in 0..8 {
        cams.push(
            submit_one(
                client,
                &members["cam"],
                &new_request_id(),
                &sleeper(60, true),
            )
            .await?
            .job_id,
        );
    }
    wait_state(client, &cams, "running", Duration::from_secs(30)).await?;
    println!("   all 8 run: the pool was idle, so cam may use all of it (work conserving)");
    println!("== ana and ben, who contribute node-ana and node-ben, submit 2 jobs each");
    let mut owners = Vec::new();
    for m in ["ana", "ben"] {
        for _ in 0..2 {
            owners.push(
                submit_one(client, &members[m], &new_request_id(), &sleeper(3, false))
                    .await?
                    .job_id,
            );
        }
    }
    wait_state(client, &owners, "running", Duration::from_secs(60)).await?;
    println!("   they reclaimed their machines: cam's jobs were preempted (SIGTERM, grace, SIGKILL) and requeued");
    println!("== coop share");
    crate::cmd::fairness::share(addr, crate::output::Format::Table).await?;
    println!("== coop top --once");
    crate::top::run(addr, true, Duration::from_secs(1)).await?;
    let mut c = client.clone();
    let waiting = c
        .list_jobs(ListJobsRequest {
            state: coop_proto::api::JobState::Pending as i32,
            member: "cam".into(),
            limit: 1,
        })
        .await
        .map_err(crate::client::explain)?
        .into_inner()
        .jobs;
    if let Some(j) = waiting.first() {
        println!("== coop why {}", j.id);
        crate::cmd::fairness::why(addr, crate::output::Format::Table, j.id).await?;
    }
    println!("== coop status {} (one of ana's)", owners[0]);
    crate::cmd::jobs::status(addr, crate::output::Format::Table, owners[0]).await?;
    refusals_act(client, members, owners[0]).await?;
    wait_state(client, &owners, "succeeded", Duration::from_secs(60)).await?;
    for id in &cams {
        let req = members["cam"]
            .cancel(client, &new_request_id(), *id, false)
            .await?;
        let _ = c.cancel(req).await;
    }
    println!("== the owners' jobs succeeded; cam's burst is cancelled; the demo is over");
    Ok(0)
}

/// Members are keys: a request in ana's name signed with cam's key, and cam
/// cancelling ana's job, are both refused (and cost no log entry).
async fn refusals_act(
    client: &crate::client::Client,
    members: &Members,
    anas_job: u64,
) -> Result<()> {
    println!("== members are keys: cam tries to act in ana's name");
    let mut forged = members["cam"]
        .submit(client, &new_request_id(), sleeper(1, false))
        .await?;
    forged.member = "ana".into();
    match client.clone().submit(forged).await {
        Err(s) => println!(
            "   a submit in ana's name, signed with cam's key: refused ({:?}: {})",
            s.code(),
            s.message()
        ),
        Ok(r) => bail!(
            "a forged submit was accepted as job {}",
            r.into_inner().job_id
        ),
    }
    let cancel = members["cam"]
        .cancel(client, &new_request_id(), anas_job, false)
        .await?;
    match client.clone().cancel(cancel).await {
        Err(s) => println!(
            "   cam cancelling ana's job {anas_job}: refused ({:?}: {})",
            s.code(),
            s.message()
        ),
        Ok(_) => bail!("cam cancelled ana's job {anas_job}"),
    }
    Ok(())
}

/// Waits until each job is in `state`; "running" also accepts a job that
/// already ended after starting.
async fn wait_state(
    client: &crate::client::Client,
    jobs: &[u64],
    state: &str,
    limit: Duration,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    for id in jobs {
        loop {
            let j = crate::cmd::jobs::get_job(client, *id, true).await?;
            let now = job_state(j.state);
            if now == state || (state == "running" && now == "succeeded") {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "job {id} is {now} after {} s, expected {state}",
                    limit.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
