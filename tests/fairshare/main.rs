//! Fair share end to end: real replicas, a real worker process, real jobs.
//! A member without machines bursts onto the idle pool; the contributor's
//! submissions reclaim its entitlement by preemption; `why` and `share`
//! show the numbers.

use coop_e2e::Proc;
use coop_e2e::StateName;

use std::process::Stdio;
use std::time::Duration;

use coop_core::Policy;
use coop_proto::api::*;

const LIMIT: Duration = Duration::from_secs(60);

fn job_spec(argv: &[&str], preemptible: bool) -> JobSpec {
    JobSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        resources: Some(Resources {
            cpu_millis: 1000,
            memory_bytes: 32 << 20,
            gpus: 0,
        }),
        preemptible,
        ..Default::default()
    }
}

/// Retries UNAVAILABLE (elections); any other failure fails the test.
async fn call<T, F, Fut>(f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match coop_e2e::retry_unavailable(f).await {
        Ok(r) => r.into_inner(),
        Err(s) => panic!("call failed: {s}"),
    }
}

async fn submit(c: &coop_e2e::Client, member: &str, req: &str, spec: JobSpec) -> u64 {
    call(|| {
        let mut c = c.clone();
        let r = coop_e2e::submit_request(member, req, spec.clone());
        async move { c.submit(r).await }
    })
    .await
    .job_id
}

async fn get(c: &coop_e2e::Client, id: u64) -> Job {
    call(|| {
        let mut c = c.clone();
        async move {
            c.get_job(GetJobRequest {
                job_id: id,
                brief: false,
            })
            .await
        }
    })
    .await
}

async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_fills_the_pool_and_the_contributor_reclaims_its_share() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(tmp.path(), 3, |c| {
        c.heartbeat_interval_ms = 100;
        c.heartbeat_timeout_ms = 10_000;
        c.policy = Some(Policy {
            grace_secs: 1,
            ..Policy::default()
        });
    })
    .await;
    let addrs = cluster.addrs();
    coop_e2e::add_node(&addrs, "olga", "olga-box").await;
    let _worker = Proc(
        coop_e2e::worker("olga-box", "olga", "4", &addrs, tmp.path().join("w"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let c = coop_e2e::client(&addrs[1]);
    let policy = call(|| {
        let mut c = c.clone();
        async move { c.get_policy(GetPolicyRequest {}).await }
    })
    .await;
    assert!(
        policy.toml.contains("grace_secs = 1"),
        "the genesis policy from the config is in force: {}",
        policy.toml
    );

    // Pete has no machine. The pool is idle, so his burst takes all of it.
    let mut burst = Vec::new();
    for i in 0..4 {
        burst.push(
            submit(
                &c,
                "pete",
                &format!("b{i}"),
                job_spec(&["sleep", "60"], true),
            )
            .await,
        );
    }
    for id in &burst {
        let c = c.clone();
        let id = *id;
        wait_until("the burst to run", || {
            let c = c.clone();
            async move { get(&c, id).await.state_name() == "running" }
        })
        .await;
    }

    // Olga contributes the machine: she is entitled to 0.5/2 + 0.5 = 75%.
    let mut hers = Vec::new();
    for i in 0..2 {
        hers.push(
            submit(
                &c,
                "olga",
                &format!("o{i}"),
                job_spec(&["sh", "-c", "sleep 1"], false),
            )
            .await,
        );
    }
    for id in &hers {
        let c = c.clone();
        let id = *id;
        wait_until("olga's jobs to succeed by reclaim", || {
            let c = c.clone();
            async move { get(&c, id).await.state_name() == "succeeded" }
        })
        .await;
    }
    let olga_job = get(&c, hers[0]).await;
    assert!(
        olga_job
            .decisions
            .iter()
            .any(|d| d.rule == coop_proto::api::Rule::OwnerFirst as i32 && d.policy_version == 1),
        "{olga_job:?}"
    );

    // Two of pete's jobs were preempted (owner-reclaim), requeued without
    // spending a retry, and run again once olga's finished.
    let mut preempted = 0;
    for id in &burst {
        let j = get(&c, *id).await;
        if j.history.iter().any(|h| {
            h.what
                .contains("preempted on olga-box (rule: owner-reclaim, policy v1)")
        }) {
            preempted += 1;
            assert_eq!(j.attempts, 0, "{j:?}");
            assert!(
                j.history
                    .iter()
                    .any(|h| h.what.contains("requeued without spending a retry")),
                "{j:?}"
            );
        }
    }
    assert_eq!(preempted, 2);

    // Now olga asks for three: she gets them back from pete, and pete's
    // waiting job is explained.
    let mut third = Vec::new();
    for i in 0..3 {
        third.push(
            submit(
                &c,
                "olga",
                &format!("p{i}"),
                job_spec(&["sleep", "30"], false),
            )
            .await,
        );
    }
    for id in &third {
        let c = c.clone();
        let id = *id;
        wait_until("olga's three jobs to run", || {
            let c = c.clone();
            async move { get(&c, id).await.state_name() == "running" }
        })
        .await;
    }
    let share = call(|| {
        let mut c = c.clone();
        async move { c.share(ShareRequest {}).await }
    })
    .await;
    let olga = share.members.iter().find(|m| m.member == "olga").unwrap();
    let pete = share.members.iter().find(|m| m.member == "pete").unwrap();
    assert!((olga.entitlement - 0.75).abs() < 1e-6, "{olga:?}");
    assert!((pete.entitlement - 0.25).abs() < 1e-6, "{pete:?}");
    assert!((olga.cpu_share - 0.75).abs() < 1e-6, "{olga:?}");
    assert!((pete.cpu_share - 0.25).abs() < 1e-6, "{pete:?}");
    assert!(olga.contribution > 0.0 && pete.contribution == 0.0);
    let waiting = {
        let mut w = None;
        for id in &burst {
            let j = get(&c, *id).await;
            if j.state_name() == "pending" {
                w = Some(j.id);
                break;
            }
        }
        w.expect("a burst job waits")
    };
    let why = call(|| {
        let mut c = c.clone();
        async move { c.why(WhyRequest { job_id: waiting }).await }
    })
    .await;
    assert_eq!(why.member, "pete");
    assert!((why.entitlement - 0.25).abs() < 1e-6, "{why:?}");
    // pete holds his 25%: another job would take him past it, so it only
    // borrows idle room, and the pool is full.
    assert!(
        why.reasons.iter().any(|r| r.code == "nodes_busy")
            && why.reasons.iter().any(|r| r.code == "above_entitlement"),
        "{why:?}"
    );
    assert!(
        why.queue_position >= 1 && !why.would_start.is_empty(),
        "{why:?}"
    );
    cluster.stop_all().await;
}
