//! The change log as watches and the leader's compaction read it, on [`StateView`]: events
//! from a revision on (memory first, then disk), a key's previous version, the revision
//! that retention would compact to, and the removal of compacted chunks.

use std::sync::atomic::Ordering::Relaxed;

use fjall::{Keyspace, Slice};

use super::tail::Batch;
use super::{compact, read, HistoryState};
use crate::store::keys;
use crate::store::meta::SmMeta;
use crate::store::view::StateView;
use crate::store::Error;

/// What the change log holds from a revision on.
pub enum Changes {
    /// Events in order (possibly none), and the newest revision they cover: every event up
    /// to `last` is in them.
    Events { batches: Vec<Batch>, last: u64 },
    /// The revision is at or below the compact revision.
    Compacted(u64),
    /// This node's change log starts later (at this revision): a snapshot install, or no
    /// change log yet (0).
    NotHeld(u64),
}

impl HistoryState {
    /// The change log's state as `meta` and the keyspaces leave it at open.
    pub fn open(meta: &SmMeta, kv: &Keyspace, history: &Keyspace) -> Result<HistoryState, Error> {
        // A directory of format 2 from before the change log holds none before its revision.
        let start = match meta.history_start {
            0 if meta.cluster_format >= 2 => meta.revision + 1,
            start => start,
        };
        let state = HistoryState::default();
        state.start.store(start, Relaxed);
        let compact = stored_compact_revision(kv)?;
        state.compact_revision.store(compact, Relaxed);
        state.bytes.store(compact::figures(history)?.0, Relaxed);
        state.tail.reset(meta.revision + 1);
        state.flushed_through.store(meta.revision, Relaxed);
        Ok(state)
    }
}

/// The compact revision a state machine's reserved key holds (0: never compacted).
pub fn stored_compact_revision(kv: &Keyspace) -> Result<u64, Error> {
    match kv.get(keys::COMPACT_REVISION)? {
        Some(v) => crate::binary::decode::<u64>(&v)
            .map_err(|e| Error::Corrupt(format!("compact revision: {e}"))),
        None => Ok(0),
    }
}

impl StateView {
    pub fn compact_revision(&self) -> u64 {
        self.history.compact_revision.load(Relaxed)
    }

    /// The first revision this node's change log holds (0: none, before format 2).
    pub fn history_start(&self) -> u64 {
        self.history.start.load(Relaxed)
    }

    /// The in-memory tail of the change log, where caught-up watches read.
    pub fn history_tail(&self) -> &super::tail::Tail {
        &self.history.tail
    }

    /// Bytes of the change log on disk.
    pub fn history_bytes(&self) -> u64 {
        self.history.bytes.load(Relaxed)
    }

    /// Events of revision `from` on: from memory while the tail holds them, else about
    /// `budget` bytes from disk.
    pub fn changes_since(&self, from: u64, budget: usize) -> Result<Changes, Error> {
        let compact = self.compact_revision();
        if from <= compact {
            return Ok(Changes::Compacted(compact));
        }
        let start = self.history_start();
        if start == 0 || from < start {
            return Ok(Changes::NotHeld(start));
        }
        if let Some(since) = self.history.tail.since(from) {
            return Ok(Changes::Events {
                batches: since.batches,
                last: since.last,
            });
        }
        let epoch = self.history.epoch.load(Relaxed);
        let applied = self.revision();
        self.flush()?;
        let (_, kv) = self.kv();
        let disk = read::from_disk(&self.history_ks(), &kv, from, budget);
        if self.history.epoch.load(Relaxed) != epoch {
            return Ok(Changes::NotHeld(self.history_start()));
        }
        let compact = self.compact_revision();
        if from <= compact {
            // Also when a large record the read needed was removed by the compaction.
            return Ok(Changes::Compacted(compact));
        }
        let disk = disk?;
        let newest = disk.events.last().map_or(0, |e| e.revision);
        let last = match disk.exhausted {
            // Everything applied before the flush is on disk.
            true => newest.max(applied),
            false => newest,
        };
        let batches = match disk.events.is_empty() {
            true => Vec::new(),
            false => vec![Batch::from(disk.events)],
        };
        Ok(Changes::Events { batches, last })
    }

    /// The record `key` had at `revision` (a put), if the change log still holds it.
    pub fn record_at(&self, key: &str, revision: u64) -> Result<Option<Slice>, Error> {
        if let Some(e) = self.history.tail.find(key, revision) {
            return Ok(Some(e.record));
        }
        self.flush()?;
        let (_, kv) = self.kv();
        read::put_at(&self.history_ks(), &kv, key, revision)
    }

    /// Removes the chunks at or below the compact revision that are on disk. Never flushes
    /// (that would undo the recent-writes table's coalescing): compacted events still in
    /// memory are removed by a later pass, once a flush has written them.
    pub fn remove_compacted(&self) -> Result<compact::Removed, Error> {
        let compact = self.compact_revision();
        let on_disk = self.history.flushed_through.load(Relaxed);
        let through = compact.min(on_disk);
        if through <= self.history.removed_through.load(Relaxed) {
            return Ok(compact::Removed::default());
        }
        // Not beside an install, which replaces the keyspace, nor a flush, which writes it.
        let _one_at_a_time = self.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = |key: &str| -> Result<Option<u64>, Error> {
            Ok(self
                .stored(key)?
                .and_then(|v| keys::decode_value(&v).map(|(revision, _)| revision)))
        };
        let (_, kv) = self.kv();
        let removed =
            compact::remove_through(&self.store.db, &self.history_ks(), &kv, through, &current)?;
        let _ = self
            .history
            .bytes
            .fetch_update(Relaxed, Relaxed, |b| Some(b.saturating_sub(removed.bytes)));
        self.history.removed_through.fetch_max(through, Relaxed);
        Ok(removed)
    }

    /// The revision to compact to so that the change log keeps `retain_ms` of cluster time
    /// before `now` and at most `max_bytes`, if that is past the compact revision. Judged
    /// by the events in memory and whole chunks on disk; never flushes.
    pub fn retention_target(
        &self,
        now: u64,
        retain_ms: u64,
        max_bytes: u64,
    ) -> Result<Option<u64>, Error> {
        let (_, infos) = compact::figures(&self.history_ks())?;
        let compact = self.compact_revision();
        // What compaction has not yet given up (removed chunks may still be listed).
        let mut bytes: u64 = infos
            .iter()
            .filter(|i| i.last_revision > compact)
            .map(|i| i.bytes)
            .sum();
        // Until the cluster has run for `retain_ms`, nothing is old enough.
        let cutoff = now.checked_sub(retain_ms);
        let expired = |stamp: u64| cutoff.is_some_and(|c| stamp <= c);
        let mut target = compact;
        for info in infos.iter().filter(|i| i.last_revision > compact) {
            if !expired(info.last_stamp) && bytes <= max_bytes {
                break;
            }
            target = info.last_revision;
            bytes = bytes.saturating_sub(info.bytes);
        }
        if let Some(old) = cutoff.and_then(|c| self.history.tail.newest_by(c)) {
            target = target.max(old);
        }
        let target = target.min(self.revision());
        Ok((target > compact).then_some(target))
    }
}
