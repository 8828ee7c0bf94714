//! Runs an allocation's command as a real process: its own process group,
//! its own work dir, stdout/stderr to files, a scrubbed environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// How a run ended, as reported to the scheduler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub error: String,
    /// A model job's result (JSON), when it produced one.
    pub result_json: String,
}

impl Exit {
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            code: None,
            signal: None,
            error: message.into(),
            result_json: String::new(),
        }
    }
}

pub struct Launch<'a> {
    pub alloc_id: u64,
    pub job_id: u64,
    pub argv: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub gpu_indices: &'a [u32],
}

/// The directory an allocation runs in and keeps its logs in.
pub fn alloc_dir(work_dir: &Path, alloc_id: u64) -> PathBuf {
    work_dir.join("allocs").join(alloc_id.to_string())
}

/// Starts the process. The child leads a new process group (pgid = pid), so
/// stopping the job reaches everything it spawned.
pub fn spawn(work_dir: &Path, launch: &Launch<'_>) -> Result<Child, String> {
    let dir = alloc_dir(work_dir, launch.alloc_id);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create work dir {}: {e}", dir.display()))?;
    let stdout = std::fs::File::create(dir.join("stdout.log"))
        .map_err(|e| format!("create stdout.log: {e}"))?;
    let stderr = std::fs::File::create(dir.join("stderr.log"))
        .map_err(|e| format!("create stderr.log: {e}"))?;
    let (program, args) = launch
        .argv
        .split_first()
        .ok_or_else(|| "empty command".to_string())?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(&dir)
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env("HOME", &dir)
        .env("COOP_JOB_ID", launch.job_id.to_string())
        .env("COOP_ALLOC_ID", launch.alloc_id.to_string())
        // Always set, so a job given no GPU sees none rather than all of them.
        .env(
            "CUDA_VISIBLE_DEVICES",
            launch
                .gpu_indices
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        )
        .envs(launch.env)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(false);
    cmd.spawn()
        .map_err(|e| format!("could not start {program:?}: {e}"))
}

/// Waits for the process and then kills whatever is left of its group.
pub async fn wait(mut child: Child) -> Exit {
    let pgid = child.id();
    let status = child.wait().await;
    if let Some(pgid) = pgid {
        signal_group(pgid, libc::SIGKILL);
    }
    match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            Exit {
                code: status.code(),
                signal: status.signal(),
                error: String::new(),
                result_json: String::new(),
            }
        }
        Err(e) => Exit::error(format!("wait for process: {e}")),
    }
}

/// Like `wait`, but stops the group once `timeout` has passed.
pub async fn wait_with_timeout(child: Child, timeout: Option<Duration>, grace: Duration) -> Exit {
    let Some(timeout) = timeout else {
        return wait(child).await;
    };
    let pgid = child.id();
    let waiting = wait(child);
    tokio::pin!(waiting);
    tokio::select! {
        exit = &mut waiting => exit,
        _ = tokio::time::sleep(timeout) => {
            if let Some(pgid) = pgid {
                stop_group(pgid, grace).await;
            }
            let exit = waiting.await;
            Exit {
                error: format!("timed out after {} s ({})", timeout.as_secs(), describe(&exit)),
                ..exit
            }
        }
    }
}

fn describe(exit: &Exit) -> String {
    match (exit.code, exit.signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "no status".into(),
    }
}

/// SIGTERM to the group, then SIGKILL after `grace` if it is still there.
pub async fn stop_group(pgid: u32, grace: Duration) {
    signal_group(pgid, libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if !group_alive(pgid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal_group(pgid, libc::SIGKILL);
}

fn signal_group(pgid: u32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; it has no
    // memory-safety preconditions.
    unsafe {
        libc::kill(-(pgid as i32), signal);
    }
}

fn group_alive(pgid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(-(pgid as i32), 0) == 0 }
}
