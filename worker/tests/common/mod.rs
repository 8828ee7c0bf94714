//! What the worker's integration tests share: a `coop-worker` process that
//! is killed when dropped, and a client for a replica.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command};

use coop_proto::api::coop_client::CoopClient;
use tonic::transport::Channel;

/// A child process, killed and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `coop-worker` as node `node` of `owner`, offering `cpus` and 4 GiB to
/// `schedulers`, working in `work_dir`; add flags, then spawn.
pub fn worker(
    node: &str,
    owner: &str,
    cpus: &str,
    schedulers: &[String],
    work_dir: impl AsRef<Path>,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coop-worker"));
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

/// A lazily connected client for the replica at `addr`.
pub fn client(addr: &str) -> CoopClient<Channel> {
    CoopClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .expect("valid address")
            .connect_lazy(),
    )
}
