//! Request limits and key rules, checked before anything reaches Raft. No IO here.

use crate::api::codec::KvRequest;
use crate::error::{invalid_key, value_too_large, WireError};

pub const MAX_KEY_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_value_bytes: usize,
    /// Largest command that still travels in one NATS message (max payload less headroom).
    pub max_entry_bytes: usize,
    pub max_scan_limit: usize,
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

pub fn request(req: &KvRequest, limits: &Limits) -> Result<(), WireError> {
    match req {
        KvRequest::Put { key: k, value } => {
            key(k)?;
            if value.len() > limits.max_value_bytes {
                return Err(value_too_large(format!(
                    "value is {} bytes encoded, the limit is {} (limits.max_value_bytes)",
                    value.len(),
                    limits.max_value_bytes
                )));
            }
            let entry = k.len() + value.len() + 64;
            if entry > limits.max_entry_bytes {
                return Err(value_too_large(format!(
                    "the entry would be {entry} bytes, over the {} that fit in one NATS message",
                    limits.max_entry_bytes
                )));
            }
            Ok(())
        }
        KvRequest::Get { key: k, .. } | KvRequest::Delete { key: k } => key(k),
        KvRequest::Scan {
            prefix,
            limit,
            after,
            ..
        } => {
            if prefix.len() > MAX_KEY_BYTES {
                return Err(invalid_key("prefix is over 1024 bytes"));
            }
            if let Some(a) = after {
                if a.len() > MAX_KEY_BYTES {
                    return Err(invalid_key("`after` is over 1024 bytes"));
                }
            }
            if let Some(l) = limit {
                if *l == 0 || *l > limits.max_scan_limit {
                    return Err(crate::error::bad_request(format!(
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
        };
        let put = |v: &str| KvRequest::Put {
            key: "k".into(),
            value: v.into(),
        };
        assert!(request(&put("12345"), &limits).is_ok());
        let e = request(&put("12345678901"), &limits).unwrap_err();
        assert_eq!(e.code, ErrorKind::ValueTooLarge);
    }
}
