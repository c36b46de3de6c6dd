//! Golden fixtures: bytes written by each released format of log entries (as stored in the
//! `raft_log` keyspace), snapshot files and Raft RPC envelopes, checked in under
//! `tests/fixtures/<kind>-v<N>/`. Every later build must keep decoding them to the values
//! built here: the rolling-upgrade rule as a test.
//!
//! `CONCORD_WRITE_FIXTURES=1 cargo test --lib golden` writes the files that are missing. A
//! new format gets a new directory; files of a released format are never edited. For the
//! format a build writes, its encoder must still produce the checked-in bytes, so a change
//! of encoding without a new format version fails here too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use openraft::error::{Fatal, InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{
    BasicNode, CommittedLeaderId, EntryPayload, Membership, SnapshotSegmentId, StoredMembership,
};
use uuid::Uuid;

use crate::auth::{Role, TokenRecord};
use crate::command::{Command, LogCommand, COMMAND_FORMAT};
use crate::raft::wire::{self, RpcReply, RpcRequest, RPC_FORMAT};
use crate::store::log_store::{decode_entry, encode_entry};
use crate::store::snapshot::SNAPSHOT_FORMAT;
use crate::store::snapshot::{Record, SnapshotHeader, SnapshotReader, SnapshotWriter};
use crate::types::{Entry, LogId, SnapshotMeta, TypeConfig, Vote};

/// One directory of fixtures: a kind and the format version that wrote them.
struct Set {
    dir: &'static str,
    /// The format this build writes: its encoder must reproduce the files byte for byte.
    current: bool,
}

impl Set {
    /// The fixture `name` of this set; with `CONCORD_WRITE_FIXTURES=1` a missing file is
    /// written from `encoded` first (for a non-current set, `encoded` is hand-assembled).
    fn bytes(&self, name: &str, encoded: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
        let path = fixtures_dir().join(self.dir).join(name);
        let encoded = encoded();
        if !path.exists() && std::env::var_os("CONCORD_WRITE_FIXTURES").is_some() {
            std::fs::create_dir_all(path.parent().expect("has a parent")).unwrap();
            std::fs::write(&path, &encoded).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "fixture {} is missing ({e}); write it with CONCORD_WRITE_FIXTURES=1",
                path.display()
            )
        });
        if self.current {
            assert!(
                bytes == encoded,
                "{}: this build encodes format {} differently from the checked-in fixture; \
                 a new encoding needs a new format version and fixture directory",
                path.display(),
                self.dir
            );
        }
        bytes
    }
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

const LOG_V1: Set = Set {
    dir: "log-v1",
    current: COMMAND_FORMAT == 1,
};
const RPC_V1: Set = Set {
    dir: "rpc-v1",
    current: RPC_FORMAT == 1,
};
const SNAPSHOT_V1: Set = Set {
    dir: "snapshot-v1",
    current: SNAPSHOT_FORMAT == 1,
};
const SNAPSHOT_V2: Set = Set {
    dir: "snapshot-v2",
    current: SNAPSHOT_FORMAT == 2,
};

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn cluster_id() -> Uuid {
    Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)
}

fn token_record() -> TokenRecord {
    TokenRecord {
        id: "0a1b2c3d4e5f6071".into(),
        name: Some("deploy".into()),
        role: Role::Readwrite,
        created_ms: 1_700_000_000_000,
        expires_ms: Some(1_800_000_000_000),
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn membership() -> Membership<u64, BasicNode> {
    let nodes: BTreeMap<u64, BasicNode> = [(1, BasicNode::default()), (2, BasicNode::new("n2"))]
        .into_iter()
        .chain([(3, BasicNode::default())])
        .collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
}

fn normal(index: u64, command: LogCommand) -> Entry {
    Entry {
        log_id: log_id(2, index),
        payload: EntryPayload::Normal(command),
    }
}

/// Every kind of log entry format 1 carries: blank, membership, and each command.
fn log_v1_entries() -> Vec<(&'static str, Entry)> {
    let cmd = LogCommand::new;
    vec![
        (
            "blank",
            Entry {
                log_id: log_id(1, 1),
                payload: EntryPayload::Blank,
            },
        ),
        (
            "membership",
            Entry {
                log_id: log_id(1, 2),
                payload: EntryPayload::Membership(membership()),
            },
        ),
        (
            "set_cluster_id",
            normal(3, cmd(Command::SetClusterId { id: cluster_id() })),
        ),
        (
            "put",
            normal(4, cmd(put("user:1", r#"{"name":"ada","n":[1,2]}"#))),
        ),
        (
            "put_with_request_id",
            normal(
                5,
                LogCommand {
                    format: 1,
                    request_id: Some(Uuid::from_u128(42)),
                    command: put("ñ/key", "\"text\""),
                },
            ),
        ),
        (
            "delete",
            normal(
                6,
                cmd(Command::Delete {
                    key: "user:1".into(),
                }),
            ),
        ),
        (
            "batch",
            normal(
                7,
                cmd(Command::Batch(vec![
                    put("a", "1"),
                    Command::Delete { key: "b".into() },
                    put("c", "null"),
                ])),
            ),
        ),
        (
            "token_create",
            normal(
                8,
                cmd(Command::TokenCreate {
                    digest: [7u8; 32],
                    record: token_record(),
                }),
            ),
        ),
        (
            "token_revoke",
            normal(9, cmd(Command::TokenRevoke { digest: [9u8; 32] })),
        ),
    ]
}

#[test]
fn golden_log_entries_decode() {
    for (name, entry) in log_v1_entries() {
        let bytes = LOG_V1.bytes(&format!("{name}.bin"), || encode_entry(&entry).unwrap());
        let decoded = decode_entry(&bytes).unwrap_or_else(|e| panic!("log-v1/{name}: {e}"));
        assert_eq!(decoded, entry, "log-v1/{name}");
        if let EntryPayload::Normal(c) = &decoded.payload {
            assert_eq!(c.format, 1, "log-v1/{name}");
        }
    }
}

fn snapshot_header() -> SnapshotHeader {
    SnapshotHeader {
        revision: 17,
        cluster_id: Some(cluster_id()),
        key_count: 3,
    }
}

fn snapshot_kv() -> Vec<Record> {
    [
        ("a", 3u64, "1"),
        ("user:1", 12, r#"{"x":true}"#),
        ("ñ", 17, "[]"),
    ]
    .into_iter()
    .map(|(k, rev, json)| {
        Record::Kv(
            k.as_bytes().to_vec(),
            crate::store::keys::encode_value(rev, json.as_bytes()),
        )
    })
    .collect()
}

fn snapshot_tokens() -> Vec<Record> {
    vec![Record::Token(
        vec![7u8; 32],
        bincode::serialize(&token_record()).unwrap(),
    )]
}

/// Writes a snapshot with this build's writer; its bytes.
fn write_current(records: &[Record]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.snap");
    let mut w = SnapshotWriter::create(&path, &snapshot_header()).unwrap();
    for r in records {
        match r {
            Record::Kv(k, v) => w.record(k, v).unwrap(),
            Record::Token(k, v) => w.token(k, v).unwrap(),
        }
    }
    w.finish().unwrap();
    std::fs::read(&path).unwrap()
}

/// Format 1 as its writer laid it out (no token records); assembled by hand, since this
/// build writes format 2.
fn assemble_format_1(records: &[Record]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let field = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    };
    let mut out = b"CNCDSNAP".to_vec();
    out.extend_from_slice(&1u32.to_be_bytes());
    field(&mut out, &bincode::serialize(&snapshot_header()).unwrap());
    for r in records {
        if let Record::Kv(k, v) = r {
            out.push(1);
            field(&mut out, k);
            field(&mut out, v);
        }
    }
    out.push(0);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

fn read_snapshot(bytes: &[u8], what: &str) -> (SnapshotHeader, Vec<Record>) {
    let mut r = SnapshotReader::new(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut records = Vec::new();
    while let Some(rec) = r.next_record().unwrap_or_else(|e| panic!("{what}: {e}")) {
        records.push(rec);
    }
    (r.header.clone(), records)
}

#[test]
fn golden_snapshots_decode() {
    let kv = snapshot_kv();
    let bytes = SNAPSHOT_V1.bytes("snapshot.snap", || assemble_format_1(&kv));
    assert_eq!(
        read_snapshot(&bytes, "snapshot-v1"),
        (snapshot_header(), kv.clone())
    );

    let mut with_tokens = snapshot_tokens();
    with_tokens.extend(kv);
    let bytes = SNAPSHOT_V2.bytes("snapshot.snap", || write_current(&with_tokens));
    assert_eq!(
        read_snapshot(&bytes, "snapshot-v2"),
        (snapshot_header(), with_tokens)
    );
}

fn envelope<T>(body: T) -> RpcRequest<T> {
    RpcRequest {
        format: 1,
        cluster_name: "concord".into(),
        cluster_id: Some(cluster_id()),
        from: 1,
        to: 2,
        body,
    }
}

fn leader_vote() -> Vote {
    Vote::new_committed(2, 1)
}

fn append_request(entries: Vec<Entry>) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: leader_vote(),
        prev_log_id: Some(log_id(2, 6)),
        entries,
        leader_commit: Some(log_id(2, 5)),
    }
}

fn snapshot_request() -> InstallSnapshotRequest<TypeConfig> {
    InstallSnapshotRequest {
        vote: leader_vote(),
        meta: SnapshotMeta {
            last_log_id: Some(log_id(2, 9)),
            last_membership: StoredMembership::new(Some(log_id(1, 2)), membership()),
            snapshot_id: "2-9-0123456789abcdef".into(),
        },
        offset: 4096,
        data: (0..=255u8).collect(),
        done: true,
    }
}

/// Checks one RPC fixture: it decodes, and `same` holds between the decoded and built value.
fn rpc_case<T>(name: &str, built: &T, same: impl Fn(&T, &T) -> bool)
where
    T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let bytes = RPC_V1.bytes(&format!("{name}.bin"), || wire::encode(built).unwrap());
    let decoded: T = wire::decode(&bytes).unwrap_or_else(|e| panic!("rpc-v1/{name}: {e}"));
    assert!(
        same(&decoded, built),
        "rpc-v1/{name}: decoded {decoded:?}, expected {built:?}"
    );
}

fn same_envelope<T>(a: &RpcRequest<T>, b: &RpcRequest<T>, body: impl Fn(&T, &T) -> bool) -> bool {
    a.format == b.format
        && a.cluster_name == b.cluster_name
        && a.cluster_id == b.cluster_id
        && (a.from, a.to) == (b.from, b.to)
        && body(&a.body, &b.body)
}

fn same_reply<T: PartialEq, E: PartialEq>(a: &RpcReply<T, E>, b: &RpcReply<T, E>) -> bool {
    match (a, b) {
        (RpcReply::Ok(x), RpcReply::Ok(y)) => x == y,
        (RpcReply::Err(x), RpcReply::Err(y)) => x == y,
        (RpcReply::Refused(x), RpcReply::Refused(y)) => x == y,
        _ => false,
    }
}

#[test]
fn golden_rpcs_decode() {
    type AppendReply = RpcReply<AppendEntriesResponse<u64>, RaftError<u64>>;
    type VoteReply = RpcReply<VoteResponse<u64>, RaftError<u64>>;
    type SnapshotReply =
        RpcReply<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>;
    let same_append = |a: &AppendEntriesRequest<TypeConfig>,
                       b: &AppendEntriesRequest<TypeConfig>| {
        a.vote == b.vote
            && a.prev_log_id == b.prev_log_id
            && a.entries == b.entries
            && a.leader_commit == b.leader_commit
    };

    let entries: Vec<Entry> = log_v1_entries().into_iter().map(|(_, e)| e).collect();
    rpc_case(
        "append_request",
        &envelope(append_request(entries)),
        |a, b| same_envelope(a, b, same_append),
    );
    rpc_case(
        "append_heartbeat",
        &envelope(append_request(vec![])),
        |a, b| same_envelope(a, b, same_append),
    );
    let vote = VoteRequest::new(Vote::new(3, 2), Some(log_id(2, 9)));
    rpc_case("vote_request", &envelope(vote), |a, b| {
        same_envelope(a, b, |x, y| x == y)
    });
    rpc_case("snapshot_request", &envelope(snapshot_request()), |a, b| {
        same_envelope(a, b, |x, y| x == y)
    });

    let append_replies: [(&str, AppendReply); 5] = [
        (
            "append_reply_success",
            RpcReply::Ok(AppendEntriesResponse::Success),
        ),
        (
            "append_reply_partial",
            RpcReply::Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(2, 8)))),
        ),
        (
            "append_reply_conflict",
            RpcReply::Ok(AppendEntriesResponse::Conflict),
        ),
        (
            "append_reply_higher_vote",
            RpcReply::Ok(AppendEntriesResponse::HigherVote(Vote::new(4, 3))),
        ),
        (
            "append_reply_stopped",
            RpcReply::Err(RaftError::Fatal(Fatal::Stopped)),
        ),
    ];
    for (name, reply) in &append_replies {
        rpc_case(name, reply, same_reply);
    }
    let vote_reply: VoteReply =
        RpcReply::Ok(VoteResponse::new(Vote::new(3, 2), Some(log_id(2, 9)), true));
    rpc_case("vote_reply", &vote_reply, same_reply);
    let snapshot_replies: [(&str, SnapshotReply); 2] = [
        (
            "snapshot_reply",
            RpcReply::Ok(InstallSnapshotResponse {
                vote: leader_vote(),
            }),
        ),
        (
            "snapshot_reply_mismatch",
            RpcReply::Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
                SnapshotMismatch {
                    expect: SnapshotSegmentId {
                        id: "2-9-a".into(),
                        offset: 0,
                    },
                    got: SnapshotSegmentId {
                        id: "2-9-b".into(),
                        offset: 4096,
                    },
                },
            ))),
        ),
    ];
    for (name, reply) in &snapshot_replies {
        rpc_case(name, reply, same_reply);
    }
    let refused: RpcReply<(), ()> =
        RpcReply::Refused("rpc for cluster 'a', this node is in 'b'".into());
    rpc_case("refused", &refused, same_reply);
}
