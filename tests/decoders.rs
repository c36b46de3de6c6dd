//! Issue #20 item 9: decoders of outside data that cannot be crashed. Property tests feed
//! random bytes, and valid encodings (golden fixtures, freshly encoded values) with bytes
//! flipped, inserted, deleted, truncated or overwritten by a huge length, to every decoder a
//! client, a peer or a file can reach: client JSON requests, Raft RPC envelopes and replies,
//! log entries, bincode metadata and token records, snapshot files, credentials. Backup
//! files are fuzzed next to their reader (`store::snapshot::backup`'s tests), admin bodies
//! through `api::admin::decode` here.
//!
//! Each property: no panic, and an error or a valid value every time. Length prefixes that
//! claim more than the input holds must come back as an error at once, without allocating
//! what they claim (the `huge_*` tests).
//!
//! Cases: proptest's default (256 per property) unless `PROPTEST_CASES` says otherwise; the
//! soak in docs/testing.md runs 100,000 per property.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use concord::api::admin;
use concord::api::codec::{self, AdminBody};
use concord::api::validate;
use concord::auth::{tokens, Credential, Role, TokenRecord};
use concord::binary;
use concord::command::{Command, LogCommand};
use concord::raft::types::TypeConfig;
use concord::raft::wire::{self, RpcReply, RpcRequest};
use concord::store::log_store::decode_entry;
use concord::store::snapshot::SnapshotReader;
use concord::subjects::KvOp;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{LogId, Vote};
use proptest::prelude::*;
use proptest::test_runner::Config;

type AppendReply = RpcReply<AppendEntriesResponse<u64>, RaftError<u64>>;
type VoteReply = RpcReply<VoteResponse<u64>, RaftError<u64>>;
type SnapshotReply = RpcReply<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>;

/// Proptest's own defaults (256 cases, or `PROPTEST_CASES`), without writing regression
/// files into the tree: each crash found becomes a named test below instead.
fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

// ----- mutations -------------------------------------------------------------------------

/// One edit of a valid encoding. Positions are taken modulo the input's length.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    /// Overwrites 8 bytes with a length that claims far more than the input holds.
    HugeLength(usize, u64),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, x)| Edit::Flip(at, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Insert(at, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
        (
            any::<usize>(),
            prop_oneof![Just(u64::MAX), Just(1 << 60), Just(1 << 32), any::<u64>()]
        )
            .prop_map(|(at, n)| Edit::HugeLength(at, n)),
    ]
}

fn mutate(base: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = base.to_vec();
    for e in edits {
        let len = b.len().max(1);
        match *e {
            Edit::Flip(at, x) if !b.is_empty() => b[at % len] ^= x,
            Edit::Insert(at, x) => b.insert(at % (b.len() + 1), x),
            Edit::Delete(at) if !b.is_empty() => {
                b.remove(at % len);
            }
            Edit::Truncate(at) => b.truncate(at % len),
            Edit::HugeLength(at, n) if b.len() >= 8 => {
                let at = at % (b.len() - 7);
                b[at..at + 8].copy_from_slice(&n.to_le_bytes());
            }
            _ => {}
        }
    }
    b
}

/// A valid seed from `seeds` and 1 to 8 edits of it.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(seeds),
        prop::collection::vec(edit(), 1..8),
    )
        .prop_map(|(seed, edits)| mutate(&seed, &edits))
}

/// Random bytes, or a mutated seed.
fn hostile(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..512), mutated(seeds)]
}

fn fixtures(dir: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|f| std::fs::read(f.unwrap().path()).unwrap())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    out
}

// ----- Raft RPCs and log entries ---------------------------------------------------------

/// Every envelope and reply a node decodes from a peer, tried on the same bytes.
fn decode_every_rpc(bytes: &[u8]) {
    let _ = wire::decode::<RpcRequest<AppendEntriesRequest<TypeConfig>>>(bytes);
    let _ = wire::decode::<RpcRequest<VoteRequest<u64>>>(bytes);
    let _ = wire::decode::<RpcRequest<InstallSnapshotRequest<TypeConfig>>>(bytes);
    let _ = wire::decode::<AppendReply>(bytes);
    let _ = wire::decode::<VoteReply>(bytes);
    let _ = wire::decode::<SnapshotReply>(bytes);
    let _ = wire::decode::<RpcReply<bool, String>>(bytes);
}

/// Every bincode value read back from fjall, tried on the same bytes.
fn decode_every_stored(bytes: &[u8]) {
    let _ = decode_entry(bytes);
    let _ = binary::decode::<LogCommand>(bytes);
    let _ = binary::decode::<TokenRecord>(bytes);
    let _ = binary::decode::<Option<LogId<u64>>>(bytes);
    let _ = binary::decode::<Vote<u64>>(bytes);
    // A snapshot file's start: magic, format, then the header of that format.
    let _ = SnapshotReader::new(bytes);
    let _ = concord::store::keys::decode_record(bytes);
}

fn log_seeds() -> Vec<Vec<u8>> {
    let mut seeds = fixtures("log-v1");
    seeds.extend(fixtures("log-v2"));
    // The same entries without their encoding byte: what a bare LogCommand decode sees.
    seeds.extend(seeds.clone().into_iter().map(|s| s[1..].to_vec()));
    seeds
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn raft_rpcs_never_panic(bytes in hostile(fixtures("rpc-v1"))) {
        decode_every_rpc(&bytes);
    }

    #[test]
    fn log_entries_and_metadata_never_panic(bytes in hostile(log_seeds())) {
        decode_every_stored(&bytes);
        decode_every_rpc(&bytes);
    }
}

/// A length prefix claiming 2^60 (or u64::MAX) at every position of every fixture: each
/// decode returns within a second. An allocation of what the prefix claims would abort.
#[test]
fn huge_length_prefixes_in_bincode_are_refused_at_once() {
    let seeds: Vec<Vec<u8>> = fixtures("rpc-v1").into_iter().chain(log_seeds()).collect();
    for seed in &seeds {
        for at in 0..seed.len().saturating_sub(7) {
            for n in [1u64 << 60, u64::MAX, 1 << 40] {
                let bytes = mutate(seed, &[Edit::HugeLength(at, n)]);
                let started = Instant::now();
                decode_every_rpc(&bytes);
                decode_every_stored(&bytes);
                assert!(started.elapsed() < Duration::from_secs(1), "slow at {at}");
            }
        }
    }
}

/// A batch nested deeper than one level is refused at decode, however deep: the decoder
/// stops at the second level instead of recursing through all of them.
#[test]
fn nested_batches_are_refused_at_any_depth() {
    let inner = LogCommand::new(Command::Batch(vec![Command::Delete { key: "k".into() }]));
    let flat = binary::encode(&inner).unwrap();
    assert_eq!(binary::decode::<LogCommand>(&flat).unwrap(), inner);
    for depth in [2usize, 3, 1000, 200_000] {
        // format, request_id None, then `depth` batches of one part, then a delete.
        let mut bytes = vec![1u8, 0];
        for _ in 0..depth {
            bytes.extend_from_slice(&3u32.to_le_bytes());
            bytes.extend_from_slice(&1u64.to_le_bytes());
        }
        bytes.extend_from_slice(&flat[2..]);
        let err = binary::decode::<LogCommand>(&bytes)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(concord::command::NESTED_BATCH),
            "{depth}: {err}"
        );
        let mut entry = vec![concord::store::keys::ENTRY_ENCODING_V1];
        entry.extend(binary::encode(&1u64).unwrap()); // not an entry: still an error
        assert!(decode_entry(&entry).is_err());
    }
}

// ----- snapshot files --------------------------------------------------------------------

/// Opens `bytes` as a snapshot file and reads it to its end or its first error.
fn read_snapshot(dir: &Path, bytes: &[u8]) -> Result<u64, concord::store::Error> {
    let path = dir.join("s.snap");
    std::fs::write(&path, bytes).unwrap();
    let mut r = SnapshotReader::open(&path)?;
    let mut records = 0u64;
    // Each record consumes at least its tag byte, so this ends.
    while r.next_record()?.is_some() {
        records += 1;
    }
    Ok(records)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn snapshot_files_never_panic(
        bytes in hostile([fixtures("snapshot-v1"), fixtures("snapshot-v2")].concat()),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let _ = read_snapshot(dir.path(), &bytes);
    }
}

/// A snapshot field whose length claims 60 MiB (under the reader's 64 MiB cap) in a file of
/// a few hundred bytes: an error at once, not a 60 MiB buffer filled with nothing.
#[test]
fn snapshot_field_longer_than_the_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = fixtures("snapshot-v2").remove(0);
    // After "CNCDSNAP" and the u32 format comes the u32 header length (big-endian).
    bytes[12..16].copy_from_slice(&(60u32 << 20).to_be_bytes());
    let err = read_snapshot(dir.path(), &bytes).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
}

// ----- client JSON, admin bodies, credentials --------------------------------------------

fn json_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"key":"a","value":{"x":[1,2,{"y":null}]},"token":"t","timeout_ms":5}"#,
        r#"{"key":"a","consistency":"stale","min_revision":7}"#,
        r#"{"key":"a","request_id":"67e55044-10b1-426f-9247-bb680e5fe0c8"}"#,
        r#"{"prefix":"p","limit":10,"after":"p1","consistency":"linearizable"}"#,
        r#"{"digest":true,"token":"t","timeout_ms":100}"#,
        r#"{"ok":false,"error":{"code":"not_found","message":"no key"}}"#,
        r#"{"id":3,"offset":0,"role":"read","name":"n","expires_in":"30d"}"#,
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]",
        "",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn decode_every_json(bytes: &[u8]) {
    for op in KvOp::ALL {
        if let Ok((codec::KvRequest::Put { value, .. }, _)) = codec::decode_kv(op, bytes) {
            let _ = validate::value_depth(&value);
        }
    }
    let _ = admin::decode::<AdminBody>(bytes);
    let _ = admin::decode::<serde_json::Value>(bytes);
    let _ = codec::reply_code(bytes);
    let _ = codec::request_key(bytes);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn client_json_never_panics(bytes in hostile(json_seeds())) {
        decode_every_json(&bytes);
    }

    #[test]
    fn credentials_never_panic(token in ".{0,600}", header in "[ -~]{0,600}") {
        let _ = Credential::of(Some(&token), None);
        let mut h = HeaderMap::new();
        h.insert("Authorization", header.as_str());
        if let Credential::Token(t) = Credential::of(None, Some(&h)) {
            let _ = tokens::digest(t);
        }
        let _ = Role::parse(&token);
    }
}

/// JSON nested 100,000 deep is an error, not a stack overflow: serde_json's recursion
/// limit refuses it in a get, delete or scan body; a put's value is taken as raw text, and
/// `validate::value_depth` (a loop, no recursion) refuses it before anything else reads it.
#[test]
fn deeply_nested_json_is_an_error() {
    let deep = format!(
        r#"{{"key":"a","value":{}1{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    for op in KvOp::ALL {
        match codec::decode_kv(op, deep.as_bytes()) {
            Err(_) => {}
            Ok((codec::KvRequest::Put { value, .. }, _)) => {
                assert!(validate::value_depth(&value).is_err());
            }
            Ok(other) => panic!("{op:?} decoded {other:?}"),
        }
    }
    assert!(admin::decode::<AdminBody>(deep.as_bytes()).is_err());
}
