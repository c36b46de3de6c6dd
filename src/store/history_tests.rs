//! The change log as apply writes it and watches read it: from memory and from disk after
//! a restart, with previous versions found by revision, and compaction that keeps what
//! later events still name.

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId};

use super::history::serve::Changes;
use super::history::{ChangeEvent, EventKind};
use super::{keys, StateMachine, StateView, Store};
use crate::command::{Command, LogCommand, Op, Request};
use crate::observe::Observer;
use crate::types::Entry;

fn entry(index: u64, command: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(LogCommand::stamped(command, index * 10)),
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn open(dir: &std::path::Path) -> (Arc<StateView>, StateMachine) {
    let store = Store::open(dir, 8, true).unwrap();
    let view = StateView::open(store).unwrap();
    let sm = StateMachine::new(view.clone(), Observer::noop());
    (view, sm)
}

fn events(view: &StateView, from: u64) -> (Vec<ChangeEvent>, u64) {
    match view.changes_since(from, 1 << 20).unwrap() {
        Changes::Events { batches, last } => (
            batches.iter().flat_map(|b| b.iter().cloned()).collect(),
            last,
        ),
        Changes::Compacted(c) => panic!("compacted at {c}"),
        Changes::NotHeld(s) => panic!("held from {s}"),
    }
}

/// (kind, revision, key, value, prev revision) of each event from `from` on.
fn summary(view: &StateView, from: u64) -> Vec<(EventKind, u64, String, Option<String>, u64)> {
    events(view, from)
        .0
        .into_iter()
        .filter(|e| e.revision >= from)
        .map(|e| {
            let json = e.json().map(|j| String::from_utf8_lossy(j).into_owned());
            (e.kind, e.revision, e.key, json, e.prev_revision)
        })
        .collect()
}

fn value_of(record: &[u8]) -> String {
    String::from_utf8_lossy(keys::decode_record(record).unwrap().1).into_owned()
}

async fn fill(sm: &mut StateMachine) {
    sm.apply(vec![
        entry(1, Command::FormatSwitch { format: 2 }),
        entry(2, put("a", "1")),
        entry(3, put("b", "1")),
        entry(4, put("a", "2")),
        entry(5, Command::Delete { key: "b".into() }),
        entry(
            6,
            Command::Delete {
                key: "absent".into(),
            },
        ),
    ])
    .await
    .unwrap();
    let prefix = Op::DeletePrefix {
        prefix: "".into(),
        limit: 10,
        fence: None,
    };
    sm.apply(vec![
        entry(7, put("c", "1")),
        entry(8, Command::Client(Request::untagged(prefix))),
    ])
    .await
    .unwrap();
}

#[tokio::test]
async fn every_revision_is_logged_in_order_and_read_the_same_from_memory_and_disk() {
    use EventKind::{Delete, Put};
    let dir = tempfile::tempdir().unwrap();
    let expected = vec![
        (Put, 1, "a".to_string(), Some("1".to_string()), 0),
        (Put, 2, "b".into(), Some("1".into()), 0),
        (Put, 3, "a".into(), Some("2".into()), 1),
        (Delete, 4, "b".into(), None, 2),
        (Put, 5, "c".into(), Some("1".into()), 0),
        (Delete, 6, "a".into(), None, 3),
        (Delete, 6, "c".into(), None, 5),
    ];
    {
        let (view, mut sm) = open(dir.path());
        fill(&mut sm).await;
        assert_eq!(view.history_start(), 1);
        assert_eq!(summary(&view, 1), expected, "from memory");
        assert_eq!(events(&view, 1).1, 6, "covers the applied revision");
        assert_eq!(summary(&view, 4), expected[3..], "from a revision on");
        view.flush().unwrap();
    }
    let (view, _sm) = open(dir.path());
    assert_eq!(summary(&view, 1), expected, "from disk after a restart");
    assert_eq!(summary(&view, 6), expected[5..]);
    let a1 = view.record_at("a", 1).unwrap().expect("a at 1");
    assert_eq!(value_of(&a1), "1");
    assert!(
        view.record_at("a", 2).unwrap().is_none(),
        "a was not written at 2"
    );
    assert!(
        matches!(view.changes_since(9, 1 << 20).unwrap(), Changes::Events { batches, last: 6 } if batches.is_empty())
    );
}

#[tokio::test]
async fn compaction_refuses_old_starts_and_keeps_the_versions_later_events_name() {
    let dir = tempfile::tempdir().unwrap();
    let (view, mut sm) = open(dir.path());
    sm.apply(vec![
        entry(1, Command::FormatSwitch { format: 2 }),
        entry(2, put("a", "1")),
        entry(3, put("b", "1")),
        entry(4, put("c", "1")),
    ])
    .await
    .unwrap();
    view.flush().unwrap();
    // a rewritten after its version 1: that version must outlive the compaction.
    sm.apply(vec![entry(5, put("a", "2"))]).await.unwrap();
    view.flush().unwrap();
    sm.apply(vec![entry(6, Command::Compact { revision: 3 })])
        .await
        .unwrap();
    assert_eq!(view.compact_revision(), 3);
    let removed = view.remove_compacted().unwrap();
    assert!(removed.chunks >= 1, "{removed:?}");
    assert!(matches!(
        view.changes_since(3, 1 << 20).unwrap(),
        Changes::Compacted(3)
    ));
    // Through a restart, so that the read comes from disk (a node flushes before it
    // stops; after a crash the log gives the compaction again).
    view.flush().unwrap();
    drop(sm);
    drop(view);
    let (view, mut sm) = open(dir.path());
    assert_eq!(
        view.compact_revision(),
        3,
        "the compact revision is persisted"
    );
    let from4 = events(&view, 4).0;
    assert_eq!(from4[0].key, "a");
    assert_eq!(from4[0].prev_revision, 1);
    let prev = view.record_at("a", 1).unwrap().expect("kept as a's anchor");
    assert_eq!(value_of(&prev), "1");
    // b's version 2 is compacted and still current: its next write carries it.
    sm.apply(vec![entry(7, put("b", "2"))]).await.unwrap();
    let (latest, _) = events(&view, 5);
    let b = latest.iter().find(|e| e.key == "b").expect("b's event");
    assert_eq!(b.prev_revision, 2);
    assert_eq!(value_of(b.prev_inline.as_ref().expect("copied in")), "1");
    // Compaction never runs past the store's revision, and never back.
    sm.apply(vec![entry(8, Command::Compact { revision: 99 })])
        .await
        .unwrap();
    assert_eq!(view.compact_revision(), 5);
    sm.apply(vec![entry(9, Command::Compact { revision: 1 })])
        .await
        .unwrap();
    assert_eq!(view.compact_revision(), 5);
}

/// A JSON string value whose record is large enough to stay in kv.
fn large(fill: char) -> String {
    format!(
        "\"{}\"",
        fill.to_string().repeat(super::history::chunk::LARGE_RECORD)
    )
}

/// The events of every chunk on disk, as stored (records kept in kv left out).
fn stored_events(view: &StateView) -> Vec<ChangeEvent> {
    use super::history::chunk;
    view.history_ks()
        .range::<Vec<u8>, _>(..vec![chunk::MOVED])
        .flat_map(|g| chunk::decode_chunk(&g.into_inner().unwrap().1).unwrap())
        .collect()
}

fn moved_revisions(view: &StateView) -> Vec<u64> {
    use super::history::chunk;
    view.history_ks()
        .prefix([chunk::MOVED])
        .map(|g| u64::from_be_bytes(g.key().unwrap()[1..9].try_into().unwrap()))
        .collect()
}

#[tokio::test]
async fn large_records_are_written_once_and_read_back_from_kv_or_their_moved_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, d) = (large('a'), large('b'), large('c'), large('d'));
    {
        let (view, mut sm) = open(dir.path());
        sm.apply(vec![
            entry(1, Command::FormatSwitch { format: 2 }),
            entry(2, put("x", &a)),
            entry(3, put("s", "1")),
        ])
        .await
        .unwrap();
        view.flush().unwrap();
        sm.apply(vec![entry(4, put("x", &b))]).await.unwrap();
        view.flush().unwrap();
        // Two versions in one flush: only the second is kv's.
        sm.apply(vec![entry(5, put("x", &c)), entry(6, put("x", &d))])
            .await
            .unwrap();
        view.flush().unwrap();
        sm.apply(vec![entry(7, Command::Delete { key: "x".into() })])
            .await
            .unwrap();
        view.flush().unwrap();

        let in_kv: Vec<(u64, bool)> = stored_events(&view)
            .iter()
            .map(|e| (e.revision, e.in_kv()))
            .collect();
        let expected = [
            (1, true),
            (2, false),
            (3, true),
            (4, false),
            (5, true),
            (6, false),
        ];
        assert_eq!(in_kv, expected);
        assert_eq!(moved_revisions(&view), vec![1, 3, 5], "moved when replaced");
    }
    let (view, mut sm) = open(dir.path());
    let values: Vec<Option<String>> = summary(&view, 1).into_iter().map(|e| e.3).collect();
    let some = |v: &str| Some(v.to_string());
    let all = vec![some(&a), some("1"), some(&b), some(&c), some(&d), None];
    assert_eq!(values, all, "from disk, each version whole");
    for (revision, value) in [(1, &a), (3, &b), (4, &c), (5, &d)] {
        let record = view.record_at("x", revision).unwrap().expect("held");
        assert_eq!(&value_of(&record), value, "x at {revision}");
    }

    // Compaction through 4 removes the first two flushes' chunks and their moved copies;
    // x's newest removed version (3) is named by the put at 4, so it becomes x's anchor.
    sm.apply(vec![entry(8, Command::Compact { revision: 4 })])
        .await
        .unwrap();
    view.flush().unwrap();
    assert!(view.remove_compacted().unwrap().chunks >= 2);
    assert_eq!(moved_revisions(&view), vec![5]);
    let anchored = view.record_at("x", 3).unwrap().expect("x's anchor");
    assert_eq!(value_of(&anchored), b);
    let later: Vec<Option<String>> = summary(&view, 5).into_iter().map(|e| e.3).collect();
    assert_eq!(later, all[4..], "the moved copy still serves 5");
}

#[tokio::test]
async fn a_version_moved_after_compaction_passed_it_is_anchored_and_then_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (large('a'), large('b'));
    {
        let (view, mut sm) = open(dir.path());
        sm.apply(vec![
            entry(1, Command::FormatSwitch { format: 2 }),
            entry(2, put("x", &a)),
        ])
        .await
        .unwrap();
        view.flush().unwrap();
        // x replaced, not yet flushed, when compaction removes the chunk of its version 1:
        // the anchor comes from kv.
        sm.apply(vec![
            entry(3, put("x", &b)),
            entry(4, Command::Compact { revision: 1 }),
        ])
        .await
        .unwrap();
        assert_eq!(view.remove_compacted().unwrap().chunks, 1);
        // The flush of the replacing write moves version 1 aside, though no chunk names it.
        view.flush().unwrap();
        assert_eq!(moved_revisions(&view), vec![1]);
    }
    // Reopened: nothing in memory, the reads come from disk.
    let (view, mut sm) = open(dir.path());
    let anchored = view.record_at("x", 1).unwrap().expect("x's anchor");
    assert_eq!(value_of(&anchored), a);
    sm.apply(vec![entry(5, Command::Compact { revision: 2 })])
        .await
        .unwrap();
    assert_eq!(view.remove_compacted().unwrap().chunks, 1);
    assert!(
        moved_revisions(&view).is_empty(),
        "cleared with the last chunk"
    );
    // x is still at 2, which nothing can watch from: no anchor is kept for it.
    assert!(view.record_at("x", 1).unwrap().is_none());
    let current = view.record("x").unwrap().expect("x");
    assert_eq!(current.1, b.as_bytes());
}
