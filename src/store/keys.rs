//! Key and value encodings on disk. Log indices are big-endian so fjall orders them.

use crate::types::LogId;

/// Keys of the `meta` keyspace (Raft vote and log state, format version).
pub const META_FORMAT_VERSION: &[u8] = b"format_version";
pub const META_VOTE: &[u8] = b"vote";
pub const META_LAST_PURGED: &[u8] = b"last_purged";
pub const META_COMMITTED: &[u8] = b"committed";
pub const META_SNAPSHOT: &[u8] = b"snapshot";
/// Set when the cluster removed this node: its data dir may not serve again.
pub const META_REMOVED: &[u8] = b"removed";

/// Keys of the `sm_meta` keyspace (state-machine metadata, written with every apply).
pub const SM_LAST_APPLIED: &[u8] = b"last_applied";
pub const SM_MEMBERSHIP: &[u8] = b"membership";
pub const SM_REVISION: &[u8] = b"revision";
pub const SM_CLUSTER_ID: &[u8] = b"cluster_id";
pub const SM_KV_GENERATION: &[u8] = b"kv_generation";
pub const SM_KEY_COUNT: &[u8] = b"key_count";
/// Live data size: key bytes + stored value bytes of every live key (format 2 on).
pub const SM_DATA_BYTES: &[u8] = b"data_bytes";
/// The first revision this node's change log holds (0: none kept, before format 2).
pub const SM_HISTORY_START: &[u8] = b"history_start";

/// The cluster's log format as of the applied index (1 until a format switch applied).
pub const SM_CLUSTER_FORMAT: &[u8] = b"cluster_format";
/// Cluster time (ms) of the newest applied format-2 entry.
pub const SM_CLUSTER_TIME: &[u8] = b"cluster_time";
/// This node's last cluster-time reading (ms), saved now and then so that a restart resumes
/// near it (`store::clock`).
pub const META_CLOCK_FLOOR: &[u8] = b"clock_floor";

/// The data directory format a node writes once its cluster switched to log format 2: an
/// older build refuses the directory from then on (`migrations`). Format 3 was that first;
/// format 4 adds nothing before the switch, so the switch goes straight to it.
pub const FORMAT_V2_DATA_DIR: u32 = 4;

/// The state machine's keyspaces of format 2 beside `kv_<generation>`, one set per
/// generation (a snapshot install fills the next and switches to it). Layouts:
///
/// ```text
/// history_<g>      u64 revision | u32 event#      → event: u8 type | key | KeyMeta | u64 prev rev
/// leases_<g>       u64 lease id                   → u64 ttl_ms | u64 renewal stamp | u64 keys
/// lease_keys_<g>   u64 lease id | key             → ()
/// locks_<g>        name | 0x00 | u64 claim rev     → u64 lease | u8 waiting
/// ```
///
/// Integers are big-endian so that fjall orders them. The change log refers to versioned
/// records instead of copying values; the other three are carried in snapshots and backups.
/// The idempotency table lives in `kv_<g>` itself, under reserved keys ([`RESERVED`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    History,
    Leases,
    LeaseKeys,
    Locks,
}

impl Space {
    pub const ALL: [Space; 4] = [
        Space::History,
        Space::Leases,
        Space::LeaseKeys,
        Space::Locks,
    ];

    /// The keyspace's name in `generation`.
    pub fn name(self, generation: u64) -> String {
        let stem = match self {
            Space::History => "history",
            Space::Leases => "leases",
            Space::LeaseKeys => "lease_keys",
            Space::Locks => "locks",
        };
        format!("{stem}_{generation}")
    }

    /// Whether snapshots and backups carry it (the change log is rebuilt from the snapshot's
    /// revision on, never shipped).
    pub fn in_snapshots(self) -> bool {
        self != Space::History
    }
}

/// First byte of the state machine's own keys in `kv_<g>`: no client key holds a control
/// character (`invalid_key`), so none can collide with them. Scans, key counts and backups'
/// key counts skip them; the flush, snapshots, installs, backups and restores carry them
/// like any key, in the same atomic batches as the keys they belong with.
pub const RESERVED: u8 = 0;
/// Reserved keys of the idempotency table's segments: `\0i/<segment number, 16 hex digits>`
/// (`store::idempotency`), in the order of their numbers.
pub const IDEMPOTENCY_PREFIX: &str = "\0i/";
/// Reserved key of the idempotency table's replicated settings.
pub const IDEMPOTENCY_SETTINGS: &str = "\0s/idempotency";
/// Reserved key of the change log's compact revision (u64, bincode): replicated by the
/// `Compact` entry and carried by snapshots and backups with the keys.
pub const COMPACT_REVISION: &str = "\0s/compact";

/// Whether `key` is one of the state machine's own (see [`RESERVED`]).
pub fn is_reserved(key: &[u8]) -> bool {
    key.first() == Some(&RESERVED)
}

/// The reserved key of idempotency segment `number`.
pub fn idempotency_segment_key(number: u64) -> String {
    format!("{IDEMPOTENCY_PREFIX}{number:016x}")
}

/// The number of the idempotency segment stored under `key`.
pub fn idempotency_segment(key: &[u8]) -> Option<u64> {
    let hex = key.strip_prefix(IDEMPOTENCY_PREFIX.as_bytes())?;
    let hex = std::str::from_utf8(hex).ok().filter(|h| h.len() == 16)?;
    u64::from_str_radix(hex, 16).ok()
}

/// Version byte in front of every bincode-encoded log entry.
pub const ENTRY_ENCODING_V1: u8 = 1;

pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn log_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Name of the state-machine keyspace of one generation; a snapshot install fills the
/// next generation and switches to it in one durable batch.
pub fn kv_keyspace_name(generation: u64) -> String {
    format!("kv_{generation}")
}

pub use crate::limits::VALUE_HEADER_BYTES;

/// A key's metadata (DESIGN.md "Key metadata"): the write that last set it, the write that
/// created it, its writes since, and the lease it is attached to (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyMeta {
    pub revision: u64,
    pub create_revision: u64,
    pub version: u64,
    pub lease: u64,
}

impl KeyMeta {
    /// What a key written by format 1 means: version 1, created by the write that last set
    /// it, no lease. Also what a first write gives.
    pub fn plain(revision: u64) -> KeyMeta {
        KeyMeta {
            revision,
            create_revision: revision,
            version: 1,
            lease: 0,
        }
    }
}

/// Marks a full record: no JSON text starts with a NUL byte.
const FULL_RECORD: u8 = 0;
/// Bytes of a full record's header.
pub const FULL_HEADER_BYTES: usize = 8 + 1 + 24;

/// A stored value (the key record). Two layouts, told apart by the byte after the revision:
///
/// ```text
/// plain: u64 revision | JSON                                   version 1, create = revision, lease 0
/// full:  u64 revision | 0x00 | u64 create | u64 version | u64 lease | JSON
/// ```
///
/// Data directories of format 2 hold only plain records, and a plain record means exactly
/// what DESIGN.md gives keys migrated from format 1 (version 1, create_revision = revision),
/// so the migration needs no rewrite: it is this decoding. A record whose metadata says the
/// same is written plain, which is also what a format-1 cluster's writes always give.
pub fn encode_record(meta: &KeyMeta, json: &[u8]) -> Vec<u8> {
    if *meta == KeyMeta::plain(meta.revision) {
        return encode_value(meta.revision, json);
    }
    let mut v = Vec::with_capacity(FULL_HEADER_BYTES + json.len());
    v.extend_from_slice(&meta.revision.to_be_bytes());
    v.push(FULL_RECORD);
    v.extend_from_slice(&meta.create_revision.to_be_bytes());
    v.extend_from_slice(&meta.version.to_be_bytes());
    v.extend_from_slice(&meta.lease.to_be_bytes());
    v.extend_from_slice(json);
    v
}

/// A key record's metadata and JSON text, either layout.
pub fn decode_record(bytes: &[u8]) -> Option<(KeyMeta, &[u8])> {
    let (rev, rest) = bytes.split_at_checked(8)?;
    let revision = u64::from_be_bytes(rev.try_into().ok()?);
    if rest.first() != Some(&FULL_RECORD) {
        return Some((KeyMeta::plain(revision), rest));
    }
    let (head, json) = rest[1..].split_at_checked(24)?;
    let word = |i: usize| u64::from_be_bytes(head[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    let meta = KeyMeta {
        revision,
        create_revision: word(0),
        version: word(1),
        lease: word(2),
    };
    Some((meta, json))
}

/// A plain record: the revision that last set it, then the JSON text.
pub fn encode_value(revision: u64, json: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + json.len());
    v.extend_from_slice(&revision.to_be_bytes());
    v.extend_from_slice(json);
    v
}

/// What one live key counts towards the live data size: its key and stored value bytes.
pub fn entry_bytes(key_len: usize, stored_value_len: usize) -> u64 {
    (key_len + stored_value_len) as u64
}

/// A record's revision and JSON text, either layout.
pub fn decode_value(bytes: &[u8]) -> Option<(u64, &[u8])> {
    decode_record(bytes).map(|(m, json)| (m.revision, json))
}

pub fn encode_log_id(id: &Option<LogId>) -> Vec<u8> {
    bincode::serialize(id).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_index() {
        assert!(log_key(9) < log_key(10));
        assert!(log_key(255) < log_key(256));
        assert_eq!(log_index(&log_key(77)), Some(77));
        assert_eq!(log_index(b"short"), None);
    }

    #[test]
    fn records_round_trip_in_both_layouts() {
        let plain = KeyMeta::plain(7);
        let bytes = encode_record(&plain, b"[1]");
        assert_eq!(
            bytes,
            encode_value(7, b"[1]"),
            "plain metadata, plain layout"
        );
        assert_eq!(decode_record(&bytes), Some((plain, &b"[1]"[..])));
        let full = KeyMeta {
            revision: 9,
            create_revision: 3,
            version: 4,
            lease: 1 << 40,
        };
        let bytes = encode_record(&full, b" \"x\"");
        assert_eq!(bytes.len(), FULL_HEADER_BYTES + 4);
        assert_eq!(decode_record(&bytes), Some((full, &b" \"x\""[..])));
        assert_eq!(decode_value(&bytes), Some((9, &b" \"x\""[..])));
        // A full marker without its header is corrupt, not a value.
        assert_eq!(decode_record(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 1]), None);
    }

    #[test]
    fn values_round_trip() {
        let v = encode_value(42, br#"{"a":1}"#);
        assert_eq!(decode_value(&v), Some((42, &br#"{"a":1}"#[..])));
        assert_eq!(decode_value(b"1234"), None);
    }
}
