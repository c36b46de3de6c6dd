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

/// A stored value: the revision that last set it, then the JSON text.
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

pub fn decode_value(bytes: &[u8]) -> Option<(u64, &[u8])> {
    if bytes.len() < 8 {
        return None;
    }
    let (rev, json) = bytes.split_at(8);
    Some((u64::from_be_bytes(rev.try_into().ok()?), json))
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
    fn values_round_trip() {
        let v = encode_value(42, br#"{"a":1}"#);
        assert_eq!(decode_value(&v), Some((42, &br#"{"a":1}"#[..])));
        assert_eq!(decode_value(b"1234"), None);
    }
}
