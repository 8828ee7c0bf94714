//! Runs an allocation's command as a real process: its own process group,
//! its own work dir, stdout/stderr to files, a scrubbed environment.

use crate::error::WorkerError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;

use tokio::process::{Child, Command};

/// How a run ended, as reported to the scheduler.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub error: String,
    /// What a model job produced, when it produced something.
    pub result: Option<Box<coop_core::JobResult>>,
    /// The kernel's OOM killer ended a process of the job's cgroup.
    pub oom_killed: bool,
}

impl Exit {
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            code: None,
            signal: None,
            error: message.into(),
            result: None,
            oom_killed: false,
        }
    }
}

pub struct Launch<'a> {
    pub alloc_id: u64,
    pub job_id: u64,
    pub argv: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub gpu_indices: &'a [u32],
    /// The allocation's CPU and memory: the limits the job runs under.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Run as this uid/gid (the worker must be root), else as the worker.
    pub run_as: Option<(u32, u32)>,
}

/// How a job's CPU and memory are held to its allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Confinement {
    /// A cgroup v2 group with `cpu.max` and `memory.max`.
    Cgroup(PathBuf),
    /// No cgroup v2 here: `RLIMIT_DATA` caps the memory it can allocate;
    /// CPU is not limited beyond the job's timeout.
    Rlimit,
}

/// Where this worker puts its jobs' cgroups, when cgroup v2 is mounted and
/// writable: `/sys/fs/cgroup/coop-worker`.
pub fn cgroup_root() -> Option<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if !root.join("cgroup.controllers").is_file() {
        return None;
    }
    let ours = root.join("coop-worker");
    std::fs::create_dir_all(&ours).ok()?;
    // Children of ours may use cpu and memory.
    let _ = std::fs::write(ours.join("cgroup.subtree_control"), "+cpu +memory");
    Some(ours)
}

fn cgroup_for(root: &Path, launch: &Launch<'_>) -> Result<PathBuf, WorkerError> {
    let dir = root.join(format!("alloc-{}", launch.alloc_id));
    std::fs::create_dir_all(&dir)
        .map_err(WorkerError::io(format!("create cgroup {}", dir.display())))?;
    let period = 100_000u64;
    let quota = (launch.cpu_millis * period / 1000).max(1000);
    std::fs::write(dir.join("cpu.max"), format!("{quota} {period}"))
        .map_err(WorkerError::io("set cpu.max"))?;
    std::fs::write(dir.join("memory.max"), launch.memory_bytes.to_string())
        .map_err(WorkerError::io("set memory.max"))?;
    Ok(dir)
}

/// Slack over a job's memory request for the C library's own bookkeeping
/// under `RLIMIT_DATA`.
const RLIMIT_SLACK: u64 = 32 << 20;

/// The directory an allocation runs in and keeps its logs in.
pub fn alloc_dir(work_dir: &Path, alloc_id: u64) -> PathBuf {
    work_dir.join("allocs").join(alloc_id.to_string())
}

/// The file in an allocation's dir naming who may read its logs: the job's
/// member and its public key, as the assignment gave them.
pub const READER_FILE: &str = ".reader";

/// Records who may read an allocation's logs, before anything runs.
pub fn write_reader(
    work_dir: &Path,
    alloc_id: u64,
    member: &str,
    key: &[u8],
) -> Result<(), WorkerError> {
    let dir = alloc_dir(work_dir, alloc_id);
    std::fs::create_dir_all(&dir).map_err(WorkerError::io(format!(
        "create work dir {}",
        dir.display()
    )))?;
    std::fs::write(
        dir.join(READER_FILE),
        format!("{member}\n{}\n", hex::encode(key)),
    )
    .map_err(WorkerError::io("write the log reader"))
}

/// Who may read an allocation's logs, when recorded.
pub fn read_reader(work_dir: &Path, alloc_id: u64) -> Option<(String, coop_core::PublicKey)> {
    let text = std::fs::read_to_string(alloc_dir(work_dir, alloc_id).join(READER_FILE)).ok()?;
    let (member, key) = text.trim().split_once('\n')?;
    Some((member.to_string(), coop_core::PublicKey::parse(key).ok()?))
}

/// Starts the process. The child leads a new process group (pgid = pid), so
/// stopping the job reaches everything it spawned. Its work dir is its
/// own: with `run_as`, owned by that uid and closed to everyone else.
fn spawn(
    work_dir: &Path,
    launch: &Launch<'_>,
    cgroups: Option<&Path>,
) -> Result<(Child, Confinement), WorkerError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = alloc_dir(work_dir, launch.alloc_id);
    std::fs::create_dir_all(&dir).map_err(WorkerError::io(format!(
        "create work dir {}",
        dir.display()
    )))?;
    let stdout_path = dir.join("stdout.log");
    let stderr_path = dir.join("stderr.log");
    let stdout =
        std::fs::File::create(&stdout_path).map_err(WorkerError::io("create stdout.log"))?;
    let stderr =
        std::fs::File::create(&stderr_path).map_err(WorkerError::io("create stderr.log"))?;
    if let Some((uid, gid)) = launch.run_as {
        // Others may pass through allocs/ but not list or enter a job's dir.
        if let Some(parent) = dir.parent() {
            let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711));
        }
        for p in [&dir, &stdout_path, &stderr_path] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid))
                .map_err(WorkerError::io(format!("chown {}", p.display())))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(WorkerError::io(format!("chmod {}", dir.display())))?;
    }
    let (program, args) = launch.argv.split_first().ok_or(WorkerError::EmptyCommand)?;
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
    if let Some((uid, gid)) = launch.run_as {
        cmd.uid(uid).gid(gid);
    }
    let cgroup = match cgroups {
        Some(root) => Some(cgroup_for(root, launch)?),
        None => {
            let limit = launch.memory_bytes.saturating_add(RLIMIT_SLACK);
            // SAFETY: the closure runs in the forked child before exec and
            // only calls setrlimit, which is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: limit as libc::rlim_t,
                        rlim_max: limit as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_DATA, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            None
        }
    };
    let child = cmd
        .spawn()
        .map_err(WorkerError::io(format!("could not start {program:?}")))?;
    let confinement = match cgroup {
        Some(group) => {
            // Moved in right after the fork: a few instructions of the
            // child's start run outside, nothing it allocates does.
            if let Some(pid) = child.id() {
                std::fs::write(group.join("cgroup.procs"), pid.to_string()).map_err(
                    WorkerError::io(format!("move job into cgroup {}", group.display())),
                )?;
            }
            Confinement::Cgroup(group)
        }
        None => Confinement::Rlimit,
    };
    Ok((child, confinement))
}

/// A job started by a [`Launcher`]: its process group, and its exit.
pub struct Started {
    /// Recorded so that a restarted worker can stop what its crashed
    /// incarnation left running (see `kill_orphans`).
    pub pgid: Option<u32>,
    /// Resolves with the exit, once the job has ended or been stopped
    /// after its timeout.
    pub exit: BoxFuture<'static, Exit>,
}

/// How a worker starts and stops its jobs' processes: the operating
/// system's, unless a simulation installed its own. A real process ends in
/// real time, which a simulated clock cannot order against its own events,
/// so the same seed would not replay the same run.
pub trait Launcher: Send + Sync {
    /// Starts the job. Its exit resolves when it ends, or after `timeout`
    /// once it has been stopped (SIGTERM, SIGKILL after `grace`).
    fn start(
        &self,
        work_dir: &Path,
        launch: &Launch<'_>,
        cgroups: Option<&Path>,
        timeout: Option<Duration>,
        grace: Duration,
    ) -> Result<Started, WorkerError>;

    /// Stops the process group `pgid`: SIGTERM, then SIGKILL after `grace`.
    fn stop(&self, pgid: u32, grace: Duration) -> BoxFuture<'static, ()>;

    /// Finds ONNX Runtime and probes it in a child of `runner` (see
    /// `model::detect_engines`), on the blocking pool. A seam like `start`:
    /// the probe is a process, and a simulation must not wait on one.
    fn detect_engines(
        &self,
        runner: &Path,
        configured: Option<&Path>,
    ) -> BoxFuture<'static, crate::model::Engines> {
        let (runner, lib) = (runner.to_path_buf(), configured.map(Path::to_path_buf));
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                crate::model::detect_engines(&runner, lib.as_deref())
            })
            .await
            .unwrap_or_default()
        })
    }
}

/// The operating system's processes (see `spawn`).
pub struct Processes;

impl Launcher for Processes {
    fn start(
        &self,
        work_dir: &Path,
        launch: &Launch<'_>,
        cgroups: Option<&Path>,
        timeout: Option<Duration>,
        grace: Duration,
    ) -> Result<Started, WorkerError> {
        let (child, confinement) = spawn(work_dir, launch, cgroups)?;
        tracing::info!(alloc = launch.alloc_id, ?confinement, run_as = ?launch.run_as, "confined");
        Ok(Started {
            pgid: child.id(),
            exit: Box::pin(async move {
                let mut exit = wait_with_timeout(child, timeout, grace).await;
                exit.oom_killed = oom_killed(&confinement);
                release(&confinement);
                exit
            }),
        })
    }

    fn stop(&self, pgid: u32, grace: Duration) -> BoxFuture<'static, ()> {
        Box::pin(stop_group(pgid, grace))
    }
}

static LAUNCHER: OnceLock<Arc<dyn Launcher>> = OnceLock::new();

/// Installs the launcher every worker in this process starts its jobs
/// with; the first call wins (a simulation installs one, nothing else
/// does). Returns whether this one was installed.
pub fn set_launcher(launcher: Arc<dyn Launcher>) -> bool {
    LAUNCHER.set(launcher).is_ok()
}

/// The installed launcher, else the operating system's processes.
pub fn launcher() -> &'static dyn Launcher {
    match LAUNCHER.get() {
        Some(l) => l.as_ref(),
        None => &Processes,
    }
}

/// Whether the kernel killed a process of the job's cgroup for memory
/// (`oom_kill` in its `memory.events`).
fn oom_killed(confinement: &Confinement) -> bool {
    let Confinement::Cgroup(dir) = confinement else {
        return false;
    };
    std::fs::read_to_string(dir.join("memory.events"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .is_some_and(|n| n > 0)
}

/// Removes a finished job's cgroup.
fn release(confinement: &Confinement) {
    if let Confinement::Cgroup(dir) = confinement {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Waits for the process and then kills whatever is left of its group.
async fn wait(mut child: Child) -> Exit {
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
                result: None,
                oom_killed: false,
            }
        }
        Err(e) => Exit::error(format!("wait for process: {e}")),
    }
}

/// Like `wait`, but stops the group once `timeout` has passed.
async fn wait_with_timeout(child: Child, timeout: Option<Duration>, grace: Duration) -> Exit {
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
async fn stop_group(pgid: u32, grace: Duration) {
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

const RUNNING_FILE: &str = "running-pgids.json";

/// Records the process groups of the jobs running now, so a worker that
/// restarts after a crash can stop what its previous incarnation left: the
/// scheduler requeues those jobs, and an orphan would run them twice.
pub fn record_running(work_dir: &Path, pgids: &BTreeMap<u64, u32>) {
    let list: Vec<u32> = pgids.values().copied().collect();
    if let Ok(bytes) = serde_json::to_vec(&list) {
        let tmp = work_dir.join(format!("{RUNNING_FILE}.tmp"));
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, work_dir.join(RUNNING_FILE));
        }
    }
}

/// Kills the process groups a previous incarnation recorded, but only
/// those still working inside this worker's allocation dirs (a recycled
/// pid belongs to someone else and is left alone). Returns how many.
pub fn kill_orphans(work_dir: &Path) -> usize {
    let path = work_dir.join(RUNNING_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return 0;
    };
    let pgids: Vec<u32> = serde_json::from_slice(&bytes).unwrap_or_default();
    let allocs = work_dir.join("allocs");
    let allocs = allocs.canonicalize().unwrap_or(allocs);
    let mut killed = 0;
    for pgid in pgids {
        let cwd = std::fs::read_link(format!("/proc/{pgid}/cwd"));
        if cwd.is_ok_and(|d| d.starts_with(&allocs)) {
            signal_group(pgid, libc::SIGKILL);
            killed += 1;
        }
    }
    let _ = std::fs::remove_file(&path);
    killed
}
