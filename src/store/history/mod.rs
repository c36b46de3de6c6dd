//! The change log (DESIGN.md "Change log and compaction"): every revision's events, kept
//! from the format switch (or the installed snapshot's revision) on, for watches.
//!
//! Apply makes the events beside the writes they describe (`store::apply::write`), with no
//! extra read: a write already reads the record it replaces. An event holds the record it
//! wrote (shared with the recent-writes table, not copied) and the revision of the key's
//! previous version; the previous value is found when a watch asks for it, in the change
//! log itself ([`read::prev_value`]). Only when that version is older than the change log
//! does the event keep a copy of it.
//!
//! The events go to fjall with the flush that writes their keys, in chunks of many events
//! per fjall record ([`chunk`]): one memtable insert per chunk, not per put. The newest
//! events also stay in memory ([`tail::Tail`]), where every watcher reads them without
//! copying; older ones are read from disk.
//!
//! Compaction is a log entry: it sets the compact revision (a reserved key, so snapshots
//! carry it), the same on every node, and each node removes the chunks below it later
//! ([`compact`]), keeping each key's newest removed version where a later event needs it.

pub mod chunk;
pub mod compact;
pub mod read;
pub mod serve;
pub mod tail;

use fjall::Slice;

use super::keys::{self, KeyMeta};

/// What an event did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
    Expire,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Put => "put",
            EventKind::Delete => "delete",
            EventKind::Expire => "expire",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        match name {
            "put" => Some(EventKind::Put),
            "delete" => Some(EventKind::Delete),
            "expire" => Some(EventKind::Expire),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            EventKind::Put => 1,
            EventKind::Delete => 2,
            EventKind::Expire => 3,
        }
    }

    fn from_code(code: u8) -> Option<EventKind> {
        match code {
            1 => Some(EventKind::Put),
            2 => Some(EventKind::Delete),
            3 => Some(EventKind::Expire),
            _ => None,
        }
    }
}

/// One change of one key at one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub kind: EventKind,
    pub revision: u64,
    pub key: String,
    /// A put's record as stored (metadata and JSON, `keys::encode_record`); empty otherwise.
    pub record: Slice,
    /// Revision of the key's version before this event (0: it had none).
    pub prev_revision: u64,
    /// That version's record, kept only when the change log did not hold it any more.
    pub prev_inline: Option<Slice>,
    /// That version's record when it is large (kv held it, the change log may not): the flush
    /// moves it into the change log. In memory only, never in a chunk.
    pub prev_large: Option<Slice>,
    /// Cluster time of the entry that made the event.
    pub stamp: u64,
}

impl ChangeEvent {
    /// The metadata a watch reports and the value, from one decoding of the record: a
    /// put's as written; zeros (and the deleting revision) and no value for a delete or an
    /// expiry.
    pub fn parts(&self) -> (KeyMeta, Option<&[u8]>) {
        match keys::decode_record(&self.record) {
            Some((meta, json)) if self.kind == EventKind::Put => (meta, Some(json)),
            _ => (
                KeyMeta {
                    revision: self.revision,
                    create_revision: 0,
                    version: 0,
                    lease: 0,
                },
                None,
            ),
        }
    }

    /// A put read from disk whose record kv holds (`chunk`): read it with `read::kept_in_kv`.
    pub fn in_kv(&self) -> bool {
        self.kind == EventKind::Put && self.record.is_empty()
    }

    /// A put's JSON value.
    pub fn json(&self) -> Option<&[u8]> {
        self.parts().1
    }

    /// Bytes it takes in memory and in a chunk, about.
    pub fn size(&self) -> usize {
        chunk::FIXED_EVENT_BYTES
            + self.key.len()
            + self.record.len()
            + self.prev_inline.as_ref().map_or(0, |p| p.len())
    }
}

/// Whether `key` matches a watch's filter: the key itself, or everything under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFilter {
    Key(String),
    Prefix(String),
}

impl KeyFilter {
    pub fn matches(&self, key: &str) -> bool {
        match self {
            KeyFilter::Key(k) => k == key,
            KeyFilter::Prefix(p) => key.starts_with(p.as_str()),
        }
    }
}

/// The change log's state on this node, beside the state machine (`StateView`).
#[derive(Default)]
pub struct HistoryState {
    pub tail: tail::Tail,
    /// The applied compact revision: no watch starts at or below it.
    pub compact_revision: std::sync::atomic::AtomicU64,
    /// The first revision this node's change log holds (0: none, before format 2).
    pub start: std::sync::atomic::AtomicU64,
    /// Bytes of the chunks on disk, with the large records they leave in kv (`chunk`): what
    /// retention and the storage quota judge, as when every record was in its chunk.
    pub bytes: std::sync::atomic::AtomicU64,
    /// Chunks through this revision are gone from disk.
    pub removed_through: std::sync::atomic::AtomicU64,
    /// The newest revision whose events a flush has written.
    pub flushed_through: std::sync::atomic::AtomicU64,
    /// Counts snapshot installs: a disk read that an install overlapped is void.
    pub epoch: std::sync::atomic::AtomicU64,
}
