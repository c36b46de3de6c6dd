//! On-disk state of a node: one fjall database holding the Raft vote and log
//! ([`log_store`]), the state machine and snapshot metadata, with the snapshot files beside
//! it. Below `raft` in the request path: openraft calls in through the log store and the
//! state machine; `api` reads the state machine through [`StateView`]. Imports neither `api`
//! nor `raft` (the openraft types come from [`crate::types`]).
//!
//! - [`log_store`]: `RaftLogStorage`: vote, entries, purge;
//! - [`state_machine`]: `RaftStateMachine`: openraft's entry point to apply and snapshots;
//! - `view`: [`StateView`], the state machine as request handlers read it (gets, scans,
//!   figures) and its flush of recent writes to fjall;
//! - `apply`: committed entries into the state machine, one arm per command;
//! - `recent`: applied writes held in memory until a flush;
//! - `idempotency`: request ids and their replies, for exactly-once retries;
//! - `meta`: the `sm_meta` schema, one struct with one read and one write;
//! - [`snapshot`]: Raft snapshot files (format, build, install) and backup files;
//! - [`keys`]: key and value encodings; [`migrations`]: the on-disk format's steps.
//!
//! "Snapshot" means a Raft snapshot only; a fjall `Snapshot` (an MVCC read of the database)
//! is called a read view here.
//!
//! Keyspaces: `meta` (format version, vote, purge point, current snapshot), `raft_log`
//! (big-endian index → entry), `sm_meta` (last applied, membership, revision, cluster id,
//! kv generation, key count, data size), `tokens` (SHA-256 of a token → its metadata) and
//! `kv_<generation>` (key → revision + JSON value; values from 1 KiB on in blob files).

mod apply;
pub mod clock;
#[cfg(test)]
mod format_tests;
pub mod history;
#[cfg(test)]
mod history_tests;
mod idempotency;
pub mod keys;
pub mod lease;
pub mod log_store;
mod meta;
pub mod migrations;
#[cfg(test)]
mod prefix_tests;
mod recent;
pub mod snapshot;
pub mod state_machine;
#[cfg(test)]
mod tests;
mod view;

use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

pub use log_store::{AppendObserver, LogStore};
pub use snapshot::backup;
pub use state_machine::StateMachine;
pub use view::{Item, StateView};

/// Memory for one keyspace's memtable.
pub const MEMTABLE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage: {0}")]
    Fjall(#[from] fjall::Error),
    #[error("storage i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error(
        "data directory {dir} was written by a newer Concord (format version {found}, this build knows up to {known}); upgrade this binary"
    )]
    NewerFormat {
        dir: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("data directory {dir} is in use by another process (fjall lock): {reason}")]
    Locked { dir: PathBuf, reason: String },
}

/// The open database and its fixed keyspaces, shared by the log store and state machine.
#[derive(Clone)]
pub struct Store {
    pub db: Database,
    pub meta: Keyspace,
    pub log: Keyspace,
    pub sm_meta: Keyspace,
    /// Token digest → token metadata (part of the state machine).
    pub tokens: Keyspace,
    pub dir: PathBuf,
    /// fsync before acknowledging; off only to measure its cost.
    pub fsync: bool,
}

impl Store {
    /// Opens (or creates) the database in `dir` and brings its format up to date.
    pub fn open(dir: &Path, cache_size_mib: u64, fsync: bool) -> Result<Store, Error> {
        let store = Store::open_unmigrated(dir, cache_size_mib, fsync)?;
        migrations::run(&store)?;
        std::fs::create_dir_all(store.snapshot_dir())?;
        Ok(store)
    }

    /// Opens the database without running the migrations (tests build old formats with it).
    pub(crate) fn open_unmigrated(
        dir: &Path,
        cache_size_mib: u64,
        fsync: bool,
    ) -> Result<Store, Error> {
        std::fs::create_dir_all(dir)?;
        let db_dir = dir.join("db");
        let db = Database::builder(&db_dir)
            .cache_size(cache_size_mib.max(1) * 1024 * 1024)
            // With more than one worker, fjall 3.1's worker 0 hands every compaction request
            // back to the queue, and takes it again at once while the others are busy: a spin
            // that was a quarter of all CPU samples under 64 KiB puts.
            .worker_threads(1)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => Error::Locked {
                    dir: dir.to_path_buf(),
                    reason: "another node holds it".into(),
                },
                other => Error::Fjall(other),
            })?;
        // Small memtables keep resident memory small next to the dataset: they are flushed
        // to disk early rather than held up to fjall's default 64 MiB per keyspace.
        let opts = || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
        let store = Store {
            meta: db.keyspace("meta", opts)?,
            log: db.keyspace("raft_log", opts)?,
            sm_meta: db.keyspace("sm_meta", opts)?,
            tokens: db.keyspace("tokens", opts)?,
            db,
            dir: dir.to_path_buf(),
            fsync,
        };
        Ok(store)
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.dir.join("snapshots")
    }

    /// Makes everything written so far durable (one journal covers every keyspace).
    pub fn sync(&self) -> Result<(), fjall::Error> {
        use crate::failpoints::{enabled, Failpoint};
        if self.fsync && !enabled(Failpoint::SkipFsync) {
            self.db.persist(PersistMode::SyncData)
        } else {
            self.db.persist(PersistMode::Buffer)
        }
    }

    /// True when no Raft state was ever written: a brand-new data directory.
    pub fn is_pristine(&self) -> Result<bool, Error> {
        Ok(self.meta.get(keys::META_VOTE)?.is_none()
            && self.log.is_empty()?
            && self.sm_meta.get(keys::SM_LAST_APPLIED)?.is_none())
    }

    /// Marks this data dir as belonging to a node the cluster removed, durably.
    pub fn mark_removed(&self, note: &str) -> Result<(), Error> {
        self.meta.insert(keys::META_REMOVED, note.as_bytes())?;
        self.db.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }

    /// Why this data dir may not serve again, if the cluster removed its node.
    pub fn removed_note(&self) -> Result<Option<String>, Error> {
        Ok(self
            .meta
            .get(keys::META_REMOVED)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}
