//! Storage tests: openraft's own suite on the fjall store, plus reopen tests (write, drop,
//! reopen, compare) for the log, the vote and the state machine, and a snapshot round trip.

use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder,
};

use super::{LogStore, StateMachine, StateView, Store};
use crate::command::{Applied, Command, LogCommand};
use crate::types::{StorageError, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
        let store =
            Store::open(dir.path(), 8, true).map_err(|e| openraft::StorageIOError::write(&e))?;
        let view =
            StateView::open(store.clone()).map_err(|e| openraft::StorageIOError::write(&e))?;
        Ok((
            dir,
            LogStore::new(store),
            StateMachine::new(view, crate::observe::Observer::noop()),
        ))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn put(term: u64, index: u64, key: &str, value: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(LogCommand::new(Command::Put {
            key: key.into(),
            value: value.into(),
        })),
    }
}

fn open(dir: &std::path::Path) -> (Store, Arc<StateView>) {
    let store = Store::open(dir, 8, true).unwrap();
    let view = StateView::open(store.clone()).unwrap();
    (store, view)
}

/// Writes entries into the log as the log store's `append` does. The flush callback that
/// `append` takes is internal to openraft.
fn write_log(store: &Store, entries: &[Entry<TypeConfig>]) {
    let mut batch = store.db.batch();
    for e in entries {
        let buf = super::log_store::encode_entry(e).unwrap();
        batch.insert(&store.log, super::keys::log_key(e.log_id.index), buf);
    }
    batch.commit().unwrap();
}

async fn build_snapshot(sm: &mut StateMachine) -> openraft::Snapshot<TypeConfig> {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap()
}

/// Sends `snap` to `to` as openraft does: into its receiving file, then installed.
async fn install(
    to: &mut StateMachine,
    snap: openraft::Snapshot<TypeConfig>,
) -> openraft::SnapshotMeta<u64, crate::types::Node> {
    let mut recv = to.begin_receiving_snapshot().await.unwrap();
    let mut src = snap.snapshot;
    tokio::io::copy(&mut src, &mut *recv).await.unwrap();
    to.install_snapshot(&snap.meta, recv).await.unwrap();
    snap.meta
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Log entries, the vote and applied state survive closing and reopening the database.
#[test]
fn log_vote_and_state_machine_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        {
            let (store, view) = open(dir.path());
            let mut log = LogStore::new(store.clone());
            let mut sm = StateMachine::new(view.clone(), crate::observe::Observer::noop());
            let vote = openraft::Vote::new_committed(3, 1);
            log.save_vote(&vote).await.unwrap();
            let membership = Entry::<TypeConfig> {
                log_id: log_id(1, 1),
                payload: EntryPayload::Membership(Membership::new(vec![[1, 2, 3].into()], None)),
            };
            let entries = vec![
                membership,
                put(1, 2, "a", "1"),
                put(1, 3, "b", r#"{"x":true}"#),
                put(2, 4, "a", "2"),
            ];
            write_log(&store, &entries);
            let outcomes = sm.apply(entries).await.unwrap();
            assert_eq!(outcomes[1], Applied::Put { revision: 1 });
            assert_eq!(outcomes[3], Applied::Put { revision: 3 });
            store.db.persist(fjall::PersistMode::SyncAll).unwrap();
        }
        let (store, view) = open(dir.path());
        let mut log = LogStore::new(store.clone());
        let mut sm = StateMachine::new(view.clone(), crate::observe::Observer::noop());
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(openraft::Vote::new_committed(3, 1))
        );
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(2, 4)));
        let got = log.try_get_log_entries(2..=3).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].log_id, log_id(1, 2));
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(2, 4)));
        assert_eq!(membership.voter_ids().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(view.revision(), 3);
        assert_eq!(view.key_count(), 2);
        assert_eq!(view.get("a").unwrap(), Some((3, b"2".to_vec())));
        assert_eq!(view.get("b").unwrap(), Some((2, br#"{"x":true}"#.to_vec())));
    });
}

/// Purge keeps its point across a reopen, even when the log is empty behind it.
#[test]
fn purge_point_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        {
            let (store, _) = open(dir.path());
            let mut log = LogStore::new(store.clone());
            log.purge(log_id(2, 10)).await.unwrap();
        }
        let (store, _) = open(dir.path());
        let mut log = LogStore::new(store);
        let s = log.get_log_state().await.unwrap();
        assert_eq!(s.last_purged_log_id, Some(log_id(2, 10)));
        assert_eq!(s.last_log_id, Some(log_id(2, 10)));
    });
}

/// A purge frees the disk space of the purged entries, not only hides them: tables that
/// hold only purged entries are dropped.
#[test]
fn purge_frees_the_space_of_purged_entries() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (store, _) = open(dir.path());
        let mut log = LogStore::new(store.clone());
        let value = big_value(0, 16 * 1024);
        for round in 0..4u64 {
            let entries: Vec<_> = (1..=100)
                .map(|i| put(1, round * 100 + i, "k", &value))
                .collect();
            write_log(&store, &entries);
            // One table per round.
            store.log.rotate_memtable_and_wait().unwrap();
        }
        let before = store.log.disk_space();
        assert!(before > 4 * 100 * 16 * 1024, "{before} bytes on disk");
        log.purge(log_id(1, 390)).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.log.disk_space() > before / 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "purged tables still on disk: {} of {before} bytes",
                store.log.disk_space()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 390)));
        assert_eq!(state.last_log_id, Some(log_id(1, 400)));
        let kept = log.try_get_log_entries(391..=400).await.unwrap();
        assert_eq!(kept.len(), 10);
        assert!(log.try_get_log_entries(1..=390).await.unwrap().is_empty());
    });
}

/// A snapshot built on one node installs on another: same keys, revisions, count and id.
#[test]
fn snapshot_builds_and_installs_into_a_fresh_keyspace() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (_, view_a) = open(a.path());
        let mut sm_a = StateMachine::new(view_a.clone(), crate::observe::Observer::noop());
        let mut entries: Vec<Entry<TypeConfig>> = (1..=500)
            .map(|i| put(1, i, &format!("k{i:04}"), &format!("{i}")))
            .collect();
        entries.push(Entry {
            log_id: log_id(1, 501),
            payload: EntryPayload::Normal(LogCommand::new(Command::Delete {
                key: "k0007".into(),
            })),
        });
        sm_a.apply(entries).await.unwrap();
        let snap = build_snapshot(&mut sm_a).await;
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 501)));

        let (_, view_b) = open(b.path());
        let mut sm_b = StateMachine::new(view_b.clone(), crate::observe::Observer::noop());
        // Data already there must be replaced, not merged.
        sm_b.apply(vec![put(1, 1, "stray", "0")]).await.unwrap();
        let snap_meta = install(&mut sm_b, snap).await;

        assert_eq!(view_b.revision(), 501);
        assert_eq!(view_b.key_count(), 499);
        // The live data size is recounted on install.
        assert_eq!(view_a.data_bytes(), snapshot_data_bytes());
        assert_eq!(view_b.data_bytes(), snapshot_data_bytes());
        assert_eq!(view_b.get("stray").unwrap(), None);
        assert_eq!(view_b.get("k0007").unwrap(), None);
        assert_eq!(view_b.get("k0500").unwrap(), Some((500, b"500".to_vec())));
        assert_eq!(view_a.digest().unwrap(), view_b.digest().unwrap());
        let (applied, _) = sm_b.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 501)));
        let current = sm_b.get_current_snapshot().await.unwrap().expect("kept");
        assert_eq!(current.meta.snapshot_id, snap_meta.snapshot_id);

        // Keys this node wrote before the install are new again after it (no stale size
        // from before the install counts).
        sm_b.apply(vec![put(1, 502, "stray", "1"), put(1, 503, "k0007", "2")])
            .await
            .unwrap();
        assert_eq!(view_b.key_count(), 501);
        assert_eq!(view_b.get("stray").unwrap(), Some((502, b"1".to_vec())));
        assert_eq!(view_b.data_bytes(), live_data_bytes(&view_b));
    });
    // And it survives a reopen of the installing node.
    let (_, view_b) = open(b.path());
    assert_eq!(view_b.revision(), 503);
    assert_eq!(view_b.get("k0001").unwrap(), Some((1, b"1".to_vec())));
    assert_eq!(view_b.data_bytes(), live_data_bytes(&view_b));
}

/// Live data size of the state built above: key + revision + JSON of each live key.
fn snapshot_data_bytes() -> u64 {
    (1..=500u64)
        .filter(|&i| i != 7)
        .map(|i| 5 + 8 + i.to_string().len() as u64)
        .sum()
}

/// Key count and live data size stay exact over puts, overwrites and deletes of the same keys
/// within one batch and across batches (where the sizes of earlier batches are remembered).
#[test]
fn apply_keeps_key_count_and_data_size_exact() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (_, view) = open(dir.path());
        let mut sm = StateMachine::new(view.clone(), crate::observe::Observer::noop());
        let delete = |index, key: &str| Entry::<TypeConfig> {
            log_id: log_id(1, index),
            payload: EntryPayload::Normal(LogCommand::new(Command::Delete { key: key.into() })),
        };
        let batches = vec![
            vec![
                put(1, 1, "a", "1"),
                put(1, 2, "b", "22"),
                put(1, 3, "a", "333"),
            ],
            vec![delete(4, "b"), put(1, 5, "c", "4"), put(1, 6, "a", "55")],
            vec![delete(7, "b"), put(1, 8, "b", "6666"), delete(9, "c")],
        ];
        for batch in batches {
            sm.apply(batch).await.unwrap();
            assert_eq!(
                (view.key_count(), view.data_bytes()),
                (2, live_data_bytes(&view))
            );
        }
        assert_eq!(view.data_bytes(), (1 + 8 + 2) + (1 + 8 + 4));
        // Gets see the last write of each key, deletes included.
        assert_eq!(view.get("a").unwrap(), Some((6, b"55".to_vec())));
        assert_eq!(view.get("b").unwrap(), Some((7, b"6666".to_vec())));
        assert_eq!(view.get("c").unwrap(), None);
    });
    // The figures written with the last batch are what a reopened node starts from.
    let (_, view) = open(dir.path());
    assert_eq!(
        (view.key_count(), view.data_bytes()),
        (2, live_data_bytes(&view))
    );
}

/// Live data size recounted from the keyspace: key + revision + JSON of every key.
fn live_data_bytes(view: &StateView) -> u64 {
    let (items, more) = view.scan("", None, usize::MAX, usize::MAX).unwrap();
    assert!(!more);
    items
        .iter()
        .map(|i| (i.key.len() + 8 + i.json.len()) as u64)
        .sum()
}

fn membership_entry(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Membership(Membership::new(vec![[1, 2, 3].into()], None)),
    }
}

/// Puts are applied in memory and reach fjall in a flush. Reads see them at once; a crash
/// (a reopen with no flush) goes back to the last flush, and re-applying the log from there
/// gives the same state; a scan flushes, after which a reopen has nothing to re-apply.
#[test]
fn unflushed_puts_are_read_at_once_and_recovered_by_replay() {
    let dir = tempfile::tempdir().unwrap();
    let puts = || {
        vec![
            put(1, 2, "a", "1"),
            put(1, 3, "b", "2"),
            put(1, 4, "a", "3"),
        ]
    };
    let check = |view: &StateView| {
        assert_eq!(view.get("a").unwrap(), Some((3, b"3".to_vec())));
        assert_eq!(view.get("b").unwrap(), Some((2, b"2".to_vec())));
        assert_eq!(view.revision(), 3);
        assert_eq!(view.key_count(), 2);
    };
    rt().block_on(async {
        {
            let (_store, view) = open(dir.path());
            let mut sm = StateMachine::new(view.clone(), crate::observe::Observer::noop());
            // A membership change goes to fjall at once.
            sm.apply(vec![membership_entry(1)]).await.unwrap();
            for p in puts() {
                sm.apply(vec![p]).await.unwrap();
            }
            check(&view);
            // Dropped with no flush: a crash.
        }
        let (_store, view) = open(dir.path());
        let mut sm = StateMachine::new(view.clone(), crate::observe::Observer::noop());
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 1)), "back to the last flush");
        assert_eq!(membership.voter_ids().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(view.get("a").unwrap(), None);
        assert_eq!(view.revision(), 0);
        // What openraft re-applies from the log.
        sm.apply(puts()).await.unwrap();
        check(&view);
        let (items, more) = view.scan("", None, 10, usize::MAX).unwrap();
        assert!(!more);
        let keys: Vec<_> = items
            .iter()
            .map(|i| (i.key.as_str(), i.meta.revision))
            .collect();
        assert_eq!(keys, vec![("a", 3), ("b", 2)]);
    });
    rt().block_on(async {
        let (_store, view) = open(dir.path());
        let mut sm = StateMachine::new(view.clone(), crate::observe::Observer::noop());
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 4)), "the scan flushed");
        check(&view);
    });
}

/// A snapshot install drops the writes that were applied but not flushed: no later flush
/// may write them over the installed state.
#[test]
fn an_install_drops_unflushed_writes() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    rt().block_on(async {
        let (_store_a, view_a) = open(dir_a.path());
        let mut a = StateMachine::new(view_a.clone(), crate::observe::Observer::noop());
        a.apply(vec![membership_entry(1), put(1, 2, "k", "from-a")])
            .await
            .unwrap();
        let snapshot = build_snapshot(&mut a).await;

        let (_store_b, view_b) = open(dir_b.path());
        let mut b = StateMachine::new(view_b.clone(), crate::observe::Observer::noop());
        b.apply(vec![membership_entry(1)]).await.unwrap();
        b.apply(vec![put(1, 2, "stale", "x")]).await.unwrap();
        assert!(view_b.get("stale").unwrap().is_some());
        install(&mut b, snapshot).await;
        view_b.flush().unwrap();
        assert_eq!(view_b.get("stale").unwrap(), None);
        assert_eq!(view_b.get("k").unwrap(), Some((1, b"from-a".to_vec())));
        assert_eq!(view_a.digest().unwrap(), view_b.digest().unwrap());
        let (applied, _) = b.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 2)));
    });
}

/// Past `FLUSH_COMMANDS` applied commands a flush is due: the apply that crosses it writes
/// to fjall by itself, so a crash afterwards has nothing before it to re-apply.
#[test]
fn a_flush_is_due_after_enough_commands() {
    let dir = tempfile::tempdir().unwrap();
    let n = super::recent::FLUSH_COMMANDS as u64 + 1;
    rt().block_on(async {
        let (_store, view) = open(dir.path());
        let mut sm = StateMachine::new(view.clone(), crate::observe::Observer::noop());
        sm.apply(vec![membership_entry(1)]).await.unwrap();
        // Overwrites of 100 keys: the flush writes each key once.
        let puts = (2..=n + 1).map(|i| put(1, i, &format!("k{}", i % 100), &i.to_string()));
        sm.apply(puts.collect::<Vec<_>>()).await.unwrap();
        // Dropped with no flush of its own: a crash.
    });
    rt().block_on(async {
        let (_store, view) = open(dir.path());
        let mut sm = StateMachine::new(view.clone(), crate::observe::Observer::noop());
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(
            applied,
            Some(log_id(1, n + 1)),
            "the due flush wrote the batch"
        );
        assert_eq!(view.key_count(), 100);
        assert_eq!(view.revision(), n);
        let last = n + 1;
        assert_eq!(
            view.get(&format!("k{}", last % 100)).unwrap(),
            Some((n, last.to_string().into_bytes()))
        );
    });
}

/// A JSON string value of `len` bytes, different for each `i`.
fn big_value(i: u64, len: usize) -> String {
    let body: String = (0..len - 2)
        .map(|n| char::from(b'a' + ((n as u64 * 7 + i) % 26) as u8))
        .collect();
    format!("\"{body}\"")
}

/// Values of 1 KiB and more go to blob files, out of the LSM tables; they read back the
/// same from memory, from the blob files, and after a reopen, and a snapshot carries them.
#[test]
fn large_values_live_in_blob_files() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (_, view) = open(dir.path());
        let mut sm = StateMachine::new(view.clone(), crate::observe::Observer::noop());
        let entries: Vec<Entry<TypeConfig>> = (1..=40)
            .map(|i| put(1, i, &format!("big{i:02}"), &big_value(i, 8 * 1024)))
            .chain((41..=50).map(|i| put(1, i, &format!("small{i:02}"), &format!("{i}"))))
            .collect();
        sm.apply(entries).await.unwrap();
        // The digest flushes the state machine; the rotation writes the memtable out.
        let digest = view.digest().unwrap();
        let (_, kv) = view.kv();
        kv.rotate_memtable_and_wait().unwrap();
        assert!(kv.is_kv_separated());
        assert!(kv.blob_file_count() > 0, "no blob file after a flush");
        assert_eq!(
            view.get("big07").unwrap(),
            Some((7, big_value(7, 8 * 1024).into_bytes()))
        );
        assert_eq!(view.get("small42").unwrap(), Some((42, b"42".to_vec())));
        assert_eq!(view.data_bytes(), live_data_bytes(&view));

        // A snapshot built from blob-held values installs equal on another node.
        let snap = build_snapshot(&mut sm).await;
        let (_, view_b) = open(other.path());
        let mut sm_b = StateMachine::new(view_b.clone(), crate::observe::Observer::noop());
        install(&mut sm_b, snap).await;
        assert_eq!(view_b.digest().unwrap(), digest);
    });
    let (_, view) = open(dir.path());
    assert_eq!(
        view.get("big40").unwrap(),
        Some((40, big_value(40, 8 * 1024).into_bytes()))
    );
    assert_eq!(view.key_count(), 50);
}

/// A data keyspace created before values were separated keeps its own settings when it is
/// opened again: its values stay in the tables and read back as before.
#[test]
fn a_kv_keyspace_from_before_separation_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    {
        // As an older build left it: the data keyspace created without separation.
        let store = Store::open_unmigrated(dir.path(), 8, true).unwrap();
        let plain = fjall::KeyspaceCreateOptions::default;
        let kv = store
            .db
            .keyspace(&super::keys::kv_keyspace_name(0), plain)
            .unwrap();
        assert!(!kv.is_kv_separated());
    }
    rt().block_on(async {
        let (_, view) = open(dir.path());
        let mut sm = StateMachine::new(view.clone(), crate::observe::Observer::noop());
        sm.apply(vec![put(1, 1, "big", &big_value(1, 4096))])
            .await
            .unwrap();
        view.digest().unwrap();
        let (_, kv) = view.kv();
        assert!(!kv.is_kv_separated(), "the stored settings win");
    });
    let (_, view) = open(dir.path());
    assert_eq!(
        view.get("big").unwrap(),
        Some((1, big_value(1, 4096).into_bytes()))
    );
}
