//! Job isolation on a real worker process: each job as its own uid with a
//! work dir no other job can read, memory held to the allocation, a
//! timeout, and work dirs removed after the retention period.

use coop_e2e::Proc;
use coop_e2e::StateName;

use std::process::Stdio;
use std::time::Duration;

use coop_proto::api::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn spec(script: &str, memory_bytes: u64, timeout_secs: Option<u64>) -> JobSpec {
    JobSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        resources: Some(Resources {
            cpu_millis: 500,
            memory_bytes,
            gpus: 0,
        }),
        timeout_secs,
        ..Default::default()
    }
}

async fn submit(c: &coop_e2e::Client, id: &str, spec: JobSpec) -> u64 {
    let req = coop_e2e::submit_request("ana", id, spec);
    c.clone().submit(req).await.unwrap().into_inner().job_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_are_confined() {
    if !is_root() {
        eprintln!("skipped: running jobs as other uids needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("w");
    let cluster = coop_e2e::replicas(dir.path(), 1, |c| c.heartbeat_interval_ms = 100).await;
    let addrs = cluster.addrs();
    coop_e2e::add_node(&addrs, "ana", "w1").await;
    let _worker = Proc(
        coop_e2e::worker("w1", "ana", "2", &addrs, &work)
            .args(["--job-uid-base", "61000", "--retention-secs", "3"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let c = coop_e2e::client(&addrs[0]);
    let logs = |job: u64, stream: &str| {
        let mut c = c.clone();
        let req = LogsRequest {
            job_id: job,
            stream: stream.into(),
            offset: 0,
            max_bytes: 4096,
        };
        async move { String::from_utf8_lossy(&c.logs(req).await.unwrap().into_inner().data).to_string() }
    };

    // One member's job keeps a secret in its work dir...
    let a = submit(
        &c,
        "a",
        spec("id -u; echo secret > mine.txt; sleep 2", 64 << 20, None),
    )
    .await;
    let a_job = coop_e2e::wait_job(&addrs[..1], a, |j| j.state_name() == "running").await;
    // ...which another job cannot read.
    let peek = format!(
        "id -u; cat {}/allocs/{}/mine.txt",
        work.display(),
        a_job.alloc_id
    );
    let b = submit(&c, "b", spec(&peek, 64 << 20, None)).await;
    let b_job = coop_e2e::wait_job(&addrs[..1], b, coop_e2e::ended).await;
    assert_eq!(b_job.state_name(), "failed", "{b_job:?}");
    assert!(logs(b, "stderr").await.contains("Permission denied"));
    let a_job = coop_e2e::wait_job(&addrs[..1], a, coop_e2e::ended).await;
    assert_eq!(a_job.state_name(), "succeeded", "{a_job:?}");
    let (uid_a, uid_b) = (logs(a, "stdout").await, logs(b, "stdout").await);
    assert_ne!(uid_a.trim(), "0");
    assert_ne!(
        uid_a.trim(),
        uid_b.lines().next().unwrap_or("").trim(),
        "each job has its own uid"
    );

    // Memory is held to the allocation (cgroup v2 or RLIMIT_DATA).
    let hog = submit(
        &c,
        "hog",
        spec(
            "python3 -c 'x = bytearray(512 * 1024 * 1024)'",
            64 << 20,
            None,
        ),
    )
    .await;
    let hog_job = coop_e2e::wait_job(&addrs[..1], hog, coop_e2e::ended).await;
    assert_eq!(hog_job.state_name(), "failed", "{hog_job:?}");

    // A timeout stops the run.
    let slow = submit(&c, "slow", spec("sleep 30", 64 << 20, Some(1))).await;
    let slow_job = coop_e2e::wait_job(&addrs[..1], slow, coop_e2e::ended).await;
    assert!(
        slow_job.message.contains("timed out after 1 s"),
        "{slow_job:?}"
    );

    // The scrubbed environment has only what coop sets.
    let env = submit(
        &c,
        "env",
        spec("env | cut -d= -f1 | sort | tr '\\n' ' '", 64 << 20, None),
    )
    .await;
    coop_e2e::wait_job(&addrs[..1], env, coop_e2e::ended).await;
    assert_eq!(
        logs(env, "stdout").await.trim(),
        "COOP_ALLOC_ID COOP_JOB_ID CUDA_VISIBLE_DEVICES HOME PATH PWD"
    );

    // Work dirs go after the retention period.
    let a_dir = work.join("allocs").join(a_job.alloc_id.to_string());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while a_dir.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} was not removed",
            a_dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.stop_all().await;
}
