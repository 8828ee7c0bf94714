//! The `coop` command as a user runs it: `coop dev` in the background, then
//! the README's commands against it, checking output and exit codes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn coop(addr: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coop"))
        .args(args)
        .env("COOP_ADDR", addr)
        .env("COOP_MEMBER", "ana")
        .output()
        .expect("run coop")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn the_readme_commands_work_against_coop_dev() {
    let dir = tempfile::tempdir().unwrap();
    // Keys and contexts go to this test's own config dir, never the user's.
    std::env::set_var("XDG_CONFIG_HOME", dir.path().join("config"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_coop"))
        .args(["dev", "--port", "0", "--data-dir"])
        .arg(dir.path().join("dev"))
        .env("COOP_MEMBER", "ana")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let _dev = Dev(child);
    let mut addr = String::new();
    let mut lines = BufReader::new(out).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("scheduler address: ") {
            addr = a.trim().to_string();
            break;
        }
    }
    // Keep reading what coop dev prints, so it never writes to a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    assert!(!addr.is_empty(), "coop dev printed no address");

    let o = coop(&addr, &["submit", "--wait", "--", "echo", "hello"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("succeeded"), "{}", stdout(&o));
    let o = coop(&addr, &["logs", "1"]);
    assert_eq!(stdout(&o), "hello\n");
    let o = coop(&addr, &["submit", "--wait", "--", "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(1), "a failed job fails the command");
    let o = coop(&addr, &["jobs", "-o", "json"]);
    let jobs: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 2);
    for args in [
        vec!["status", "1"],
        vec!["why", "1"],
        vec!["share"],
        vec!["policy", "show"],
        vec!["nodes"],
        vec!["cluster", "status"],
        vec!["evals"],
        vec!["top", "--once"],
    ] {
        let o = coop(&addr, &args);
        assert!(o.status.success(), "coop {args:?}: {}", stderr(&o));
        assert!(!stdout(&o).is_empty(), "coop {args:?} printed nothing");
    }
    assert!(stdout(&coop(&addr, &["policy", "show"])).contains("floor = 0.5"));

    // An evaluation of the example models, through the CLI.
    let models = coop_worker::model::examples::classifiers(dir.path()).unwrap();
    let data = coop_worker::model::examples::dataset(dir.path()).unwrap();
    let (m0, m1) = (
        models[0].display().to_string(),
        models[1].display().to_string(),
    );
    let d = data.display().to_string();
    let o = coop(
        &addr,
        &[
            "submit",
            "--wait",
            "--memory",
            "256Mi",
            "--evaluate",
            &m0,
            "--evaluate",
            &m1,
            "--dataset",
            &d,
        ],
    );
    assert!(o.status.success(), "{} {}", stdout(&o), stderr(&o));
    let o = coop(&addr, &["evals"]);
    assert!(stdout(&o).contains("ensemble of 2"), "{}", stdout(&o));
    let x = dir.path().join("x.jsonl");
    std::fs::write(&x, "[1, 0]\n").unwrap();
    let o = coop(
        &addr,
        &[
            "submit",
            "--wait",
            "--infer",
            &m0,
            "--input",
            &x.display().to_string(),
            "--out",
            "y.jsonl",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&coop(&addr, &["jobs", "--limit", "1", "-o", "json"]));
    let id = serde_json::from_str::<serde_json::Value>(&id).unwrap()[0]["id"]
        .as_u64()
        .unwrap();
    assert!(stdout(&coop(&addr, &["status", &id.to_string()])).contains("1 rows in"));
    // The typed result, in the JSON a program reads.
    let status = stdout(&coop(&addr, &["status", &id.to_string(), "-o", "json"]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["result"]["kind"], "inference", "{status}");
    assert_eq!(status["result"]["rows"], 1, "{status}");

    // Bad input: clear errors, non-zero exits.
    let o = coop(&addr, &["submit", "--"]);
    assert!(
        !o.status.success() && stderr(&o).contains("empty command"),
        "{}",
        stderr(&o)
    );
    let o = coop(&addr, &["submit", "--cpu", "5000", "--", "true"]);
    assert!(
        !o.status.success() && stderr(&o).contains("impossible request"),
        "{}",
        stderr(&o)
    );
    let o = coop(&addr, &["status", "999"]);
    assert!(
        !o.status.success() && stderr(&o).contains("unknown job 999"),
        "{}",
        stderr(&o)
    );
    let o = coop(&addr, &["cluster", "init"]);
    assert!(
        !o.status.success() && stderr(&o).contains("already initialized"),
        "{}",
        stderr(&o)
    );
    // Members are keys: coop dev made ana's, and nobody else can act as her.
    let o = coop(&addr, &["key", "show"]);
    assert_eq!(stdout(&o).trim().len(), 64, "{}", stdout(&o));
    let o = coop(&addr, &["cancel", "1", "--member", "bo"]);
    assert!(
        !o.status.success() && stderr(&o).contains("bo is not a member"),
        "{}",
        stderr(&o)
    );
    let o = coop(&addr, &["key", "new"]);
    assert!(
        !o.status.success() && stderr(&o).contains("exists already"),
        "{}",
        stderr(&o)
    );
    let o = coop("127.0.0.1:1", &["jobs"]);
    assert!(
        !o.status.success() && stderr(&o).contains("cannot reach"),
        "{}",
        stderr(&o)
    );

    // The first call pinned the dev cluster's CA; a replica whose
    // certificate another CA issued is refused, with the pinned file named.
    let pinned = std::fs::read_dir(dir.path().join("config/coop/known_cas"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let genuine = std::fs::read_to_string(&pinned).unwrap();
    let impostor = coop_proto::tls::ClusterCa::generate().unwrap();
    std::fs::write(&pinned, &impostor.cert_pem).unwrap();
    let o = coop(&addr, &["jobs"]);
    assert!(
        !o.status.success() && stderr(&o).contains("pinned cluster CA"),
        "{}",
        stderr(&o)
    );
    std::fs::write(&pinned, genuine).unwrap();
    assert!(coop(&addr, &["jobs"]).status.success());

    // Anyone can recompute every decision: online, and from an export.
    let o = coop(&addr, &["audit", "verify"]);
    assert!(
        o.status.success() && stdout(&o).contains("match"),
        "{} {}",
        stdout(&o),
        stderr(&o)
    );
    let journal = dir.path().join("journal.bin");
    let j = journal.display().to_string();
    assert!(coop(&addr, &["audit", "export", &j]).status.success());
    let o = coop(&addr, &["audit", "verify", "--journal", &j]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("signed by replicas [1] of 1"),
        "{}",
        stdout(&o)
    );
    // A later audit starts from the state an earlier one saved.
    let saved = dir.path().join("audited.state").display().to_string();
    let o = coop(&addr, &["audit", "verify", "--save-state", &saved]);
    assert!(o.status.success(), "{} {}", stdout(&o), stderr(&o));
    assert!(coop(&addr, &["submit", "--", "true"]).status.success());
    let o = coop(&addr, &["audit", "verify", "--from-state", &saved]);
    assert!(
        o.status.success() && stdout(&o).contains("from the saved state at"),
        "{} {}",
        stdout(&o),
        stderr(&o)
    );
    // A saved state whose bytes were changed is not the checkpoint's.
    let mut bytes = std::fs::read(&saved).unwrap();
    let last = bytes.len() - 2;
    bytes[last] = b' ';
    std::fs::write(&saved, bytes).unwrap();
    let o = coop(&addr, &["audit", "verify", "--from-state", &saved]);
    assert!(!o.status.success(), "{}", stdout(&o));
    // A journal whose checkpoint was tampered with is refused.
    let text = std::fs::read(&journal).unwrap();
    let nl = text.iter().position(|b| *b == b'\n').unwrap();
    let mut header: serde_json::Value = serde_json::from_slice(&text[..nl]).unwrap();
    header["checkpoint"]["head"]["state_digest"] = serde_json::json!("00".repeat(32));
    let mut forged = serde_json::to_vec(&header).unwrap();
    forged.extend_from_slice(&text[nl..]);
    let f = dir.path().join("forged-checkpoint.bin");
    std::fs::write(&f, forged).unwrap();
    let o = coop(
        &addr,
        &["audit", "verify", "--journal", &f.display().to_string()],
    );
    assert!(
        !o.status.success() && stdout(&o).contains("did not sign this head"),
        "{}",
        stdout(&o)
    );
    // The last byte of the file is inside the last leaf's outcome digest.
    let mut bytes = std::fs::read(&journal).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&journal, bytes).unwrap();
    let o = coop(&addr, &["audit", "verify", "--journal", &j]);
    assert!(
        !o.status.success() && stdout(&o).contains("FAILED"),
        "{}",
        stdout(&o)
    );

    // Checkpoints: remembered, then checked for consistency; a history
    // that does not extend the remembered one is caught.
    let o = coop(&addr, &["audit", "checkpoint"]);
    assert!(o.status.success(), "{} {}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("remembered"), "{}", stdout(&o));
    assert!(coop(&addr, &["submit", "--", "true"]).status.success());
    let o = coop(&addr, &["audit", "checkpoint"]);
    assert!(stdout(&o).contains("consistent with"), "{}", stdout(&o));
    let seen = std::fs::read_dir(dir.path().join("config/coop/checkpoints"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let genuine = std::fs::read_to_string(&seen).unwrap();
    let v: serde_json::Value = serde_json::from_str(&genuine).unwrap();
    std::fs::write(
        &seen,
        serde_json::json!({"size": v["size"], "root": "00".repeat(32)}).to_string(),
    )
    .unwrap();
    let o = coop(&addr, &["audit", "checkpoint"]);
    assert!(
        !o.status.success() && stdout(&o).contains("HISTORY REWRITTEN"),
        "{}",
        stdout(&o)
    );
    std::fs::write(&seen, genuine).unwrap();
    let o = coop(&addr, &["audit", "prove", "1"]);
    assert!(
        o.status.success() && stdout(&o).contains("included (proof checked)"),
        "{} {}",
        stdout(&o),
        stderr(&o)
    );

    // Governance: one member (coop dev founds it alone) proposes and votes.
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "version = 2\nfloor = 0.6\n").unwrap();
    let o = coop(&addr, &["propose", "policy", &policy.display().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = coop(&addr, &["vote", "1", "yes"]);
    assert!(
        stdout(&o).contains("adopted"),
        "{} {}",
        stdout(&o),
        stderr(&o)
    );
    assert!(stdout(&coop(&addr, &["policy", "show"])).contains("floor = 0.6"));
    assert!(stdout(&coop(&addr, &["proposals"])).contains("adopted"));

    // A real cluster's CA and replica certificates.
    let ca = dir.path().join("ca");
    let o = coop(
        &addr,
        &["cluster", "ca", "--dir", &ca.display().to_string()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = coop(
        &addr,
        &["cluster", "ca", "--dir", &ca.display().to_string()],
    );
    assert!(
        !o.status.success(),
        "a second CA must not overwrite the first"
    );
    let tls = dir.path().join("tls-1");
    let o = coop(
        &addr,
        &[
            "cluster",
            "cert",
            "--ca-dir",
            &ca.display().to_string(),
            "--out",
            &tls.display().to_string(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    use std::os::unix::fs::PermissionsExt;
    for (file, mode) in [(ca.join("ca.key"), 0o600), (tls.join("replica.key"), 0o600)] {
        let m = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, mode, "{}", file.display());
    }
    assert!(tls.join("replica.pem").exists() && tls.join("ca.pem").exists());
}

/// A replica that accepts the connection and then says nothing (its host
/// paused, a black-holed leader) costs the caller a clear error within the
/// call deadline, not a hang.
#[test]
fn a_replica_that_never_answers_costs_an_error_not_a_hang() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    let home = std::env::temp_dir().join(format!("coop-silent-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_coop"))
        .args(["share"])
        .env("COOP_ADDR", &addr)
        .env("HOME", &home)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run coop");
    // A watchdog far above the deadline: without one the call would hang
    // forever, and so would this test.
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(120) {
            let _ = child.kill();
            panic!("coop share is still waiting for a replica that never answers");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no answer within"),
        "{}",
        stderr(&out)
    );
}
