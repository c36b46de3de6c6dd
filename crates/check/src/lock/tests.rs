//! The lock checker on hand-made histories: a good one passes, each broken one fails.

use serde_json::json;

use super::check::check;
use super::*;
use crate::call::Tries;

const MS: u64 = 1_000_000;

fn ok(reply: Value) -> Outcome {
    Outcome::Ok { reply }
}

fn conflict(reason: &str) -> Outcome {
    Outcome::Refused {
        code: "conflict".into(),
        reason: Some(reason.into()),
        error: json!({"code": "conflict", "reason": reason}),
    }
}

fn acquire(client: u64, (invoked, completed): (u64, u64), outcome: Outcome) -> Acquire {
    let oks = outcome.reply().cloned().into_iter().collect();
    Acquire {
        client,
        request_id: format!("r{client}-{invoked}"),
        invoked: invoked * MS,
        completed: completed * MS,
        outcome,
        tries: Tries {
            sent: 1,
            codes: vec!["ok".into()],
            oks,
        },
    }
}

fn write(client: u64, fence: u64, n: usize, revision: Option<u64>) -> Write {
    Write {
        client,
        fence,
        value: value(client, fence, n),
        invoked: 0,
        completed: 0,
        outcome: match revision {
            Some(r) => ok(json!({"ok": true, "revision": r})),
            None => conflict("fence"),
        },
        stale: false,
        lease_seen_ended: false,
    }
}

fn put(value: &str, revision: u64) -> Value {
    json!({"type": "put", "key": KEY, "value": value, "revision": revision})
}

/// Client 1 holds fence 10 and writes twice; client 2 waits, then holds fence 13; the stale
/// client 0 (fence 5, earlier) is refused.
fn good() -> LockHistory {
    let mut stale = write(0, 5, 1, None);
    stale.stale = true;
    stale.lease_seen_ended = true;
    LockHistory {
        acquires: vec![
            acquire(1, (100, 110), ok(json!({"fence": 10, "lease": 1}))),
            acquire(2, (105, 2200), conflict("lock_wait")),
            acquire(2, (2300, 2310), ok(json!({"fence": 13, "lease": 2}))),
        ],
        writes: vec![
            write(1, 10, 0, Some(11)),
            write(1, 10, 1, Some(12)),
            write(2, 13, 0, Some(14)),
            stale,
        ],
        change_log: Some(vec![
            put(&value(1, 10, 0), 11),
            put(&value(1, 10, 1), 12),
            put(&value(2, 13, 0), 14),
        ]),
        ..LockHistory::default()
    }
}

fn fails(h: &LockHistory, needle: &str) {
    let v = check(h);
    assert!(!v.holds(), "should fail ({needle})");
    assert!(
        v.violations.iter().any(|m| m.contains(needle)),
        "no violation with {needle:?}: {:?}",
        v.violations
    );
}

#[test]
fn a_good_history_holds() {
    let v = check(&good());
    assert!(v.holds(), "{:?}", v.violations);
    assert_eq!(
        (v.acquires.granted, v.acquires.lock_wait, v.holders),
        (2, 1, 2)
    );
    assert_eq!((v.writes.stale, v.writes.stale_refused), (1, 1));
    assert_eq!(fence_of(&value(3, 42, 1)), Some(42));
}

#[test]
fn interleaved_holders_fail() {
    // Fence 10 acknowledged at revision 15, after fence 13 wrote at 14.
    let mut h = good();
    h.writes.push(write(1, 10, 2, Some(15)));
    fails(&h, "INTERLEAVED: acknowledged");
    let mut h = good();
    if let Some(log) = &mut h.change_log {
        log.push(put(&value(1, 10, 2), 15));
    }
    fails(&h, "INTERLEAVED in the change log");
}

#[test]
fn a_stale_write_that_is_not_refused_fails() {
    let mut h = good();
    h.writes[3].outcome = ok(json!({"ok": true, "revision": 16}));
    fails(&h, "STALE write");
    let mut h = good();
    h.writes[3].outcome = Outcome::Refused {
        code: "bad_request".into(),
        reason: None,
        error: json!({}),
    };
    fails(&h, "not conflict (fence)");
    // Of unknown outcome, but in the change log: it applied.
    let mut h = good();
    h.writes[3].outcome = Outcome::Unknown {
        last: "timeout".into(),
    };
    if let Some(log) = &mut h.change_log {
        log.push(put(&value(0, 5, 1), 16));
    }
    fails(&h, "applied");
}

#[test]
fn an_unknown_acquire_fails_unless_every_node_was_down() {
    let mut h = good();
    h.acquires[1].outcome = Outcome::Unknown {
        last: "timeout".into(),
    };
    fails(&h, "UNKNOWN outcome");
    h.outages = vec![(1000 * MS, 1500 * MS)];
    let v = check(&h);
    assert!(v.holds(), "{:?}", v.violations);
    assert_eq!(v.acquires.unknown_in_outage, 1);
    let mut h = good();
    h.acquires[1].outcome = Outcome::Refused {
        code: "timeout".into(),
        reason: None,
        error: json!({}),
    };
    fails(&h, "refused with timeout");
}

#[test]
fn a_retried_acquire_with_another_fence_fails() {
    let mut h = good();
    h.acquires[2].tries = Tries {
        sent: 2,
        codes: vec!["ok".into(), "ok".into()],
        oks: vec![json!({"fence": 13}), json!({"fence": 16})],
    };
    fails(&h, "different fences");
}

#[test]
fn a_later_grant_with_a_lower_fence_fails() {
    let mut h = good();
    h.acquires[2].outcome = ok(json!({"fence": 9, "lease": 2}));
    h.acquires[2].tries.oks = vec![json!({"fence": 9, "lease": 2})];
    fails(&h, "not above fence 10");
}

#[test]
fn a_lost_acknowledged_write_fails() {
    let mut h = good();
    if let Some(log) = &mut h.change_log {
        log.remove(1);
    }
    fails(&h, "not in the change log");
}
