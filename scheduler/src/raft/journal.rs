//! The replica's journal: the decision log's leaves (`coop_core::
//! decision_log`), by index, in their own redb file (`journal.redb`) that
//! Raft log compaction never touches. Anyone can export it and replay it
//! from genesis (`coop audit verify`).
//!
//! Leaves are written after each applied batch without an fsync of their
//! own, and synced before a snapshot is stored: after a crash the replica
//! replays the Raft log from its snapshot and rewrites the same leaves at
//! the same indices, so nothing is lost and nothing is duplicated. A
//! replica that caught up by installing a snapshot has no leaves before it
//! (the journal then starts later; export from a replica that has them).

use std::io;
use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use super::io_err;

const LEAVES: TableDefinition<u64, &[u8]> = TableDefinition::new("leaves");

pub struct Journal {
    db: Database,
}

impl Journal {
    pub fn open(dir: &Path) -> io::Result<Self> {
        let path = dir.join("journal.redb");
        let db = Database::create(&path)
            .map_err(|e| io::Error::other(format!("open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(io_err)?;
        txn.open_table(LEAVES).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        Ok(Self { db })
    }

    /// Writes leaves at their indices (a rewrite after a crash writes the
    /// same bytes again). Not synced: see the module docs.
    pub fn append(&self, leaves: &[(u64, Vec<u8>)]) -> io::Result<()> {
        if leaves.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(io_err)?;
        txn.set_durability(Durability::None).map_err(io_err)?;
        {
            let mut table = txn.open_table(LEAVES).map_err(io_err)?;
            for (index, leaf) in leaves {
                table.insert(*index, leaf.as_slice()).map_err(io_err)?;
            }
        }
        txn.commit().map_err(io_err)
    }

    /// Makes every leaf written so far durable.
    pub fn sync(&self) -> io::Result<()> {
        let txn = self.db.begin_write().map_err(io_err)?;
        txn.commit().map_err(io_err)
    }

    /// Up to `max` leaves from `from` on, below `to`.
    pub fn read(&self, from: u64, to: u64, max: usize) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LEAVES).map_err(io_err)?;
        let mut out = Vec::new();
        for entry in table.range(from..to).map_err(io_err)?.take(max) {
            let (k, v) = entry.map_err(io_err)?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The leaf hashes of the first `size` leaves, for proofs. Fails when
    /// the journal lacks one (a replica that joined from a snapshot).
    pub fn leaf_hashes(&self, size: u64) -> io::Result<Vec<coop_core::merkle::Hash>> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LEAVES).map_err(io_err)?;
        let mut out = Vec::with_capacity(size as usize);
        for entry in table.range(0..size).map_err(io_err)? {
            let (k, v) = entry.map_err(io_err)?;
            if k.value() != out.len() as u64 {
                return Err(io::Error::other(format!(
                    "this replica's journal lacks entry {} (it joined from a snapshot): ask another replica",
                    out.len()
                )));
            }
            out.push(coop_core::merkle::leaf_hash(v.value()));
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
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LEAVES).map_err(io_err)?;
        Ok(table
            .get(index)
            .map_err(io_err)?
            .map(|v| v.value().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
