//! The replica's journal: the decision log's leaves (`coop_core::
//! decision_log`), by index, in segments of their own that Raft log
//! compaction never touches. Anyone can export it and replay it from
//! genesis (`coop audit verify`).
//!
//! ```text
//!  journal/seg-00000000000000000000.redb   leaves [0, S)
//!  journal/seg-00000000000000065536.redb   leaves [S, 2S)      S = SEGMENT_LEAVES
//!  ...                                     the last one takes new leaves
//!  archive dir (optional): sealed segments a valid checkpoint covers,
//!                          moved there whole; still read from there
//! ```
//!
//! Leaves are written after each applied batch without an fsync of their
//! own, and synced before a snapshot is stored: after a crash the replica
//! replays the Raft log from its snapshot and rewrites the same leaves at
//! the same indices, so nothing is lost and nothing is duplicated. A
//! replica that caught up by installing a snapshot has no leaves before it
//! (the journal then starts later; export from a replica that has them).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use super::io_err;

const LEAVES: TableDefinition<u64, &[u8]> = TableDefinition::new("leaves");

/// Leaves per segment: a segment is the unit that is archived.
pub const SEGMENT_LEAVES: u64 = 65_536;

pub struct Journal {
    dir: PathBuf,
    segment_leaves: u64,
    /// Where sealed segments go once a checkpoint covers them.
    archive: OnceLock<PathBuf>,
    /// Open segments by their first index, and those written since the last sync.
    open: Mutex<Segments>,
}

#[derive(Default)]
struct Segments {
    dbs: BTreeMap<u64, Arc<Database>>,
    dirty: BTreeSet<u64>,
}

fn segment_name(first: u64) -> String {
    format!("seg-{first:020}.redb")
}

impl Journal {
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        Self::open_with(data_dir, SEGMENT_LEAVES)
    }

    /// With another segment size (tests).
    pub fn open_with(data_dir: &Path, segment_leaves: u64) -> io::Result<Self> {
        let dir = data_dir.join("journal");
        std::fs::create_dir_all(&dir)
            .map_err(|e| io::Error::other(format!("create {}: {e}", dir.display())))?;
        Ok(Self {
            dir,
            segment_leaves: segment_leaves.max(1),
            archive: OnceLock::new(),
            open: Mutex::new(Segments::default()),
        })
    }

    /// Archives sealed segments into `dir` from now on (see `archive_covered`).
    pub fn set_archive(&self, dir: PathBuf) {
        let _ = self.archive.set(dir);
    }

    fn segments(&self) -> std::sync::MutexGuard<'_, Segments> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn first_of(&self, index: u64) -> u64 {
        index - index % self.segment_leaves
    }

    /// Where segment `first` is: here, or in the archive.
    fn locate(&self, first: u64) -> Option<PathBuf> {
        let here = self.dir.join(segment_name(first));
        if here.exists() {
            return Some(here);
        }
        let archived = self.archive.get()?.join(segment_name(first));
        archived.exists().then_some(archived)
    }

    /// The open segment starting at `first`; created only when `create`.
    fn segment(&self, first: u64, create: bool) -> io::Result<Option<Arc<Database>>> {
        if let Some(db) = self.segments().dbs.get(&first) {
            return Ok(Some(db.clone()));
        }
        let path = match self.locate(first) {
            Some(p) => p,
            None if create => self.dir.join(segment_name(first)),
            None => return Ok(None),
        };
        let db = Database::create(&path)
            .map_err(|e| io::Error::other(format!("open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(io_err)?;
        txn.open_table(LEAVES).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        let db = Arc::new(db);
        self.segments().dbs.insert(first, db.clone());
        Ok(Some(db))
    }

    /// Writes leaves at their indices (a rewrite after a crash writes the
    /// same bytes again). Not synced: see the module docs.
    pub fn append(&self, leaves: &[(u64, Vec<u8>)]) -> io::Result<()> {
        let mut by_segment: BTreeMap<u64, Vec<&(u64, Vec<u8>)>> = BTreeMap::new();
        for leaf in leaves {
            by_segment
                .entry(self.first_of(leaf.0))
                .or_default()
                .push(leaf);
        }
        for (first, leaves) in by_segment {
            let db = self
                .segment(first, true)?
                .ok_or_else(|| io::Error::other("segment not created"))?;
            let mut txn = db.begin_write().map_err(io_err)?;
            txn.set_durability(Durability::None).map_err(io_err)?;
            {
                let mut table = txn.open_table(LEAVES).map_err(io_err)?;
                for (index, leaf) in leaves {
                    table.insert(*index, leaf.as_slice()).map_err(io_err)?;
                }
            }
            txn.commit().map_err(io_err)?;
            self.segments().dirty.insert(first);
        }
        Ok(())
    }

    /// Makes every leaf written so far durable.
    pub fn sync(&self) -> io::Result<()> {
        let dirty: Vec<(u64, Arc<Database>)> = {
            let mut s = self.segments();
            let firsts = std::mem::take(&mut s.dirty);
            firsts
                .into_iter()
                .filter_map(|f| s.dbs.get(&f).map(|db| (f, db.clone())))
                .collect()
        };
        for (_, db) in dirty {
            let txn = db.begin_write().map_err(io_err)?;
            txn.commit().map_err(io_err)?;
        }
        Ok(())
    }

    /// Up to `max` leaves from `from` on, below `to`. A range this replica
    /// never had (it joined from a snapshot) is skipped; one archived where
    /// it cannot be read any more is an error that says so.
    pub fn read(&self, from: u64, to: u64, max: usize) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut first = self.first_of(from);
        let last = self.last_index();
        while first < to && out.len() < max {
            if last.is_none_or(|l| first > l) {
                break;
            }
            match self.segment(first, false)? {
                Some(db) => {
                    let txn = db.begin_read().map_err(io_err)?;
                    let table = txn.open_table(LEAVES).map_err(io_err)?;
                    let end = (first + self.segment_leaves).min(to);
                    for entry in table
                        .range(from.max(first)..end)
                        .map_err(io_err)?
                        .take(max - out.len())
                    {
                        let (k, v) = entry.map_err(io_err)?;
                        out.push((k.value(), v.value().to_vec()));
                    }
                }
                None if self.archived(first) => {
                    return Err(io::Error::other(format!(
                        "entries {first}..{} were archived and are not at this replica any more: read them from the archive",
                        first + self.segment_leaves
                    )))
                }
                None => {}
            }
            first += self.segment_leaves;
        }
        Ok(out)
    }

    /// Whether segment `first` was archived (a marker stays behind).
    fn archived(&self, first: u64) -> bool {
        self.dir
            .join(format!("{}.archived", segment_name(first)))
            .exists()
    }

    /// The highest index any segment could hold (from the newest segment file).
    fn last_index(&self) -> Option<u64> {
        let mut newest = self.segments().dbs.keys().next_back().copied();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if let Some(n) = name
                    .strip_prefix("seg-")
                    .and_then(|r| r.strip_suffix(".redb").or(r.strip_suffix(".redb.archived")))
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    newest = Some(newest.map_or(n, |m: u64| m.max(n)));
                }
            }
        }
        newest.map(|f| f + self.segment_leaves - 1)
    }

    /// The leaf hashes of the first `size` leaves, for proofs. Fails when
    /// the journal lacks one (a replica that joined from a snapshot).
    pub fn leaf_hashes(&self, size: u64) -> io::Result<Vec<coop_core::merkle::Hash>> {
        let mut out = Vec::with_capacity(size as usize);
        while (out.len() as u64) < size {
            let from = out.len() as u64;
            let chunk = self.read(from, size, 65_536)?;
            let Some((first, _)) = chunk.first() else {
                break;
            };
            if *first != from {
                return Err(io::Error::other(format!(
                    "this replica's journal lacks entry {from} (it joined from a snapshot): ask another replica"
                )));
            }
            for (k, v) in chunk {
                if k != out.len() as u64 {
                    return Err(io::Error::other(format!(
                        "this replica's journal lacks entry {}",
                        out.len()
                    )));
                }
                out.push(coop_core::merkle::leaf_hash(&v));
            }
        }
        if out.len() as u64 != size {
            return Err(io::Error::other(format!(
                "this replica's journal has {} entries, not {size}",
                out.len()
            )));
        }
        Ok(out)
    }

    /// One leaf.
    pub fn leaf(&self, index: u64) -> io::Result<Option<Vec<u8>>> {
        Ok(self
            .read(index, index + 1, 1)?
            .into_iter()
            .next()
            .map(|(_, v)| v))
    }

    /// Moves every sealed segment wholly below `covered` (the size of a
    /// checkpoint a majority signed) into the archive dir, if one is set.
    /// The segment taking new leaves is never moved. Returns how many moved.
    pub fn archive_covered(&self, covered: u64) -> io::Result<usize> {
        let Some(archive) = self.archive.get() else {
            return Ok(0);
        };
        let mut moved = 0;
        let mut first = 0;
        while first + self.segment_leaves <= covered {
            let here = self.dir.join(segment_name(first));
            if here.exists() {
                std::fs::create_dir_all(archive)?;
                // Closed first: redb holds the file open.
                {
                    let mut s = self.segments();
                    s.dbs.remove(&first);
                    s.dirty.remove(&first);
                }
                let target = archive.join(segment_name(first));
                if std::fs::rename(&here, &target).is_err() {
                    // Another file system: copy, sync, then remove.
                    std::fs::copy(&here, &target)?;
                    std::fs::File::open(&target)?.sync_all()?;
                    std::fs::remove_file(&here)?;
                }
                std::fs::write(
                    self.dir.join(format!("{}.archived", segment_name(first))),
                    target.display().to_string(),
                )?;
                tracing::info!(first, to = %target.display(), "archived a journal segment a checkpoint covers");
                moved += 1;
            }
            first += self.segment_leaves;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
        range
            .map(|i| (i, format!("leaf {i}").into_bytes()))
            .collect()
    }

    #[test]
    fn leaves_are_kept_by_index_and_a_rewrite_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.append(&[(0, b"a".to_vec()), (1, b"b".to_vec())]).unwrap();
        j.append(&[(1, b"b".to_vec()), (2, b"c".to_vec())]).unwrap();
        j.sync().unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        let all = j.read(0, u64::MAX, 10).unwrap();
        assert_eq!(
            all,
            vec![(0, b"a".to_vec()), (1, b"b".to_vec()), (2, b"c".to_vec())]
        );
        assert_eq!(j.read(1, 2, 10).unwrap(), vec![(1, b"b".to_vec())]);
    }

    #[test]
    fn segments_split_the_leaves_and_covered_ones_move_to_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("cold");
        let j = Journal::open_with(dir.path(), 4).unwrap();
        j.append(&leaves(0..10)).unwrap();
        j.sync().unwrap();
        let files = |d: &Path| -> usize {
            std::fs::read_dir(d)
                .map(|r| {
                    r.flatten()
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".redb"))
                        .count()
                })
                .unwrap_or(0)
        };
        assert_eq!(files(&dir.path().join("journal")), 3);
        assert_eq!(j.read(0, 10, 100).unwrap(), leaves(0..10));
        assert_eq!(j.read(3, 9, 100).unwrap(), leaves(3..9));
        assert_eq!(j.read(3, 9, 2).unwrap(), leaves(3..5));
        assert_eq!(j.leaf_hashes(10).unwrap().len(), 10);
        // Without an archive dir nothing moves.
        assert_eq!(j.archive_covered(10).unwrap(), 0);
        j.set_archive(archive.clone());
        // A checkpoint at 9 covers [0,4) and [4,8), not the open [8,12).
        assert_eq!(j.archive_covered(9).unwrap(), 2);
        assert_eq!(files(&dir.path().join("journal")), 1);
        assert_eq!(files(&archive), 2);
        // Still readable from the archive, across a reopen.
        assert_eq!(j.read(0, 10, 100).unwrap(), leaves(0..10));
        drop(j);
        let j = Journal::open_with(dir.path(), 4).unwrap();
        assert!(
            j.read(0, 10, 100).is_err(),
            "archived, and no archive dir known"
        );
        j.set_archive(archive.clone());
        assert_eq!(j.read(0, 10, 100).unwrap(), leaves(0..10));
        // Gone from the archive too: the error says where they went.
        std::fs::remove_dir_all(&archive).unwrap();
        drop(j);
        let j = Journal::open_with(dir.path(), 4).unwrap();
        let err = j.read(0, 10, 100).unwrap_err();
        assert!(err.to_string().contains("archived"), "{err}");
        assert_eq!(j.read(8, 10, 100).unwrap(), leaves(8..10));
    }
}
