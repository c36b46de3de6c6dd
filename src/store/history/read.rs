//! Reading the change log from disk: a watch's backlog, and the previous version of a key
//! when a watch asks for `prev_value`.

use fjall::{Keyspace, Slice};

use super::chunk::{self, ANCHOR};
use super::{ChangeEvent, EventKind};
use crate::store::Error;

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
/// end (a revision is never cut, however large).
pub fn from_disk(ks: &Keyspace, from: u64, budget: usize) -> Result<DiskRead, Error> {
    let start = containing(ks, from)?.unwrap_or(chunk::chunk_key(from, 0).to_vec());
    let end = [ANCHOR];
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
pub fn put_at(ks: &Keyspace, key: &str, revision: u64) -> Result<Option<Slice>, Error> {
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
