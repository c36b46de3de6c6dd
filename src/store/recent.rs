//! The stored values of recently written keys, in memory. Apply uses them to learn whether a
//! key exists and how big it was without reading it back from fjall (that read was 9-12 % of
//! a node's CPU under write load); gets use them to skip fjall's memtable search (20 % of
//! the leader's CPU under stale-read load).
//!
//! Exact or absent: an entry is added only once the apply batch that wrote it has committed,
//! and before openraft learns that the batch applied, so a read that waits for an applied
//! index sees it. The cache belongs to one keyspace generation: a snapshot install starts a
//! new one, and readers of the new keyspace ignore the old entries.

use std::collections::HashMap;
use std::sync::RwLock;

use fjall::{Keyspace, Slice};

use super::Error;

/// Keys remembered at most; a full cache starts over.
const MAX_KEYS: usize = 1 << 17;
/// Stored bytes remembered at most (keys and values).
const MAX_BYTES: usize = 32 << 20;

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
    entries: HashMap<String, Stored>,
}

impl RecentWrites {
    /// What is known of `key` in keyspace `generation`; `None` when nothing is.
    pub fn get(&self, generation: u64, key: &str) -> Option<Stored> {
        self.peek(generation, key, Stored::clone)
    }

    /// `f` of what is known of `key` in keyspace `generation`, under the read lock.
    fn peek<R>(&self, generation: u64, key: &str, f: impl FnOnce(&Stored) -> R) -> Option<R> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if g.generation != generation {
            return None;
        }
        g.entries.get(key).map(f)
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
        }
    }

    fn absorb(&self, generation: u64, pending: HashMap<String, Stored>) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let added: usize = pending.iter().map(|(k, v)| entry_bytes(k, v)).sum();
        if g.generation != generation
            || g.entries.len() + pending.len() > MAX_KEYS
            || g.bytes + added > MAX_BYTES
        {
            g.entries.clear();
            g.bytes = 0;
            g.generation = generation;
        }
        for (key, stored) in pending {
            let key_len = key.len();
            g.bytes += entry_bytes(&key, &stored);
            if let Some(old) = g.entries.insert(key, stored) {
                g.bytes = g.bytes.saturating_sub(key_len + old.map_or(0, |v| v.len()));
            }
        }
    }
}

fn entry_bytes(key: &str, stored: &Stored) -> usize {
    key.len() + stored.as_ref().map_or(0, |v| v.len())
}

/// Stored values as one apply batch sees them: its own writes first, then the cache, then
/// fjall.
pub struct BatchWrites<'a> {
    recent: &'a RecentWrites,
    kv: &'a Keyspace,
    generation: u64,
    pending: HashMap<String, Stored>,
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

    /// Records a write of this batch: the stored bytes for a put, `None` for a delete.
    pub fn set(&mut self, key: String, stored: Stored) {
        self.pending.insert(key, stored);
    }

    /// Publishes this batch's writes; call only once the batch is committed.
    pub fn committed(self) {
        self.recent.absorb(self.generation, self.pending);
    }
}
