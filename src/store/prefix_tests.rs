//! A delete by prefix at apply sees the keys as the log leaves them, wherever they are held:
//! in fjall (flushed), in the recent-writes table, or in the same apply batch. Every node
//! must stop at the same key whatever it has flushed.

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId};

use super::{StateMachine, StateView, Store};
use crate::command::{Applied, Command, LogCommand, Op, Request};
use crate::observe::Observer;
use crate::types::Entry;

fn entry(index: u64, command: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(LogCommand::stamped(command, index)),
    }
}

fn put(key: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: "1".into(),
    }
}

fn delete_prefix(prefix: &str, limit: u64) -> Command {
    Command::Client(Request::untagged(Op::DeletePrefix {
        prefix: prefix.into(),
        limit,
        fence: None,
    }))
}

fn open(dir: &std::path::Path) -> (Arc<StateView>, StateMachine) {
    let store = Store::open(dir, 8, true).unwrap();
    let view = StateView::open(store).unwrap();
    let sm = StateMachine::new(view.clone(), Observer::noop());
    (view, sm)
}

#[tokio::test]
async fn a_prefix_delete_merges_flushed_recent_and_batch_writes_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let (view, mut sm) = open(dir.path());
    let switch = LogCommand::new(Command::FormatSwitch { format: 2 });
    let mut first = vec![Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::Normal(switch),
    }];
    // Flushed to fjall: a/1, a/3, a/5 and a/6; b/1 outside the prefix.
    for (i, key) in ["a/1", "a/3", "a/5", "a/6", "b/1"].iter().enumerate() {
        first.push(entry(2 + i as u64, put(key)));
    }
    sm.apply(first).await.unwrap();
    view.flush().unwrap();
    // In the recent-writes table only: a/2 created, a/3 deleted.
    sm.apply(vec![
        entry(7, put("a/2")),
        entry(8, Command::Delete { key: "a/3".into() }),
    ])
    .await
    .unwrap();
    // In the same batch as the deletes: a/4 created, a/5 deleted.
    let out = sm
        .apply(vec![
            entry(9, put("a/4")),
            entry(10, Command::Delete { key: "a/5".into() }),
            entry(11, delete_prefix("a/", 3)),
            entry(12, delete_prefix("a/", 3)),
            entry(13, delete_prefix("a/", 3)),
        ])
        .await
        .unwrap();
    // Live under a/: a/1, a/2, a/4, a/6. Three at one revision, then the last one.
    assert_eq!(
        out[2..],
        [
            Applied::DeletePrefix {
                count: 3,
                more: true,
                revision: 10,
            },
            Applied::DeletePrefix {
                count: 1,
                more: false,
                revision: 11,
            },
            Applied::DeletePrefix {
                count: 0,
                more: false,
                revision: 11,
            },
        ]
    );
    for key in ["a/1", "a/2", "a/4", "a/6"] {
        assert!(view.record(key).unwrap().is_none(), "{key} is still there");
    }
    assert!(view.record("b/1").unwrap().is_some());
    assert_eq!(view.key_count(), 1);
}

#[tokio::test]
async fn deleting_everything_leaves_the_state_machines_own_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (view, mut sm) = open(dir.path());
    let switch = LogCommand::new(Command::FormatSwitch { format: 2 });
    let tagged = Command::Client(Request {
        request_id: Some(uuid::Uuid::from_u128(7)),
        token_id: None,
        op: Op::Put {
            key: "k".into(),
            value: "1".into(),
            if_revision: None,
            lease: None,
            ttl_ms: None,
            fence: None,
        },
    });
    sm.apply(vec![
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(switch),
        },
        entry(2, tagged.clone()),
    ])
    .await
    .unwrap();
    // The id's segment is in the recent-writes table now, beside the key.
    let out = sm
        .apply(vec![entry(3, delete_prefix("", 100))])
        .await
        .unwrap();
    assert_eq!(
        out[0],
        Applied::DeletePrefix {
            count: 1,
            more: false,
            revision: 2,
        }
    );
    // The request id is still known: a retry is answered, not applied again.
    let out = sm.apply(vec![entry(4, tagged)]).await.unwrap();
    assert_eq!(out[0], Applied::Put { revision: 1 });
    assert_eq!(view.key_count(), 0);
}
