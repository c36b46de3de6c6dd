//! The digest of a client write: what a retry must repeat to get the stored reply.

use sha2::{Digest as _, Sha256};

use super::CommandDigest;
use crate::command::{Op, TxnOp};

/// The digest of a client write: the operation with its key, value, conditions, fence, lease
/// and ttl; never the timeout, the token or headers. A value is digested without the
/// whitespace between its JSON tokens, so a retry that re-serialized it with other spacing
/// still matches. Fed to the hash field by field: this runs for every id'd write on every
/// node, and a put's fields need no copy.
pub fn digest(op: &Op) -> CommandDigest {
    let mut h = Sha256::new();
    match op {
        Op::Put {
            key,
            value,
            if_revision,
            lease,
            ttl_ms,
            fence,
        } => {
            h.update(b"put");
            let value = minified(value);
            for part in [key.as_bytes(), value.as_bytes()] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
            let rest = (if_revision, lease, ttl_ms, fence);
            h.update(crate::binary::encode(&rest).unwrap_or_default());
        }
        Op::Txn(txn) => {
            // Its values as JSON tokens too: a retry may re-serialize them.
            let mut txn = txn.clone();
            for c in &mut txn.compare {
                c.value = minified(&c.value).into_owned();
            }
            for op in txn.success.iter_mut().chain(&mut txn.failure) {
                if let TxnOp::Put { value, .. } = op {
                    *value = minified(value).into_owned();
                }
            }
            h.update(b"op");
            h.update(crate::binary::encode(&Op::Txn(txn)).unwrap_or_default());
        }
        other => {
            h.update(b"op");
            h.update(crate::binary::encode(other).unwrap_or_default());
        }
    }
    let full = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// `json` without whitespace outside its strings (borrowed when it has none).
pub(super) fn minified(json: &str) -> std::borrow::Cow<'_, str> {
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    if !json.bytes().any(is_space) {
        return json.into();
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c.is_ascii() && is_space(c as u8) {
            continue;
        }
        out.push(c);
    }
    out.into()
}
