//! Bincode decoding of bytes from outside the process: a peer's Raft RPC, a log entry or
//! metadata read back from fjall, a snapshot header, a token record. The encoding is exactly
//! `bincode::serialize`'s (fixed-width integers, trailing bytes allowed), so nothing on disk
//! or on the wire changes; what this adds is a limit: the decoder never reads past the input,
//! and a length prefix larger than the bytes that remain is an error before anything is
//! allocated for it. A leaf: it imports nothing of the crate.
//!
//! Nesting is bounded where a type can nest: `command::Command` refuses a batch inside a
//! batch while it is decoded, so no input can recurse deep enough to overflow the stack.

use bincode::Options;
use serde::de::DeserializeOwned;

/// The options `bincode::serialize` writes with, plus a byte limit.
fn options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(limit)
}

/// Decodes `bytes`, reading and allocating no more than `bytes.len()` allows: a string or
/// byte field whose length prefix claims more than what is left is `SizeLimit`, and a
/// sequence of more elements than remain ends at the input's end with an error (serde
/// preallocates at most 1 MiB for a sequence, whatever its prefix claims).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    options(bytes.len() as u64).deserialize(bytes)
}

/// Encodes as `bincode::serialize` does; here beside [`decode`] so the two are one pair.
pub fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, bincode::Error> {
    bincode::serialize(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_bincode_serialize_writes() {
        let v = (7u64, "key".to_string(), Some(vec![1u8, 2, 3]), -5i32);
        let bytes = bincode::serialize(&v).unwrap();
        assert_eq!(
            decode::<(u64, String, Option<Vec<u8>>, i32)>(&bytes).unwrap(),
            v
        );
        // Trailing bytes are allowed, as bincode::deserialize allows them.
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            decode::<(u64, String, Option<Vec<u8>>, i32)>(&longer).unwrap(),
            v
        );
    }

    #[test]
    fn a_huge_length_prefix_is_an_error_not_an_allocation() {
        let mut bytes = (1u64 << 60).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        assert!(decode::<String>(&bytes).is_err());
        assert!(decode::<Vec<u8>>(&bytes).is_err());
        assert!(decode::<Vec<String>>(&bytes).is_err());
        assert!(decode::<Vec<u64>>(&bytes).is_err());
    }
}
