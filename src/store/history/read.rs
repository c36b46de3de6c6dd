//! Reading the change log from disk: a watch's backlog, and the previous version of a key
//! when a watch asks for `prev_value`.

use fjall::{Keyspace, Slice};

use super::chunk::{self, MOVED};
use super::{ChangeEvent, EventKind};
use crate::store::{keys, Error};

/// Events read from disk, whole revisions only.
pub struct DiskRead {
    pub events: Vec<ChangeEvent>,
    /// Whether the read reached the end of what fjall holds.
    pub exhausted: bool,
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("change log: {what}"))
}

/// Events of revision `from` and later, about `budget` bytes of them, ending at a revision's
/// end (a revision is never cut, however large). `kv` is the state machine's keyspace of the
/// same generation, where large records are kept.
pub fn from_disk(
    ks: &Keyspace,
    kv: &Keyspace,
    from: u64,
    budget: usize,
) -> Result<DiskRead, Error> {
    let start = containing(ks, from)?.unwrap_or(chunk::chunk_key(from, 0).to_vec());
    let end = [MOVED];
    let mut events = Vec::new();
    let mut bytes = 0usize;
    for guard in ks.range::<Vec<u8>, _>(start..end.to_vec()) {
        let (k, v) = guard.into_inner()?;
        let Some(first) = chunk::chunk_revision(&k) else {
            continue;
        };
        let continues = k[8..] != [0, 0, 0, 0];
        let last = events.last().map(|e: &ChangeEvent| e.revision);
        // Stop between revisions once the budget is spent.
        if bytes >= budget && !(continues && last == Some(first)) {
            return Ok(DiskRead {
                events,
                exhausted: false,
            });
        }
        for e in chunk::decode_chunk(&v).ok_or_else(|| corrupt("a chunk does not decode"))? {
            if e.revision >= from {
                let e = with_record(ks, kv, e)?;
                bytes += e.size();
                events.push(e);
            }
        }
    }
    Ok(DiskRead {
        events,
        exhausted: true,
    })
}

/// `e` with its record, read from where it is kept if the chunk left it out.
fn with_record(ks: &Keyspace, kv: &Keyspace, mut e: ChangeEvent) -> Result<ChangeEvent, Error> {
    if e.in_kv() {
        e.record = kept_in_kv_or_gone(ks, kv, &e.key, e.revision)?;
    }
    Ok(e)
}

/// [`kept_in_kv`], where not finding it means the change log is not what it says.
pub fn kept_in_kv_or_gone(
    ks: &Keyspace,
    kv: &Keyspace,
    key: &str,
    revision: u64,
) -> Result<Slice, Error> {
    kept_in_kv(ks, kv, key, revision)?
        .ok_or_else(|| corrupt(&format!("the record of {key:?} at {revision} is gone")))
}

/// A large record the change log left in kv: kv's while the key is at `revision`, else the
/// copy moved into the change log when kv's was replaced (in the same fjall batch, so one
/// of the two reads finds it unless compaction removed it).
pub fn kept_in_kv(
    ks: &Keyspace,
    kv: &Keyspace,
    key: &str,
    revision: u64,
) -> Result<Option<Slice>, Error> {
    if let Some(record) = kv.get(key.as_bytes())? {
        if keys::decode_value(&record).map(|(r, _)| r) == Some(revision) {
            return Ok(Some(record));
        }
    }
    Ok(ks.get(chunk::moved_key(revision, key))?)
}

/// The key of the chunk that holds `revision`'s first event, if any chunk starts at or
/// before it.
fn containing(ks: &Keyspace, revision: u64) -> Result<Option<Vec<u8>>, Error> {
    let upto = chunk::chunk_key(revision, 0).to_vec();
    match ks.range::<Vec<u8>, _>(..=upto).next_back() {
        Some(guard) => {
            let k = guard.key()?;
            Ok(chunk::chunk_revision(&k).map(|_| k.to_vec()))
        }
        None => Ok(None),
    }
}

/// The record `key` had at `revision` (a put of the change log, or the anchor compaction
/// left for it), if fjall holds it.
pub fn put_at(
    ks: &Keyspace,
    kv: &Keyspace,
    key: &str,
    revision: u64,
) -> Result<Option<Slice>, Error> {
    // The chunk holding the revision's first event, and those after it that continue it.
    let start = containing(ks, revision)?.unwrap_or(chunk::chunk_key(revision, 0).to_vec());
    let end = chunk::chunk_key(revision.saturating_add(1), 0).to_vec();
    for guard in ks.range::<Vec<u8>, _>(start..end) {
        let (_, v) = guard.into_inner()?;
        let events = chunk::decode_chunk(&v).ok_or_else(|| corrupt("a chunk does not decode"))?;
        if let Some(e) = events
            .into_iter()
            .find(|e| e.revision == revision && e.key == key && e.kind == EventKind::Put)
        {
            if e.in_kv() {
                // `None` only when compaction removed it since: then its anchor has it.
                if let Some(record) = kept_in_kv(ks, kv, key, revision)? {
                    return Ok(Some(record));
                }
                break;
            }
            return Ok(Some(e.record));
        }
    }
    // Checked after the chunks: compaction removes a chunk and writes its anchors in one
    // batch, so a version missed above is in its anchor now.
    let Some(anchor) = ks.get(chunk::anchor_key(key))? else {
        return Ok(None);
    };
    let (at, record) = chunk::decode_anchor(&anchor).ok_or_else(|| corrupt("short anchor"))?;
    Ok((at == revision).then(|| Slice::from(record)))
}
