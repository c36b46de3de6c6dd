//! [`RaftStateMachine`] on fjall: openraft's side of the state machine. It hands committed
//! entries to `store::apply` (inline or on the blocking pool), snapshot builds and installs
//! to [`super::snapshot`], and reports the applied state from `SmMeta` (`store::meta`).
//! The state itself lives in [`StateView`], which the request handlers read directly.
//!
//! Contract: `apply` records its writes in memory; a flush writes them to fjall with
//! `last_applied`, membership and revision in one atomic batch, so fjall always holds the
//! state as of some applied index, a crash recovers to it, and openraft re-applies the log
//! from there. Snapshots stream to and from files; an install fills a fresh keyspace and
//! switches to it with one durable batch.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{OptionalSend, RaftSnapshotBuilder, StorageIOError};
use tokio::io::AsyncSeekExt;
use uuid::Uuid;

use super::apply::{apply_entries, commands_in, flushes_at_once};
use super::meta::SmMeta;
use super::snapshot::{build, current, install, publish};
/// Under its old path: migration step 2 (`migrations/v0002_data_bytes.rs`) names it here.
pub(crate) use super::view::kv_options;
pub use super::view::{Item, StateView};
use super::Error;
use crate::command::Applied;
use crate::observe::{Observer, SnapshotKind};
use crate::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

pub struct StateMachine {
    view: Arc<StateView>,
    /// The file a snapshot is being received into (openraft writes the chunks).
    receiving: Option<PathBuf>,
    /// Apply and snapshot events (`Observer::noop()` in tests).
    observer: Arc<Observer>,
}

impl StateMachine {
    pub fn new(view: Arc<StateView>, observer: Arc<Observer>) -> Self {
        StateMachine {
            view,
            receiving: None,
            observer,
        }
    }

    pub fn view(&self) -> Arc<StateView> {
        self.view.clone()
    }
}

/// Applies of at most this many client commands run on openraft's state-machine task itself.
/// They take microseconds, less than the blocking pool's two thread hand-offs, which sit on
/// the path of every write at low load (at 1 client, put p50 10 % lower: median of 9
/// alternating pairs, 8 of them lower). The larger applies of high load keep the async
/// workers free.
const INLINE_APPLY_COMMANDS: usize = 8;

fn sm_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
}

/// Builds snapshots on the blocking pool while `apply` goes on.
pub struct SnapshotBuilder {
    view: Arc<StateView>,
    observer: Arc<Observer>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let started = std::time::Instant::now();
        let view = self.view.clone();
        let (meta, path, size) = blocking(move || build(&view)).await.map_err(snap_err)?;
        let index = meta.last_log_id.map(|l| l.index);
        tracing::info!(index, size_bytes = size, "snapshot created");
        self.observer
            .snapshot(SnapshotKind::Created, size, index, started.elapsed());
        let file = tokio::fs::File::open(&path).await.map_err(snap_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let view = self.view.clone();
        let meta = blocking(move || {
            view.flush()?;
            SmMeta::read(&view.store.db.snapshot(), &view.store)
        })
        .await
        .map_err(|e| StorageIOError::read_state_machine(&std::io::Error::other(e.to_string())))?;
        Ok((meta.last_applied, (*meta.membership).clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let commands = entries.iter().map(commands_in).sum();
        let (generation, _) = self.view.kv();
        if commands <= INLINE_APPLY_COMMANDS
            && !entries.iter().any(flushes_at_once)
            && !self.view.recent.flush_due(generation, commands)
        {
            return apply_entries(&self.view, &self.observer, entries, commands, true)
                .map_err(sm_err);
        }
        let view = self.view.clone();
        let observer = self.observer.clone();
        blocking(move || apply_entries(&view, &observer, entries, commands, false))
            .await
            .map_err(sm_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            view: self.view.clone(),
            observer: self.observer.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        if let Some(old) = self.receiving.take() {
            let _ = tokio::fs::remove_file(old).await;
        }
        let path = self
            .view
            .store
            .snapshot_dir()
            .join(format!("recv-{}.part", Uuid::new_v4().simple()));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(snap_err)?;
        self.receiving = Some(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        use tokio::io::AsyncWriteExt;
        let started = std::time::Instant::now();
        snapshot.flush().await.map_err(snap_err)?;
        snapshot.sync_all().await.map_err(snap_err)?;
        snapshot.seek(SeekFrom::Start(0)).await.map_err(snap_err)?;
        let file = snapshot.into_std().await;
        let view = self.view.clone();
        let received = self.receiving.take();
        let meta = meta.clone();
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let index = meta.last_log_id.map(|l| l.index);
        blocking(move || {
            install(&view, &meta, file)?;
            match received {
                Some(part) => {
                    publish(&view, &part, &meta)?;
                }
                // No file of our own to keep: write one from the installed state.
                None => {
                    build(&view)?;
                }
            }
            tracing::info!(index, size_bytes = size, "snapshot installed");
            Ok(())
        })
        .await
        .map_err(snap_err)?;
        self.observer
            .snapshot(SnapshotKind::Installed, size, index, started.elapsed());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let record = current(&self.view.store).map_err(snap_err)?;
        let Some(record) = record else {
            return Ok(None);
        };
        let path = self.view.store.snapshot_dir().join(&record.file);
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(Some(Snapshot {
                meta: record.meta,
                snapshot: Box::new(file),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(snap_err(e)),
        }
    }
}
