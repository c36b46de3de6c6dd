//! The stored value size of recently written keys, so that applying a put or a delete need
//! not read the key back from fjall to learn whether it exists and how big it was (that
//! point read was 9-12 % of a node's CPU under write load).
//!
//! Exact or absent: entries come only from apply batches that committed, and the cache
//! belongs to one keyspace generation; a snapshot install starts a new generation, which
//! empties it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use fjall::Keyspace;

use super::Error;

/// Keys remembered at most (about 10 MB with short keys); a full cache starts over.
const CAPACITY: usize = 1 << 17;

/// Key → stored value size, `None` for a key known to be absent.
type Sizes = HashMap<String, Option<u64>>;

#[derive(Default)]
pub struct SizeCache {
    inner: Mutex<Generation>,
}

#[derive(Default)]
struct Generation {
    generation: u64,
    sizes: Sizes,
}

impl SizeCache {
    /// The sizes as one apply batch on keyspace `kv` of `generation` sees them. Applies run
    /// one at a time, so the lock is never contended.
    pub fn batch<'a>(&'a self, kv: &'a Keyspace, generation: u64) -> BatchSizes<'a> {
        let mut cache = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if cache.generation != generation {
            cache.sizes.clear();
            cache.generation = generation;
        }
        BatchSizes {
            kv,
            cache,
            pending: HashMap::new(),
        }
    }
}

/// Sizes for one apply batch: its own writes first, then the cache, then fjall.
pub struct BatchSizes<'a> {
    kv: &'a Keyspace,
    cache: MutexGuard<'a, Generation>,
    pending: Sizes,
}

impl BatchSizes<'_> {
    /// The stored value size of `key`, or `None` when it is absent.
    pub fn get(&self, key: &str) -> Result<Option<u64>, Error> {
        if let Some(size) = self.pending.get(key).or_else(|| self.cache.sizes.get(key)) {
            return Ok(*size);
        }
        Ok(self.kv.size_of(key.as_bytes())?.map(u64::from))
    }

    /// Records a write of this batch: `Some(size)` for a put, `None` for a delete.
    pub fn set(&mut self, key: String, size: Option<u64>) {
        self.pending.insert(key, size);
    }

    /// Keeps this batch's writes; call only once the batch is committed.
    pub fn committed(mut self) {
        let cache = &mut *self.cache;
        if cache.sizes.len() + self.pending.len() > CAPACITY {
            cache.sizes.clear();
        }
        cache.sizes.extend(self.pending);
    }
}
