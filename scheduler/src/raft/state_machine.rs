//! The Raft state machine: `coop-core`'s `ClusterState` in memory, made
//! durable by snapshots in redb (the log holds everything after the last one).
//!
//! On restart openraft loads the last snapshot and re-applies the committed
//! log after it, so the state is rebuilt exactly.

use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use coop_core::{ClusterState, Command};
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{
    io_err, LogId, Response, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};

/// The size of a pass (pending jobs × ready nodes) from which it is
/// planned on a copy (see `apply_pass`): a million pairs takes tens of
/// milliseconds to plan; below that, cloning the state costs more than the
/// reads would wait (a 20k-job queue with no nodes: cloning every pass cut
/// acknowledged submits with 32 clients from ~2,700/s to ~2,300/s).
const COPY_PASS_FROM: usize = 1_000_000;

pub(super) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const SNAPSHOT_KEY: &str = "current";

/// What the applied state is: the replica's view, readable by services.
pub struct Applied {
    pub state: ClusterState,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// A stored snapshot: the meta and the core state bytes.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<RwLock<Applied>>,
    db: Arc<Database>,
    /// Bumped after every applied batch with the last applied index, so the
    /// leader driver and assignment streams wake on change.
    applied_tx: Arc<watch::Sender<u64>>,
    /// Sees every applied command's outcome (metrics); set once at start.
    observer: Arc<std::sync::OnceLock<Observer>>,
    /// The decision log's leaves.
    journal: Arc<super::Journal>,
    /// `COPY_PASS_FROM`, but for tests.
    copy_pass_from: usize,
    /// The data directory, naming the disk to `coop_proto::disk`.
    disk: Arc<str>,
}

/// Called with each applied command's outcome and the state after it.
pub type Observer = Box<dyn Fn(&coop_core::Outcome, &ClusterState) + Send + Sync>;

impl StateMachine {
    pub(super) fn open(
        db: Arc<Database>,
        journal: Arc<super::Journal>,
        disk: Arc<str>,
    ) -> io::Result<Self> {
        let mut applied = Applied {
            state: ClusterState::new(),
            last_applied: None,
            membership: StoredMembership::default(),
        };
        if let Some(snap) = read_snapshot(&db)? {
            applied.state =
                ClusterState::from_snapshot_bytes(&snap.data).map_err(io::Error::other)?;
            applied.last_applied = snap.meta.last_log_id;
            applied.membership = snap.meta.last_membership.clone();
        }
        let index = applied.last_applied.map(|l| l.index).unwrap_or(0);
        let (applied_tx, _) = watch::channel(index);
        Ok(Self {
            inner: Arc::new(RwLock::new(applied)),
            db,
            applied_tx: Arc::new(applied_tx),
            observer: Arc::new(std::sync::OnceLock::new()),
            journal,
            copy_pass_from: COPY_PASS_FROM,
            disk,
        })
    }

    /// The journal of the decision log's leaves.
    pub fn journal(&self) -> &super::Journal {
        &self.journal
    }

    /// Installs the observer of applied outcomes (once; later calls are ignored).
    pub fn set_observer(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    /// A read view of the applied state. Do not hold it across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.inner
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Wakes with the last applied index after every applied batch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// Stores a snapshot unless the one stored is newer. openraft builds
    /// and installs snapshots concurrently: an older build finishing after
    /// a newer install must not replace it, since the log before the newer
    /// one is already purged and the replica could not restart.
    fn store_snapshot(&self, snap: &StoredSnapshot) -> io::Result<()> {
        let bytes = serde_json::to_vec(snap).map_err(io_err)?;
        let txn = self.db.begin_write().map_err(io_err)?;
        {
            let mut table = txn.open_table(SNAPSHOT).map_err(io_err)?;
            let stored_index = match table.get(SNAPSHOT_KEY).map_err(io_err)? {
                Some(v) => serde_json::from_slice::<StoredSnapshot>(v.value())
                    .ok()
                    .and_then(|s| s.meta.last_log_id),
                None => None,
            };
            if stored_index > snap.meta.last_log_id {
                tracing::info!(
                    stored = ?stored_index,
                    offered = ?snap.meta.last_log_id,
                    "kept the newer stored snapshot"
                );
                return Ok(());
            }
            table
                .insert(SNAPSHOT_KEY, bytes.as_slice())
                .map_err(io_err)?;
        }
        txn.commit().map_err(io_err)
    }
}

fn read_snapshot(db: &Database) -> io::Result<Option<StoredSnapshot>> {
    let txn = db.begin_read().map_err(io_err)?;
    let table = txn.open_table(SNAPSHOT).map_err(io_err)?;
    match table.get(SNAPSHOT_KEY).map_err(io_err)? {
        Some(v) => {
            Ok(Some(serde_json::from_slice(v.value()).map_err(|e| {
                io::Error::other(format!("corrupt snapshot: {e}"))
            })?))
        }
        None => Ok(None),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, data) = {
            let applied = self.read();
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
            };
            (meta, applied.state.to_snapshot_bytes())
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let this = self.clone();
        // The journal holds every leaf up to the snapshot before the log
        // before it can be purged (see `journal`).
        let stored = coop_proto::disk::blocking(&self.disk, move || {
            this.journal.sync()?;
            this.store_snapshot(&stored).map(|_| stored)
        })
        .await?;
        tracing::info!(index = ?meta.last_log_id.map(|l| l.index), bytes = stored.data.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: std::io::Cursor::new(stored.data),
        })
    }
}

impl StateMachine {
    /// Whether the next pass is large enough to plan on a copy (queries
    /// that run the allocator, such as `why`, use the same measure).
    pub fn long_pass(&self) -> bool {
        let applied = self.read();
        let state = &applied.state;
        state.pending().len() * state.ready_nodes().max(1) >= self.copy_pass_from
    }

    /// Applies a scheduling pass to a copy of the state and swaps it in.
    /// A pass over a large queue takes long (hundreds of milliseconds at
    /// 100k jobs × 10k nodes); planning on a copy while readers keep the applied state
    /// means a read waits for the swap, never for the pass. Only the apply
    /// path writes, so the copy cannot go stale in between.
    fn apply_pass(
        &self,
        cmd: &Command,
        log_id: LogId,
    ) -> (
        u64,
        Result<coop_core::Outcome, coop_core::CoreError>,
        Vec<u8>,
    ) {
        let mut next = self.read().state.clone();
        let index = next.log_size();
        let (result, leaf) = next.apply_logged(cmd);
        if let (Ok(outcome), Some(observe)) = (&result, self.observer.get()) {
            observe(outcome, &next);
        }
        let previous = {
            let mut applied = self.inner.write().unwrap_or_else(|p| p.into_inner());
            applied.last_applied = Some(log_id);
            std::mem::replace(&mut applied.state, next)
        };
        // Freed outside the lock.
        drop(previous);
        (index, result, leaf)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied = self.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut last_index = None;
        let mut leaves = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            if let EntryPayload::Normal(req) = &entry.payload {
                if matches!(req.0, Command::Schedule { .. }) && self.long_pass() {
                    let (index, result, leaf) = self.apply_pass(&req.0, entry.log_id);
                    leaves.push((index, leaf));
                    last_index = Some(entry.log_id.index);
                    if let Some(r) = responder {
                        r.send(Response(Some(result)));
                    }
                    continue;
                }
            }
            let response = {
                let mut applied = self.inner.write().unwrap_or_else(|p| p.into_inner());
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => Response(None),
                    EntryPayload::Membership(m) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), m);
                        Response(None)
                    }
                    EntryPayload::Normal(req) => {
                        if req.0 == Command::Unknown {
                            // Applying past a command this build cannot read would fork
                            // the state from replicas that can: stop here instead.
                            return Err(io::Error::other(format!(
                                "log entry {} holds a command this coop-scheduler does not know; upgrade it",
                                entry.log_id.index
                            )));
                        }
                        // The command and its outcome become the next leaf
                        // of the decision log (its root is in the state).
                        let index = applied.state.log_size();
                        let (result, leaf) = applied.state.apply_logged(&req.0);
                        leaves.push((index, leaf));
                        if let (Ok(outcome), Some(observe)) = (&result, self.observer.get()) {
                            observe(outcome, &applied.state);
                        }
                        Response(Some(result))
                    }
                }
            };
            last_index = Some(entry.log_id.index);
            if let Some(r) = responder {
                r.send(response);
            }
        }
        self.journal.append(&leaves)?;
        if let Some(index) = last_index {
            self.applied_tx.send_replace(index);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let state = ClusterState::from_snapshot_bytes(&data).map_err(io::Error::other)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let this = self.clone();
        coop_proto::disk::blocking(&self.disk, move || this.store_snapshot(&stored)).await?;
        {
            let mut applied = self.inner.write().unwrap_or_else(|p| p.into_inner());
            applied.state = state;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
        }
        tracing::info!(index = ?meta.last_log_id.map(|l| l.index), "snapshot installed");
        self.applied_tx
            .send_replace(meta.last_log_id.map(|l| l.index).unwrap_or(0));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let db = self.db.clone();
        let snap = coop_proto::disk::blocking(&self.disk, move || read_snapshot(&db)).await?;
        Ok(snap.map(|s| Snapshot {
            meta: s.meta,
            snapshot: std::io::Cursor::new(s.data),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(index: u64, marker: &str) -> StoredSnapshot {
        StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: Some(openraft::testing::log_id::<super::super::TypeConfig>(
                    1, 1, index,
                )),
                last_membership: StoredMembership::default(),
            },
            data: marker.as_bytes().to_vec(),
        }
    }

    fn machine(dir: &std::path::Path, db: Arc<Database>) -> StateMachine {
        StateMachine {
            inner: Arc::new(RwLock::new(Applied {
                state: ClusterState::new(),
                last_applied: None,
                membership: StoredMembership::default(),
            })),
            db,
            applied_tx: Arc::new(watch::channel(0).0),
            observer: Arc::new(std::sync::OnceLock::new()),
            journal: Arc::new(crate::raft::Journal::open(dir).unwrap()),
            copy_pass_from: COPY_PASS_FROM,
            disk: dir.display().to_string().into(),
        }
    }

    /// A read during a scheduling pass does not wait for the pass: the
    /// observer, called while the pass is being applied, can read the
    /// applied state (the state before the pass) at once.
    #[tokio::test]
    async fn the_state_is_readable_while_a_pass_is_applied() {
        use openraft::entry::RaftEntry;
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("sm.redb")).unwrap());
        let mut sm = machine(dir.path(), db);
        // Every pass counts as long here (the state is tiny).
        sm.copy_pass_from = 0;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (probe, record) = (sm.clone(), seen.clone());
        sm.set_observer(Box::new(move |outcome, _| {
            if let coop_core::Outcome::Scheduled { .. } = outcome {
                let readable = probe.inner.try_read().is_ok();
                record.lock().unwrap().push(readable);
            }
        }));
        let entry = super::super::Entry::new_normal(
            openraft::testing::log_id::<super::super::TypeConfig>(1, 1, 1),
            super::super::Request(Command::Schedule { now_ms: 1_000 }),
        );
        let entries = futures::stream::iter(vec![Ok((entry, None))]);
        sm.apply(entries).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![true]);
        assert_eq!(sm.read().last_applied.map(|l| l.index), Some(1));
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("sm.redb")).unwrap());
        {
            let txn = db.begin_write().unwrap();
            txn.open_table(SNAPSHOT).unwrap();
            txn.commit().unwrap();
        }
        let sm = machine(dir.path(), db.clone());
        sm.store_snapshot(&snapshot(20, "installed")).unwrap();
        sm.store_snapshot(&snapshot(10, "built late")).unwrap();
        let kept = read_snapshot(&db).unwrap().unwrap();
        assert_eq!(kept.data, b"installed");
        sm.store_snapshot(&snapshot(30, "newer")).unwrap();
        assert_eq!(read_snapshot(&db).unwrap().unwrap().data, b"newer");
    }
}
