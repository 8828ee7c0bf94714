//! What lies below the code in the simulation: the disks the replicas
//! write to and the processes the workers run. The code above is the real
//! code; these replace what would finish in real time (a blocking-pool
//! thread, a child process), which turmoil's clock cannot order against
//! its own events: with them, a seed replays the same run.
//!
//! A disk runs each piece of work inline after a delay: `BASE` normally,
//! longer while a `SlowDisk` fault holds. A process runs for what its argv
//! says (`true`, `sleep SECONDS`) in simulated time, ends early when the
//! worker stops it, and dies with its host's runtime when the host crashes.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coop_worker::error::WorkerError;
use coop_worker::executor::{Exit, Launch, Launcher, Started};
use futures::future::BoxFuture;
use tokio::sync::oneshot;

/// What one disk operation (a redb commit with its fsync) takes.
const BASE: Duration = Duration::from_millis(1);

thread_local! {
    /// Disks slowed by a fault, by host. Each test thread runs its own
    /// simulation, so each has its own.
    static SLOW: RefCell<BTreeMap<String, Duration>> = RefCell::default();
}

/// Installs the simulated disks and processes (once per process) and
/// clears this thread's faults.
pub fn install() {
    coop_proto::disk::set_disk(Arc::new(|dir: &str| {
        let host = Path::new(dir)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let delay = SLOW
            .with(|s| s.borrow().get(&host).copied())
            .unwrap_or(BASE);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(())
        })
    }));
    coop_worker::executor::set_launcher(Arc::new(Processes::default()));
    SLOW.with(|s| s.borrow_mut().clear());
}

/// Makes every disk operation on `host` take `delay` (None: back to normal).
pub fn slow_disk(host: &str, delay: Option<Duration>) {
    SLOW.with(|s| {
        let mut s = s.borrow_mut();
        match delay {
            Some(d) => s.insert(host.to_string(), d),
            None => s.remove(host),
        }
    });
}

/// Simulated job processes. Process groups are numbered above any real
/// pid, so a worker's orphan sweep never mistakes one for a real process.
#[derive(Default)]
struct Processes {
    next: AtomicU32,
    stops: Arc<Mutex<BTreeMap<u32, oneshot::Sender<()>>>>,
}

const FIRST_PGID: u32 = 4_000_000_000;

/// How long a command runs, when the simulation knows it.
fn runs_for(argv: &[String]) -> Option<Duration> {
    match argv {
        [p] if p == "true" => Some(Duration::ZERO),
        [p, secs] if p == "sleep" => secs.parse().ok().map(Duration::from_secs_f64),
        _ => None,
    }
}

impl Launcher for Processes {
    fn start(
        &self,
        _work_dir: &Path,
        launch: &Launch<'_>,
        _cgroups: Option<&Path>,
        timeout: Option<Duration>,
        _grace: Duration,
    ) -> Result<Started, WorkerError> {
        let Some(runs_for) = runs_for(launch.argv) else {
            return Err(WorkerError::Config(format!(
                "the simulation runs `true` and `sleep SECONDS`, not {:?}",
                launch.argv
            )));
        };
        let pgid = FIRST_PGID + self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, stopped) = oneshot::channel();
        self.stops.lock().unwrap().insert(pgid, tx);
        let stops = self.stops.clone();
        let timeout = timeout.unwrap_or(Duration::MAX);
        let exit = Box::pin(async move {
            let exit = tokio::select! {
                biased;
                _ = stopped => signalled(),
                _ = tokio::time::sleep(runs_for) => Exit {
                    code: Some(0),
                    signal: None,
                    error: String::new(),
                    result: None,
            oom_killed: false,
                },
                _ = tokio::time::sleep(timeout) => Exit {
                    error: format!("timed out after {} s (signal 15)", timeout.as_secs()),
                    ..signalled()
                },
            };
            stops.lock().unwrap().remove(&pgid);
            exit
        });
        Ok(Started {
            pgid: Some(pgid),
            exit,
        })
    }

    fn stop(&self, pgid: u32, _grace: Duration) -> BoxFuture<'static, ()> {
        if let Some(tx) = self.stops.lock().unwrap().remove(&pgid) {
            let _ = tx.send(());
        }
        Box::pin(async {})
    }

    /// No child probes ONNX Runtime here: its real-time answer would land
    /// at a different simulated moment in each run.
    fn detect_engines(
        &self,
        _runner: &Path,
        _configured: Option<&Path>,
    ) -> BoxFuture<'static, coop_worker::model::Engines> {
        Box::pin(async {
            coop_worker::model::Engines {
                detail: "the simulation runs no model jobs".into(),
                ..Default::default()
            }
        })
    }
}

/// A process that ended on SIGTERM.
fn signalled() -> Exit {
    Exit {
        code: None,
        signal: Some(15),
        error: String::new(),
        result: None,
        oom_killed: false,
    }
}
