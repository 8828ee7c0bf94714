//! Reports of ended runs, kept on disk until the scheduler has them.
//!
//! A run's end is written here (atomically, synced) the moment the worker
//! sees it, before the report is sent, and removed once a replica answered.
//! A worker that crashes in between would otherwise lose the exit: its
//! successor registers a new incarnation, the scheduler ends the old one's
//! allocations as if the worker had died mid-run, and a job that succeeded
//! is retried or failed. So a starting worker first sends what its
//! predecessor recorded, under the predecessor's incarnation (still the
//! node's registered one), and only then registers its own.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::executor::Exit;

/// One ended run, as it will be reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub alloc: u64,
    /// The incarnation the run belonged to: its report is signed as that one.
    pub incarnation: u64,
    #[serde(flatten)]
    pub exit: Exit,
}

impl Entry {
    pub fn new(alloc: u64, incarnation: u64, exit: &Exit) -> Self {
        Self {
            alloc,
            incarnation,
            exit: exit.clone(),
        }
    }
}

fn dir(work_dir: &Path) -> PathBuf {
    work_dir.join("outbox")
}

fn path(work_dir: &Path, alloc: u64) -> PathBuf {
    dir(work_dir).join(format!("{alloc}.json"))
}

/// Writes `entry` durably: a temporary file, synced, renamed into place,
/// and the directory synced, so a crash leaves the old file or the new one.
pub fn record(work_dir: &Path, entry: &Entry) -> std::io::Result<()> {
    let dir = dir(work_dir);
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!("{}.tmp", entry.alloc));
    let bytes = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path(work_dir, entry.alloc))?;
    std::fs::File::open(&dir)?.sync_all()
}

/// Forgets the entry of `alloc`: a replica has its report.
pub fn remove(work_dir: &Path, alloc: u64) {
    let _ = std::fs::remove_file(path(work_dir, alloc));
}

/// Every recorded entry, oldest allocation first. A file that does not
/// parse (a torn write cannot happen, a hand edit can) is reported and
/// removed: its run is then ended by the scheduler as if the worker died.
pub fn load(work_dir: &Path) -> Vec<Entry> {
    let Ok(files) = std::fs::read_dir(dir(work_dir)) else {
        return Vec::new();
    };
    let mut entries = Vec::new();
    for file in files.flatten() {
        let p = file.path();
        if p.extension().and_then(|e| e.to_str()) != Some("json") {
            let _ = std::fs::remove_file(&p);
            continue;
        }
        match std::fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| e.to_string()))
        {
            Ok(e) => entries.push(e),
            Err(why) => {
                tracing::warn!(file = %p.display(), %why, "unreadable report in the outbox: dropped");
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    entries.sort_by_key(|e| e.alloc);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_until_removed_and_a_corrupt_one_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_empty());
        let ok = Exit {
            code: Some(0),
            signal: None,
            error: String::new(),
            result: None,
            oom_killed: false,
        };
        record(dir.path(), &Entry::new(7, 3, &ok)).unwrap();
        record(dir.path(), &Entry::new(5, 3, &ok)).unwrap();
        std::fs::write(dir.path().join("outbox/9.json"), b"{not json").unwrap();
        let entries = load(dir.path());
        assert_eq!(
            entries.iter().map(|e| e.alloc).collect::<Vec<_>>(),
            vec![5, 7]
        );
        assert_eq!(entries[0].exit, ok);
        assert!(!dir.path().join("outbox/9.json").exists());
        remove(dir.path(), 5);
        assert_eq!(load(dir.path()).len(), 1);
    }
}
