//! Request limits and key rules, checked before anything reaches Raft. No IO here.

use crate::api::codec::KvRequest;
use crate::error::{bad_request, invalid_key, no_space, value_too_large, WireError};
use crate::store::keys;

pub use crate::limits::{MAX_KEY_BYTES, MAX_VALUE_DEPTH};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_value_bytes: usize,
    /// Largest command that still travels in one NATS message (max payload less headroom).
    pub max_entry_bytes: usize,
    pub max_scan_limit: usize,
    /// The storage quota on the live data size (`storage.max_bytes`); 0: none.
    pub max_data_bytes: u64,
    /// Most ops in one branch of a txn.
    pub max_txn_ops: usize,
    /// Most keys one delete by prefix removes.
    pub max_delete_keys: u64,
}

/// Bytes a put of `key` = `value` makes the key count for: the key, and the stored value
/// (8-byte revision + JSON text).
pub fn put_bytes(key: &str, value: &str) -> u64 {
    keys::entry_bytes(key.len(), keys::VALUE_HEADER_BYTES + value.len())
}

/// The storage quota: a put that would take the live data size plus the change log's
/// bytes (`used`: live data, change log) past the limit is refused. `old` is what the key
/// counts for now (`None`: absent); the caller looks it up only when the put would not fit
/// without it.
pub fn quota(
    limits: &Limits,
    (data, history): (u64, u64),
    new: u64,
    old: Option<u64>,
) -> Result<(), WireError> {
    if limits.max_data_bytes == 0 {
        return Ok(());
    }
    let current = data.saturating_add(history);
    let after = current.saturating_sub(old.unwrap_or(0)).saturating_add(new);
    // A put that does not grow the data is let through even over the limit: it frees
    // nothing to refuse it.
    if after <= limits.max_data_bytes || old.is_some_and(|o| new <= o) {
        return Ok(());
    }
    Err(no_space(format!(
        "storage quota reached: live data is {data} bytes and the change log {history}, and this put would make them {after}, over storage.max_bytes = {}; deletes still work and free space at once, and compaction frees the change log",
        limits.max_data_bytes
    )))
}

pub fn key(key: &str) -> Result<(), WireError> {
    if key.is_empty() {
        return Err(invalid_key("key is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid_key(format!(
            "key is {} bytes, the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(invalid_key("key holds control characters"));
    }
    Ok(())
}

/// Refuses a value nested deeper than [`MAX_VALUE_DEPTH`] arrays and objects. `value` is
/// JSON text the decoder has already accepted, so counting brackets outside strings is
/// exact; a loop, not recursion, so the check itself has no depth to exhaust.
pub fn value_depth(value: &str) -> Result<(), WireError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in value.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_VALUE_DEPTH {
                    return Err(bad_request(format!(
                        "value nests arrays and objects more than {MAX_VALUE_DEPTH} deep, the limit"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A value to be stored: its size, its nesting, and the entry it makes.
pub fn value(value: &str, limits: &Limits) -> Result<(), WireError> {
    if value.len() > limits.max_value_bytes {
        return Err(value_too_large(format!(
            "value is {} bytes encoded, the limit is {} (limits.max_value_bytes)",
            value.len(),
            limits.max_value_bytes
        )));
    }
    value_depth(value)
}

/// A prefix (scan, delete by prefix): no longer than a key, and without the control
/// characters that no key holds and the state machine's own keys start with.
pub fn prefix(prefix: &str) -> Result<(), WireError> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(invalid_key("prefix is over 1024 bytes"));
    }
    if prefix.chars().any(char::is_control) {
        return Err(invalid_key("prefix holds control characters"));
    }
    Ok(())
}

/// Lock claims (`_lock/…`) are readable and watchable, never a client's to write.
pub fn writable(key: &str) -> Result<(), WireError> {
    if key.starts_with(super::coord_codec::LOCK_PREFIX) {
        return Err(bad_request(format!(
            "keys under {} are lock claims: take and release them with lock.acquire and \
             lock.release",
            super::coord_codec::LOCK_PREFIX
        )));
    }
    Ok(())
}

pub fn request(req: &KvRequest, limits: &Limits) -> Result<(), WireError> {
    match req {
        KvRequest::Put {
            key: k, value: v, ..
        } => {
            key(k)?;
            writable(k)?;
            value(v, limits)?;
            let entry = k.len() + v.len() + 64;
            if entry > limits.max_entry_bytes {
                return Err(value_too_large(format!(
                    "the entry would be {entry} bytes, over the {} that fit in one NATS message",
                    limits.max_entry_bytes
                )));
            }
            Ok(())
        }
        KvRequest::Get { key: k, .. } => key(k),
        KvRequest::Delete { key: k, .. } | KvRequest::Incr { key: k, .. } => {
            key(k)?;
            writable(k)
        }
        KvRequest::DeletePrefix { prefix: p, .. } => {
            prefix(p)?;
            writable(p)
        }
        KvRequest::Coord(super::coord_codec::CoordRequest::Touch { key: k, .. }) => key(k),
        KvRequest::Coord(_) => Ok(()),
        KvRequest::Txn(txn) => super::txn_codec::validate(txn, limits),
        KvRequest::Scan {
            prefix: p,
            limit,
            after,
            ..
        } => {
            prefix(p)?;
            if let Some(a) = after {
                if a.len() > MAX_KEY_BYTES {
                    return Err(invalid_key("`after` is over 1024 bytes"));
                }
            }
            if let Some(l) = limit {
                if *l == 0 || *l > limits.max_scan_limit {
                    return Err(bad_request(format!(
                        "limit must be between 1 and {}",
                        limits.max_scan_limit
                    )));
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn key_rules() {
        assert_eq!(key("").unwrap_err().code, ErrorKind::InvalidKey);
        assert_eq!(
            key(&"a".repeat(1025)).unwrap_err().code,
            ErrorKind::InvalidKey
        );
        assert!(key(&"a".repeat(1024)).is_ok());
        assert_eq!(key("a\nb").unwrap_err().code, ErrorKind::InvalidKey);
        assert_eq!(key("a\u{0}").unwrap_err().code, ErrorKind::InvalidKey);
        assert!(key("user:1/ñ").is_ok());
    }

    #[test]
    fn value_limits() {
        let limits = Limits {
            max_value_bytes: 10,
            max_entry_bytes: 1000,
            max_scan_limit: 100,
            max_txn_ops: 128,
            max_delete_keys: 10_000,
            max_data_bytes: 0,
        };
        let put = |v: &str| KvRequest::Put {
            key: "k".into(),
            value: v.into(),
            if_revision: None,
            lease: None,
            ttl_ms: None,
            fence: None,
        };
        assert!(request(&put("12345"), &limits).is_ok());
        let e = request(&put("12345678901"), &limits).unwrap_err();
        assert_eq!(e.code, ErrorKind::ValueTooLarge);
    }

    #[test]
    fn value_depth_counts_containers_outside_strings() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(value_depth(&deep(MAX_VALUE_DEPTH)).is_ok());
        let e = value_depth(&deep(MAX_VALUE_DEPTH + 1)).unwrap_err();
        assert_eq!(e.code, ErrorKind::BadRequest);
        assert!(e.message.contains("64"));
        // Brackets inside strings, escaped quotes included, do not count.
        let in_string = format!(r#"["\"{}\\", {{"a": [1]}}]"#, "[".repeat(200));
        assert!(value_depth(&in_string).is_ok());
        // Siblings do not add up: depth is nesting, not a count of containers.
        let wide = format!("[{}]", vec!["[[1]]"; 100].join(","));
        assert!(value_depth(&wide).is_ok());
        assert!(value_depth("\"[[[\"").is_ok());
    }

    #[test]
    fn quota_refuses_growth_past_the_limit_only() {
        let limits = Limits {
            max_value_bytes: 100,
            max_entry_bytes: 1000,
            max_scan_limit: 100,
            max_txn_ops: 128,
            max_delete_keys: 10_000,
            max_data_bytes: 100,
        };
        assert!(quota(&limits, (90, 0), 10, None).is_ok());
        assert!(
            quota(&limits, (80, 10), 11, None).is_err(),
            "the change log counts"
        );
        let e = quota(&limits, (90, 0), 11, None).unwrap_err();
        assert_eq!(e.code, ErrorKind::NoSpace);
        assert!(e.message.contains("100") && e.message.contains("deletes still work"));
        // Overwriting a key with a value of the same size or smaller always fits.
        assert!(quota(&limits, (150, 0), 20, Some(20)).is_ok());
        assert!(quota(&limits, (95, 0), 30, Some(25)).is_ok());
        assert!(quota(&limits, (95, 0), 40, Some(25)).is_err());
        let off = Limits {
            max_data_bytes: 0,
            ..limits
        };
        assert!(quota(&off, (u64::MAX, 1), 1, None).is_ok());
        assert_eq!(put_bytes("ab", "123"), 2 + 8 + 3);
    }
}
