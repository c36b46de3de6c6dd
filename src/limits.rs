//! Fixed limits of the protocol that more than one layer checks: `api::validate` refuses a
//! request past them, `config` sizes the largest log entry with them. A leaf: it imports
//! nothing of the crate, so any module may use it without closing an import circle.

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Bytes a stored value holds in front of the JSON text: the revision that last set it
/// (`store::keys` builds stored values on it; the storage quota counts it).
pub const VALUE_HEADER_BYTES: usize = 8;

/// Deepest nesting of arrays and objects a stored value may have. serde_json's parser refuses
/// more than 128 levels, and a reply wraps a value in up to three more (scan: object, array,
/// item), so a value past this could be stored but never read back by any client.
pub const MAX_VALUE_DEPTH: usize = 64;
