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

/// Most bytes a txn's get results may add to its reply (DESIGN.md's `limits.max_reply_bytes`).
/// A constant, not a setting: it decides at apply whether a txn writes, so every node must
/// use the same value, and the txn's log entry has no field to carry one. Below NATS's
/// default 1 MiB `max_payload`, with room for the rest of the reply.
pub const MAX_TXN_REPLY_BYTES: usize = 900 * 1024;

/// Most keys one `delete_prefix` op of a txn deletes (the default `limits.max_delete_keys`,
/// fixed for the same reason as [`MAX_TXN_REPLY_BYTES`]); its result says whether more remain.
pub const TXN_DELETE_PREFIX_KEYS: usize = 10_000;

/// Most compares one txn may carry.
pub const MAX_TXN_COMPARES: usize = 64;

/// Most bytes of client input an error message quotes: enough to recognise a field name, a
/// key or a token id, never enough to make a reply that cannot be published (issue #20, item 6).
pub const MAX_ECHO_BYTES: usize = 96;

/// `s` as an error message may quote it: whole when it is at most [`MAX_ECHO_BYTES`], else its
/// first bytes up to a char boundary and a mark saying how long it was. The one helper for
/// every message that repeats what a client sent.
pub fn excerpt(s: &str) -> std::borrow::Cow<'_, str> {
    excerpt_to(s, MAX_ECHO_BYTES)
}

/// As [`excerpt`], with a bound of `max` bytes (before the mark) of the caller's choosing.
pub fn excerpt_to(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = max;
    // A UTF-8 char is at most 4 bytes: this loop runs at most 3 times.
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…(cut, {} bytes)", &s[..end], s.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(excerpt("bogus"), "bogus");
        let exact = "a".repeat(MAX_ECHO_BYTES);
        assert_eq!(excerpt(&exact), exact.as_str());
        let long = "é".repeat(500_000);
        let cut = excerpt(&long);
        assert!(cut.len() < MAX_ECHO_BYTES + 32, "{cut}");
        assert!(
            cut.starts_with("éé") && cut.ends_with("…(cut, 1000000 bytes)"),
            "{cut}"
        );
    }
}
