//! The idempotency table (DESIGN.md "Exactly-once writes"): for each client write that
//! carried a `request_id`, the digest of its command and the reply it got, kept for
//! `idempotency.window` of cluster time and at most `idempotency.max_entries`.
//!
//! Decided at apply, in log order, on every node alike: a retry of a known id with the same
//! digest gets the stored reply and applies nothing; another digest gets `conflict`
//! (`request_id`). So a follower or a client may re-send a write whose outcome it does not
//! know, and a copy that reaches the log twice applies once.
//!
//! Records are keys of the state machine's own in `kv_<g>` (`keys::RESERVED`), written
//! through the recent-writes table like any put: they reach fjall in the same atomic flush
//! as the writes they answer for, and snapshots, installs, backups and restores carry them.
//! The order of expiry is kept in memory ([`IdemTable`]), rebuilt from the keyspace at open
//! and after an install. Every decision depends only on the log (the entry's cluster-time
//! stamp, the replicated settings), never on when a node happened to apply or flush, so the
//! table is the same on every node at every index: expired records are removed, and the
//! oldest evicted past the limit, as part of applying an id'd write.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use fjall::Keyspace;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::keys;
use super::Error;
use crate::command::{Applied, ConflictReason, IdempotencySettings, Op};

/// Expired records removed per id'd write, at most: the table catches up with a burst of
/// expiries over the next writes instead of in one long apply.
const EXPIRED_PER_WRITE: usize = 16;

/// The digest of a command: what a retry must repeat to get the stored reply.
pub type CommandDigest = [u8; 16];

/// One stored record: when it expires (cluster time, ms), the command's digest, the reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct IdemRecord {
    expires: u64,
    digest: CommandDigest,
    reply: Applied,
}

/// A request id as the table keys it: the id, and the token id it was sent with (auth on).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdemKey {
    pub id: u128,
    pub token: Option<Box<str>>,
}

impl IdemKey {
    pub fn new(id: &uuid::Uuid, token_id: Option<&str>) -> IdemKey {
        IdemKey {
            id: id.as_u128(),
            token: token_id.map(Box::from),
        }
    }

    /// The record's reserved key in the key space.
    fn stored_key(&self) -> String {
        keys::idempotency_key(&uuid::Uuid::from_u128(self.id), self.token.as_deref())
    }

    /// The key a stored record was written under.
    fn parse(stored: &[u8]) -> Option<IdemKey> {
        let rest = std::str::from_utf8(stored)
            .ok()?
            .strip_prefix(keys::IDEMPOTENCY_PREFIX)?;
        let (id, token) = rest.split_once('/')?;
        let id = uuid::Uuid::parse_str(id).ok()?.as_u128();
        let token = (!token.is_empty()).then(|| Box::from(token));
        Some(IdemKey { id, token })
    }
}

/// The table's settings, and where each record is and when it expires; the records
/// themselves (digest, reply) are in the key space. In memory so that an id not held, every
/// new write's case, costs a hash lookup and no read of the key space (about 100 bytes per
/// id held, without auth).
#[derive(Debug, Default)]
pub struct IdemTable {
    settings: IdempotencySettings,
    /// Each held id: its expiry (cluster time) and its record's stored size.
    index: HashMap<IdemKey, (u64, u32)>,
    /// (expiry, id) of each held id, oldest first; ties broken by id, so that every node
    /// evicts the same one.
    order: BTreeSet<(u64, IdemKey)>,
}

/// What the table says of a write's request id.
pub enum Known {
    /// Not known (or expired): apply the write and remember its reply.
    New,
    /// Known with this digest: the stored reply, nothing applies.
    Replay(Applied),
    /// Known with another digest.
    Conflict(Applied),
}

impl IdemTable {
    /// The table as keyspace `kv` holds it (at open, and after an install).
    pub fn load(kv: &Keyspace) -> Result<IdemTable, Error> {
        let mut table = IdemTable::default();
        if let Some(v) = kv.get(keys::IDEMPOTENCY_SETTINGS.as_bytes())? {
            table.settings = crate::binary::decode(&v)
                .map_err(|e| Error::Corrupt(format!("idempotency settings: {e}")))?;
        }
        for guard in kv.prefix(keys::IDEMPOTENCY_PREFIX.as_bytes()) {
            let (k, v) = guard.into_inner()?;
            let record = decode(&v)?;
            let key = IdemKey::parse(&k)
                .ok_or_else(|| Error::Corrupt("an idempotency record's key".into()))?;
            table.hold(key, record.expires, v.len() as u32);
        }
        Ok(table)
    }

    /// Records held now (expired ones not yet removed included).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Expiry of the oldest record, if any.
    pub fn oldest_expiry(&self) -> Option<u64> {
        self.order.first().map(|(e, _)| *e)
    }

    fn hold(&mut self, key: IdemKey, expires: u64, size: u32) {
        if let Some((old, _)) = self.index.insert(key.clone(), (expires, size)) {
            self.order.remove(&(old, key.clone()));
        }
        self.order.insert((expires, key));
    }

    /// Forgets `key`; its expiry and size if it was held.
    fn release(&mut self, key: &IdemKey) -> Option<(u64, u32)> {
        let (expires, size) = self.index.remove(key)?;
        self.order.remove(&(expires, key.clone()));
        Some((expires, size))
    }
}

/// The stored bytes of a key, as the apply batch sees them (its own writes first).
pub trait Records {
    fn stored(&self, key: &str) -> Result<Option<fjall::Slice>, Error>;
    fn set(&mut self, key: String, stored: Option<fjall::Slice>);
}

/// The table during one apply batch: its records through `records`, the live data size it
/// counts towards, and what happened for the metrics.
pub struct Apply<'t, R: Records> {
    pub table: &'t mut IdemTable,
    pub records: R,
    pub data_bytes: &'t mut u64,
    pub replays: &'t mut u64,
    pub conflicts: &'t mut u64,
}

impl<R: Records> Apply<'_, R> {
    /// Looks up request `key` with digest `digest` at cluster time `now`.
    pub fn check(
        &mut self,
        key: &IdemKey,
        digest: &CommandDigest,
        now: u64,
    ) -> Result<Known, Error> {
        let Some(&(expires, _)) = self.table.index.get(key) else {
            return Ok(Known::New);
        };
        if expires <= now {
            // Expired: forget it now; the write applies and a new record replaces it.
            self.forget(key);
            return Ok(Known::New);
        }
        let stored = key.stored_key();
        let v = self.records.stored(&stored)?.ok_or_else(|| {
            Error::Corrupt(format!("idempotency record {stored:?} is held but missing"))
        })?;
        let record = decode(&v)?;
        if &record.digest == digest {
            *self.replays += 1;
            return Ok(Known::Replay(record.reply));
        }
        *self.conflicts += 1;
        Ok(Known::Conflict(Applied::Conflict {
            reason: ConflictReason::RequestId,
            revision: None,
        }))
    }

    /// Remembers `reply` for request `key`, then removes what expired by `now` and evicts
    /// the oldest records past the limit.
    pub fn remember(
        &mut self,
        key: IdemKey,
        digest: CommandDigest,
        reply: &Applied,
        now: u64,
    ) -> Result<(), Error> {
        let settings = self.table.settings;
        let record = IdemRecord {
            expires: now.saturating_add(settings.window_ms.max(1)),
            digest,
            reply: reply.clone(),
        };
        let bytes = crate::binary::encode(&record)
            .map_err(|e| Error::Corrupt(format!("encoding an idempotency record: {e}")))?;
        let stored = key.stored_key();
        *self.data_bytes += keys::entry_bytes(stored.len(), bytes.len());
        self.table.hold(key, record.expires, bytes.len() as u32);
        self.records.set(stored, Some(fjall::Slice::from(bytes)));
        let mut removed = 0;
        while removed < EXPIRED_PER_WRITE {
            match self.table.order.first() {
                Some((expires, _)) if *expires <= now => {}
                _ => break,
            }
            self.pop_oldest();
            removed += 1;
        }
        while self.table.order.len() as u64 > settings.max_entries.max(1) {
            self.pop_oldest();
        }
        Ok(())
    }

    /// Applies new settings: from the next write on, records expire and are evicted by them.
    pub fn set_settings(&mut self, settings: IdempotencySettings) -> Result<(), Error> {
        let bytes = crate::binary::encode(&settings)
            .map_err(|e| Error::Corrupt(format!("encoding idempotency settings: {e}")))?;
        let key = keys::IDEMPOTENCY_SETTINGS.to_string();
        let old = self.records.stored(&key)?.map(|v| v.len());
        *self.data_bytes = self
            .data_bytes
            .saturating_sub(old.map_or(0, |n| keys::entry_bytes(key.len(), n)))
            + keys::entry_bytes(key.len(), bytes.len());
        self.records.set(key, Some(fjall::Slice::from(bytes)));
        self.table.settings = settings;
        Ok(())
    }

    fn pop_oldest(&mut self) {
        if let Some((_, key)) = self.table.order.first().cloned() {
            self.forget(&key);
        }
    }

    /// Removes `key`'s record from the table and the key space.
    fn forget(&mut self, key: &IdemKey) {
        if let Some((_, size)) = self.table.release(key) {
            let stored = key.stored_key();
            *self.data_bytes = self
                .data_bytes
                .saturating_sub(keys::entry_bytes(stored.len(), size as usize));
            self.records.set(stored, None);
        }
    }
}

fn decode(v: &[u8]) -> Result<IdemRecord, Error> {
    crate::binary::decode(v).map_err(|e| Error::Corrupt(format!("idempotency record: {e}")))
}

/// The digest of a client write: the operation with its key, value, conditions, fence, lease
/// and ttl; never the timeout, the token or headers. A value is digested without the
/// whitespace between its JSON tokens, so a retry that re-serialized it with other spacing
/// still matches. Fed to the hash field by field: this runs for every id'd write on every
/// node, and a put's fields need no copy.
pub fn digest(op: &Op) -> CommandDigest {
    let mut h = Sha256::new();
    match op {
        Op::Put {
            key,
            value,
            if_revision,
            lease,
            ttl_ms,
            fence,
        } => {
            h.update(b"put");
            let value = minified(value);
            for part in [key.as_bytes(), value.as_bytes()] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
            let rest = (if_revision, lease, ttl_ms, fence);
            h.update(crate::binary::encode(&rest).unwrap_or_default());
        }
        other => {
            h.update(b"op");
            h.update(crate::binary::encode(other).unwrap_or_default());
        }
    }
    let full = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// `json` without whitespace outside its strings (borrowed when it has none).
fn minified(json: &str) -> std::borrow::Cow<'_, str> {
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    if !json.bytes().any(is_space) {
        return json.into();
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c.is_ascii() && is_space(c as u8) {
            continue;
        }
        out.push(c);
    }
    out.into()
}

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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Default)]
    struct Map(HashMap<String, fjall::Slice>);

    impl Records for &mut Map {
        fn stored(&self, key: &str) -> Result<Option<fjall::Slice>, Error> {
            Ok(self.0.get(key).cloned())
        }
        fn set(&mut self, key: String, stored: Option<fjall::Slice>) {
            match stored {
                Some(v) => self.0.insert(key, v),
                None => self.0.remove(&key),
            };
        }
    }

    fn put(value: &str) -> Op {
        Op::Put {
            key: "k".into(),
            value: value.into(),
            if_revision: None,
            lease: None,
            ttl_ms: None,
            fence: None,
        }
    }

    /// One id'd write at cluster time `now`: the table's answer, remembered when new.
    fn key(n: u128) -> IdemKey {
        IdemKey { id: n, token: None }
    }

    fn write(
        t: &mut IdemTable,
        m: &mut Map,
        key: &IdemKey,
        op: &Op,
        now: u64,
        rev: u64,
    ) -> Applied {
        let (mut bytes, mut replays, mut conflicts) = (0, 0, 0);
        let mut apply = Apply {
            table: t,
            records: m,
            data_bytes: &mut bytes,
            replays: &mut replays,
            conflicts: &mut conflicts,
        };
        let d = digest(op);
        match apply.check(key, &d, now).unwrap() {
            Known::Replay(a) | Known::Conflict(a) => a,
            Known::New => {
                let reply = Applied::Put { revision: rev };
                apply.remember(key.clone(), d, &reply, now).unwrap();
                reply
            }
        }
    }

    #[test]
    fn a_known_id_replays_another_command_conflicts_and_the_window_forgets() {
        let (mut t, mut m) = (IdemTable::default(), Map::default());
        t.settings.window_ms = 1_000;
        let first = write(&mut t, &mut m, &key(1), &put(r#"{"x": 1}"#), 10, 5);
        assert_eq!(first, Applied::Put { revision: 5 });
        // Re-serialized JSON is the same command.
        assert_eq!(
            write(&mut t, &mut m, &key(1), &put(r#"{ "x" : 1 }"#), 500, 6),
            first
        );
        assert!(matches!(
            write(&mut t, &mut m, &key(1), &put("2"), 500, 7),
            Applied::Conflict {
                reason: ConflictReason::RequestId,
                ..
            }
        ));
        // At expiry the id is forgotten: the write applies again.
        assert_eq!(
            write(&mut t, &mut m, &key(1), &put(r#"{"x":1}"#), 1_010, 8),
            Applied::Put { revision: 8 }
        );
        assert_eq!(t.len(), 1);
        assert_eq!(m.0.len(), 1);
    }

    #[test]
    fn minified_drops_whitespace_between_tokens_only() {
        assert_eq!(minified(r#"{"a":1}"#), r#"{"a":1}"#);
        assert_eq!(
            minified("{ \"a b\" : [ 1 ,\n 2 ], \"c\":\"x \\\" y\" }"),
            "{\"a b\":[1,2],\"c\":\"x \\\" y\"}"
        );
    }

    #[test]
    fn expired_records_go_and_the_oldest_are_evicted_past_the_limit() {
        let (mut t, mut m) = (IdemTable::default(), Map::default());
        t.settings = IdempotencySettings {
            window_ms: 100,
            max_entries: 3,
        };
        for (i, now) in [1u64, 2, 3, 4].iter().enumerate() {
            write(&mut t, &mut m, &key(i as u128), &put("1"), *now, i as u64);
        }
        // The limit evicted the oldest, id0.
        assert_eq!(t.len(), 3);
        assert!(!m.0.contains_key(&key(0).stored_key()));
        // A write after everyone's expiry removes them all.
        write(&mut t, &mut m, &key(99), &put("1"), 1_000, 9);
        assert_eq!(t.len(), 1);
        assert_eq!(m.0.keys().collect::<Vec<_>>(), vec![&key(99).stored_key()]);
        assert_eq!(
            IdemKey::parse(key(99).stored_key().as_bytes()),
            Some(key(99))
        );
    }
}
