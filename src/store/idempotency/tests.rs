use std::collections::BTreeMap;

use proptest::prelude::*;

use super::digest::minified;
use super::*;
use crate::command::Op;

/// A key space: the stored settings and segments, in key order as fjall keeps them.
#[derive(Default)]
struct Map(BTreeMap<String, fjall::Slice>);

impl Records for &mut Map {
    fn stored(&self, key: &str) -> Result<Option<fjall::Slice>, Error> {
        Ok(self.0.get(key).cloned())
    }
    fn set(&mut self, key: String, stored: Option<fjall::Slice>) {
        match stored {
            Some(v) => self.0.insert(key, v),
            None => self.0.remove(&key),
        };
    }
}

impl Map {
    /// The table as these keys would load at open or after an install.
    fn load(&self) -> IdemTable {
        let settings = self.0.get(keys::IDEMPOTENCY_SETTINGS).map(|v| v.to_vec());
        let segments = self
            .0
            .range(keys::IDEMPOTENCY_PREFIX.to_string()..)
            .take_while(|(k, _)| k.starts_with(keys::IDEMPOTENCY_PREFIX))
            .map(|(k, v)| Ok((k.clone(), v.clone())));
        IdemTable::from_stored(settings.as_deref(), segments).expect("segments load")
    }

    fn segments(&self) -> usize {
        self.0
            .keys()
            .filter(|k| k.starts_with(keys::IDEMPOTENCY_PREFIX))
            .count()
    }
}

fn put(value: &str) -> Op {
    Op::Put {
        key: "k".into(),
        value: value.into(),
        if_revision: None,
        lease: None,
        ttl_ms: None,
        fence: None,
    }
}

fn key(n: u128) -> IdemKey {
    IdemKey { id: n, token: None }
}

/// One apply batch of id'd writes `(id, value, now, revision)`: the table's answers.
fn batch(
    t: &mut IdemTable,
    m: &mut Map,
    data_bytes: &mut u64,
    writes: &[(u128, &str, u64, u64)],
) -> Vec<Applied> {
    let (mut replays, mut conflicts) = (0, 0);
    let mut apply = Apply {
        table: t,
        records: m,
        data_bytes,
        replays: &mut replays,
        conflicts: &mut conflicts,
    };
    let mut out = Vec::new();
    for &(id, value, now, rev) in writes {
        let d = digest(&put(value));
        out.push(match apply.check(&key(id), &d, now).expect("check") {
            Known::Replay(a) | Known::Conflict(a) => a,
            Known::New => {
                let reply = Applied::Put { revision: rev };
                apply.remember(key(id), d, &reply, now).expect("remember");
                reply
            }
        });
    }
    apply.finish().expect("finish");
    out
}

fn write(t: &mut IdemTable, m: &mut Map, id: u128, value: &str, now: u64, rev: u64) -> Applied {
    let mut bytes = 0;
    batch(t, m, &mut bytes, &[(id, value, now, rev)]).remove(0)
}

/// What must be equal between a node that applied and one that loaded the same state.
fn logical(t: &IdemTable) -> (Vec<(u64, IdemKey)>, u64, usize) {
    (
        t.order.iter().cloned().collect(),
        t.counted_bytes,
        t.index.len(),
    )
}

#[test]
fn a_known_id_replays_another_command_conflicts_and_the_window_forgets() {
    let (mut t, mut m) = (IdemTable::default(), Map::default());
    t.settings.window_ms = 1_000;
    let first = write(&mut t, &mut m, 1, r#"{"x": 1}"#, 10, 5);
    assert_eq!(first, Applied::Put { revision: 5 });
    // Re-serialized JSON is the same command; the record comes from the stored segment.
    assert_eq!(write(&mut t, &mut m, 1, r#"{ "x" : 1 }"#, 500, 6), first);
    assert!(matches!(
        write(&mut t, &mut m, 1, "2", 500, 7),
        Applied::Conflict {
            reason: ConflictReason::RequestId,
            ..
        }
    ));
    // At expiry the id is forgotten: the write applies again.
    assert_eq!(
        write(&mut t, &mut m, 1, r#"{"x":1}"#, 1_010, 8),
        Applied::Put { revision: 8 }
    );
    assert_eq!(t.len(), 1);
    // The first segment held only the expired record, and went.
    assert_eq!(m.segments(), 1);
    assert_eq!(logical(&m.load()), logical(&t));
}

#[test]
fn a_retry_within_the_batch_that_wrote_the_id_replays() {
    let (mut t, mut m, mut bytes) = (IdemTable::default(), Map::default(), 0);
    t.settings.window_ms = 1_000;
    let out = batch(
        &mut t,
        &mut m,
        &mut bytes,
        &[(1, "1", 10, 5), (2, "2", 10, 6), (1, "1", 10, 7)],
    );
    assert_eq!(out[2], Applied::Put { revision: 5 });
    // One segment for the batch, whatever its number of records.
    assert_eq!(m.segments(), 1);
    assert_eq!(bytes, t.counted_bytes());
}

#[test]
fn minified_drops_whitespace_between_tokens_only() {
    assert_eq!(minified(r#"{"a":1}"#), r#"{"a":1}"#);
    assert_eq!(
        minified("{ \"a b\" : [ 1 ,\n 2 ], \"c\":\"x \\\" y\" }"),
        "{\"a b\":[1,2],\"c\":\"x \\\" y\"}"
    );
}

#[test]
fn expired_records_go_and_the_oldest_are_evicted_past_the_limit() {
    let (mut t, mut m) = (IdemTable::default(), Map::default());
    t.settings = IdempotencySettings {
        window_ms: 100,
        max_entries: 3,
    };
    for (i, now) in [1u64, 2, 3, 4].iter().enumerate() {
        write(&mut t, &mut m, i as u128, "1", *now, i as u64);
    }
    // The limit evicted the oldest, id0: its segment went, and a retry of it applies.
    assert_eq!(t.len(), 3);
    assert_eq!(m.segments(), 3);
    assert_eq!(logical(&m.load()), logical(&t));
    // A write after everyone's expiry removes them all.
    write(&mut t, &mut m, 99, "1", 1_000, 9);
    assert_eq!(t.len(), 1);
    assert_eq!(m.segments(), 1);
    assert_eq!(
        keys::idempotency_segment(keys::idempotency_segment_key(7).as_bytes()),
        Some(7)
    );
}

/// The digest two nodes compare is of the records, not of how each node grouped them into
/// segments: the same writes applied one batch each and all in one batch digest alike, and
/// another value does not.
#[test]
fn the_stored_digest_ignores_the_grouping_into_segments() {
    let writes: Vec<(u128, &str, u64, u64)> =
        (0..6u64).map(|i| (i as u128 % 4, "1", i * 10, i)).collect();
    let digest_of = |m: &Map| {
        let stored =
            m.0.iter()
                .filter(|(k, _)| k.starts_with(keys::IDEMPOTENCY_PREFIX));
        stored_digest(stored.map(|(k, v)| Ok((k.clone(), v.clone())))).expect("digest")
    };
    let settings = IdempotencySettings {
        window_ms: 25,
        max_entries: 3,
    };
    let (mut one, mut m_one, mut b1) = (IdemTable::default(), Map::default(), 0);
    one.settings = settings;
    for w in &writes {
        batch(&mut one, &mut m_one, &mut b1, std::slice::from_ref(w));
    }
    let (mut all, mut m_all, mut b2) = (IdemTable::default(), Map::default(), 0);
    all.settings = settings;
    batch(&mut all, &mut m_all, &mut b2, &writes);
    assert_ne!(m_one.segments(), m_all.segments());
    assert_eq!(digest_of(&m_one), digest_of(&m_all));
    let (mut other, mut m_other, mut b3) = (IdemTable::default(), Map::default(), 0);
    other.settings = settings;
    let mut changed = writes.clone();
    changed[5].1 = "2";
    batch(&mut other, &mut m_other, &mut b3, &changed);
    assert_ne!(digest_of(&m_other), digest_of(&m_all));
}

proptest! {
    /// Batches of writes over a few ids, with expiry and eviction: after every batch the
    /// stored segments load into the table that applied them (what a restarted node and a
    /// node that installed a snapshot of this one hold), the counted bytes agree with the
    /// live data size, and no segment outlives its records once the older ones are gone.
    #[test]
    fn stored_segments_load_into_the_table_that_wrote_them(
        batches in prop::collection::vec(prop::collection::vec((0u128..12, 0u8..3, 0u64..40), 1..6), 1..40),
        window in 1u64..200,
        max_entries in 1u64..8,
    ) {
        let (mut t, mut m, mut bytes) = (IdemTable::default(), Map::default(), 0);
        t.settings = IdempotencySettings { window_ms: window, max_entries };
        let (mut now, mut rev) = (0u64, 0u64);
        for writes in batches {
            let values = ["1", "2", "3"];
            let writes: Vec<_> = writes
                .into_iter()
                .map(|(id, v, step)| {
                    now += step;
                    rev += 1;
                    (id, values[v as usize], now, rev)
                })
                .collect();
            batch(&mut t, &mut m, &mut bytes, &writes);
            let loaded = m.load();
            prop_assert_eq!(logical(&loaded), logical(&t));
            prop_assert_eq!(bytes, t.counted_bytes());
            prop_assert!(t.len() as u64 <= max_entries);
            // Segments left: at most one per batch since the oldest live record's.
            prop_assert_eq!(loaded.segments, t.segments.clone());
            if t.len() == 0 {
                prop_assert_eq!(m.segments(), 0);
            }
        }
    }
}

/// A txn retried with its JSON values re-serialized (other whitespace) is the same command;
/// another value is not.
#[test]
fn a_txn_digest_ignores_whitespace_in_its_values() {
    use crate::command::{CmpOp, Compare, Op, Target, Txn, TxnOp};
    let txn = |compare: &str, put: &str| {
        super::digest(&Op::Txn(Txn {
            compare: vec![Compare {
                key: "a".into(),
                target: Target::Value,
                op: CmpOp::Eq,
                value: compare.into(),
            }],
            success: vec![TxnOp::Put {
                key: "a".into(),
                value: put.into(),
                lease: None,
                ttl_ms: None,
            }],
            failure: vec![],
            fence: None,
        }))
    };
    assert_eq!(
        txn(r#"{"v":1}"#, "[1,2]"),
        txn("{ \"v\" : 1 }", "[ 1,\n 2 ]")
    );
    assert_ne!(txn(r#"{"v":1}"#, "[1,2]"), txn(r#"{"v":1}"#, "[1,3]"));
}
