//! Hand-made histories, each written for one rule of the checker or one way to break a
//! register, and the search's limits.

use super::*;

#[test]
fn sequential_write_then_read() {
    let mut b = B::default();
    b.w(0, "k", 1, 0, 10).r(1, "k", Some(1), 20, 30);
    let r = b.check();
    assert_eq!(r.verdict, Verdict::Linearizable);
    assert_eq!(r.ops, 2);
    assert!(r.keys[0].explanation.is_none());
}

#[test]
fn stale_read_is_a_violation() {
    let mut b = B::default();
    b.w(0, "k", 1, 0, 10)
        .w(0, "k", 2, 20, 30)
        .r(1, "k", Some(1), 40, 50);
    let r = b.check();
    assert_eq!(r.verdict, Verdict::NotLinearizable);
    let text = explanation(&r);
    assert!(text.contains("r()=1 by p1 ok @40..50"), "{text}");
    assert!(text.contains("w(2) by p0 ok @20..30"), "{text}");
}

#[test]
fn lost_write_is_a_violation() {
    let mut b = B::default();
    b.w(0, "k", 1, 0, 10).r(1, "k", None, 20, 30);
    let r = b.check();
    assert_eq!(r.verdict, Verdict::NotLinearizable);
    assert!(explanation(&r).contains("r()=null"), "{}", explanation(&r));
}

#[test]
fn read_of_a_value_never_written_is_a_violation() {
    let mut b = B::default();
    b.w(0, "k", 1, 0, 10).r(1, "k", Some(7), 5, 30);
    assert_eq!(b.verdict(), Verdict::NotLinearizable);
    let mut b = B::default();
    b.r(1, "k", Some(7), 5, 30);
    assert_eq!(b.verdict(), Verdict::NotLinearizable);
}

#[test]
fn concurrent_writes() {
    // w(1) and w(2) overlap; sequential reads see 2 then 1: impossible.
    let mut b = B::default();
    b.w(0, "k", 1, 0, 10)
        .w(1, "k", 2, 1, 11)
        .r(2, "k", Some(2), 20, 30)
        .r(2, "k", Some(1), 40, 50);
    assert_eq!(b.verdict(), Verdict::NotLinearizable);

    // Reads see 1 then 1: w(2) went first.
    let mut b = B::default();
    b.w(0, "k", 1, 0, 10)
        .w(1, "k", 2, 1, 11)
        .r(2, "k", Some(1), 20, 30)
        .r(2, "k", Some(1), 40, 50);
    assert_eq!(b.verdict(), Verdict::Linearizable);

    // A read overlapping both writes sees 1, a later read sees 2: w(1), r, w(2).
    let mut b = B::default();
    b.w(0, "k", 1, 0, 10)
        .w(1, "k", 2, 1, 11)
        .r(2, "k", Some(1), 2, 9)
        .r(2, "k", Some(2), 20, 30);
    assert_eq!(b.verdict(), Verdict::Linearizable);
}

#[test]
fn info_write_may_take_effect_later() {
    // Invoked at 10, never completed, read at 20..30 sees it.
    let mut b = B::default();
    b.w_info(0, "k", 1, 10, None).r(1, "k", Some(1), 20, 30);
    assert_eq!(b.verdict(), Verdict::Linearizable);
    // Same with an explicit `info` completion before the read.
    let mut b = B::default();
    b.w_info(0, "k", 1, 10, Some(15)).r(1, "k", Some(1), 20, 30);
    assert_eq!(b.verdict(), Verdict::Linearizable);
    // Read before the write was even invoked.
    let mut b = B::default();
    b.r(1, "k", Some(1), 0, 5).w_info(0, "k", 1, 10, Some(15));
    let r = b.check();
    assert_eq!(r.verdict, Verdict::NotLinearizable);
    assert!(explanation(&r).contains("r()=1 by p1 ok @0..5"));
}

#[test]
fn info_write_never_observed() {
    let mut b = B::default();
    b.w(0, "k", 1, 0, 10)
        .w_info(1, "k", 2, 20, Some(30))
        .r(2, "k", Some(1), 40, 50)
        .r(2, "k", Some(1), 60, 70);
    assert_eq!(b.verdict(), Verdict::Linearizable);
    // ... but once observed it cannot be undone.
    let mut b = B::default();
    b.w(0, "k", 1, 0, 10)
        .w_info(1, "k", 2, 20, None)
        .r(2, "k", Some(2), 40, 50)
        .r(2, "k", Some(1), 60, 70);
    assert_eq!(b.verdict(), Verdict::NotLinearizable);
}

#[test]
fn delete() {
    let mut b = B::default();
    b.w(0, "k", 1, 0, 10)
        .d(0, "k", 20, 30)
        .r(1, "k", None, 40, 50);
    assert_eq!(b.verdict(), Verdict::Linearizable);
    b.r(1, "k", Some(1), 60, 70);
    let r = b.check();
    assert_eq!(r.verdict, Verdict::NotLinearizable);
    assert!(
        explanation(&r).contains("d() by p0 ok @20..30"),
        "{}",
        explanation(&r)
    );
}

#[test]
fn failed_write_did_not_happen() {
    let mut b = B::default();
    b.w_fail(0, "k", 1, 0, 10).r(1, "k", None, 20, 30);
    assert_eq!(b.verdict(), Verdict::Linearizable);
    let mut b = B::default();
    b.w_fail(0, "k", 1, 0, 10).r(1, "k", Some(1), 20, 30);
    let r = b.check();
    assert_eq!(r.verdict, Verdict::NotLinearizable);
    assert_eq!(r.ops, 1, "the failed write is dropped");
}

#[test]
fn unknown_reads_are_dropped() {
    let mut b = B::default();
    b.w(0, "k", 1, 0, 10);
    // An info read claiming an impossible value constrains nothing, nor does a read
    // without completion.
    b.op(
        1,
        Func::Read,
        "k",
        Value::Null,
        Some((EventType::Info, json!(9), 30)),
        20,
    );
    b.op(2, Func::Read, "k", Value::Null, None, 40);
    let r = b.check();
    assert_eq!(r.verdict, Verdict::Linearizable);
    assert_eq!(r.ops, 1);
}

#[test]
fn blind_write_just_before_an_unknown_delete() {
    // Valid order: w(1) r=1 r=1 w(5) d r=null r=null r=null. Nobody reads 5, and the
    // only delete is of unknown outcome, so w(5) must go right before that delete,
    // which itself only goes right before a read of absence.
    let mut b = B::default();
    b.w(0, "k", 1, 0, 10)
        .r(1, "k", Some(1), 20, 30)
        .r(2, "k", Some(1), 40, 60)
        .w(3, "k", 5, 40, 100)
        .op(4, Func::Delete, "k", Value::Null, None, 40)
        .r(5, "k", None, 50, 200)
        .r(6, "k", None, 45, 70)
        .r(7, "k", None, 120, 200);
    assert_eq!(
        b.verdict(),
        Verdict::Linearizable,
        "{}",
        explanation(&b.check())
    );
}

#[test]
fn independent_keys() {
    let mut b = B::default();
    b.w(0, "good", 1, 0, 10)
        .r(1, "good", Some(1), 20, 30)
        .w(2, "bad", 1, 0, 10)
        .r(3, "bad", Some(2), 20, 30);
    let r = b.check();
    assert_eq!(r.verdict, Verdict::NotLinearizable);
    assert_eq!(r.ops, 4);
    let keys: Vec<(&str, Verdict)> = r
        .keys
        .iter()
        .map(|k| (k.key.as_str(), k.verdict.clone()))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("bad", Verdict::NotLinearizable),
            ("good", Verdict::Linearizable)
        ]
    );
    assert!(r.keys[0]
        .explanation
        .as_deref()
        .is_some_and(|e| e.contains("\"bad\"")));
}

#[test]
fn calls_before_returns_on_equal_times() {
    // The read is invoked at the very instant the write completes: concurrent, so it may
    // see the old value.
    let mut b = B::default();
    b.w(0, "k", 1, 0, 10)
        .w(0, "k", 2, 20, 30)
        .r(1, "k", Some(1), 30, 40);
    assert_eq!(b.verdict(), Verdict::Linearizable);
}

#[test]
fn json_values_compare_structurally() {
    let mut b = B::default();
    b.op(
        0,
        Func::Write,
        "k",
        json!({"a": 1, "b": [1, "x"]}),
        Some((EventType::Ok, Value::Null, 10)),
        0,
    );
    b.op(
        1,
        Func::Read,
        "k",
        Value::Null,
        Some((EventType::Ok, json!({"b": [1, "x"], "a": 1}), 30)),
        20,
    );
    assert_eq!(b.verdict(), Verdict::Linearizable);
}

#[test]
fn malformed_histories_are_errors() {
    let l = Limits::default();
    // Completion without invoke.
    let h = vec![ev(0, EventType::Ok, Func::Write, "k", json!(1), 5)];
    assert!(check(&h, &l).is_err_and(|e| e.contains("no pending invoke")));
    // Two invokes without a completion in between.
    let h = vec![
        ev(0, EventType::Invoke, Func::Write, "k", json!(1), 0),
        ev(0, EventType::Invoke, Func::Write, "k", json!(2), 1),
    ];
    assert!(check(&h, &l).is_err_and(|e| e.contains("has no completion")));
    // Completion of another function.
    let h = vec![
        ev(0, EventType::Invoke, Func::Write, "k", json!(1), 0),
        ev(0, EventType::Ok, Func::Read, "k", json!(1), 1),
    ];
    assert!(check(&h, &l).is_err());
    // Completion of another key.
    let h = vec![
        ev(0, EventType::Invoke, Func::Write, "k", json!(1), 0),
        ev(0, EventType::Ok, Func::Write, "j", json!(1), 1),
    ];
    assert!(check(&h, &l).is_err());
    // Completion before its invoke.
    let h = vec![
        ev(0, EventType::Invoke, Func::Write, "k", json!(1), 10),
        ev(0, EventType::Ok, Func::Write, "k", json!(1), 5),
    ];
    assert!(check(&h, &l).is_err());
    // Empty history is fine.
    let r = check(&[], &l).expect("empty history is well-formed");
    assert_eq!(r.verdict, Verdict::Linearizable);
    assert!(r.keys.is_empty());
}

/// `n` writes of 0..n all concurrent (invoked at 0..n, completed `ok` at 5000, or of
/// unknown outcome), then sequential reads seeing 0, 1, 0 while they are all pending:
/// impossible, since 0 is written once. With `ok` writes, long reads concurrent with
/// everything observe each other value, so that no write is blind (see `blind_writes`).
fn concurrent_writes_then_reads_0_1_0(b: &mut B, key: &str, n: i64, unknown: bool) {
    for v in 0..n {
        let p = 10_000 + v as u64;
        if unknown {
            b.w_info(p, key, v, v as u64, None);
        } else {
            b.w(p, key, v, v as u64, 5000);
        }
        if v >= 2 && !unknown {
            b.r(20_000 + v as u64, key, Some(v), 0, 6000);
        }
    }
    b.r(1, key, Some(0), 1000, 1010)
        .r(1, key, Some(1), 1020, 1030)
        .r(1, key, Some(0), 1040, 1050);
}

#[test]
fn search_budget_gives_unknown() {
    // With the 200 writes `ok`, plain WGL has to try subsets of them between the reads:
    // exponential.
    let mut b = B::default();
    concurrent_writes_then_reads_0_1_0(&mut b, "k", 200, false);
    let limits = Limits {
        timeout: Duration::from_secs(30),
        max_states: 1000,
    };
    let start = Instant::now();
    let r = check(&b.0, &limits).expect("well-formed");
    assert_eq!(r.verdict, Verdict::Unknown);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(
        explanation(&r).contains("state budget"),
        "{}",
        explanation(&r)
    );

    // The same with a time budget only.
    let limits = Limits {
        timeout: Duration::from_millis(200),
        max_states: usize::MAX,
    };
    let start = Instant::now();
    let r = check(&b.0, &limits).expect("well-formed");
    assert_eq!(r.verdict, Verdict::Unknown);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(
        explanation(&r).contains("time budget"),
        "{}",
        explanation(&r)
    );
}

#[test]
fn unknown_writes_and_deletes_do_not_explode() {
    let limits = Limits {
        timeout: Duration::from_secs(30),
        max_states: 1000,
    };
    // The same 200 writes with unknown outcomes: the unobserved ones are dropped and the
    // observed ones bounded by their first read, so the violation is found at once.
    let mut b = B::default();
    concurrent_writes_then_reads_0_1_0(&mut b, "k", 200, true);
    let r = check(&b.0, &limits).expect("well-formed");
    assert_eq!(r.verdict, Verdict::NotLinearizable, "{}", explanation(&r));

    // 200 deletes of unknown outcome after w(1), then reads of 1, 1, absent, absent and
    // finally 1, which needs a second write of 1. Plain WGL would try every subset of
    // the deletes at every point; here they are only tried right before a read of
    // absence.
    let mut b = B::default();
    b.w(0, "k", 1, 0, 10);
    for p in 0..200 {
        b.op(10 + p, Func::Delete, "k", Value::Null, None, 20 + p);
    }
    b.r(1, "k", Some(1), 1000, 1010)
        .r(1, "k", Some(1), 1020, 1030)
        .r(1, "k", None, 1040, 1050)
        .r(2, "k", None, 1045, 1055);
    let r = check(&b.0, &limits).expect("well-formed");
    assert_eq!(r.verdict, Verdict::Linearizable, "{}", explanation(&r));
    b.r(1, "k", Some(1), 1060, 1070);
    let r = check(&b.0, &limits).expect("well-formed");
    assert_eq!(r.verdict, Verdict::NotLinearizable, "{}", explanation(&r));
    let text = explanation(&r);
    assert!(text.contains("r()=1 by p1 ok @1060..1070"), "{text}");
    assert!(text.contains("... and 190 more"), "{text}");
}

#[test]
fn verdict_aggregation_prefers_violation_over_unknown() {
    let mut b = B::default();
    concurrent_writes_then_reads_0_1_0(&mut b, "slow", 100, false);
    b.w(2000, "bad", 1, 0, 10).r(2000, "bad", None, 20, 30);
    let limits = Limits {
        timeout: Duration::from_secs(30),
        max_states: 500,
    };
    let r = check(&b.0, &limits).expect("well-formed");
    assert_eq!(r.verdict, Verdict::NotLinearizable);
    assert_eq!(r.keys[0].verdict, Verdict::NotLinearizable);
    assert_eq!(r.keys[1].verdict, Verdict::Unknown);
}

/// Marks the last completion of `b` as taking `sent` attempts, `unknown` of them timed out.
fn retried(b: &mut B, sent: u32, unknown: u32) {
    if let Some(e) = b.0.last_mut() {
        e.attempts = Some(crate::history::Attempts {
            sent,
            unknown,
            ..Default::default()
        });
    }
}

#[test]
fn a_retried_write_is_one_operation_spanning_its_attempts() {
    // p0's write took three attempts from 0 to 100: the first timed out at 40, yet had
    // applied; p1 read it at 50..60, before the acknowledging attempt. One operation with
    // one window: linearizable, wherever in the window the write took effect.
    let mut b = B::default();
    b.w(0, "k", 1, 0, 100);
    retried(&mut b, 3, 1);
    b.r(1, "k", Some(1), 50, 60).r(1, "k", Some(1), 110, 120);
    assert_eq!(b.verdict(), Verdict::Linearizable);
}

#[test]
fn a_write_applied_twice_by_its_retries_is_a_violation() {
    // What a server that ignores request ids can do: p0's write applied on its timed-out
    // first attempt and again on its retry, after p1's write. Readers see 1, then 2, then 1
    // again: no single point in p0's window explains both reads of 1.
    let mut b = B::default();
    b.w(0, "k", 1, 0, 100);
    retried(&mut b, 2, 1);
    b.r(2, "k", Some(1), 10, 15)
        .w(1, "k", 2, 20, 30)
        .r(2, "k", Some(2), 40, 50)
        .r(2, "k", Some(1), 110, 120);
    let r = b.check();
    assert_eq!(r.verdict, Verdict::NotLinearizable);
    let text = explanation(&r);
    assert!(
        text.contains("w(1) by p0 ok after 2 attempts @0..100"),
        "{text}"
    );
}
