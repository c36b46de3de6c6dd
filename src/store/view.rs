//! The state machine as the request handlers see it: [`StateView`] answers gets, scans,
//! digests and the figures (revision, key count, data size) directly, without the log, and
//! holds what apply has written but not yet flushed to fjall ([`RecentWrites`]).
//!
//! Contract: a flush writes the unflushed writes with their `sm_meta` in one atomic batch, so
//! fjall always holds the state as of some applied index. Scans and digests flush first and
//! then read fjall. Apply (`store::apply`) and snapshot install
//! (`store::snapshot::install`) are the only writers of the figures kept here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use fjall::{Keyspace, KeyspaceCreateOptions, Readable};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use uuid::Uuid;

use super::clock::ClusterClock;
use super::history::{chunk, ChangeEvent, HistoryState};
use super::idempotency::{IdemFigures, IdemReading, IdemTable};
use super::meta::SmMeta;
use super::recent::RecentWrites;
use super::{keys, Error, Store};
use crate::auth::{TokenDigest, TokenRecord, TokenTable};
use crate::types::StoredMembership;

pub(crate) fn kv_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        .max_memtable_size(super::MEMTABLE_BYTES)
        // Values of 1 KiB and more go to blob files, and the tables keep a pointer: compaction
        // then rewrites keys and pointers, not every overwritten value again. Measured with
        // 64 KiB puts: 12-22 % more puts/s, 13-18 % less CPU per put, half the p99.
        .with_kv_separation(Some(fjall::KvSeparationOptions::default()))
}

/// Into `batch`: each large version that kv held and that `events` replace there, under
/// its moved key (compaction removes those no chunk names any more). A version written
/// in this same flush is in its chunk already.
fn move_replaced_large(
    batch: &mut fjall::OwnedWriteBatch,
    history: &Keyspace,
    events: &[&ChangeEvent],
) {
    let first = events.first().map_or(u64::MAX, |e| e.revision);
    for e in events {
        let Some(record) = &e.prev_large else {
            continue;
        };
        // A revision's events are all in one flush.
        if e.prev_revision < first {
            batch.insert(
                history,
                chunk::moved_key(e.prev_revision, &e.key),
                record.clone(),
            );
        }
    }
}

/// One key of a scan.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub key: String,
    pub meta: keys::KeyMeta,
    pub json: Vec<u8>,
}

/// What the state machine looks like now, shared with the request handlers, which read it
/// directly (reads never go through the log).
pub struct StateView {
    pub(super) store: Store,
    /// std locks: held only for a handle clone, never across `.await`.
    pub(super) kv: RwLock<(u64, Keyspace)>,
    /// The change log of the same generation as `kv` (`history_<generation>`).
    pub(super) history_ks: RwLock<Keyspace>,
    pub(super) history: HistoryState,
    pub(super) revision: watch::Sender<u64>,
    pub(super) cluster_id: watch::Sender<Option<Uuid>>,
    /// The applied membership, as `sm_meta` records it: every apply writes it back.
    pub(super) membership: Mutex<Arc<StoredMembership>>,
    /// Exact number of keys, kept with every apply (fjall's own count includes tombstones).
    pub(super) key_count: std::sync::atomic::AtomicU64,
    /// Exact live data size (key + stored value bytes of live keys), kept like `key_count`:
    /// the storage quota checks it.
    pub(super) data_bytes: std::sync::atomic::AtomicU64,
    /// Serializes updates of the current-snapshot record (build and install may overlap).
    pub(super) snapshot_record: Mutex<()>,
    /// The applied token table, in memory: every authenticated request looks here.
    pub(super) tokens: TokenTable,
    /// Stored values of recently applied keys, some not yet flushed: apply and gets look
    /// here before fjall.
    pub(super) recent: RecentWrites,
    /// Flushes run one at a time, and never during a snapshot install.
    pub(super) flush_lock: Mutex<()>,
    /// This node's reading of cluster time (`store::clock`).
    pub(super) clock: Arc<ClusterClock>,
    /// The applied log format of the cluster (1 until a format switch applied).
    pub(super) cluster_format: AtomicU8,
    /// Cluster time of the newest applied format-2 entry.
    pub(super) cluster_time: AtomicU64,
    /// The idempotency table's expiry order and settings (its records are in `kv`); apply
    /// holds it for a batch, an install reloads it.
    pub(super) idempotency: Mutex<IdemTable>,
    pub(super) idempotency_figures: IdemFigures,
    /// The lease table (its records are in `kv`); apply holds it for a batch, an install
    /// reloads it.
    pub(super) leases: Mutex<super::lease::LeaseTable>,
}

impl StateView {
    pub fn open(store: Store) -> Result<Arc<StateView>, Error> {
        let meta = SmMeta::read(&store.db.snapshot(), &store)?;
        let generation = meta.kv_generation;
        let name = keys::kv_keyspace_name(generation);
        let kv = store.db.keyspace(&name, kv_options)?;
        let history_name = keys::Space::History.name(generation);
        let history_ks = store.db.keyspace(&history_name, kv_options)?;
        // Drop what an interrupted install left behind.
        for other in store.db.list_keyspace_names() {
            let other: &str = other.as_ref();
            let stale = (other.starts_with("kv_") && other != name)
                || (other.starts_with("history_") && other != history_name);
            if stale {
                let ks = store.db.keyspace(other, kv_options)?;
                store.db.delete_keyspace(ks)?;
            }
        }
        // Leftover partial snapshot files from a crash.
        if let Ok(dir) = std::fs::read_dir(store.snapshot_dir()) {
            for f in dir.flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                if name.ends_with(".part") {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        let tokens = TokenTable::default();
        tokens.replace(load_tokens(&store.tokens)?);
        // Cluster time resumes from the newest stamp this node holds, counting from now.
        let floor = match store.meta.get(keys::META_CLOCK_FLOOR)? {
            Some(v) => crate::binary::decode::<u64>(&v)
                .map_err(|e| Error::Corrupt(format!("clock_floor: {e}")))?,
            None => 0,
        };
        let start = meta
            .cluster_time
            .max(floor)
            .max(super::log_store::newest_stamp(&store)?);
        let idempotency = IdemTable::load(&kv)?;
        let leases = super::lease::LeaseTable::load(&kv)?;
        let idempotency_figures = IdemFigures::default();
        idempotency_figures.publish(&idempotency, 0, 0);
        let history = HistoryState::open(&meta, &kv, &history_ks)?;
        Ok(Arc::new(StateView {
            store,
            kv: RwLock::new((generation, kv)),
            history_ks: RwLock::new(history_ks),
            history,
            revision: watch::channel(meta.revision).0,
            cluster_id: watch::channel(meta.cluster_id).0,
            membership: Mutex::new(meta.membership),
            key_count: meta.key_count.into(),
            data_bytes: meta.data_bytes.into(),
            snapshot_record: Mutex::new(()),
            tokens,
            recent: RecentWrites::default(),
            flush_lock: Mutex::new(()),
            clock: Arc::new(ClusterClock::starting_at(start)),
            cluster_format: meta.cluster_format.max(1).into(),
            cluster_time: meta.cluster_time.into(),
            idempotency: Mutex::new(idempotency),
            idempotency_figures,
            leases: Mutex::new(leases),
        }))
    }

    /// The claims under lock prefix `prefix` (`_lock/<name>/`) as applied: (create revision,
    /// lease) of each, in line order, the holder first. Reads no more than a point read
    /// per claim, and never flushes.
    pub fn lock_line(&self, prefix: &str) -> Result<Vec<(u64, u64)>, Error> {
        let (generation, kv) = self.kv();
        let reader = self.recent.batch(&kv, generation, 0);
        let (keys, _) = reader.keys_under(prefix, 100_000)?;
        let mut line = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(stored) = reader.get(&key)? {
                if let Some((meta, _)) = keys::decode_record(&stored) {
                    line.push((meta.create_revision, meta.lease));
                }
            }
        }
        line.sort_unstable();
        Ok(line)
    }

    /// Reads the lease table (never held across an await).
    pub fn with_leases<T>(&self, f: impl FnOnce(&super::lease::LeaseTable) -> T) -> T {
        f(&self.leases.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(super) fn kv(&self) -> (u64, Keyspace) {
        self.kv.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn history_ks(&self) -> Keyspace {
        self.history_ks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn tokens(&self) -> &TokenTable {
        &self.tokens
    }

    /// The stored bytes (revision + JSON) of `key`: a recent write if known, else fjall.
    pub(super) fn stored(&self, key: &str) -> Result<Option<fjall::Slice>, Error> {
        let (generation, kv) = self.kv();
        match self.recent.get(generation, key) {
            Some(known) => Ok(known),
            None => Ok(kv.get(key.as_bytes())?),
        }
    }

    /// Writes what apply recorded and fjall does not hold yet, in one batch.
    pub fn flush(&self) -> Result<(), Error> {
        self.flush_with(self.store.db.batch())
    }

    /// [`Self::flush`] in one batch with `batch` (an apply's token changes). Not fsynced,
    /// as apply never was: the log is durable and openraft re-applies it past `last_applied`.
    pub(super) fn flush_with(&self, mut batch: fjall::OwnedWriteBatch) -> Result<(), Error> {
        let _one_at_a_time = self.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (generation, kv) = self.kv();
        let Some(mut unflushed) = self.recent.unflushed(generation) else {
            if !batch.is_empty() {
                batch.commit()?;
            }
            return Ok(());
        };
        // Large records this flush writes to kv, by key: their puts' events leave them there.
        let mut large_in_kv: HashMap<&str, &fjall::Slice> = HashMap::new();
        for (key, stored) in &unflushed.writes {
            match stored {
                Some(v) => {
                    if v.len() >= chunk::LARGE_RECORD {
                        large_in_kv.insert(key, v);
                    }
                    batch.insert(&kv, key.as_str(), v.clone());
                }
                None => batch.remove(&kv, key.as_str()),
            }
        }
        for (k, v) in std::mem::take(&mut unflushed.meta) {
            batch.insert(&self.store.sm_meta, k, v);
        }
        let history = self.history_ks();
        let events: Vec<_> = unflushed.events.iter().flat_map(|b| b.iter()).collect();
        // Exactly the version kv gets: an earlier put of the key in this flush is copied.
        let in_kv = |e: &ChangeEvent| {
            !large_in_kv.is_empty() && large_in_kv.get(e.key.as_str()) == Some(&&e.record)
        };
        let mut history_bytes = 0;
        for c in chunk::chunks(&events, &in_kv) {
            batch.insert(&history, chunk::index_key(&c.key), c.info.encode());
            batch.insert(&history, c.key, c.value);
            history_bytes += c.info.bytes;
        }
        move_replaced_large(&mut batch, &history, &events);
        batch.commit()?;
        self.history
            .bytes
            .fetch_add(history_bytes, std::sync::atomic::Ordering::Relaxed);
        if let Some(last) = events.last() {
            self.history
                .flushed_through
                .fetch_max(last.revision, std::sync::atomic::Ordering::Relaxed);
        }
        self.recent.flushed(&unflushed);
        Ok(())
    }

    /// A key's metadata and JSON text (DESIGN.md "Key metadata"), or `None` when absent.
    pub fn record(&self, key: &str) -> Result<Option<(keys::KeyMeta, Vec<u8>)>, Error> {
        let Some(v) = self.stored(key)? else {
            return Ok(None);
        };
        let (meta, json) = keys::decode_record(&v)
            .ok_or_else(|| Error::Corrupt(format!("record of key {key:?} is too short")))?;
        Ok(Some((meta, json.to_vec())))
    }

    /// `(revision, JSON)` of `key`, if present.
    pub fn get(&self, key: &str) -> Result<Option<(u64, Vec<u8>)>, Error> {
        let Some(v) = self.stored(key)? else {
            return Ok(None);
        };
        let (rev, json) = keys::decode_value(&v)
            .ok_or_else(|| Error::Corrupt(format!("value of a key is {} bytes", v.len())))?;
        Ok(Some((rev, json.to_vec())))
    }

    /// Keys starting with `prefix` and after `after`, in key order, up to `limit` items or
    /// about `max_bytes` of keys and values. Returns the items and whether more remain.
    pub fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Item>, bool), Error> {
        self.flush()?;
        let (_, kv) = self.kv();
        // The state machine's own keys sort first (`keys::RESERVED`): a scan of everything
        // starts past them. A client prefix never starts with one (`invalid_key`).
        let past_reserved = [keys::RESERVED + 1];
        let iter = match after {
            Some(after)
                if after.as_bytes() >= prefix.as_bytes()
                    && after.as_bytes() >= &past_reserved[..] =>
            {
                let start = std::ops::Bound::Excluded(after.as_bytes().to_vec());
                kv.range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded))
            }
            _ if prefix.is_empty() => kv.range::<Vec<u8>, _>(past_reserved.to_vec()..),
            _ => kv.prefix(prefix.as_bytes()),
        };
        let mut items = Vec::new();
        let mut bytes = 0usize;
        for guard in iter {
            let (k, v) = guard.into_inner()?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            let (meta, json) = keys::decode_record(&v)
                .ok_or_else(|| Error::Corrupt("short value in key space".into()))?;
            let cost = k.len() + json.len() + 48;
            if items.len() >= limit || (bytes + cost > max_bytes && !items.is_empty()) {
                return Ok((items, true));
            }
            bytes += cost;
            items.push(Item {
                key: String::from_utf8_lossy(&k).into_owned(),
                meta,
                json: json.to_vec(),
            });
        }
        Ok((items, false))
    }

    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    pub fn watch_revision(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    pub fn cluster_id(&self) -> Option<Uuid> {
        *self.cluster_id.borrow()
    }

    pub fn watch_cluster_id(&self) -> watch::Receiver<Option<Uuid>> {
        self.cluster_id.subscribe()
    }

    /// The idempotency table's figures as of the newest apply.
    pub fn idempotency(&self) -> IdemReading {
        self.idempotency_figures.read()
    }

    /// This node's reading of cluster time.
    pub fn clock(&self) -> &Arc<ClusterClock> {
        &self.clock
    }

    /// The log format the cluster writes, as applied here.
    pub fn cluster_format(&self) -> u8 {
        self.cluster_format.load(Ordering::Relaxed)
    }

    /// Cluster time of the newest applied format-2 entry (0 before the first).
    pub fn applied_cluster_time(&self) -> u64 {
        self.cluster_time.load(Ordering::Relaxed)
    }

    /// Saves the clock's reading as the floor a restart resumes from. Buffered, not
    /// fsynced: a process crash keeps it; a power loss may lose the newest, which only
    /// makes the restart resume from an older (still valid) stamp.
    pub fn save_clock_floor(&self) -> Result<(), Error> {
        let reading = self.clock.reading();
        self.store
            .meta
            .insert(keys::META_CLOCK_FLOOR, super::meta::enc(&reading))?;
        self.store.db.persist(fjall::PersistMode::Buffer)?;
        Ok(())
    }

    /// Number of keys in the state machine.
    pub fn key_count(&self) -> u64 {
        self.key_count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Live data size: key bytes + stored value bytes of every live key, as applied.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes `key` counts for now (key + stored value), or `None` when it is absent.
    pub fn entry_bytes(&self, key: &str) -> Result<Option<u64>, Error> {
        Ok(self
            .stored(key)?
            .map(|v| keys::entry_bytes(key.len(), v.len())))
    }

    /// SHA-256 over every key, revision and value in order: equal digests on two nodes mean
    /// equal state machines. O(n): only on request.
    pub fn digest(&self) -> Result<(String, u64), Error> {
        self.flush()?;
        let (_, kv) = self.kv();
        let read_view = self.store.db.snapshot();
        let mut h = Sha256::new();
        let mut n = 0u64;
        let mut segments = Vec::new();
        for guard in read_view.iter(&kv) {
            let (k, v) = guard.into_inner()?;
            if keys::idempotency_segment(&k).is_some() {
                // A node's own grouping of the idempotency records: hashed below by what
                // the segments hold, which every node agrees on.
                segments.push((k, v));
                continue;
            }
            h.update((k.len() as u32).to_be_bytes());
            h.update(&k);
            h.update((v.len() as u32).to_be_bytes());
            h.update(&v);
            // Counted as the keys clients see; hashed with the state machine's own.
            n += u64::from(!keys::is_reserved(&k));
        }
        h.update(b"idempotency");
        h.update(super::idempotency::stored_digest(
            segments.into_iter().map(Ok),
        )?);
        for guard in read_view.iter(&self.store.tokens) {
            let (k, v) = guard.into_inner()?;
            h.update(b"token");
            h.update(&k);
            h.update(&v);
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok((hex, n))
    }
}

/// The token table as stored.
fn load_tokens(ks: &Keyspace) -> Result<HashMap<TokenDigest, TokenRecord>, Error> {
    let mut out = HashMap::new();
    for guard in ks.iter() {
        let (k, v) = guard.into_inner()?;
        let (digest, record) = decode_token(&k, &v)?;
        out.insert(digest, record);
    }
    Ok(out)
}

pub(super) fn decode_token(k: &[u8], v: &[u8]) -> Result<(TokenDigest, TokenRecord), Error> {
    let digest: TokenDigest = k
        .try_into()
        .map_err(|_| Error::Corrupt(format!("token key of {} bytes", k.len())))?;
    let record =
        crate::binary::decode(v).map_err(|e| Error::Corrupt(format!("token record: {e}")))?;
    Ok((digest, record))
}
