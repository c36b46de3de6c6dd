//! Building a Raft snapshot: the state machine streamed to a snapshot file from one fjall
//! read view (an MVCC snapshot of the database, so applies go on meanwhile), then made the
//! current snapshot durably. Also the body of a backup ([`export`]). Runs on the blocking pool.

use std::path::{Path, PathBuf};

use fjall::{Keyspace, PersistMode, Readable};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::file::{SnapshotHeader, SnapshotWriter};
use crate::store::log_store::read_bincode;
use crate::store::meta::SmMeta;
use crate::store::view::StateView;
use crate::store::{keys, Error, Store};
use crate::types::SnapshotMeta;

/// The current snapshot as recorded in `meta`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    pub meta: SnapshotMeta,
    pub file: String,
}

/// The current snapshot's record, if one was ever made.
pub(crate) fn current(store: &Store) -> Result<Option<SnapshotRecord>, Error> {
    read_bincode(&store.meta, keys::META_SNAPSHOT)
}

/// Writes the whole state (keys, tokens, revision, key count) to `path` as one snapshot
/// stream read from one fjall read view: the body of a backup. Its header carries no cluster
/// id (a restored cluster commits a fresh one); the state's id is returned beside it.
/// Runs on the blocking pool; fjall read views are MVCC, so applies go on meanwhile.
pub(crate) fn export(
    view: &StateView,
    path: &Path,
) -> Result<(SnapshotHeader, Option<Uuid>, u64), Error> {
    let (state, header, size) = write_state(view, path, false)?;
    Ok((header, state.cluster_id, size))
}

/// One consistent read of the state machine: its keyspace, a fjall read view of the
/// database, and the `sm_meta` in that view (keyspace generation checked).
fn consistent_read_view(view: &StateView) -> Result<(Keyspace, fjall::Snapshot, SmMeta), Error> {
    let store = &view.store;
    view.flush()?;
    loop {
        let (generation, kv) = view.kv();
        let read_view = store.db.snapshot();
        let meta = SmMeta::read(&read_view, store)?;
        // An install switched keyspaces between the two reads: take both again.
        if meta.kv_generation == generation {
            return Ok((kv, read_view, meta));
        }
    }
}

/// Streams tokens and keys of one consistent read view to a snapshot file at `path`.
fn write_state(
    view: &StateView,
    path: &Path,
    with_cluster_id: bool,
) -> Result<(SmMeta, SnapshotHeader, u64), Error> {
    let store = &view.store;
    let (kv, read_view, state) = consistent_read_view(view)?;
    let header = SnapshotHeader {
        revision: state.revision,
        cluster_id: if with_cluster_id {
            state.cluster_id
        } else {
            None
        },
        key_count: state.key_count,
        cluster_format: state.cluster_format.max(1),
        cluster_time: state.cluster_time,
    };
    let mut w = SnapshotWriter::create(path, &header)?;
    for guard in read_view.iter(&store.tokens) {
        let (k, v) = guard.into_inner()?;
        w.token(&k, &v)?;
    }
    for guard in read_view.iter(&kv) {
        let (k, v) = guard.into_inner()?;
        w.record(&k, &v)?;
    }
    drop(read_view);
    let size = w.finish()?;
    Ok((state, header, size))
}

/// Builds a snapshot file from one consistent read view; runs on the blocking pool.
pub(crate) fn build(view: &StateView) -> Result<(SnapshotMeta, PathBuf, u64), Error> {
    let store = &view.store;
    // Named before the state is read; renamed to its final name once written.
    let part = store
        .snapshot_dir()
        .join(format!("{}.part", Uuid::new_v4().simple()));
    let (state, _, size) = write_state(view, &part, true)?;
    let SmMeta {
        last_applied: applied,
        membership,
        ..
    } = state;
    let snapshot_id = format!(
        "{}-{}-{}",
        applied.map(|l| l.leader_id.term).unwrap_or(0),
        applied.map(|l| l.index).unwrap_or(0),
        Uuid::new_v4().simple()
    );
    let meta = SnapshotMeta {
        last_log_id: applied,
        last_membership: (*membership).clone(),
        snapshot_id,
    };
    let path = publish(view, &part, &meta)?;
    Ok((meta, path, size))
}

/// Makes a complete snapshot file the current snapshot, durably, unless a newer one is
/// already current. Returns the final path.
pub(crate) fn publish(
    view: &StateView,
    part: &Path,
    meta: &SnapshotMeta,
) -> Result<PathBuf, Error> {
    let store = &view.store;
    let _guard = view
        .snapshot_record
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let file = format!("{}.snap", meta.snapshot_id);
    let path = store.snapshot_dir().join(&file);
    std::fs::rename(part, &path)?;
    std::fs::File::open(store.snapshot_dir())?.sync_all()?;
    if let Some(cur) = &current(store)? {
        if cur.meta.last_log_id > meta.last_log_id {
            // An install overtook this build: keep the newer one.
            let _ = std::fs::remove_file(&path);
            return Ok(store.snapshot_dir().join(&cur.file));
        }
    }
    let record = SnapshotRecord {
        meta: meta.clone(),
        file: file.clone(),
    };
    let bytes = bincode::serialize(&record).map_err(|e| Error::Corrupt(e.to_string()))?;
    store.meta.insert(keys::META_SNAPSHOT, bytes)?;
    store.db.persist(PersistMode::SyncAll)?;
    // Only one snapshot is kept; older files go once the new record is durable.
    for f in std::fs::read_dir(store.snapshot_dir())?.flatten() {
        let name = f.file_name().to_string_lossy().to_string();
        if name.ends_with(".snap") && name != file {
            let _ = std::fs::remove_file(f.path());
        }
    }
    Ok(path)
}
