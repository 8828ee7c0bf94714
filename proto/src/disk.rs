//! Blocking disk work (redb transactions that fsync, snapshot files) runs
//! here: on tokio's blocking pool, or, once a simulation has installed a
//! disk, inline after the disk's say-so.
//!
//! A blocking-pool thread finishes in real time, which a simulated clock
//! cannot order against its own events, so the same seed would not replay
//! the same run. The simulation's disk runs the work inline instead, after
//! a delay of its choosing (a slow disk) or with an error (a failing one).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

/// What a disk says before each piece of work on the directory named:
/// wait this long, or fail.
pub type Disk =
    Arc<dyn Fn(&str) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send>> + Send + Sync>;

static DISK: OnceLock<Disk> = OnceLock::new();

/// Installs the disk every later blocking call in this process goes
/// through; the first call wins (a simulation installs one, nothing else
/// does). Returns whether this one was installed.
pub fn set_disk(disk: Disk) -> bool {
    DISK.set(disk).is_ok()
}

/// Runs `work` on the data under `dir`: on the blocking pool, or inline
/// after the installed disk's delay or error.
pub async fn blocking<T: Send + 'static>(
    dir: &str,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    match DISK.get() {
        Some(disk) => {
            disk(dir).await?;
            work()
        }
        None => tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?,
    }
}
