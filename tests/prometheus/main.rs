//! The shipped monitoring against a real Prometheus: a local cluster runs a
//! workload (with a reclaim), Prometheus scrapes every replica and the
//! worker, and every PromQL expression of the Grafana dashboard and of the
//! alert rules in deploy/ returns data. `promtool` checks the shipped
//! config and runs the rule unit tests. Needs Debian's `prometheus` package
//! (`.ci/run` installs it); without it the test says so and passes.

use coop_e2e::Proc;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use coop_core::Policy;
use coop_proto::api::*;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The expressions to check: every dashboard target, and the signal side
/// (left of the final comparison) of every alert.
fn expressions() -> Vec<String> {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/coop-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_string())
        })
        .collect();
    let rules = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    for line in rules.lines() {
        if let Some(expr) = line.trim().strip_prefix("expr: ") {
            exprs.push(signal(expr));
        }
    }
    exprs
}

/// `a op b` -> `a`, splitting at the last top-level comparison.
fn signal(expr: &str) -> String {
    let bytes = expr.as_bytes();
    let mut depth = 0i32;
    let mut cut = None;
    for (i, c) in bytes.iter().enumerate() {
        match c {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b'<' | b'>' if depth == 0 => cut = Some(i),
            _ => {}
        }
    }
    cut.map(|i| expr[..i].trim().to_string())
        .unwrap_or_else(|| expr.to_string())
}

fn query(prom: &str, expr: &str) -> usize {
    let url = format!("http://{prom}/api/v1/query");
    let Ok(resp) = ureq::get(&url).query("query", expr).call() else {
        return 0;
    };
    let body: serde_json::Value =
        serde_json::from_reader(resp.into_body().into_reader()).unwrap_or_default();
    body["data"]["result"].as_array().map(Vec::len).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_and_alert_expression_returns_data() {
    if !have("prometheus") || !have("promtool") {
        eprintln!("skipped: Debian's prometheus package is not installed (.ci/run installs it)");
        return;
    }
    // The shipped files are valid.
    for args in [
        vec!["check", "config", "prometheus/prometheus.yml"],
        vec!["test", "rules", "prometheus/alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(deploy())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let cluster = coop_e2e::replicas(dir.path(), 3, |c| {
        c.heartbeat_interval_ms = 100;
        c.policy = Some(Policy {
            grace_secs: 1,
            ..Policy::default()
        });
    })
    .await;
    let addrs = cluster.addrs();
    coop_e2e::add_node(&addrs, "olga", "olga-box").await;
    let mut worker = coop_e2e::worker("olga-box", "olga", "4", &addrs, dir.path().join("w"))
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = worker.stdout.take().unwrap();
    let _worker = Proc(worker);
    let mut worker_metrics = String::new();
    let mut lines = BufReader::new(out).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("metrics on http://") {
            worker_metrics = rest.trim_end_matches("/metrics").to_string();
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    assert!(
        !worker_metrics.is_empty(),
        "the worker printed no metrics address"
    );

    // A workload with every kind of decision: a burst on the idle pool,
    // then the owner reclaiming by preemption.
    let c = coop_e2e::client(&addrs[0]);
    let spec = |argv: &[&str], preemptible: bool| JobSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        resources: Some(Resources {
            cpu_millis: 1000,
            memory_bytes: 32 << 20,
            gpus: 0,
        }),
        preemptible,
        ..Default::default()
    };
    let submit = |member: &str, req: String, spec: JobSpec| {
        let mut c = c.clone();
        let r = coop_e2e::submit_request(member, &req, spec);
        async move { c.submit(r).await.unwrap().into_inner().job_id }
    };
    for i in 0..4 {
        submit("pete", format!("p{i}"), spec(&["sleep", "60"], true)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut olga = Vec::new();
    for i in 0..2 {
        olga.push(submit("olga", format!("o{i}"), spec(&["sleep", "1"], false)).await);
    }

    // Prometheus, scraping every replica and the worker each second.
    let targets: Vec<String> = cluster
        .replicas
        .iter()
        .flatten()
        .map(|r| format!("\"{}\"", r.metrics_addr.clone().unwrap()))
        .collect();
    let port = coop_e2e::free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: coop-scheduler\n    static_configs:\n      - targets: [{}]\n  - job_name: coop-worker\n    static_configs:\n      - targets: [\"{worker_metrics}\"]\n",
            deploy().join("prometheus/alerts.yml").display(),
            targets.join(", ")
        ),
    )
    .unwrap();
    let _prom = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom = format!("127.0.0.1:{port}");
    let exprs = expressions();
    assert!(exprs.len() > 20, "expressions found: {exprs:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut missing: Vec<String> = exprs.clone();
    while !missing.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let prom = prom.clone();
        missing = tokio::task::spawn_blocking(move || {
            missing
                .into_iter()
                // NVML series exist only where a GPU and its driver are.
                .filter(|e| !e.contains("coop_worker_gpu_"))
                .filter(|e| query(&prom, e) == 0)
                .collect()
        })
        .await
        .unwrap();
    }
    assert!(
        missing.is_empty(),
        "these expressions returned no data: {missing:#?}"
    );
    cluster.stop_all().await;
}
