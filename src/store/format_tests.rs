//! Log format 2 in the state machine: what a put gives a key before and after the cluster's
//! format switch, what the switch does to the data directory, and that the applied cluster
//! time follows the stamps (never back), through a snapshot install too.

use std::sync::Arc;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogId};

use super::keys::{self, KeyMeta};
use super::{migrations, StateMachine, StateView, Store};
use crate::command::{Applied, Command, LogCommand, Op, Request};
use crate::observe::Observer;
use crate::types::Entry;

fn entry(index: u64, command: LogCommand) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn open(dir: &std::path::Path) -> (Store, Arc<StateView>, StateMachine) {
    let store = Store::open(dir, 8, true).unwrap();
    let view = StateView::open(store.clone()).unwrap();
    let sm = StateMachine::new(view.clone(), Observer::noop());
    (store, view, sm)
}

fn meta(view: &StateView, key: &str) -> KeyMeta {
    view.record(key).unwrap().expect("key present").0
}

#[tokio::test]
async fn versions_count_only_after_the_switch_and_the_directory_moves_to_the_switched_format() {
    let dir = tempfile::tempdir().unwrap();
    let (store, view, mut sm) = open(dir.path());
    sm.apply(vec![
        entry(1, LogCommand::new(put("a", "1"))),
        entry(2, LogCommand::new(put("a", "2"))),
    ])
    .await
    .unwrap();
    // Before the switch every node, whatever its build, writes the plain record.
    assert_eq!(meta(&view, "a"), KeyMeta::plain(2));
    assert_eq!(view.cluster_format(), 1);
    assert_eq!(
        migrations::format_version(&store).unwrap(),
        migrations::OPEN_FORMAT
    );

    let out = sm
        .apply(vec![entry(
            3,
            LogCommand::new(Command::FormatSwitch { format: 2 }),
        )])
        .await
        .unwrap();
    assert_eq!(out, vec![Applied::Format { format: 2 }]);
    assert_eq!(view.cluster_format(), 2);
    assert_eq!(
        migrations::format_version(&store).unwrap(),
        keys::FORMAT_V2_DATA_DIR,
        "an older build must refuse the directory from the switch on"
    );

    let v2 = |i, c: Command, at| entry(i, LogCommand::stamped(c.into_format_2(), at));
    sm.apply(vec![
        v2(4, put("a", "3"), 5_000),
        v2(5, put("b", "1"), 5_010),
        // A format-1 entry after the switch (proposed before it applied) counts too.
        entry(6, LogCommand::new(put("b", "2"))),
    ])
    .await
    .unwrap();
    let a = meta(&view, "a");
    assert_eq!(
        (a.revision, a.create_revision, a.version, a.lease),
        (3, 2, 2, 0),
        "a migrated key goes on from version 1, created at its last v1 write"
    );
    let b = meta(&view, "b");
    assert_eq!((b.revision, b.create_revision, b.version), (5, 4, 2));

    // A deleted key starts again at version 1.
    let del = Command::Delete { key: "b".into() };
    sm.apply(vec![v2(7, del, 5_020), v2(8, put("b", "x"), 5_030)])
        .await
        .unwrap();
    assert_eq!(meta(&view, "b"), KeyMeta::plain(7));
    assert_eq!(view.applied_cluster_time(), 5_030);

    // The switch survives a restart, and the records too (the next log append's fsync makes
    // applied state durable; here the test does it).
    view.flush().unwrap();
    store.sync().unwrap();
    drop((sm, view, store));
    let (store, view, _sm) = open(dir.path());
    assert_eq!(view.cluster_format(), 2);
    assert_eq!(
        migrations::format_version(&store).unwrap(),
        keys::FORMAT_V2_DATA_DIR
    );
    assert_eq!(meta(&view, "a").version, 2);
    assert!(
        view.clock().reading() >= 5_030,
        "resumes at its newest stamp"
    );
}

#[tokio::test]
async fn applied_time_never_runs_back_and_travels_with_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, view, mut sm) = open(dir.path());
    let stamped = |i, at| entry(i, LogCommand::stamped(put("k", "1").into_format_2(), at));
    sm.apply(vec![
        entry(1, LogCommand::new(Command::FormatSwitch { format: 2 })),
        stamped(2, 9_000),
        // Stamps of batches proposed at once may cross; applied time keeps the newest.
        stamped(3, 8_990),
    ])
    .await
    .unwrap();
    assert_eq!(view.applied_cluster_time(), 9_000);

    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let other = tempfile::tempdir().unwrap();
    let (store2, view2, mut sm2) = open(other.path());
    let mut recv = sm2.begin_receiving_snapshot().await.unwrap();
    let mut src = snap.snapshot;
    tokio::io::copy(&mut src, &mut *recv).await.unwrap();
    sm2.install_snapshot(&snap.meta, recv).await.unwrap();
    assert_eq!(
        view2.cluster_format(),
        2,
        "the format travels with the snapshot"
    );
    assert_eq!(view2.applied_cluster_time(), 9_000);
    assert!(view2.clock().reading() >= 9_000);
    assert_eq!(
        migrations::format_version(&store2).unwrap(),
        keys::FORMAT_V2_DATA_DIR
    );
}

#[test]
fn a_directory_past_the_switch_opens_at_the_current_format() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_unmigrated(dir.path(), 8, true).unwrap();
        migrations::run_to(&store, 3).unwrap();
        assert_eq!(migrations::format_version(&store).unwrap(), 3);
    }
    let store = Store::open(dir.path(), 8, true).unwrap();
    assert_eq!(
        migrations::format_version(&store).unwrap(),
        migrations::CURRENT_FORMAT
    );
}

fn client(op: Op) -> Command {
    Command::Client(Request::untagged(op))
}

/// A lease's end is decided by the log alone: an expiry that names an older renewal, or
/// comes before the deadline, changes nothing; the one that names the last renewal past its
/// deadline deletes every attached key at one revision. Snapshots and restarts carry the
/// table.
#[tokio::test]
async fn expiry_follows_the_log_and_the_table_travels_with_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, view, mut sm) = open(dir.path());
    let at = |i, stamp, cmd| entry(i, LogCommand::stamped(cmd, stamp));
    let attach = |key: &str| {
        client(Op::Put {
            key: key.into(),
            value: "1".into(),
            if_revision: None,
            lease: Some(3),
            ttl_ms: None,
            fence: None,
        })
    };
    let out = sm
        .apply(vec![
            entry(1, LogCommand::new(Command::FormatSwitch { format: 2 })),
            at(
                2,
                1_000,
                client(Op::LeaseGrant {
                    id: Some(3),
                    ttl_ms: 500,
                }),
            ),
            at(3, 1_001, attach("a")),
            at(4, 1_002, attach("b")),
            at(5, 1_200, client(Op::LeaseKeepalive { id: 3 })),
            // Names the grant's renewal: a later keepalive applied first.
            at(
                6,
                1_600,
                Command::LeaseExpire {
                    id: 3,
                    renewal: 1_000,
                },
            ),
            // Names the last renewal, but before its deadline (1_700).
            at(
                7,
                1_650,
                Command::LeaseExpire {
                    id: 3,
                    renewal: 1_200,
                },
            ),
        ])
        .await
        .unwrap();
    assert_eq!(out[5..], [Applied::LeaseKept, Applied::LeaseKept]);
    assert_eq!(meta(&view, "a").lease, 3);

    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let other = tempfile::tempdir().unwrap();
    let (_store2, view2, mut sm2) = open(other.path());
    let mut recv = sm2.begin_receiving_snapshot().await.unwrap();
    let mut src = snap.snapshot;
    tokio::io::copy(&mut src, &mut *recv).await.unwrap();
    sm2.install_snapshot(&snap.meta, recv).await.unwrap();
    let installed = view2.with_leases(|t| t.info(3, true));
    assert_eq!(
        installed.map(|i| (i.deadline, i.keys)),
        Some((Some(1_700), Some(vec!["a".to_string(), "b".to_string()])))
    );

    let out = sm
        .apply(vec![at(
            8,
            1_700,
            Command::LeaseExpire {
                id: 3,
                renewal: 1_200,
            },
        )])
        .await
        .unwrap();
    assert_eq!(
        out,
        [Applied::LeaseEnded {
            revision: 3,
            count: 2
        }]
    );
    assert!(view.record("a").unwrap().is_none() && view.record("b").unwrap().is_none());
    assert!(view.with_leases(|t| t.is_empty()));
}

/// A picked id survives a restart: the next grant does not reuse it.
#[tokio::test]
async fn picked_lease_ids_are_not_reused_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (store, view, mut sm) = open(dir.path());
    let at = |i, stamp, cmd| entry(i, LogCommand::stamped(cmd, stamp));
    sm.apply(vec![entry(
        1,
        LogCommand::new(Command::FormatSwitch { format: 2 }),
    )])
    .await
    .unwrap();
    let out = sm
        .apply(vec![at(
            9,
            1_800,
            client(Op::LeaseGrant {
                id: None,
                ttl_ms: 500,
            }),
        )])
        .await
        .unwrap();
    let Applied::Lease { id: picked, .. } = out[0] else {
        panic!("a grant: {out:?}");
    };
    view.flush().unwrap();
    store.sync().unwrap();
    drop((sm, view, store));
    let (_store, view, mut sm) = open(dir.path());
    assert!(view.with_leases(|t| t.get(picked).is_some()));
    let out = sm
        .apply(vec![
            at(10, 1_900, client(Op::LeaseRevoke { id: picked })),
            at(
                11,
                1_901,
                client(Op::LeaseGrant {
                    id: None,
                    ttl_ms: 500,
                }),
            ),
        ])
        .await
        .unwrap();
    assert!(
        matches!(out[1], Applied::Lease { id, .. } if id > picked),
        "{out:?}"
    );
}

#[test]
fn format_1_keys_read_as_version_1_created_at_their_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8, true).unwrap();
    let kv = store
        .db
        .keyspace(&keys::kv_keyspace_name(0), super::view::kv_options)
        .unwrap();
    // What a format-2 data directory (log format 1) holds: revision + JSON.
    kv.insert("user:1", keys::encode_value(41, br#"{"n":1}"#))
        .unwrap();
    let view = StateView::open(store).unwrap();
    let (m, json) = view.record("user:1").unwrap().unwrap();
    assert_eq!(
        (m.revision, m.create_revision, m.version, m.lease),
        (41, 41, 1, 0)
    );
    assert_eq!(json, br#"{"n":1}"#);
}

/// A lease holds at most `MAX_KEYS_PER_LEASE` keys: the next attach is refused at apply, on
/// every node alike, and a key already attached may still be written.
#[tokio::test]
async fn a_lease_holds_a_bounded_number_of_keys() {
    use super::lease::MAX_KEYS_PER_LEASE;
    let dir = tempfile::tempdir().unwrap();
    let (_store, view, mut sm) = open(dir.path());
    let put = |i: usize| {
        client(Op::Put {
            key: format!("k{i}"),
            value: "1".into(),
            if_revision: None,
            lease: Some(1),
            ttl_ms: None,
            fence: None,
        })
    };
    let mut entries = vec![
        entry(1, LogCommand::new(Command::FormatSwitch { format: 2 })),
        entry(
            2,
            LogCommand::stamped(
                client(Op::LeaseGrant {
                    id: Some(1),
                    ttl_ms: 60_000,
                }),
                1,
            ),
        ),
    ];
    let parts = (0..MAX_KEYS_PER_LEASE).map(put).collect();
    entries.push(entry(3, LogCommand::stamped(Command::Batch(parts), 2)));
    entries.push(entry(4, LogCommand::stamped(put(MAX_KEYS_PER_LEASE), 3)));
    entries.push(entry(5, LogCommand::stamped(put(0), 4)));
    let out = sm.apply(entries).await.unwrap();
    assert_eq!(
        out[3],
        Applied::LeaseFull {
            id: 1,
            limit: MAX_KEYS_PER_LEASE as u64
        }
    );
    assert!(
        matches!(out[4], Applied::PutLeased { lease: 1, .. }),
        "{:?}",
        out[4]
    );
    assert_eq!(view.with_leases(|t| t.key_count()), MAX_KEYS_PER_LEASE);
}
