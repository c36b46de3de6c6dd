//! Tests of the checker, on whole histories through [`check`]: the history builder shared
//! by the files, `hand_made` (small histories written for one rule or one bug each, and
//! the search's limits), `random` (simulated registers, and random small histories
//! whose verdict is compared with an exhaustive search) and `cas` (compare-and-swap: hand-made
//! histories and a simulated register with revisions).

mod cas;
mod hand_made;
mod random;

use serde_json::{json, Value};

use super::*;
use crate::history::{Attempts, EventType, Func};

/// History builder: each helper appends an invoke and (maybe) its completion.
#[derive(Default)]
struct B(Vec<Event>);

fn ev(process: u64, kind: EventType, f: Func, key: &str, value: Value, time: u64) -> Event {
    Event {
        process,
        kind,
        f,
        key: key.to_string(),
        value,
        time,
        attempts: None,
        if_revision: None,
    }
}

fn opt(v: Option<i64>) -> Value {
    v.map_or(Value::Null, |v| json!(v))
}

impl B {
    fn op(
        &mut self,
        p: u64,
        f: Func,
        key: &str,
        input: Value,
        done: Option<(EventType, Value, u64)>,
        t0: u64,
    ) -> &mut Self {
        self.0.push(ev(p, EventType::Invoke, f, key, input, t0));
        if let Some((kind, v, t1)) = done {
            self.0.push(ev(p, kind, f, key, v, t1));
        }
        self
    }
    fn w(&mut self, p: u64, key: &str, v: i64, t0: u64, t1: u64) -> &mut Self {
        let done = Some((EventType::Ok, json!(v), t1));
        self.op(p, Func::Write, key, json!(v), done, t0)
    }
    /// A write with an `info` completion at `t1`, or none at all.
    fn w_info(&mut self, p: u64, key: &str, v: i64, t0: u64, t1: Option<u64>) -> &mut Self {
        let done = t1.map(|t1| (EventType::Info, json!(v), t1));
        self.op(p, Func::Write, key, json!(v), done, t0)
    }
    fn w_fail(&mut self, p: u64, key: &str, v: i64, t0: u64, t1: u64) -> &mut Self {
        let done = Some((EventType::Fail, json!(v), t1));
        self.op(p, Func::Write, key, json!(v), done, t0)
    }
    fn r(&mut self, p: u64, key: &str, seen: Option<i64>, t0: u64, t1: u64) -> &mut Self {
        let done = Some((EventType::Ok, opt(seen), t1));
        self.op(p, Func::Read, key, Value::Null, done, t0)
    }
    fn d(&mut self, p: u64, key: &str, t0: u64, t1: u64) -> &mut Self {
        let done = Some((EventType::Ok, Value::Null, t1));
        self.op(p, Func::Delete, key, Value::Null, done, t0)
    }
    /// Appends an invoke (with `if_revision`) and its completion with `attempts` (one
    /// request, the reply's `revision`, `conflict`).
    #[allow(clippy::too_many_arguments)]
    fn with_revision(
        &mut self,
        p: u64,
        (f, key, input, if_revision): (Func, &str, Value, Option<u64>),
        (kind, seen, revision, conflict): (EventType, Value, Option<u64>, bool),
        t0: u64,
        t1: Option<u64>,
    ) -> &mut Self {
        let mut inv = ev(p, EventType::Invoke, f, key, input, t0);
        inv.if_revision = if_revision;
        self.0.push(inv);
        if let Some(t1) = t1 {
            let mut done = ev(p, kind, f, key, seen, t1);
            done.if_revision = if_revision;
            done.attempts = Some(Attempts {
                sent: 1,
                revision,
                conflict,
                ..Attempts::default()
            });
            self.0.push(done);
        }
        self
    }
    /// A write acknowledged at revision `rev`.
    fn wr(&mut self, p: u64, key: &str, v: i64, rev: u64, t0: u64, t1: u64) -> &mut Self {
        let op = (Func::Write, key, json!(v), None);
        self.with_revision(
            p,
            op,
            (EventType::Ok, json!(v), Some(rev), false),
            t0,
            Some(t1),
        )
    }
    /// A read of `(value, revision)`, or of absence.
    fn rr(&mut self, p: u64, key: &str, seen: Option<(i64, u64)>, t0: u64, t1: u64) -> &mut Self {
        let (v, rev) = seen.map_or((Value::Null, None), |(v, r)| (json!(v), Some(r)));
        let op = (Func::Read, key, Value::Null, None);
        self.with_revision(p, op, (EventType::Ok, v, rev, false), t0, Some(t1))
    }
    /// A compare-and-swap of `v` expecting revision `e`, acknowledged at revision `rev`.
    #[allow(clippy::too_many_arguments)]
    fn cas(&mut self, p: u64, key: &str, v: i64, e: u64, rev: u64, t0: u64, t1: u64) -> &mut Self {
        let op = (Func::Write, key, json!(v), Some(e));
        self.with_revision(
            p,
            op,
            (EventType::Ok, json!(v), Some(rev), false),
            t0,
            Some(t1),
        )
    }
    /// A compare-and-swap of `v` expecting `e`, refused with `conflict` reporting `current`.
    #[allow(clippy::too_many_arguments)]
    fn cas_refused(
        &mut self,
        p: u64,
        key: &str,
        (v, e): (i64, u64),
        current: Option<u64>,
        t0: u64,
        t1: u64,
    ) -> &mut Self {
        let op = (Func::Write, key, json!(v), Some(e));
        self.with_revision(
            p,
            op,
            (EventType::Fail, json!(v), current, true),
            t0,
            Some(t1),
        )
    }
    /// A compare-and-swap of unknown outcome (`info` at `t1`, or no completion).
    fn cas_info(
        &mut self,
        p: u64,
        key: &str,
        (v, e): (i64, u64),
        t0: u64,
        t1: Option<u64>,
    ) -> &mut Self {
        let op = (Func::Write, key, json!(v), Some(e));
        self.with_revision(p, op, (EventType::Info, json!(v), None, false), t0, t1)
    }
    fn check(&self) -> Report {
        match check(&self.0, &Limits::default()) {
            Ok(r) => r,
            Err(e) => panic!("unexpected malformed history: {e}"),
        }
    }
    fn verdict(&self) -> Verdict {
        self.check().verdict
    }
}

fn explanation(r: &Report) -> String {
    r.keys
        .iter()
        .filter_map(|k| k.explanation.clone())
        .collect::<Vec<_>>()
        .join("\n")
}
