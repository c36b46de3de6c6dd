//! The state machine's newest writes, in memory, ahead of fjall.
//!
//! Apply records each key's stored bytes here and nothing in fjall: the log already holds the
//! commands durably, and writing every put to fjall's memtable was the largest single cost of
//! a put on every node (skipping it: +20–32 % puts/s at 64 clients). The writes reach fjall
//! in a flush, one batch with the `sm_meta` figures of the newest apply, so fjall always holds
//! the state machine as of some applied index; after a crash openraft re-applies the log
//! from there. A flush writes each key once however often it changed since the last one.
//!
//! Reads look here first: an entry is exact (a key's stored bytes, or `None` for a key
//! known to be absent), and a key not here is not ahead of fjall. Entries are added once the
//! apply batch that wrote them is done, before openraft learns that it applied, so a read
//! that waits for an applied index sees them. The table belongs to one keyspace generation:
//! a snapshot install starts a new one, and its unflushed writes are dropped with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use fjall::{Keyspace, Slice};

use super::history::tail::Batch;
use super::history::ChangeEvent;
use super::keys;
use super::meta::MetaEntries;
use super::Error;

/// Flushed entries are forgotten when the table would hold more keys than this...
const MAX_KEYS: usize = 1 << 17;
/// ...or more stored bytes (keys and values).
const MAX_BYTES: usize = 32 << 20;
/// A flush is due after this many applied commands (it bounds the replay after a crash)...
pub const FLUSH_COMMANDS: usize = 1 << 15;
/// ...or this many written bytes (it bounds the memory that only the table holds).
const FLUSH_BYTES: usize = 8 << 20;

/// A key's stored bytes (revision + JSON, the very slice fjall holds; clones share it),
/// `None` for a key known to be absent.
pub type Stored = Option<Slice>;

#[derive(Default)]
pub struct RecentWrites {
    inner: RwLock<Generation>,
}

#[derive(Default)]
struct Generation {
    generation: u64,
    bytes: usize,
    entries: HashMap<String, Entry>,
    /// Apply batches absorbed so far; each entry carries the number of the one that last
    /// wrote it.
    absorbed: u64,
    /// Entries of batches up to this one are in fjall.
    flushed: u64,
    /// Commands applied and bytes written since the last flush.
    unflushed_commands: usize,
    unflushed_bytes: usize,
    /// `sm_meta` as of the newest batch, while it is not in fjall.
    meta: Option<MetaEntries>,
    /// Change-log events of the batches not yet flushed, with their batch numbers.
    events: Vec<(u64, Batch)>,
}

struct Entry {
    stored: Stored,
    batch: u64,
}

/// Everything applied but not yet in fjall, as of one batch.
pub struct Unflushed {
    generation: u64,
    batch: u64,
    commands: usize,
    bytes: usize,
    /// Each written key once, with its newest stored bytes.
    pub writes: Vec<(String, Stored)>,
    /// The change log's events since the last flush, in order.
    pub events: Vec<Batch>,
    pub meta: MetaEntries,
}

impl RecentWrites {
    /// What is known of `key` in keyspace `generation`; `None` when nothing is.
    pub fn get(&self, generation: u64, key: &str) -> Option<Stored> {
        self.peek(generation, key, Stored::clone)
    }

    /// Every key under `prefix` the table knows in keyspace `generation`, with whether it
    /// exists. A walk of the whole table: only a delete by prefix asks.
    fn under(&self, generation: u64, prefix: &str) -> BTreeMap<String, bool> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if g.generation != generation {
            return BTreeMap::new();
        }
        g.entries
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| (k.clone(), e.stored.is_some()))
            .collect()
    }

    /// `f` of what is known of `key` in keyspace `generation`, under the read lock.
    fn peek<R>(&self, generation: u64, key: &str, f: impl FnOnce(&Stored) -> R) -> Option<R> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if g.generation != generation {
            return None;
        }
        g.entries.get(key).map(|e| f(&e.stored))
    }

    /// The view of one apply batch of about `writes` writes on keyspace `kv` of
    /// `generation`. Batches run one at a time.
    pub fn batch<'a>(
        &'a self,
        kv: &'a Keyspace,
        generation: u64,
        writes: usize,
    ) -> BatchWrites<'a> {
        BatchWrites {
            recent: self,
            kv,
            generation,
            // Sized once: growing it write by write was 3 % of a follower's CPU under puts.
            pending: HashMap::with_capacity(writes),
            events: Vec::new(),
        }
    }

    /// Whether `commands` more applied commands call for a flush.
    pub fn flush_due(&self, generation: u64, commands: usize) -> bool {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.generation == generation
            && (g.unflushed_commands + commands >= FLUSH_COMMANDS
                || g.unflushed_bytes >= FLUSH_BYTES)
    }

    /// What a flush of `generation` must write, or `None` when fjall is up to date.
    pub fn unflushed(&self, generation: u64) -> Option<Unflushed> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if g.generation != generation {
            // The keyspace these writes were for was replaced by a snapshot install.
            return None;
        }
        let meta = g.meta.clone()?;
        let writes = g
            .entries
            .iter()
            .filter(|(_, e)| e.batch > g.flushed)
            .map(|(k, e)| (k.clone(), e.stored.clone()))
            .collect();
        let events = g
            .events
            .iter()
            .filter(|(batch, _)| *batch > g.flushed)
            .map(|(_, events)| events.clone())
            .collect();
        Some(Unflushed {
            generation,
            batch: g.absorbed,
            commands: g.unflushed_commands,
            bytes: g.unflushed_bytes,
            writes,
            events,
            meta,
        })
    }

    /// Records that `done` is committed to fjall.
    pub fn flushed(&self, done: &Unflushed) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if g.generation != done.generation {
            return;
        }
        g.flushed = g.flushed.max(done.batch);
        let flushed = g.flushed;
        g.events.retain(|(batch, _)| *batch > flushed);
        g.unflushed_commands = g.unflushed_commands.saturating_sub(done.commands);
        g.unflushed_bytes = g.unflushed_bytes.saturating_sub(done.bytes);
        if g.absorbed == done.batch {
            g.meta = None;
        }
    }

    fn absorb(
        &self,
        generation: u64,
        pending: HashMap<String, Stored>,
        events: &Batch,
        meta: MetaEntries,
        commands: usize,
    ) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if g.generation != generation {
            *g = Generation {
                generation,
                ..Generation::default()
            };
        }
        let added: usize = pending.iter().map(|(k, v)| entry_bytes(k, v)).sum();
        if g.entries.len() + pending.len() > MAX_KEYS || g.bytes + added > MAX_BYTES {
            // Unflushed entries are the only copy of their writes outside the log: keep them
            // (flushes come often enough that they stay well within the bounds).
            let flushed = g.flushed;
            g.entries.retain(|_, e| e.batch > flushed);
            g.bytes = g
                .entries
                .iter()
                .map(|(k, e)| entry_bytes(k, &e.stored))
                .sum();
        }
        g.absorbed += 1;
        let batch = g.absorbed;
        for (key, stored) in pending {
            g.bytes += entry_bytes(&key, &stored);
            let key_len = key.len();
            if let Some(old) = g.entries.insert(key, Entry { stored, batch }) {
                g.bytes = g.bytes.saturating_sub(key_len + stored_len(&old.stored));
            }
        }
        if !events.is_empty() {
            g.unflushed_bytes += events.iter().map(ChangeEvent::size).sum::<usize>();
            g.events.push((batch, events.clone()));
        }
        g.unflushed_commands += commands;
        g.unflushed_bytes += added;
        g.meta = Some(meta);
    }
}

fn stored_len(stored: &Stored) -> usize {
    stored.as_ref().map_or(0, |v| v.len())
}

fn entry_bytes(key: &str, stored: &Stored) -> usize {
    key.len() + stored_len(stored)
}

/// Stored values as one apply batch sees them: its own writes first, then the table, then
/// fjall.
pub struct BatchWrites<'a> {
    recent: &'a RecentWrites,
    kv: &'a Keyspace,
    generation: u64,
    pending: HashMap<String, Stored>,
    /// The change-log events of this batch, in order.
    events: Vec<ChangeEvent>,
}

impl BatchWrites<'_> {
    /// The stored value size of `key`, or `None` when it is absent.
    pub fn size(&self, key: &str) -> Result<Option<u64>, Error> {
        let len = |stored: &Stored| stored.as_ref().map(|v| v.len() as u64);
        let known = match self.pending.get(key) {
            Some(stored) => Some(len(stored)),
            None => self.recent.peek(self.generation, key, len),
        };
        match known {
            Some(size) => Ok(size),
            None => Ok(self.kv.size_of(key.as_bytes())?.map(u64::from)),
        }
    }

    /// The stored bytes of `key` as this batch sees them: its own writes, then the table,
    /// then fjall.
    pub fn get(&self, key: &str) -> Result<Stored, Error> {
        let known = match self.pending.get(key) {
            Some(stored) => Some(stored.clone()),
            None => self.recent.peek(self.generation, key, Stored::clone),
        };
        match known {
            Some(stored) => Ok(stored),
            None => Ok(self.kv.get(key.as_bytes())?),
        }
    }

    /// Up to `limit` keys that exist under `prefix` as this batch sees them, in key order,
    /// and whether more exist. The same on every node whatever it has flushed: this batch's
    /// writes and the table override what fjall holds.
    pub fn keys_under(&self, prefix: &str, limit: usize) -> Result<(Vec<String>, bool), Error> {
        let mut known = self.recent.under(self.generation, prefix);
        for (k, stored) in &self.pending {
            if k.starts_with(prefix) {
                known.insert(k.clone(), stored.is_some());
            }
        }
        // The state machine's own keys (the idempotency table's segments) are never a
        // client's, even under the empty prefix of a delete of everything.
        known.retain(|k, _| !keys::is_reserved(k.as_bytes()));
        let mut found = Found::new(limit);
        let mut known = known.into_iter().peekable();
        for guard in self.kv.prefix(prefix.as_bytes()) {
            let key = guard.key()?;
            if keys::is_reserved(&key) {
                continue;
            }
            let key = String::from_utf8_lossy(&key).into_owned();
            while let Some((newer, exists)) = known.next_if(|(k, _)| *k < key) {
                if found.offer(newer, exists) {
                    return Ok(found.done());
                }
            }
            let exists = known.next_if(|(k, _)| *k == key).is_none_or(|(_, e)| e);
            if found.offer(key, exists) {
                return Ok(found.done());
            }
        }
        for (key, exists) in known {
            if found.offer(key, exists) {
                break;
            }
        }
        Ok(found.done())
    }

    /// Records a write of this batch: the stored bytes for a put, `None` for a delete.
    pub fn set(&mut self, key: String, stored: Stored) {
        self.pending.insert(key, stored);
    }

    /// Records a change-log event of this batch.
    pub fn event(&mut self, event: ChangeEvent) {
        self.events.push(event);
    }

    /// Publishes this batch's writes (`commands` commands, leaving `sm_meta` as `meta`) as
    /// applied but not yet flushed; returns its change-log events.
    pub fn applied(self, meta: MetaEntries, commands: usize) -> Batch {
        let events: Batch = self.events.into();
        self.recent
            .absorb(self.generation, self.pending, &events, meta, commands);
        events
    }
}

/// Keys collected by [`BatchWrites::keys_under`], up to a limit.
struct Found {
    keys: Vec<String>,
    limit: usize,
    more: bool,
}

impl Found {
    fn new(limit: usize) -> Found {
        Found {
            keys: Vec::new(),
            limit,
            more: false,
        }
    }

    /// Takes `key` if it exists; true once the limit is passed (one more key exists).
    fn offer(&mut self, key: String, exists: bool) -> bool {
        if !exists {
            return false;
        }
        if self.keys.len() >= self.limit {
            self.more = true;
            return true;
        }
        self.keys.push(key);
        false
    }

    fn done(self) -> (Vec<String>, bool) {
        (self.keys, self.more)
    }
}

impl super::idempotency::Records for &mut BatchWrites<'_> {
    fn stored(&self, key: &str) -> Result<Stored, Error> {
        (**self).get(key)
    }

    fn set(&mut self, key: String, stored: Stored) {
        (**self).set(key, stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(v: &str) -> Stored {
        Some(Slice::from(v.as_bytes()))
    }

    fn meta(applied: u8) -> MetaEntries {
        vec![(b"last_applied".as_slice(), vec![applied])]
    }

    fn absorb(r: &RecentWrites, generation: u64, writes: &[(&str, Stored)], applied: u8) {
        let pending = writes
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        r.absorb(
            generation,
            pending,
            &Batch::from(vec![]),
            meta(applied),
            writes.len(),
        );
    }

    fn sorted(u: &Unflushed) -> Vec<(String, Stored)> {
        let mut w = u.writes.clone();
        w.sort_by(|a, b| a.0.cmp(&b.0));
        w
    }

    #[test]
    fn a_flush_writes_each_key_once_with_its_newest_value() {
        let r = RecentWrites::default();
        assert!(
            r.unflushed(0).is_none(),
            "nothing applied, nothing to flush"
        );
        absorb(&r, 0, &[("a", stored("1")), ("b", stored("1"))], 1);
        absorb(&r, 0, &[("a", stored("2")), ("c", None)], 2);
        let u = r.unflushed(0).expect("writes are pending");
        assert_eq!(
            sorted(&u),
            vec![
                ("a".to_string(), stored("2")),
                ("b".to_string(), stored("1")),
                ("c".to_string(), None)
            ]
        );
        assert_eq!(u.meta, meta(2));
        assert!(r.flush_due(0, FLUSH_COMMANDS - 4));
        assert!(!r.flush_due(0, FLUSH_COMMANDS - 5));
        assert!(
            !r.flush_due(1, FLUSH_COMMANDS),
            "another generation has nothing to flush"
        );
        r.flushed(&u);
        assert!(r.unflushed(0).is_none(), "fjall is up to date");
        assert!(!r.flush_due(0, FLUSH_COMMANDS - 1));
        assert_eq!(
            r.get(0, "a"),
            Some(stored("2")),
            "flushed entries still serve reads"
        );
    }

    #[test]
    fn writes_applied_during_a_flush_stay_unflushed() {
        let r = RecentWrites::default();
        absorb(&r, 0, &[("a", stored("1"))], 1);
        let u = r.unflushed(0).expect("pending");
        absorb(&r, 0, &[("b", stored("1"))], 2);
        r.flushed(&u);
        let next = r.unflushed(0).expect("the second batch is still pending");
        assert_eq!(sorted(&next), vec![("b".to_string(), stored("1"))]);
        assert_eq!(next.meta, meta(2));
    }

    #[test]
    fn another_generation_drops_the_unflushed_writes() {
        let r = RecentWrites::default();
        absorb(&r, 0, &[("a", stored("1"))], 1);
        assert!(r.unflushed(1).is_none(), "an install replaced keyspace 0");
        absorb(&r, 1, &[("b", stored("1"))], 2);
        assert_eq!(r.get(1, "a"), None);
        assert_eq!(r.get(0, "b"), None);
        let u = r.unflushed(1).expect("pending");
        assert_eq!(sorted(&u), vec![("b".to_string(), stored("1"))]);
    }

    #[test]
    fn a_full_table_forgets_only_flushed_entries() {
        let r = RecentWrites::default();
        let big = Some(Slice::from(vec![0u8; MAX_BYTES / 2]));
        absorb(&r, 0, &[("a", big.clone())], 1);
        r.flushed(&r.unflushed(0).expect("pending"));
        absorb(&r, 0, &[("b", big.clone())], 2);
        absorb(&r, 0, &[("c", big.clone())], 3);
        assert_eq!(r.get(0, "a"), None, "flushed and over the bound: forgotten");
        assert_eq!(
            r.get(0, "b"),
            Some(big.clone()),
            "unflushed: kept over the bound"
        );
        assert_eq!(r.get(0, "c"), Some(big));
    }
}
