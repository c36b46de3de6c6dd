//! [`RaftLogStorage`] on fjall: the vote, the log entries and the purge point.
//!
//! Contract (openraft storage v2): `save_vote` is durable before it returns; `append` makes
//! entries readable at once and fires the flush callback only after they are fsynced;
//! `purge` persists `last_purged` so a restarted node knows where its log starts.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};

use super::clock::ClusterClock;
use super::{keys, Store};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Told what the log store saves, in the order it saves it. `raft::replication` implements
/// it to send a leader's own entries to its followers while their fsync runs, and to know
/// where the log ends (a commit notice waits for entries that will carry it).
///
/// Contract: every method is called on openraft's storage task, inside the save it reports
/// and before that save returns, so an implementation must not block: its only IO is what
/// it reads back through `log_id_at`.
pub trait AppendObserver: Send + Sync {
    /// Whether the entries starting at `first` are this node's own, appended as their
    /// leader. Those are fsynced on the blocking pool and reported to
    /// [`appended`](Self::appended) while the fsync runs; others are fsynced inline and
    /// reported once durable.
    fn proposed_here(&self, first: &LogId) -> bool;

    /// `entries`, `encoded_bytes` long as stored, are readable in the log. `log_id_at` reads
    /// back the id of an earlier entry (or the purge point's).
    fn appended(
        &self,
        entries: &[Entry],
        encoded_bytes: usize,
        log_id_at: &dyn Fn(u64) -> Option<LogId>,
    );

    /// The entries from `since` on are about to be removed.
    fn truncating(&self, since: LogId);

    /// `vote` is durable.
    fn vote_saved(&self, vote: Vote);

    /// `committed` was saved (not fsynced).
    fn committed_saved(&self, committed: Option<LogId>);
}

#[derive(Clone)]
pub struct LogStore {
    store: Store,
    /// Told every stamp appended: a node's reading of cluster time follows its log.
    clock: Option<Arc<ClusterClock>>,
    /// `None` in tests of the store alone: then every append is fsynced on the blocking
    /// pool, and nobody is told.
    observer: Option<Arc<dyn AppendObserver>>,
}

impl LogStore {
    /// A log store that tells nobody what it saves.
    pub fn new(store: Store) -> Self {
        LogStore {
            store,
            clock: None,
            observer: None,
        }
    }

    /// A log store that tells `observer` what it saves.
    pub fn with_observer(store: Store, observer: Arc<dyn AppendObserver>) -> Self {
        LogStore {
            store,
            clock: None,
            observer: Some(observer),
        }
    }

    /// The same log store, moving `clock` to every stamp it appends.
    pub fn with_clock(mut self, clock: Arc<ClusterClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The id of the entry at `index`, read back (or the purge point's, if it is that).
    fn log_id_at(&self, index: u64) -> Option<LogId> {
        if let Ok(Some(bytes)) = self.store.log.get(keys::log_key(index)) {
            return decode_entry(&bytes).ok().map(|e| e.log_id);
        }
        self.last_purged()
            .ok()
            .flatten()
            .filter(|p| p.index == index)
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        read_bincode(&self.store.meta, keys::META_LAST_PURGED)
            .map_err(|e| StorageIOError::read_logs(&e).into())
            .map(Option::flatten)
    }

    /// fsync on the blocking pool: a slow disk must not stall the runtime's workers.
    async fn sync(&self) -> Result<(), std::io::Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.sync())
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)
    }
}

pub(crate) fn read_bincode<T: serde::de::DeserializeOwned>(
    ks: &fjall::Keyspace,
    key: &[u8],
) -> Result<Option<T>, super::Error> {
    match ks.get(key)? {
        None => Ok(None),
        Some(bytes) => crate::binary::decode(&bytes)
            .map(Some)
            .map_err(|e| super::Error::Corrupt(format!("{}: {e}", String::from_utf8_lossy(key)))),
    }
}

pub(crate) fn encode_entry(entry: &Entry) -> Result<Vec<u8>, bincode::Error> {
    let mut buf = Vec::with_capacity(64);
    buf.push(keys::ENTRY_ENCODING_V1);
    bincode::serialize_into(&mut buf, entry)?;
    Ok(buf)
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry, super::Error> {
    match bytes.split_first() {
        Some((&keys::ENTRY_ENCODING_V1, rest)) => crate::binary::decode(rest)
            .map_err(|e| super::Error::Corrupt(format!("log entry: {e}"))),
        Some((v, _)) => Err(super::Error::Corrupt(format!(
            "log entry has unknown encoding version {v}"
        ))),
        None => Err(super::Error::Corrupt("empty log entry".into())),
    }
}

/// Entries read back from the log's end when looking for its newest cluster-time stamp at
/// start: a leader stamps every entry it proposes, so only blank and membership entries can
/// stand between the end and a stamped one.
const STAMP_SEARCH_ENTRIES: usize = 64;

/// The newest cluster-time stamp among the log's last entries (0 when none is stamped).
pub(crate) fn newest_stamp(store: &super::Store) -> Result<u64, super::Error> {
    let mut newest = 0;
    for guard in store.log.iter().rev().take(STAMP_SEARCH_ENTRIES) {
        let (_, bytes) = guard.into_inner()?;
        if let Some(stamp) = entry_stamp(&decode_entry(&bytes)?) {
            newest = newest.max(stamp);
        }
    }
    Ok(newest)
}

/// The cluster-time stamp an entry carries, if it is a format-2 command.
pub(crate) fn entry_stamp(entry: &Entry) -> Option<u64> {
    match &entry.payload {
        openraft::EntryPayload::Normal(c) => c.cluster_time(),
        _ => None,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(keys::log_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(keys::log_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for guard in self
            .store
            .log
            .range::<[u8; 8], _>((Bound::Included(keys::log_key(start)), end))
        {
            let (_, value) = guard
                .into_inner()
                .map_err(|e| StorageIOError::read_logs(&e))?;
            out.push(decode_entry(&value).map_err(|e| StorageIOError::read_logs(&e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last = match self.store.log.last_key_value() {
            None => None,
            Some(guard) => {
                let (_, value) = guard
                    .into_inner()
                    .map_err(|e| StorageIOError::read_logs(&e))?;
                Some(
                    decode_entry(&value)
                        .map_err(|e| StorageIOError::read_logs(&e))?
                        .log_id,
                )
            }
        };
        // An empty log after a purge still ends at the purge point.
        let last_log_id = last.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = bincode::serialize(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        self.store
            .meta
            .insert(keys::META_VOTE, bytes)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.sync()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        if let Some(o) = &self.observer {
            o.vote_saved(*vote);
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        read_bincode(&self.store.meta, keys::META_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced: a lost value only means replaying less on restart.
        self.store
            .meta
            .insert(keys::META_COMMITTED, keys::encode_log_id(&committed))
            .map_err(|e| StorageIOError::write(&e))?;
        if let Some(o) = &self.observer {
            o.committed_saved(committed);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        read_bincode::<Option<LogId>>(&self.store.meta, keys::META_COMMITTED)
            .map(Option::flatten)
            .map_err(|e| StorageIOError::read(&e).into())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut batch = self.store.db.batch();
        let mut size = 0;
        for entry in &entries {
            let bytes = encode_entry(entry).map_err(|e| StorageIOError::write_logs(&e))?;
            size += bytes.len();
            batch.insert(&self.store.log, keys::log_key(entry.log_id.index), bytes);
        }
        batch.commit().map_err(|e| StorageIOError::write_logs(&e))?;
        // Readable now; acknowledged to Raft only once the journal is on disk. A leader's
        // own entries sync on the blocking pool, since its core must keep replicating
        // meanwhile, and go early to its followers (through the observer). A follower
        // answers the leader only after the sync anyway, so its core syncs here: the
        // hand-off to a parked pool thread and back cost about 30 µs a put.
        let own = match (&self.observer, entries.first()) {
            (Some(o), Some(first)) => o.proposed_here(&first.log_id),
            _ => true,
        };
        if own {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || {
                let res = store.sync().map_err(std::io::Error::other);
                callback.log_io_completed(res);
            });
        } else {
            let res = self.store.sync().map_err(std::io::Error::other);
            callback.log_io_completed(res);
        }
        if let Some(clock) = &self.clock {
            if let Some(newest) = entries.iter().filter_map(entry_stamp).max() {
                clock.observe(newest);
            }
        }
        if let Some(o) = &self.observer {
            o.appended(&entries, size, &|i| self.log_id_at(i));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if let Some(o) = &self.observer {
            o.truncating(log_id);
        }
        let mut batch = self.store.db.batch();
        for guard in self.store.log.range(keys::log_key(log_id.index)..) {
            let key = guard.key().map_err(|e| StorageIOError::write_logs(&e))?;
            batch.remove(&self.store.log, key);
        }
        batch.commit().map_err(|e| StorageIOError::write_logs(&e))?;
        self.sync()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = self.store.db.batch();
        let purged =
            bincode::serialize(&Some(log_id)).map_err(|e| StorageIOError::write_logs(&e))?;
        batch.insert(&self.store.meta, keys::META_LAST_PURGED, purged);
        let upto = keys::log_key(log_id.index);
        for guard in self.store.log.range(..=upto) {
            let key = guard.key().map_err(|e| StorageIOError::write_logs(&e))?;
            batch.remove(&self.store.log, key);
        }
        batch.commit().map_err(|e| StorageIOError::write_logs(&e))?;
        self.sync()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // The tombstones hide the purged entries, but their bytes stay on disk until
        // compaction reaches them: gigabytes with large values. Drop every table that holds
        // only purged entries. Not awaited: it waits for fjall's compaction lock, and the
        // purge is already durable without it.
        let log = self.store.log.clone();
        tokio::task::spawn_blocking(move || {
            use fjall::AbstractTree;
            if let Err(e) = log.tree.drop_range(..=upto) {
                tracing::warn!(error = %e, "dropping purged log tables failed");
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use openraft::testing::{StoreBuilder, Suite};

    use super::*;
    use crate::store::{StateMachine, StateView};

    /// Appends reported to a [`Follower`], across every store the suite builds.
    static APPENDS_REPORTED: AtomicU64 = AtomicU64::new(0);

    /// Takes every entry for another leader's, so each append fsyncs inline, and checks
    /// that entries it is told of are readable.
    struct Follower;

    impl AppendObserver for Follower {
        fn proposed_here(&self, _first: &LogId) -> bool {
            false
        }

        fn appended(
            &self,
            entries: &[Entry],
            encoded_bytes: usize,
            log_id_at: &dyn Fn(u64) -> Option<LogId>,
        ) {
            if let Some(last) = entries.last() {
                assert!(encoded_bytes > 0);
                assert_eq!(log_id_at(last.log_id.index), Some(last.log_id), "readable");
                APPENDS_REPORTED.fetch_add(1, Ordering::Relaxed);
            }
        }

        fn truncating(&self, _since: LogId) {}

        fn vote_saved(&self, _vote: Vote) {}

        fn committed_saved(&self, _committed: Option<LogId>) {}
    }

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
            let store = Store::open(dir.path(), 8, true).map_err(|e| StorageIOError::write(&e))?;
            let view = StateView::open(store.clone()).map_err(|e| StorageIOError::write(&e))?;
            let log = LogStore::with_observer(store, Arc::new(Follower));
            let sm = StateMachine::new(view, crate::observe::Observer::noop());
            Ok((dir, log, sm))
        }
    }

    /// A follower's appends, fsynced inline on openraft's storage task and reported to the
    /// observer, keep openraft's storage contract (the suite in `store::tests` covers the
    /// blocking-pool fsync).
    #[test]
    fn openraft_storage_suite_passes_with_inline_fsync_and_an_observer() {
        Suite::test_all(Builder).expect("openraft storage suite");
        assert!(APPENDS_REPORTED.load(Ordering::Relaxed) > 0);
    }
}
