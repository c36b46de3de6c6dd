//! Removing what compaction left behind, on each node at its own pace: the chunks wholly at
//! or below the compact revision, with their index entries. A removed put that a later
//! event names as its previous version is kept as the key's anchor (one per key, replaced
//! as compaction moves on), so `prev_value` still finds it; a key whose newest version was
//! removed needs none (apply copies that version into the next event that replaces it).
//! A moved copy of a record that kv kept (`chunk`) goes once no chunk is left that could
//! name it: below the oldest chunk's first revision.

use std::collections::HashMap;

use fjall::{Database, Keyspace};

use super::chunk::{self, ChunkInfo, INDEX, MOVED};
use super::EventKind;
use crate::store::Error;

/// Chunks removed per fjall batch.
const CHUNKS_PER_BATCH: usize = 256;

/// What one pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub chunks: u64,
    pub bytes: u64,
}

/// Removes the chunks of `ks` whose events are all at or below `compact`, up to
/// [`CHUNKS_PER_BATCH`] per batch; `current` gives a key's revision in the state machine now,
/// `kv` is where large records are kept.
pub fn remove_through(
    db: &Database,
    ks: &Keyspace,
    kv: &Keyspace,
    compact: u64,
    current: &dyn Fn(&str) -> Result<Option<u64>, Error>,
) -> Result<Removed, Error> {
    let mut removed = Removed::default();
    loop {
        let done = batch_through(db, ks, kv, compact, current)?;
        removed.chunks += done.chunks;
        removed.bytes += done.bytes;
        if done.chunks < CHUNKS_PER_BATCH as u64 {
            remove_unnamed_moved(db, ks)?;
            return Ok(removed);
        }
    }
}

fn batch_through(
    db: &Database,
    ks: &Keyspace,
    kv: &Keyspace,
    compact: u64,
    current: &dyn Fn(&str) -> Result<Option<u64>, Error>,
) -> Result<Removed, Error> {
    let mut doomed = Vec::new();
    for guard in ks.prefix([INDEX]) {
        let (k, v) = guard.into_inner()?;
        let info = ChunkInfo::decode(&k, &v)
            .ok_or_else(|| Error::Corrupt("change log: bad index entry".into()))?;
        if info.last_revision > compact || doomed.len() >= CHUNKS_PER_BATCH {
            break;
        }
        doomed.push((k, info));
    }
    let mut batch = db.batch();
    // Each key's newest removed version: `Some` for a put, `None` for a removal.
    let mut newest: HashMap<String, Option<(u64, fjall::Slice)>> = HashMap::new();
    let mut removed = Removed::default();
    for (index, info) in &doomed {
        let chunk_key = &index[1..];
        if let Some(v) = ks.get(chunk_key)? {
            let events = chunk::decode_chunk(&v)
                .ok_or_else(|| Error::Corrupt("change log: a chunk does not decode".into()))?;
            for e in events {
                let version = (e.kind == EventKind::Put).then_some((e.revision, e.record));
                newest.insert(e.key, version);
            }
        }
        batch.remove(ks, chunk_key.to_vec());
        batch.remove(ks, index.to_vec());
        removed.chunks += 1;
        removed.bytes += info.bytes;
    }
    for (key, version) in newest {
        let anchor = chunk::anchor_key(&key);
        match version {
            // Replaced since: the event that replaced it names this version.
            Some((revision, record)) if current(&key)? != Some(revision) => {
                let record = match record.is_empty() {
                    // Kept in kv: kv's own until its replacement is flushed, then moved.
                    true => super::read::kept_in_kv_or_gone(ks, kv, &key, revision)?,
                    false => record,
                };
                batch.insert(ks, anchor, chunk::encode_anchor(revision, &record));
            }
            _ => batch.remove(ks, anchor),
        }
    }
    if !batch.is_empty() {
        batch.commit()?;
    }
    Ok(removed)
}

/// Removes the moved copies below the first revision of the oldest chunk left (all of them
/// when none is): no read reaches them. A flush may move a version after the chunk naming it
/// is gone (compaction passed it before the replacing write was flushed); this clears those.
fn remove_unnamed_moved(db: &Database, ks: &Keyspace) -> Result<(), Error> {
    let oldest = match ks.range::<Vec<u8>, _>(..vec![MOVED]).next() {
        Some(guard) => chunk::chunk_revision(&guard.key()?),
        None => None,
    };
    let below = chunk::moved_key(oldest.unwrap_or(u64::MAX), "");
    let mut batch = db.batch();
    for guard in ks.range::<Vec<u8>, _>(chunk::moved_key(0, "")..below) {
        batch.remove(ks, guard.key()?);
    }
    if !batch.is_empty() {
        batch.commit()?;
    }
    Ok(())
}

/// Bytes of every chunk the index lists, and the newest chunk's last revision and stamp.
pub fn figures(ks: &Keyspace) -> Result<(u64, Vec<ChunkInfo>), Error> {
    let mut bytes = 0;
    let mut infos = Vec::new();
    for guard in ks.prefix([INDEX]) {
        let (k, v) = guard.into_inner()?;
        if let Some(info) = ChunkInfo::decode(&k, &v) {
            bytes += info.bytes;
            infos.push(info);
        }
    }
    Ok((bytes, infos))
}
