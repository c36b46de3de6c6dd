//! The table's figures for `admin.status` and the metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::IdemTable;

/// The table's figures for `admin.status` and the metrics, published after every apply
/// batch (and after an install).
#[derive(Debug, Default)]
pub struct IdemFigures {
    entries: AtomicU64,
    oldest_expiry: AtomicU64,
    window_ms: AtomicU64,
    max_entries: AtomicU64,
    replays: AtomicU64,
    conflicts: AtomicU64,
}

/// A reading of [`IdemFigures`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdemReading {
    pub entries: u64,
    /// Cluster time at which the oldest record expires (0: none held).
    pub oldest_expiry: u64,
    pub window_ms: u64,
    pub max_entries: u64,
    /// Retries answered from the table, and ids reused with another command, applied on
    /// this node since it started.
    pub replays: u64,
    pub conflicts: u64,
}

impl IdemFigures {
    pub fn publish(&self, table: &IdemTable, replays: u64, conflicts: u64) {
        self.entries.store(table.len() as u64, Relaxed);
        self.oldest_expiry
            .store(table.oldest_expiry().unwrap_or(0), Relaxed);
        self.window_ms.store(table.settings.window_ms, Relaxed);
        self.max_entries.store(table.settings.max_entries, Relaxed);
        self.replays.fetch_add(replays, Relaxed);
        self.conflicts.fetch_add(conflicts, Relaxed);
    }

    pub fn read(&self) -> IdemReading {
        IdemReading {
            entries: self.entries.load(Relaxed),
            oldest_expiry: self.oldest_expiry.load(Relaxed),
            window_ms: self.window_ms.load(Relaxed),
            max_entries: self.max_entries.load(Relaxed),
            replays: self.replays.load(Relaxed),
            conflicts: self.conflicts.load(Relaxed),
        }
    }
}
