//! [`RaftStateMachine`] on fjall: applies committed commands to the key space, builds
//! snapshots from it and installs received ones.
//!
//! Contract: `apply` records its writes in memory ([`RecentWrites`]); a flush writes them to
//! fjall with `last_applied`, membership and revision in one atomic batch, so fjall always
//! holds the state as of some applied index, a crash recovers to it, and openraft re-applies
//! the log from there. Scans, digests and snapshots flush first and then read fjall.
//! Snapshots stream to and from files; an install fills a fresh keyspace and switches to it
//! with one durable batch.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use fjall::{Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncSeekExt;
use tokio::sync::watch;
use uuid::Uuid;

use super::log_store::read_bincode;
use super::recent::{BatchWrites, Meta, RecentWrites};
use super::snapshot::{Record as Streamed, SnapshotHeader, SnapshotReader, SnapshotWriter};
use super::{keys, Error, Store};
use crate::auth::{TokenDigest, TokenRecord, TokenTable};
use crate::command::{Command, Outcome, COMMAND_FORMAT};
use crate::observe::{AppliedFigures, ApplyProbe, Observer, SnapshotKind};
use crate::raft::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

pub(crate) fn kv_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        .max_memtable_size(super::MEMTABLE_BYTES)
        // Values of 1 KiB and more go to blob files, and the tables keep a pointer: compaction
        // then rewrites keys and pointers, not every overwritten value again. Measured with
        // 64 KiB puts: 12-22 % more puts/s, 13-18 % less CPU per put, half the p99.
        .with_kv_separation(Some(fjall::KvSeparationOptions::default()))
}

/// Records per write batch while installing a snapshot.
const INSTALL_BATCH: usize = 4096;

/// One key of a scan.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub key: String,
    pub revision: u64,
    pub json: Vec<u8>,
}

/// What the state machine looks like now, shared with the request handlers, which read it
/// directly (reads never go through the log).
pub struct StateView {
    store: Store,
    /// std locks: held only for a handle clone, never across `.await`.
    kv: RwLock<(u64, Keyspace)>,
    revision: watch::Sender<u64>,
    cluster_id: watch::Sender<Option<Uuid>>,
    /// Exact number of keys, kept with every apply (fjall's own count includes tombstones).
    key_count: std::sync::atomic::AtomicU64,
    /// Exact live data size (key + stored value bytes of live keys), kept like `key_count`:
    /// the storage quota checks it.
    data_bytes: std::sync::atomic::AtomicU64,
    /// Serializes updates of the current-snapshot record (build and install may overlap).
    snapshot_record: Mutex<()>,
    /// The applied token table, in memory: every authenticated request looks here.
    tokens: TokenTable,
    /// Stored values of recently applied keys, some not yet flushed: apply and gets look
    /// here before fjall.
    recent: RecentWrites,
    /// Flushes run one at a time, and never during a snapshot install.
    flush_lock: Mutex<()>,
}

/// The current snapshot as recorded in `meta`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotRecord {
    meta: SnapshotMeta,
    file: String,
}

impl StateView {
    pub fn open(store: Store) -> Result<Arc<StateView>, Error> {
        let generation: u64 = read_bincode(&store.sm_meta, keys::SM_KV_GENERATION)?.unwrap_or(0);
        let name = keys::kv_keyspace_name(generation);
        let kv = store.db.keyspace(&name, kv_options)?;
        // Drop what an interrupted install left behind.
        for other in store.db.list_keyspace_names() {
            let other: &str = other.as_ref();
            if other.starts_with("kv_") && other != name {
                let ks = store.db.keyspace(other, kv_options)?;
                store.db.delete_keyspace(ks)?;
            }
        }
        let revision: u64 = read_bincode(&store.sm_meta, keys::SM_REVISION)?.unwrap_or(0);
        let cluster_id: Option<Uuid> =
            read_bincode::<Option<Uuid>>(&store.sm_meta, keys::SM_CLUSTER_ID)?.flatten();
        let key_count: u64 = read_bincode(&store.sm_meta, keys::SM_KEY_COUNT)?.unwrap_or(0);
        let data_bytes: u64 = read_bincode(&store.sm_meta, keys::SM_DATA_BYTES)?.unwrap_or(0);
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
        Ok(Arc::new(StateView {
            store,
            kv: RwLock::new((generation, kv)),
            revision: watch::channel(revision).0,
            cluster_id: watch::channel(cluster_id).0,
            key_count: key_count.into(),
            data_bytes: data_bytes.into(),
            snapshot_record: Mutex::new(()),
            tokens,
            recent: RecentWrites::default(),
            flush_lock: Mutex::new(()),
        }))
    }

    pub(super) fn kv(&self) -> (u64, Keyspace) {
        self.kv.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn tokens(&self) -> &TokenTable {
        &self.tokens
    }

    /// The stored bytes (revision + JSON) of `key`: a recent write if known, else fjall.
    fn stored(&self, key: &str) -> Result<Option<fjall::Slice>, Error> {
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
    fn flush_with(&self, mut batch: fjall::OwnedWriteBatch) -> Result<(), Error> {
        let _one_at_a_time = self.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (generation, kv) = self.kv();
        let Some(mut unflushed) = self.recent.unflushed(generation) else {
            if !batch.is_empty() {
                batch.commit()?;
            }
            return Ok(());
        };
        for (key, stored) in std::mem::take(&mut unflushed.writes) {
            match stored {
                Some(v) => batch.insert(&kv, key, v),
                None => batch.remove(&kv, key),
            }
        }
        for (k, v) in std::mem::take(&mut unflushed.meta) {
            batch.insert(&self.store.sm_meta, k, v);
        }
        batch.commit()?;
        self.recent.flushed(&unflushed);
        Ok(())
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
        let iter = match after {
            Some(after) if after.as_bytes() >= prefix.as_bytes() => {
                let start = std::ops::Bound::Excluded(after.as_bytes().to_vec());
                kv.range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded))
            }
            _ => kv.prefix(prefix.as_bytes()),
        };
        let mut items = Vec::new();
        let mut bytes = 0usize;
        for guard in iter {
            let (k, v) = guard.into_inner()?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            let (revision, json) = keys::decode_value(&v)
                .ok_or_else(|| Error::Corrupt("short value in key space".into()))?;
            let cost = k.len() + json.len() + 48;
            if items.len() >= limit || (bytes + cost > max_bytes && !items.is_empty()) {
                return Ok((items, true));
            }
            bytes += cost;
            items.push(Item {
                key: String::from_utf8_lossy(&k).into_owned(),
                revision,
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
        let snap = self.store.db.snapshot();
        let mut h = Sha256::new();
        let mut n = 0u64;
        for guard in snap.iter(&kv) {
            let (k, v) = guard.into_inner()?;
            h.update((k.len() as u32).to_be_bytes());
            h.update(&k);
            h.update((v.len() as u32).to_be_bytes());
            h.update(&v);
            n += 1;
        }
        for guard in snap.iter(&self.store.tokens) {
            let (k, v) = guard.into_inner()?;
            h.update(b"token");
            h.update(&k);
            h.update(&v);
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok((hex, n))
    }
}

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

/// Whether applying `entry` writes to fjall at once: anything but key-space writes.
fn flushes_at_once(entry: &Entry) -> bool {
    match &entry.payload {
        EntryPayload::Normal(c) => match &c.command {
            Command::Batch(cmds) => cmds
                .iter()
                .any(|c| !matches!(c, Command::Put { .. } | Command::Delete { .. })),
            Command::Put { .. } | Command::Delete { .. } => false,
            _ => true,
        },
        EntryPayload::Membership(_) => true,
        EntryPayload::Blank => false,
    }
}

/// Client commands in one log entry: each command of a batch counts.
fn commands_in(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(c) => match &c.command {
            Command::Batch(cmds) => cmds.len(),
            _ => 1,
        },
        _ => 1,
    }
}

/// Applies one batch of entries (`commands` client commands in all), on the blocking pool
/// unless it is small and flushes nothing (`inline`). Each command's apply event is emitted
/// once the batch is applied.
fn apply_entries(
    view: &StateView,
    observer: &Observer,
    entries: Vec<Entry>,
    commands: usize,
    inline: bool,
) -> Result<Vec<Outcome>, Error> {
    let started = std::time::Instant::now();
    let mut probe = observer.apply_probe();
    let store = &view.store;
    let (generation, kv) = view.kv();
    let mut writes = view.recent.batch(&kv, generation, commands);
    let mut batch = store.db.batch();
    let mut tally = Tally {
        revision: view.revision(),
        cluster_id: view.cluster_id(),
        key_count: view.key_count(),
        data_bytes: view.data_bytes(),
        tokens: Vec::new(),
        table: &view.tokens,
        tokens_ks: &store.tokens,
    };
    let mut last_applied = None;
    let mut membership = None;
    let mut outcomes = Vec::with_capacity(entries.len());

    /// The running figures of one apply batch.
    struct Tally<'a> {
        revision: u64,
        cluster_id: Option<Uuid>,
        key_count: u64,
        data_bytes: u64,
        /// Token changes of this batch, applied to the in-memory table after the commit.
        tokens: Vec<(TokenDigest, Option<TokenRecord>)>,
        table: &'a TokenTable,
        tokens_ks: &'a Keyspace,
    }

    impl Tally<'_> {
        fn has_token(&self, d: &TokenDigest) -> bool {
            match self.tokens.iter().rev().find(|(x, _)| x == d) {
                Some((_, rec)) => rec.is_some(),
                None => self.table.contains(d),
            }
        }
    }

    /// Applies one command; a batch command by its parts, each with its own event.
    fn run(
        cmd: Command,
        batch: &mut fjall::OwnedWriteBatch,
        writes: &mut BatchWrites,
        t: &mut Tally,
        at: &mut Applying,
    ) -> Result<Outcome, Error> {
        if let Command::Batch(cmds) = cmd {
            let mut out = Vec::with_capacity(cmds.len());
            for c in cmds {
                out.push(run(c, batch, writes, t, at)?);
            }
            return Ok(Outcome::Batch(out));
        }
        let Some(started) = at.probe.start() else {
            return run_one(cmd, batch, writes, t);
        };
        let operation = cmd.name();
        let key = match &cmd {
            Command::Put { key, .. } | Command::Delete { key } if at.probe.include_keys() => {
                Some(key.clone())
            }
            _ => None,
        };
        let outcome = run_one(cmd, batch, writes, t)?;
        at.probe.record(started, operation, at.index, key);
        Ok(outcome)
    }

    /// Where the batch is: the apply events so far and the index of the current entry.
    struct Applying<'a, 'b> {
        probe: &'b mut ApplyProbe<'a>,
        index: u64,
    }

    /// Key-space writes go to `writes` (flushed later); token changes to `batch`.
    fn run_one(
        cmd: Command,
        batch: &mut fjall::OwnedWriteBatch,
        writes: &mut BatchWrites,
        t: &mut Tally,
    ) -> Result<Outcome, Error> {
        Ok(match cmd {
            Command::SetClusterId { id } => {
                // Set once: a second initializer cannot rename a live cluster.
                let id = *t.cluster_id.get_or_insert(id);
                Outcome::ClusterId { id }
            }
            Command::Put { key, value } => {
                t.revision += 1;
                match writes.size(&key)? {
                    Some(old) => {
                        t.data_bytes = t
                            .data_bytes
                            .saturating_sub(keys::entry_bytes(key.len(), old as usize))
                    }
                    None => t.key_count += 1,
                }
                let stored_value = keys::encode_value(t.revision, value.as_bytes());
                t.data_bytes += keys::entry_bytes(key.len(), stored_value.len());
                writes.set(key, Some(fjall::Slice::from(stored_value)));
                Outcome::Put {
                    revision: t.revision,
                }
            }
            Command::Delete { key } => {
                if let Some(old) = writes.size(&key)? {
                    t.revision += 1;
                    t.key_count = t.key_count.saturating_sub(1);
                    t.data_bytes = t
                        .data_bytes
                        .saturating_sub(keys::entry_bytes(key.len(), old as usize));
                    writes.set(key, None);
                    Outcome::Delete {
                        deleted: true,
                        revision: t.revision,
                    }
                } else {
                    Outcome::Delete {
                        deleted: false,
                        revision: t.revision,
                    }
                }
            }
            // `run` takes every batch apart before calling this.
            Command::Batch(_) => unreachable!("run applies a batch by its parts"),
            Command::TokenCreate { digest, record } => {
                // Ids are digest prefixes: refuse a (vanishingly unlikely) clash too.
                let clash = t.has_token(&digest) || t.table.find_id(&record.id).is_some();
                if !clash {
                    batch.insert(t.tokens_ks, digest, enc(&record));
                    t.tokens.push((digest, Some(record)));
                }
                Outcome::Token { changed: !clash }
            }
            Command::TokenRevoke { digest } => {
                let present = t.has_token(&digest);
                if present {
                    batch.remove(t.tokens_ks, digest);
                    t.tokens.push((digest, None));
                }
                Outcome::Token { changed: present }
            }
        })
    }

    for entry in entries {
        last_applied = Some(entry.log_id);
        let outcome = match entry.payload {
            EntryPayload::Blank => Outcome::None,
            EntryPayload::Membership(m) => {
                membership = Some(StoredMembership::new(Some(entry.log_id), m));
                Outcome::None
            }
            EntryPayload::Normal(cmd) => {
                // Applying a format this build does not know could diverge from the nodes
                // that do: stop instead (the rolling-upgrade rule keeps this from happening).
                if cmd.format == 0 || cmd.format > COMMAND_FORMAT {
                    return Err(Error::Corrupt(format!(
                        "log entry {} has command format {}, this build reads 1 to {COMMAND_FORMAT}; upgrade this node",
                        entry.log_id.index, cmd.format
                    )));
                }
                let mut at = Applying {
                    probe: &mut probe,
                    index: entry.log_id.index,
                };
                run(cmd.command, &mut batch, &mut writes, &mut tally, &mut at)?
            }
        };
        outcomes.push(outcome);
    }

    let mut meta: Meta = vec![
        (keys::SM_LAST_APPLIED, enc(&last_applied)),
        (keys::SM_REVISION, enc(&tally.revision)),
        (keys::SM_CLUSTER_ID, enc(&tally.cluster_id)),
        (keys::SM_KEY_COUNT, enc(&tally.key_count)),
        (keys::SM_DATA_BYTES, enc(&tally.data_bytes)),
    ];
    if let Some(m) = &membership {
        meta.push((keys::SM_MEMBERSHIP, enc(m)));
    }
    // Membership, cluster id and tokens change rarely and are not in the write table: they
    // go to fjall with this batch, so the `sm_meta` of any later flush stays true for them.
    let flush_now =
        membership.is_some() || !batch.is_empty() || tally.cluster_id != view.cluster_id();
    writes.applied(meta, commands);
    // A due flush waits for an apply off the async workers (`apply` sends it there).
    if flush_now || (!inline && view.recent.flush_due(generation, 0)) {
        view.flush_with(batch)?;
    }

    let Tally {
        revision,
        cluster_id,
        key_count,
        data_bytes,
        tokens,
        ..
    } = tally;
    view.tokens.apply(tokens);
    view.key_count
        .store(key_count, std::sync::atomic::Ordering::Relaxed);
    view.data_bytes
        .store(data_bytes, std::sync::atomic::Ordering::Relaxed);
    view.revision.send_if_modified(|r| {
        let changed = *r != revision;
        *r = revision;
        changed
    });
    view.cluster_id.send_if_modified(|c| {
        let changed = *c != cluster_id;
        *c = cluster_id;
        changed
    });
    observer.applied(
        probe,
        started.elapsed(),
        AppliedFigures {
            revision,
            key_count,
            data_bytes,
        },
    );
    Ok(outcomes)
}

/// Encodes plain metadata; serializing such data into a `Vec` cannot fail.
fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).unwrap_or_default()
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

fn decode_token(k: &[u8], v: &[u8]) -> Result<(TokenDigest, TokenRecord), Error> {
    let digest: TokenDigest = k
        .try_into()
        .map_err(|_| Error::Corrupt(format!("token key of {} bytes", k.len())))?;
    let record =
        bincode::deserialize(v).map_err(|e| Error::Corrupt(format!("token record: {e}")))?;
    Ok((digest, record))
}

/// State-machine metadata as of one fjall snapshot.
struct SmMeta {
    applied: Option<LogId>,
    membership: StoredMembership,
    revision: u64,
    cluster_id: Option<Uuid>,
    generation: u64,
}

fn read_state(snap: &fjall::Snapshot, store: &Store) -> Result<SmMeta, Error> {
    let get =
        |key: &[u8]| -> Result<Option<fjall::Slice>, Error> { Ok(snap.get(&store.sm_meta, key)?) };
    fn de<T: serde::de::DeserializeOwned>(
        v: Option<fjall::Slice>,
        what: &str,
    ) -> Result<Option<T>, Error> {
        v.map(|b| bincode::deserialize(&b).map_err(|e| Error::Corrupt(format!("{what}: {e}"))))
            .transpose()
    }
    let applied = de::<Option<LogId>>(get(keys::SM_LAST_APPLIED)?, "last_applied")?.flatten();
    let membership =
        de::<StoredMembership>(get(keys::SM_MEMBERSHIP)?, "membership")?.unwrap_or_default();
    let revision = de::<u64>(get(keys::SM_REVISION)?, "revision")?.unwrap_or(0);
    let cluster_id = de::<Option<Uuid>>(get(keys::SM_CLUSTER_ID)?, "cluster_id")?.flatten();
    let generation = de::<u64>(get(keys::SM_KV_GENERATION)?, "kv_generation")?.unwrap_or(0);
    Ok(SmMeta {
        applied,
        membership,
        revision,
        cluster_id,
        generation,
    })
}

fn de_key_count(snap: &fjall::Snapshot, store: &Store) -> Result<u64, Error> {
    match snap.get(&store.sm_meta, keys::SM_KEY_COUNT)? {
        None => Ok(0),
        Some(b) => bincode::deserialize(&b).map_err(|e| Error::Corrupt(format!("key_count: {e}"))),
    }
}

/// Writes the whole state (keys, tokens, revision, key count) to `path` as one snapshot
/// stream read from one fjall snapshot: the body of a backup. Its header carries no cluster
/// id (a restored cluster commits a fresh one); the state's id is returned beside it.
/// Runs on the blocking pool; fjall snapshots are MVCC, so applies go on meanwhile.
pub(crate) fn export(
    view: &StateView,
    path: &Path,
) -> Result<(SnapshotHeader, Option<Uuid>, u64), Error> {
    let (state, header, size) = write_state(view, path, false)?;
    Ok((header, state.cluster_id, size))
}

/// One consistent fjall snapshot of the state machine (keyspace generation checked).
fn consistent_snapshot(view: &StateView) -> Result<(Keyspace, fjall::Snapshot, SmMeta), Error> {
    let store = &view.store;
    view.flush()?;
    loop {
        let (generation, kv) = view.kv();
        let snap = store.db.snapshot();
        let state = read_state(&snap, store)?;
        // An install switched keyspaces between the two reads: take both again.
        if state.generation == generation {
            return Ok((kv, snap, state));
        }
    }
}

/// Streams tokens and keys of one consistent snapshot to a snapshot file at `path`.
fn write_state(
    view: &StateView,
    path: &Path,
    with_cluster_id: bool,
) -> Result<(SmMeta, SnapshotHeader, u64), Error> {
    let store = &view.store;
    let (kv, snap, state) = consistent_snapshot(view)?;
    let header = SnapshotHeader {
        revision: state.revision,
        cluster_id: if with_cluster_id {
            state.cluster_id
        } else {
            None
        },
        key_count: de_key_count(&snap, store)?,
    };
    let mut w = SnapshotWriter::create(path, &header)?;
    for guard in snap.iter(&store.tokens) {
        let (k, v) = guard.into_inner()?;
        w.token(&k, &v)?;
    }
    for guard in snap.iter(&kv) {
        let (k, v) = guard.into_inner()?;
        w.record(&k, &v)?;
    }
    drop(snap);
    let size = w.finish()?;
    Ok((state, header, size))
}

/// Builds a snapshot file from one consistent fjall snapshot; runs on the blocking pool.
pub(super) fn build(view: &StateView) -> Result<(SnapshotMeta, PathBuf, u64), Error> {
    let store = &view.store;
    // Named before the state is read; renamed to its final name once written.
    let part = store
        .snapshot_dir()
        .join(format!("{}.part", Uuid::new_v4().simple()));
    let (state, _, size) = write_state(view, &part, true)?;
    let SmMeta {
        applied,
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
        last_membership: membership,
        snapshot_id,
    };
    let path = publish(view, &part, &meta)?;
    Ok((meta, path, size))
}

/// Makes a complete snapshot file the current snapshot, durably, unless a newer one is
/// already current. Returns the final path.
fn publish(view: &StateView, part: &Path, meta: &SnapshotMeta) -> Result<PathBuf, Error> {
    let store = &view.store;
    let _guard = view
        .snapshot_record
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let file = format!("{}.snap", meta.snapshot_id);
    let path = store.snapshot_dir().join(&file);
    std::fs::rename(part, &path)?;
    std::fs::File::open(store.snapshot_dir())?.sync_all()?;
    let current: Option<SnapshotRecord> = read_bincode(&store.meta, keys::META_SNAPSHOT)?;
    if let Some(cur) = &current {
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

/// Fills a fresh keyspace from a received snapshot and switches to it in one durable batch.
pub(super) fn install(
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
    let mut tokens = HashMap::new();
    // Recounted from the records: the live data size is not in the snapshot header.
    let mut data_bytes = 0u64;
    let filled = (|| -> Result<SnapshotHeader, Error> {
        let mut reader = SnapshotReader::new(file)?;
        let mut batch = store.db.batch();
        let mut n = 0;
        while let Some(record) = reader.next_record()? {
            match record {
                Streamed::Kv(k, v) => {
                    data_bytes += keys::entry_bytes(k.len(), v.len());
                    batch.insert(&fresh, k, v);
                    n += 1;
                    if n % INSTALL_BATCH == 0 {
                        std::mem::replace(&mut batch, store.db.batch()).commit()?;
                    }
                }
                Streamed::Token(k, v) => {
                    let (digest, record) = decode_token(&k, &v)?;
                    tokens.insert(digest, record);
                }
            }
        }
        batch.commit()?;
        Ok(reader.header.clone())
    })();
    let header = match filled {
        Ok(h) => h,
        Err(e) => {
            store.db.delete_keyspace(fresh)?;
            return Err(e);
        }
    };
    store.db.persist(PersistMode::SyncAll)?;

    let mut batch = store.db.batch().durability(Some(PersistMode::SyncAll));
    batch.insert(
        &store.sm_meta,
        keys::SM_LAST_APPLIED,
        enc(&meta.last_log_id),
    );
    batch.insert(
        &store.sm_meta,
        keys::SM_MEMBERSHIP,
        enc(&meta.last_membership),
    );
    batch.insert(&store.sm_meta, keys::SM_REVISION, enc(&header.revision));
    batch.insert(&store.sm_meta, keys::SM_CLUSTER_ID, enc(&header.cluster_id));
    batch.insert(&store.sm_meta, keys::SM_KV_GENERATION, enc(&next));
    batch.insert(&store.sm_meta, keys::SM_KEY_COUNT, enc(&header.key_count));
    batch.insert(&store.sm_meta, keys::SM_DATA_BYTES, enc(&data_bytes));
    // The token table is small: replace it within the same durable batch.
    for guard in store.tokens.iter() {
        batch.remove(&store.tokens, guard.key()?);
    }
    for (digest, record) in &tokens {
        batch.insert(&store.tokens, *digest, enc(record));
    }
    batch.commit()?;
    view.tokens.replace(tokens);

    *view.kv.write().unwrap_or_else(|e| e.into_inner()) = (next, fresh);
    store.db.delete_keyspace(old)?;
    view.key_count
        .store(header.key_count, std::sync::atomic::Ordering::Relaxed);
    view.data_bytes
        .store(data_bytes, std::sync::atomic::Ordering::Relaxed);
    view.revision.send_replace(header.revision);
    view.cluster_id.send_replace(header.cluster_id);
    Ok(())
}

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
            let snap = view.store.db.snapshot();
            read_state(&snap, &view.store)
        })
        .await
        .map_err(|e| StorageIOError::read_state_machine(&std::io::Error::other(e.to_string())))?;
        Ok((meta.applied, meta.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
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
        let record: Option<SnapshotRecord> =
            read_bincode(&self.view.store.meta, keys::META_SNAPSHOT).map_err(snap_err)?;
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
