//! The lease checker on hand-made histories: a good one passes, each broken one fails.

use serde_json::json;

use super::check::check;
use super::*;

const MS: u64 = 1_000_000;

fn ok(reply: Value) -> Outcome {
    Outcome::Ok { reply }
}

fn refused(code: &str) -> Outcome {
    Outcome::Refused {
        code: code.into(),
        reason: None,
        error: json!({ "code": code }),
    }
}

fn good() -> LeaseHistory {
    let kept = Kept {
        id: 7,
        key: "lease/kept".into(),
        keepalives: (0..5)
            .map(|i| Keepalive {
                sent: i * 1000 * MS,
                done: (i * 1000 + 5) * MS,
                outcome: ok(json!({"ok": true, "id": 7, "ttl_ms": 10_000})),
            })
            .collect(),
        final_get: Some(ok(json!({"ok": true, "id": 7}))),
        final_key: Some(ok(json!({"ok": true, "lease": 7}))),
    };
    // Renewed (sent 1000 ms, acked 1010 ms), ttl 3000, seen ended at 4200 ms.
    let abandoned = Abandoned {
        id: 9,
        ttl_ms: 3000,
        key: "lease/a1".into(),
        renewed_sent: 1000 * MS,
        renewed_acked: 1010 * MS,
        last_found_sent: Some(4000 * MS),
        ended: Some((4100 * MS, 4200 * MS)),
        key_after_end: Some(refused("not_found")),
        ..Abandoned::default()
    };
    let revoke = Revoke {
        id: 11,
        keys: vec!["lease/r1/0".into(), "lease/r1/1".into()],
        outcome: Some(ok(json!({"ok": true, "revision": 20, "count": 2}))),
        ..Revoke::default()
    };
    let event =
        |key: &str, kind: &str, rev: u64| json!({"type": kind, "key": key, "revision": rev});
    LeaseHistory {
        election_timeout_max_ms: 1600,
        kept,
        abandoned: vec![abandoned],
        revokes: vec![revoke],
        change_log: Some(vec![
            event("lease/kept", "put", 3),
            event("lease/a1", "put", 4),
            event("lease/r1/0", "put", 5),
            event("lease/r1/1", "put", 6),
            event("lease/a1", "expire", 8),
            event("lease/r1/0", "delete", 20),
            event("lease/r1/1", "delete", 20),
        ]),
        ..LeaseHistory::default()
    }
}

fn fails(h: &LeaseHistory, needle: &str) {
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
    assert_eq!((v.abandoned.ended, v.abandoned.judged_late), (1, 1));
    assert_eq!(v.abandoned.bound_ms, 3000 + 3200 + 1000);
    assert_eq!(v.revokes.revoked, 1);
    assert!(v.kept.alive_at_end);
}

#[test]
fn a_kept_lease_that_ends_fails() {
    let mut h = good();
    h.kept.keepalives[3].outcome = refused("not_found");
    fails(&h, "answered not_found");
    let mut h = good();
    h.kept.final_get = Some(refused("not_found"));
    fails(&h, "lease.get after the faults");
    let mut h = good();
    h.kept.final_key = Some(refused("not_found"));
    fails(&h, "not attached to it");
    let mut h = good();
    if let Some(log) = &mut h.change_log {
        log.push(json!({"type": "expire", "key": "lease/kept", "revision": 30}));
    }
    fails(&h, "its key ended");
}

#[test]
fn an_early_end_fails() {
    let mut h = good();
    // not_found received at 3900 ms < 1000 ms + 3000 ms.
    h.abandoned[0].ended = Some((3800 * MS, 3900 * MS));
    fails(&h, "EARLY");
    // Received just after the earliest end: fine, even if sent before it.
    h.abandoned[0].ended = Some((3990 * MS, 4001 * MS));
    assert!(check(&h).holds());
}

#[test]
fn a_late_end_fails_unless_no_quorum_was_up() {
    let mut h = good();
    // The bound: 1010 + 3000 + 3200 + 1000 = 8210 ms; found by a poll sent at 8300 ms.
    h.abandoned[0].last_found_sent = Some(8300 * MS);
    h.abandoned[0].ended = Some((8400 * MS, 8410 * MS));
    fails(&h, "LATE");
    // Every node down inside the window: not judged.
    h.outages = vec![(5000 * MS, 6000 * MS)];
    let v = check(&h);
    assert!(v.holds(), "{:?}", v.violations);
    assert_eq!(v.abandoned.excused_by_outage, 1);
    // A renewal of unknown outcome at 2000 ms moves the bound to 9200 ms.
    let mut h = good();
    h.abandoned[0].last_found_sent = Some(8300 * MS);
    h.abandoned[0].unknown_renewal = Some(2000 * MS);
    assert!(check(&h).holds());
}

#[test]
fn a_lease_never_seen_to_end_fails() {
    let mut h = good();
    h.abandoned[0].ended = None;
    h.abandoned[0].key_after_end = None;
    fails(&h, "never seen to end");
}

#[test]
fn a_key_left_after_its_lease_ended_fails() {
    let mut h = good();
    h.abandoned[0].key_after_end = Some(ok(json!({"ok": true, "lease": 9})));
    fails(&h, "still attached");
    let mut h = good();
    if let Some(log) = &mut h.change_log {
        log[4]["type"] = json!("delete");
    }
    fails(&h, "deleted, not expired");
}

#[test]
fn a_revoke_split_over_revisions_or_miscounted_fails() {
    let mut h = good();
    if let Some(log) = &mut h.change_log {
        log[6]["revision"] = json!(21);
    }
    fails(&h, "not deleted there");
    let mut h = good();
    h.revokes[0].outcome = Some(ok(json!({"ok": true, "revision": 20, "count": 1})));
    fails(&h, "count 1");
    let mut h = good();
    h.revokes[0].present_after = vec!["lease/r1/1".into()];
    fails(&h, "still present");
    let mut h = good();
    h.revokes[0].outcome = Some(refused("not_found"));
    fails(&h, "refused with not_found");
}
