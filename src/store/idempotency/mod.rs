//! The idempotency table (DESIGN.md "Exactly-once writes"): for each client write that
//! carried a `request_id`, the digest of its command and the reply it got, kept for
//! `idempotency.window` of cluster time and at most `idempotency.max_entries`.
//!
//! Decided at apply, in log order, on every node alike: a retry of a known id with the same
//! digest gets the stored reply and applies nothing; another digest gets `conflict`
//! (`request_id`). So a follower or a client may re-send a write whose outcome it does not
//! know, and a copy that reaches the log twice applies once. Every decision depends only on
//! the log (the entry's cluster-time stamp, the replicated settings), never on when a node
//! happened to apply or flush, so the table is the same on every node at every index:
//! expired records are removed, and the oldest evicted past the limit, as part of applying
//! an id'd write.
//!
//! Stored as *segments*, reserved keys of the state machine's own in `kv_<g>`
//! (`keys::RESERVED`): each apply batch that changed the table writes one, holding the
//! records it added and the ids it removed from older segments, through the recent-writes
//! table like any put. So the records reach fjall in the same atomic flush as the writes
//! they answer for, and snapshots, installs, backups and restores carry them; and a batch of
//! a thousand id'd puts costs fjall one key, not a thousand (a key per record cost a fifth
//! of the puts per second). A segment goes once its records are gone and every older one
//! has gone. Segments are a node's own layout (batches differ between nodes); what they
//! hold, read in order, is the table, the same everywhere.
//!
//! In memory ([`IdemTable`]): each id held, its expiry and its segment, about 100 bytes per
//! id, so that an id not held, every new write's case, costs a hash lookup and no read.

mod digest;
mod figures;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::keys;
use super::Error;
use crate::command::{Applied, ConflictReason, IdempotencySettings};

pub use digest::digest;
pub use figures::{IdemFigures, IdemReading};

/// Expired records removed per id'd write, at most: the table catches up with a burst of
/// expiries over the next writes instead of in one long apply.
const EXPIRED_PER_WRITE: usize = 16;

/// The digest of a command: what a retry must repeat to get the stored reply.
pub type CommandDigest = [u8; 16];

/// Maps keyed by request ids: ids come from clients, so the hasher is seeded per process,
/// and it is much cheaper than the default one (hashing ids was 2 % of a node's CPU).
type IdMap<V> = HashMap<IdemKey, V, foldhash::fast::RandomState>;

/// One record: when it expires (cluster time, ms), the command's digest, the reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct IdemRecord {
    expires: u64,
    digest: CommandDigest,
    reply: Applied,
}

/// A request id as the table keys it: the id, and the token id it was sent with (auth on).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

    /// The bytes a record counts towards the live data size: as much as it would take
    /// stored on its own, `\0i/<uuid>/<token>` with its encoded record. Decided by the
    /// record alone, so every node counts the same whatever its segments.
    fn counted_bytes(&self, record: &IdemRecord) -> u32 {
        let key_len =
            keys::IDEMPOTENCY_PREFIX.len() + 37 + self.token.as_deref().map_or(0, str::len);
        let record_len = bincode::serialized_size(record).unwrap_or(0) as usize;
        keys::entry_bytes(key_len, record_len).min(u64::from(u32::MAX)) as u32
    }
}

/// What one segment holds: ids removed from older segments, then the records added.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Segment {
    removed: Vec<IdemKey>,
    added: Vec<(IdemKey, IdemRecord)>,
}

/// Where a held id is: its expiry, the bytes it counts, and its segment.
#[derive(Debug, Clone, Copy)]
struct Slot {
    expires: u64,
    bytes: u32,
    segment: u64,
}

/// The table's settings, and each held id's expiry and segment; the records themselves
/// (digest, reply) are in the segments, and those of the batch being applied in `pending`.
#[derive(Debug, Default)]
pub struct IdemTable {
    settings: IdempotencySettings,
    index: IdMap<Slot>,
    /// (expiry, id) of each held id, oldest first; ties broken by id, so that every node
    /// evicts the same one.
    order: BTreeSet<(u64, IdemKey)>,
    /// Live records of each stored segment, oldest first.
    segments: BTreeMap<u64, u32>,
    /// The number of the segment the current batch writes.
    next_segment: u64,
    /// The current batch's changes: its new records, and ids removed from stored segments.
    added: IdMap<IdemRecord>,
    removed: Vec<IdemKey>,
    /// Bytes the held records count (see [`IdemKey::counted_bytes`]).
    counted_bytes: u64,
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
    pub fn load(kv: &fjall::Keyspace) -> Result<IdemTable, Error> {
        let settings = kv.get(keys::IDEMPOTENCY_SETTINGS.as_bytes())?;
        let segments = kv
            .prefix(keys::IDEMPOTENCY_PREFIX.as_bytes())
            .map(|guard| guard.into_inner().map_err(Error::from));
        IdemTable::from_stored(settings.as_deref(), segments)
    }

    /// The table from its stored settings and its segments in key order.
    fn from_stored<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        settings: Option<&[u8]>,
        segments: impl Iterator<Item = Result<(K, V), Error>>,
    ) -> Result<IdemTable, Error> {
        let mut table = IdemTable::default();
        if let Some(v) = settings {
            table.settings = crate::binary::decode(v)
                .map_err(|e| Error::Corrupt(format!("idempotency settings: {e}")))?;
        }
        for stored in segments {
            let (k, v) = stored?;
            let number = keys::idempotency_segment(k.as_ref()).ok_or_else(|| {
                Error::Corrupt(format!("idempotency segment key {:?}", k.as_ref()))
            })?;
            let segment: Segment = decode(v.as_ref())?;
            for key in &segment.removed {
                table.release(key);
            }
            table.segments.insert(number, 0);
            for (key, record) in segment.added {
                table.release(&key);
                table.hold(key, &record, number);
            }
            table.next_segment = number + 1;
        }
        Ok(table)
    }

    /// Records held now (expired ones not yet removed included).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Expiry of the oldest record, if any.
    pub fn oldest_expiry(&self) -> Option<u64> {
        self.order.first().map(|(e, _)| *e)
    }

    /// Bytes the held records count towards the live data size.
    pub fn counted_bytes(&self) -> u64 {
        self.counted_bytes
    }

    fn hold(&mut self, key: IdemKey, record: &IdemRecord, segment: u64) -> u32 {
        let bytes = key.counted_bytes(record);
        if let Some(live) = self.segments.get_mut(&segment) {
            *live += 1;
        }
        self.counted_bytes += u64::from(bytes);
        self.order.insert((record.expires, key.clone()));
        let slot = Slot {
            expires: record.expires,
            bytes,
            segment,
        };
        self.index.insert(key, slot);
        bytes
    }

    /// Forgets `key`; where it was, if it was held.
    fn release(&mut self, key: &IdemKey) -> Option<Slot> {
        let slot = self.index.remove(key)?;
        self.order.remove(&(slot.expires, key.clone()));
        if let Some(live) = self.segments.get_mut(&slot.segment) {
            *live = live.saturating_sub(1);
        }
        self.counted_bytes = self.counted_bytes.saturating_sub(u64::from(slot.bytes));
        Some(slot)
    }
}

/// The stored bytes of a key, as the apply batch sees them (its own writes first).
pub trait Records {
    fn stored(&self, key: &str) -> Result<Option<fjall::Slice>, Error>;
    fn set(&mut self, key: String, stored: Option<fjall::Slice>);
}

/// The table during one apply batch: its segments through `records`, the live data size it
/// counts towards, and what happened for the metrics. [`Apply::finish`] ends the batch.
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
        let Some(&slot) = self.table.index.get(key) else {
            return Ok(Known::New);
        };
        if slot.expires <= now {
            // Expired: forget it now; the write applies and a new record replaces it.
            self.forget(key);
            return Ok(Known::New);
        }
        let record = self.record(key, slot.segment)?;
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

    /// The record of held id `key`, from this batch's or from its stored segment (a retry's
    /// case only: decoding a segment costs some microseconds).
    fn record(&self, key: &IdemKey, segment: u64) -> Result<IdemRecord, Error> {
        if segment == self.table.next_segment {
            if let Some(record) = self.table.added.get(key) {
                return Ok(record.clone());
            }
        }
        let stored = keys::idempotency_segment_key(segment);
        let missing = || {
            Error::Corrupt(format!(
                "idempotency record of {key:?} is held but missing from {stored:?}"
            ))
        };
        let v = self.records.stored(&stored)?.ok_or_else(missing)?;
        let segment: Segment = decode(&v)?;
        segment
            .added
            .into_iter()
            .find_map(|(k, record)| (&k == key).then_some(record))
            .ok_or_else(missing)
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
        let segment = self.table.next_segment;
        let bytes = self.table.hold(key.clone(), &record, segment);
        *self.data_bytes += u64::from(bytes);
        self.table.added.insert(key, record);
        let mut removed = 0;
        while removed < EXPIRED_PER_WRITE {
            match self.table.order.first() {
                Some((expires, _)) if *expires <= now => {}
                _ => break,
            }
            self.pop_oldest();
            removed += 1;
        }
        while self.table.index.len() as u64 > settings.max_entries.max(1) {
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

    /// Ends the batch: writes its segment, if it changed the table, and deletes the oldest
    /// segments that hold no record any more.
    pub fn finish(&mut self) -> Result<(), Error> {
        let table = &mut *self.table;
        if table.added.is_empty() && table.removed.is_empty() {
            return Ok(());
        }
        let number = table.next_segment;
        let segment = Segment {
            removed: std::mem::take(&mut table.removed),
            added: std::mem::take(&mut table.added).into_iter().collect(),
        };
        let bytes = crate::binary::encode(&segment)
            .map_err(|e| Error::Corrupt(format!("encoding an idempotency segment: {e}")))?;
        table.segments.insert(number, segment.added.len() as u32);
        table.next_segment += 1;
        self.records.set(
            keys::idempotency_segment_key(number),
            Some(fjall::Slice::from(bytes)),
        );
        // Only from the front: a segment's removals must outlive the records they remove.
        while let Some((&oldest, &0)) = table.segments.first_key_value() {
            table.segments.remove(&oldest);
            self.records
                .set(keys::idempotency_segment_key(oldest), None);
        }
        Ok(())
    }

    fn pop_oldest(&mut self) {
        if let Some((_, key)) = self.table.order.pop_first() {
            self.forget_held(key);
        }
    }

    /// Removes `key`'s record from the table, and from its segment from the next one on.
    fn forget(&mut self, key: &IdemKey) {
        if let Some(slot) = self.table.index.get(key).copied() {
            self.table.order.remove(&(slot.expires, key.clone()));
            self.forget_held(key.clone());
        }
    }

    /// [`Apply::forget`] once `key` is out of the expiry order.
    fn forget_held(&mut self, key: IdemKey) {
        let Some(slot) = self.table.index.remove(&key) else {
            return;
        };
        *self.data_bytes = self.data_bytes.saturating_sub(u64::from(slot.bytes));
        let table = &mut *self.table;
        table.counted_bytes = table.counted_bytes.saturating_sub(u64::from(slot.bytes));
        if slot.segment == table.next_segment && table.added.remove(&key).is_some() {
            return;
        }
        if let Some(live) = table.segments.get_mut(&slot.segment) {
            *live = live.saturating_sub(1);
        }
        table.removed.push(key);
    }
}

/// A digest of the records that segments (in key order) hold, the same on every node
/// whatever the grouping: each held id with its record, in id order.
pub fn stored_digest<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    segments: impl Iterator<Item = Result<(K, V), Error>>,
) -> Result<[u8; 32], Error> {
    use sha2::Digest as _;
    let mut records = BTreeMap::new();
    for stored in segments {
        let (_, v) = stored?;
        let segment: Segment = decode(v.as_ref())?;
        for key in &segment.removed {
            records.remove(key);
        }
        records.extend(segment.added);
    }
    let mut h = sha2::Sha256::new();
    for (key, record) in &records {
        let bytes = crate::binary::encode(&(key, record))
            .map_err(|e| Error::Corrupt(format!("encoding an idempotency record: {e}")))?;
        h.update((bytes.len() as u32).to_be_bytes());
        h.update(bytes);
    }
    Ok(h.finalize().into())
}

fn decode<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, Error> {
    crate::binary::decode(v).map_err(|e| Error::Corrupt(format!("idempotency segment: {e}")))
}
