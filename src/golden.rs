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

/// Format 1 is still written, byte for byte, until the cluster switches to format 2.
const LOG_V1: Set = Set {
    dir: "log-v1",
    current: true,
};
const LOG_V2: Set = Set {
    dir: "log-v2",
    current: COMMAND_FORMAT == 2,
};
const RPC_V1: Set = Set {
    dir: "rpc-v1",
    current: RPC_FORMAT == 1,
};
const SNAPSHOT_V1: Set = Set {
    dir: "snapshot-v1",
    current: SNAPSHOT_FORMAT == 1,
};
/// Still written, byte for byte, by a cluster on log format 1.
const SNAPSHOT_V2: Set = Set {
    dir: "snapshot-v2",
    current: true,
};
const SNAPSHOT_V3: Set = Set {
    dir: "snapshot-v3",
    current: SNAPSHOT_FORMAT == 3,
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
                    stamp: 0,
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

/// Every command of format 2, each in a stamped envelope: what the coordination work gives
/// behaviour to later must decode from the first format-2 build on.
fn log_v2_entries() -> Vec<(&'static str, Entry)> {
    use crate::command::{CmpOp, Compare, Fence, Op, Request, Target, Txn, TxnOp};
    let at = |i: u64| 1_000 + i * 7;
    let tagged = |op: Op| {
        Command::Client(Request {
            request_id: Some(Uuid::from_u128(0xfeed)),
            token_id: Some("0a1b2c3d4e5f6071".into()),
            op,
        })
    };
    let fence = || {
        Some(Fence {
            lock: "jobs".into(),
            token: 41,
        })
    };
    let ops: Vec<(&'static str, Command)> = vec![
        ("format_switch", Command::FormatSwitch { format: 2 }),
        ("set_cluster_id", Command::SetClusterId { id: cluster_id() }),
        ("legacy_put", put("user:1", r#"{"name":"ada"}"#)),
        (
            "put",
            Command::Client(Request::untagged(Op::Put {
                key: "user:1".into(),
                value: "1".into(),
                if_revision: None,
                lease: None,
                ttl_ms: None,
                fence: None,
            })),
        ),
        (
            "put_full",
            tagged(Op::Put {
                key: "ñ/key".into(),
                value: "\"text\"".into(),
                if_revision: Some(0),
                lease: Some(9_007_199_254_740_991),
                ttl_ms: Some(30_000),
                fence: fence(),
            }),
        ),
        (
            "delete",
            tagged(Op::Delete {
                key: "user:1".into(),
                if_revision: Some(12),
                fence: None,
            }),
        ),
        (
            "delete_prefix",
            tagged(Op::DeletePrefix {
                prefix: "svc/".into(),
                limit: 10_000,
                fence: fence(),
            }),
        ),
        (
            "incr",
            tagged(Op::Incr {
                key: "rate/ip".into(),
                by: -3,
                min: Some(i64::MIN),
                max: Some(100),
                ttl_ms: Some(60_000),
                fence: None,
            }),
        ),
        (
            "txn",
            tagged(Op::Txn(Txn {
                compare: vec![
                    Compare {
                        key: "a".into(),
                        target: Target::Revision,
                        op: CmpOp::Eq,
                        value: "3".into(),
                    },
                    Compare {
                        key: "b".into(),
                        target: Target::Value,
                        op: CmpOp::Ge,
                        value: "\"x\"".into(),
                    },
                ],
                success: vec![
                    TxnOp::Put {
                        key: "a".into(),
                        value: "4".into(),
                        lease: Some(7),
                        ttl_ms: None,
                    },
                    TxnOp::Delete { key: "c".into() },
                    TxnOp::DeletePrefix {
                        prefix: "d/".into(),
                    },
                    TxnOp::Get { key: "e".into() },
                    TxnOp::Incr {
                        key: "f".into(),
                        by: 1,
                    },
                ],
                failure: vec![TxnOp::Get { key: "a".into() }],
                fence: fence(),
            })),
        ),
        (
            "touch",
            Command::Client(Request::untagged(Op::Touch {
                key: "svc/a".into(),
                ttl_ms: Some(10_000),
            })),
        ),
        (
            "lease_grant",
            tagged(Op::LeaseGrant {
                id: Some(77),
                ttl_ms: 10_000,
            }),
        ),
        (
            "lease_keepalive",
            Command::Batch(vec![
                Command::Client(Request::untagged(Op::LeaseKeepalive { id: 77 })),
                Command::Client(Request::untagged(Op::LeaseKeepalive { id: 78 })),
            ]),
        ),
        ("lease_revoke", tagged(Op::LeaseRevoke { id: 77 })),
        (
            "lock_acquire",
            tagged(Op::LockAcquire {
                name: "jobs".into(),
                ttl_ms: Some(10_000),
                lease: None,
                wait: true,
            }),
        ),
        (
            "lock_release",
            tagged(Op::LockRelease {
                name: "jobs".into(),
                fence: 41,
            }),
        ),
        (
            "lease_expire",
            Command::LeaseExpire {
                id: 77,
                renewal: 5_000,
            },
        ),
        (
            "lock_withdraw",
            Command::LockWithdraw {
                name: "jobs".into(),
                claim: 44,
            },
        ),
        ("compact", Command::Compact { revision: 1_000 }),
        (
            "batch",
            Command::Batch(vec![
                tagged(Op::Delete {
                    key: "x".into(),
                    if_revision: None,
                    fence: None,
                }),
                Command::Client(Request {
                    request_id: Some(Uuid::from_u128(7)),
                    token_id: None,
                    op: Op::Put {
                        key: "y".into(),
                        value: "null".into(),
                        if_revision: None,
                        lease: None,
                        ttl_ms: None,
                        fence: None,
                    },
                }),
            ]),
        ),
        ("token_revoke", Command::TokenRevoke { digest: [9u8; 32] }),
    ];
    ops.into_iter()
        .enumerate()
        .map(|(i, (name, command))| {
            let i = i as u64 + 1;
            (name, normal(i, LogCommand::stamped(command, at(i))))
        })
        .collect()
}

#[test]
fn golden_log_entries_decode() {
    for (name, entry) in log_v2_entries() {
        let bytes = LOG_V2.bytes(&format!("{name}.bin"), || encode_entry(&entry).unwrap());
        let decoded = decode_entry(&bytes).unwrap_or_else(|e| panic!("log-v2/{name}: {e}"));
        assert_eq!(decoded, entry, "log-v2/{name}");
        let EntryPayload::Normal(c) = &decoded.payload else {
            panic!("log-v2/{name} is a command");
        };
        assert_eq!(
            (c.format, c.cluster_time()),
            (2, Some(1_000 + 7 * decoded.log_id.index))
        );
    }
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
        cluster_format: 1,
        cluster_time: 0,
    }
}

/// The header of a snapshot taken after the switch to log format 2.
fn snapshot_header_v3() -> SnapshotHeader {
    SnapshotHeader {
        cluster_format: 2,
        cluster_time: 86_400_123,
        ..snapshot_header()
    }
}

/// Key records of format 3: full ones beside a plain one.
fn snapshot_kv_v3() -> Vec<Record> {
    use crate::store::keys::{encode_record, KeyMeta};
    let full = |revision, create_revision, version, lease| KeyMeta {
        revision,
        create_revision,
        version,
        lease,
    };
    [
        ("a", full(3, 3, 1, 0), "1"),
        ("user:1", full(12, 5, 4, 0), r#"{"x":true}"#),
        ("ñ", full(17, 16, 2, 9_007_199_254_740_991), "[]"),
    ]
    .into_iter()
    .map(|(k, meta, json)| Record::Kv(k.as_bytes().to_vec(), encode_record(&meta, json.as_bytes())))
    .collect()
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
fn write_current(header: &SnapshotHeader, records: &[Record]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.snap");
    let mut w = SnapshotWriter::create(&path, header).unwrap();
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
    let h = snapshot_header();
    field(
        &mut out,
        &bincode::serialize(&(h.revision, h.cluster_id, h.key_count)).unwrap(),
    );
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
    let bytes = SNAPSHOT_V2.bytes("snapshot.snap", || {
        write_current(&snapshot_header(), &with_tokens)
    });
    assert_eq!(
        read_snapshot(&bytes, "snapshot-v2"),
        (snapshot_header(), with_tokens)
    );

    let mut v3 = snapshot_tokens();
    v3.extend(snapshot_kv_v3());
    let bytes = SNAPSHOT_V3.bytes("snapshot.snap", || {
        write_current(&snapshot_header_v3(), &v3)
    });
    assert_eq!(
        &bytes[8..12],
        &3u32.to_be_bytes(),
        "snapshot-v3 is format 3"
    );
    assert_eq!(
        read_snapshot(&bytes, "snapshot-v3"),
        (snapshot_header_v3(), v3)
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
