//! The core stays pure: no runtime, network, raft or metrics crate may
//! reach it, even transitively. Checked with `cargo tree` on every test run.

use std::process::Command;

#[test]
fn core_depends_on_no_io_crates() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "coop-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        tree.contains("coop-core"),
        "unexpected cargo tree output: {tree}"
    );
    for banned in [
        "tokio",
        "tonic",
        "openraft",
        "prometheus",
        "redb",
        "hyper",
        "rand",
    ] {
        let found: Vec<&str> = tree
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|name| name == banned || name.starts_with(&format!("{banned}-")))
            })
            .collect();
        assert!(
            found.is_empty(),
            "coop-core must not depend on {banned}: {found:?}"
        );
    }
}
