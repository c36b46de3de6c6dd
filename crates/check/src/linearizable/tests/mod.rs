//! Tests of the checker, on whole histories through [`check`]: the history builder shared
//! by both files, `hand_made` (small histories written for one rule or one bug each, and
//! the search's limits) and `random` (simulated registers, and random small histories
//! whose verdict is compared with an exhaustive search).

mod hand_made;
mod random;

use serde_json::{json, Value};

use super::*;
use crate::history::EventType;

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
