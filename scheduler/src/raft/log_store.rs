//! The Raft log, vote and committed index in redb. Every write transaction
//! is committed with redb's default durability (fsync) before openraft is
//! told the I/O is done, so an acknowledged entry survives a crash.
//!
//! One `append` call is one transaction and one fsync however many entries
//! it carries: batches of proposals share a single flush (group commit).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::state_machine::StateMachine;
use super::{io_err, Entry, LogId, TypeConfig, Vote};

pub(super) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const PURGED_KEY: &str = "last_purged";

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// The data directory, naming the disk to `coop_proto::disk`.
    disk: Arc<str>,
}

/// Opens (or creates) the replica's redb file and returns the log store and
/// the state machine, which share it.
pub fn open_storage(dir: &Path) -> io::Result<(LogStore, StateMachine)> {
    let path = dir.join("raft.redb");
    let db = Database::create(&path)
        .map_err(|e| io::Error::other(format!("open {}: {e}", path.display())))?;
    let db = Arc::new(db);
    let txn = db.begin_write().map_err(io_err)?;
    txn.open_table(LOG).map_err(io_err)?;
    txn.open_table(META).map_err(io_err)?;
    txn.open_table(super::state_machine::SNAPSHOT)
        .map_err(io_err)?;
    txn.commit().map_err(io_err)?;
    let journal = std::sync::Arc::new(super::Journal::open(dir)?);
    let disk: Arc<str> = dir.display().to_string().into();
    let sm = StateMachine::open(db.clone(), journal, disk.clone())?;
    Ok((LogStore { db, disk }, sm))
}

impl LogStore {
    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(META).map_err(io_err)?;
        match table.get(key).map_err(io_err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(io_err)?)),
            None => Ok(None),
        }
    }

    async fn write_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> io::Result<()> {
        let bytes = serde_json::to_vec(value).map_err(io_err)?;
        let db = self.db.clone();
        coop_proto::disk::blocking(&self.disk, move || {
            let txn = db.begin_write().map_err(io_err)?;
            {
                let mut table = txn.open_table(META).map_err(io_err)?;
                table.insert(key, bytes.as_slice()).map_err(io_err)?;
            }
            txn.commit().map_err(io_err)
        })
        .await
    }
}

fn decode_entry(bytes: &[u8]) -> io::Result<Entry> {
    serde_json::from_slice(bytes)
        .map_err(|e| io::Error::other(format!("corrupt raft log entry: {e}")))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        if start >= end {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LOG).map_err(io_err)?;
        let mut out = Vec::new();
        for item in table.range(start..end).map_err(io_err)? {
            let (_, v) = item.map_err(io_err)?;
            out.push(decode_entry(v.value())?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.read_meta(VOTE_KEY)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.read_meta(PURGED_KEY)?;
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LOG).map_err(io_err)?;
        let last = match table.last().map_err(io_err)? {
            Some((_, v)) => Some(decode_entry(v.value())?.log_id()),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.write_meta(VOTE_KEY, vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.write_meta(COMMITTED_KEY, &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.read_meta::<Option<LogId>>(COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| {
                serde_json::to_vec(&e)
                    .map(|b| (e.index(), b))
                    .map_err(io_err)
            })
            .collect::<Result<_, _>>()?;
        let db = self.db.clone();
        let result = coop_proto::disk::blocking(&self.disk, move || {
            let txn = db.begin_write().map_err(io_err)?;
            {
                let mut table = txn.open_table(LOG).map_err(io_err)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).map_err(io_err)?;
                }
            }
            txn.commit().map_err(io_err)
        })
        .await;
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        let db = self.db.clone();
        coop_proto::disk::blocking(&self.disk, move || {
            let txn = db.begin_write().map_err(io_err)?;
            {
                let mut table = txn.open_table(LOG).map_err(io_err)?;
                table.retain_in(from.., |_, _| false).map_err(io_err)?;
            }
            txn.commit().map_err(io_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(io_err)?;
        let upto = log_id.index();
        let db = self.db.clone();
        coop_proto::disk::blocking(&self.disk, move || {
            let txn = db.begin_write().map_err(io_err)?;
            {
                let mut meta = txn.open_table(META).map_err(io_err)?;
                meta.insert(PURGED_KEY, bytes.as_slice()).map_err(io_err)?;
                let mut table = txn.open_table(LOG).map_err(io_err)?;
                table.retain_in(..=upto, |_, _| false).map_err(io_err)?;
            }
            txn.commit().map_err(io_err)
        })
        .await
    }
}
