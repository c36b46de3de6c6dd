//! The change log on disk, in `history_<generation>`:
//!
//! ```text
//! u64 revision | u32 event#           → chunk: u32 count | event*
//! 0xFD | u64 revision | key           → moved: record   (a large version kv held, replaced)
//! 0xFE | key                          → anchor: u64 revision | record   (a compacted version)
//! 0xFF | u64 revision | u32 event#    → index: u64 last revision | u64 first stamp | u64 last stamp | u64 bytes
//! event: u8 kind | u64 revision | u64 stamp | u64 prev revision | u32 len | key
//!        | u32 len | record | u32 len + 1 (0: none) | previous record
//! ```
//!
//! A chunk holds consecutive events (one flush's, cut at about [`CHUNK_BYTES`]) and is named
//! by its first event; a revision's events may span chunks. Revisions stay below 2^56, so
//! chunk keys sort before the moved versions, the anchors and the index. Integers are
//! big-endian.
//!
//! A put of a large record that the same flush writes to kv is stored with an empty record
//! (a put's record is never empty otherwise): kv holds it, and when a later flush replaces
//! it there, that flush moves it under `0xFD` (`StateView::flush_with`). Written once, not
//! twice, while the key keeps it: about a third of a node's disk writes per 64 KiB put.

use fjall::Slice;

use super::{ChangeEvent, EventKind};

/// Bytes of an event besides its key and records.
pub const FIXED_EVENT_BYTES: usize = 1 + 8 + 8 + 8 + 4 + 4 + 4;
/// A chunk is cut once it holds about this many bytes...
pub const CHUNK_BYTES: usize = 64 * 1024;
/// ...or this many events.
const CHUNK_EVENTS: usize = 512;

/// Records from this size on are kept in kv, not copied into the change log.
pub const LARGE_RECORD: usize = 16 * 1024;

pub const MOVED: u8 = 0xFD;
pub const ANCHOR: u8 = 0xFE;
pub const INDEX: u8 = 0xFF;

/// A chunk's key: its first event's revision and place in that revision.
pub fn chunk_key(revision: u64, event: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&revision.to_be_bytes());
    k[8..].copy_from_slice(&event.to_be_bytes());
    k
}

/// The revision a chunk key starts at, if `key` is one.
pub fn chunk_revision(key: &[u8]) -> Option<u64> {
    if key.len() != 12 || key[0] >= MOVED {
        return None;
    }
    Some(u64::from_be_bytes(key[..8].try_into().ok()?))
}

pub fn index_key(chunk: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + chunk.len());
    k.push(INDEX);
    k.extend_from_slice(chunk);
    k
}

/// Where a large version that kv held is kept once a later write replaced it.
pub fn moved_key(revision: u64, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(MOVED);
    k.extend_from_slice(&revision.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

pub fn anchor_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(ANCHOR);
    k.extend_from_slice(key.as_bytes());
    k
}

/// What the index says of one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    pub first_revision: u64,
    pub last_revision: u64,
    pub first_stamp: u64,
    pub last_stamp: u64,
    pub bytes: u64,
}

impl ChunkInfo {
    pub fn encode(&self) -> [u8; 32] {
        let mut v = [0u8; 32];
        v[..8].copy_from_slice(&self.last_revision.to_be_bytes());
        v[8..16].copy_from_slice(&self.first_stamp.to_be_bytes());
        v[16..24].copy_from_slice(&self.last_stamp.to_be_bytes());
        v[24..].copy_from_slice(&self.bytes.to_be_bytes());
        v
    }

    /// The index entry under `key` (`0xFF | chunk key`), if it is one.
    pub fn decode(key: &[u8], value: &[u8]) -> Option<ChunkInfo> {
        let first_revision = chunk_revision(key.strip_prefix(&[INDEX])?)?;
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_be_bytes(
                value.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        Some(ChunkInfo {
            first_revision,
            last_revision: word(0)?,
            first_stamp: word(1)?,
            last_stamp: word(2)?,
            bytes: word(3)?,
        })
    }
}

/// One chunk ready to write.
pub struct Chunk {
    pub key: [u8; 12],
    pub value: Vec<u8>,
    pub info: ChunkInfo,
}

/// `events` (consecutive, in revision order) cut into chunks; a put for which `in_kv` holds
/// is stored without its record.
pub fn chunks(events: &[&ChangeEvent], in_kv: &dyn Fn(&ChangeEvent) -> bool) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut start = 0;
    // Place of each event within its revision, for naming a chunk that starts mid-revision.
    let mut place = 0u32;
    let mut place_of_start = 0u32;
    let mut bytes = 0usize;
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            place = if events[i - 1].revision == e.revision {
                place + 1
            } else {
                0
            };
        }
        if i > start && (bytes >= CHUNK_BYTES || i - start >= CHUNK_EVENTS) {
            out.push(encode_chunk(&events[start..i], place_of_start, in_kv));
            start = i;
            place_of_start = place;
            bytes = 0;
        }
        bytes += e.size();
    }
    if start < events.len() {
        out.push(encode_chunk(&events[start..], place_of_start, in_kv));
    }
    out
}

fn encode_chunk(
    events: &[&ChangeEvent],
    place: u32,
    in_kv: &dyn Fn(&ChangeEvent) -> bool,
) -> Chunk {
    let size: usize = events.iter().map(|e| e.size()).sum();
    let mut v = Vec::with_capacity(4 + size);
    v.extend_from_slice(&(events.len() as u32).to_be_bytes());
    // Records kept in kv count as the change log's: retention by bytes judges what it keeps.
    let mut elsewhere = 0;
    for e in events {
        let kept_in_kv = e.kind == EventKind::Put && in_kv(e);
        if kept_in_kv {
            elsewhere += e.record.len();
        }
        encode_event(&mut v, e, kept_in_kv);
    }
    let (first, last) = (&events[0], &events[events.len() - 1]);
    Chunk {
        key: chunk_key(first.revision, place),
        info: ChunkInfo {
            first_revision: first.revision,
            last_revision: last.revision,
            first_stamp: first.stamp,
            last_stamp: last.stamp,
            bytes: (v.len() + elsewhere) as u64,
        },
        value: v,
    }
}

fn encode_event(v: &mut Vec<u8>, e: &ChangeEvent, kept_in_kv: bool) {
    v.push(e.kind.code());
    v.extend_from_slice(&e.revision.to_be_bytes());
    v.extend_from_slice(&e.stamp.to_be_bytes());
    v.extend_from_slice(&e.prev_revision.to_be_bytes());
    v.extend_from_slice(&(e.key.len() as u32).to_be_bytes());
    v.extend_from_slice(e.key.as_bytes());
    let record: &[u8] = if kept_in_kv { &[] } else { &e.record };
    v.extend_from_slice(&(record.len() as u32).to_be_bytes());
    v.extend_from_slice(record);
    match &e.prev_inline {
        Some(p) => {
            v.extend_from_slice(&(p.len() as u32 + 1).to_be_bytes());
            v.extend_from_slice(p);
        }
        None => v.extend_from_slice(&0u32.to_be_bytes()),
    }
}

/// The events of a chunk; `None` when it is not one (corrupt).
pub fn decode_chunk(bytes: &[u8]) -> Option<Vec<ChangeEvent>> {
    let mut r = Reader { bytes, at: 0 };
    let count = r.u32()? as usize;
    let mut out = Vec::with_capacity(count.min(CHUNK_EVENTS * 4));
    for _ in 0..count {
        out.push(decode_event(&mut r)?);
    }
    Some(out)
}

fn decode_event(r: &mut Reader) -> Option<ChangeEvent> {
    let kind = EventKind::from_code(r.u8()?)?;
    let revision = r.u64()?;
    let stamp = r.u64()?;
    let prev_revision = r.u64()?;
    let key_len = r.u32()? as usize;
    let key = String::from_utf8(r.take(key_len)?.to_vec()).ok()?;
    let rec_len = r.u32()? as usize;
    let record = Slice::from(r.take(rec_len)?);
    let prev_inline = match r.u32()? {
        0 => None,
        n => Some(Slice::from(r.take(n as usize - 1)?)),
    };
    Some(ChangeEvent {
        kind,
        revision,
        key,
        record,
        prev_revision,
        prev_inline,
        prev_large: None,
        stamp,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// An anchor's value: the compacted version's revision and record.
pub fn encode_anchor(revision: u64, record: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + record.len());
    v.extend_from_slice(&revision.to_be_bytes());
    v.extend_from_slice(record);
    v
}

pub fn decode_anchor(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (rev, record) = bytes.split_at_checked(8)?;
    Some((u64::from_be_bytes(rev.try_into().ok()?), record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::{encode_record, KeyMeta};

    fn put(revision: u64, key: &str, value: usize) -> ChangeEvent {
        ChangeEvent {
            kind: EventKind::Put,
            revision,
            key: key.into(),
            record: Slice::from(encode_record(&KeyMeta::plain(revision), &vec![b'1'; value])),
            prev_revision: revision.saturating_sub(1),
            prev_inline: revision.is_multiple_of(2).then(|| Slice::from(&b"x"[..])),
            prev_large: None,
            stamp: revision * 10,
        }
    }

    #[test]
    fn chunks_round_trip_and_name_their_first_event() {
        let mut events: Vec<ChangeEvent> = (1..=3).map(|r| put(r, "k", 10)).collect();
        // A revision of many large events spans chunks.
        events.extend((0..6).map(|i| put(4, &format!("p/{i}"), CHUNK_BYTES / 3)));
        events.push(put(5, "k", 1));
        let chunks = chunks(&events.iter().collect::<Vec<_>>(), &|_| false);
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        let mut back = Vec::new();
        let mut keys = Vec::new();
        for c in &chunks {
            let decoded = decode_chunk(&c.value).expect("decodes");
            assert_eq!(c.key, chunk_key(decoded[0].revision, c.key_place()));
            assert_eq!(c.info.first_revision, decoded[0].revision);
            assert_eq!(c.info.last_revision, decoded[decoded.len() - 1].revision);
            keys.push(c.key);
            back.extend(decoded);
        }
        assert_eq!(back, events);
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys sort in order");
        let info = chunks[0].info;
        let idx = index_key(&chunks[0].key);
        assert_eq!(ChunkInfo::decode(&idx, &info.encode()), Some(info));
        assert_eq!(chunk_revision(&idx), None, "the index is not a chunk");
    }

    #[test]
    fn a_truncated_chunk_is_refused() {
        let c = &chunks(&[&put(1, "k", 5)], &|_| false)[0];
        assert!(decode_chunk(&c.value[..c.value.len() - 1]).is_none());
        assert!(decode_chunk(&[0, 0, 0, 9]).is_none());
    }

    #[test]
    fn a_put_kept_in_kv_is_stored_without_its_record_and_counted_with_it() {
        let big = put(1, "big", LARGE_RECORD);
        let small = put(2, "small", 10);
        let c = &chunks(&[&big, &small], &|e| e.key == "big")[0];
        let back = decode_chunk(&c.value).expect("decodes");
        assert!(back[0].in_kv() && back[0].record.is_empty());
        assert_eq!(back[1], small);
        assert!(!back[1].in_kv());
        assert!(
            c.value.len() < LARGE_RECORD,
            "the record is not in the chunk"
        );
        assert_eq!(c.info.bytes as usize, c.value.len() + big.record.len());
        let moved = moved_key(7, "abc");
        assert_eq!(moved.len(), 12, "as long as a chunk key");
        assert_eq!(
            chunk_revision(&moved),
            None,
            "a moved version is not a chunk"
        );
    }

    impl Chunk {
        fn key_place(&self) -> u32 {
            u32::from_be_bytes(self.key[8..].try_into().expect("12-byte key"))
        }
    }
}
