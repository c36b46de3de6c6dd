//! Installing a Raft snapshot received from the leader (or a backup's body): a fresh
//! keyspace filled from the snapshot file, then switched to in one durable batch with the new
//! `sm_meta` and token table. An install that fails midway leaves the old state in place.
//! Runs on the blocking pool, with flushes held off.

use std::collections::HashMap;

use fjall::PersistMode;

use super::file::{Record as Streamed, SnapshotHeader, SnapshotReader};
use crate::store::meta::{enc, SmMeta};
use crate::store::view::{decode_token, kv_options, StateView};
use crate::store::{keys, Error};
use crate::types::SnapshotMeta;

/// Records per write batch while installing a snapshot.
const INSTALL_BATCH: usize = 4096;

/// Fills a fresh keyspace from a received snapshot and switches to it in one durable batch.
pub(crate) fn install(
    view: &StateView,
    meta: &SnapshotMeta,
    file: std::fs::File,
) -> Result<(), Error> {
    let store = &view.store;
    // The snapshot supersedes whatever is unflushed: no flush may write it over the new state.
    let _no_flush = view.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
    let (generation, old) = view.kv();
    let next = generation + 1;
    let name = keys::kv_keyspace_name(next);
    if store.db.keyspace_exists(&name) {
        let stale = store.db.keyspace(&name, kv_options)?;
        store.db.delete_keyspace(stale)?;
    }
    let fresh = store.db.keyspace(&name, kv_options)?;
    // The change log starts again, empty, at the snapshot's next revision.
    let history_name = keys::Space::History.name(next);
    if store.db.keyspace_exists(&history_name) {
        let stale = store.db.keyspace(&history_name, kv_options)?;
        store.db.delete_keyspace(stale)?;
    }
    let history = store.db.keyspace(&history_name, kv_options)?;
    let filled = fill(&store.db, &fresh, file);
    let (header, tokens, data_bytes) = match filled {
        Ok(filled) => filled,
        Err(e) => {
            store.db.delete_keyspace(fresh)?;
            store.db.delete_keyspace(history)?;
            return Err(e);
        }
    };
    store.db.persist(PersistMode::SyncAll)?;
    // The installed records' expiry order, before the first apply on the new keyspace.
    let idempotency = super::super::idempotency::IdemTable::load(&fresh)?;
    let data_bytes = data_bytes + idempotency.counted_bytes();
    let leases = crate::store::lease::LeaseTable::load(&fresh)?;

    let installed = SmMeta {
        last_applied: meta.last_log_id,
        membership: std::sync::Arc::new(meta.last_membership.clone()),
        revision: header.revision,
        cluster_id: header.cluster_id,
        kv_generation: next,
        key_count: header.key_count,
        data_bytes,
        cluster_format: header.cluster_format.max(1),
        cluster_time: header.cluster_time,
        history_start: match header.cluster_format {
            0 | 1 => 0,
            _ => header.revision + 1,
        },
    };
    let compact_revision = crate::store::history::serve::stored_compact_revision(&fresh)?;
    let mut batch = store.db.batch().durability(Some(PersistMode::SyncAll));
    if installed.cluster_format >= 2 {
        // As when the switch applies: an older build must refuse this directory now.
        batch.insert(
            &store.meta,
            keys::META_FORMAT_VERSION,
            keys::FORMAT_V2_DATA_DIR.to_be_bytes(),
        );
    }
    for (key, value) in installed.write() {
        batch.insert(&store.sm_meta, key, value);
    }
    // The token table is small: replace it within the same durable batch.
    for guard in store.tokens.iter() {
        batch.remove(&store.tokens, guard.key()?);
    }
    for (digest, record) in &tokens {
        batch.insert(&store.tokens, *digest, enc(record));
    }
    batch.commit()?;
    view.tokens.replace(tokens);
    publish_format(view, &installed);
    *view.membership.lock().unwrap_or_else(|e| e.into_inner()) = installed.membership.clone();

    view.idempotency_figures.publish(&idempotency, 0, 0);
    *view.idempotency.lock().unwrap_or_else(|e| e.into_inner()) = idempotency;
    *view.leases.lock().unwrap_or_else(|e| e.into_inner()) = leases;
    *view.kv.write().unwrap_or_else(|e| e.into_inner()) = (next, fresh);
    let old_history = std::mem::replace(
        &mut *view.history_ks.write().unwrap_or_else(|e| e.into_inner()),
        history,
    );
    reset_history(view, &installed, compact_revision);
    store.db.delete_keyspace(old)?;
    store.db.delete_keyspace(old_history)?;
    view.key_count
        .store(header.key_count, std::sync::atomic::Ordering::Relaxed);
    view.data_bytes
        .store(data_bytes, std::sync::atomic::Ordering::Relaxed);
    view.revision.send_replace(header.revision);
    view.cluster_id.send_replace(header.cluster_id);
    Ok(())
}

/// The change log after an install: empty, held from the snapshot's next revision on;
/// reads that overlapped the install see the epoch move and discard what they read.
fn reset_history(view: &StateView, installed: &SmMeta, compact_revision: u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let h = &view.history;
    h.epoch.fetch_add(1, Relaxed);
    h.start.store(installed.history_start, Relaxed);
    h.compact_revision.store(compact_revision, Relaxed);
    h.removed_through.store(compact_revision, Relaxed);
    h.flushed_through.store(installed.revision, Relaxed);
    h.bytes.store(0, Relaxed);
    h.tail.reset(installed.revision + 1);
}

/// The installed state's log format and cluster time, to the view and the node's clock.
fn publish_format(view: &StateView, installed: &SmMeta) {
    use std::sync::atomic::Ordering::Relaxed;
    view.cluster_format.store(installed.cluster_format, Relaxed);
    view.cluster_time.store(installed.cluster_time, Relaxed);
    if installed.cluster_time > 0 {
        view.clock.observe(installed.cluster_time);
    }
}

/// What a snapshot file filled keyspace `fresh` with: its header, its token table, and the
/// live data size it holds, recounted (the header does not carry it).
fn fill(
    db: &fjall::Database,
    fresh: &fjall::Keyspace,
    file: std::fs::File,
) -> Result<
    (
        SnapshotHeader,
        HashMap<crate::auth::TokenDigest, crate::auth::TokenRecord>,
        u64,
    ),
    Error,
> {
    let mut tokens = HashMap::new();
    let mut data_bytes = 0u64;
    let mut reader = SnapshotReader::new(file)?;
    let mut batch = db.batch();
    let mut n = 0;
    while let Some(record) = reader.next_record()? {
        match record {
            Streamed::Kv(k, v) => {
                // Idempotency records count as the table says, not as the sender happened
                // to group them into segments (`install` adds them); the compact revision,
                // a setting of the change log, not at all (as apply leaves it).
                if keys::idempotency_segment(&k).is_none()
                    && k.as_slice() != keys::COMPACT_REVISION.as_bytes()
                    && k.as_slice() != crate::store::lease::LEASE_NEXT.as_bytes()
                {
                    data_bytes += keys::entry_bytes(k.len(), v.len());
                }
                batch.insert(fresh, k, v);
                n += 1;
                if n % INSTALL_BATCH == 0 {
                    std::mem::replace(&mut batch, db.batch()).commit()?;
                }
            }
            Streamed::Token(k, v) => {
                let (digest, record) = decode_token(&k, &v)?;
                tokens.insert(digest, record);
            }
        }
    }
    batch.commit()?;
    Ok((reader.header.clone(), tokens, data_bytes))
}
