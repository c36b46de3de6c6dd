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
    // Through a restart, so that the read comes from disk.
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
