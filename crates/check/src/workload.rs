//! The workload: concurrent client processes doing random reads, writes (each with a
//! unique value) and deletes on a small key set over the wire protocol, recording every
//! operation. Processes are pinned to NATS servers round-robin, so every side of a
//! partition sees client traffic.
//!
//! Every write carries a fresh `request_id` (a UUID v4), and by default a process retries an
//! operation whose attempt timed out or was turned away ([`crate::retry`]), with the same id
//! and body, so an operation is one invoke and one completion however many attempts it took.
//! With retries off (`--no-retry`), one attempt, and an unknown outcome is final.
//!
//! A process whose operation ends with an unknown outcome (every attempt timed out, or
//! `internal`) is retired and replaced by a new process id, as in Jepsen: a process has at
//! most one operation in flight, and an unknown one stays open forever.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::history::{Attempts, Event, EventType, Func, History};
use crate::retry::{self, Outcome, RetryPolicy};

#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// One NATS URL per server; process `p` starts every operation on `urls[p % len]` and
    /// retries on the next ones.
    pub urls: Vec<String>,
    pub prefix: String,
    pub clients: usize,
    pub keys: usize,
    /// Deadlines of an attempt and of an operation, and whether to retry at all.
    pub policy: RetryPolicy,
}

/// Shared recorder: events in the order they happened.
pub struct Recorder {
    start: Instant,
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
        })
    }

    fn record(
        &self,
        process: u64,
        (kind, f): (EventType, Func),
        key: &str,
        value: Value,
        attempts: Option<Attempts>,
    ) {
        // The time is taken under the lock so the history's order matches its times.
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.push(Event {
            process,
            kind,
            f,
            key: key.to_string(),
            value,
            time: self.start.elapsed().as_nanos() as u64,
            attempts,
        });
    }

    /// `at` as a history time (ns since the workload started; 0 if before it).
    pub fn time_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_nanos() as u64
    }

    pub fn history(&self) -> History {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Counts by outcome, for the verdict.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Counts {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
    /// Requests sent over all operations (one per operation without retries).
    pub attempts: u64,
    /// Operations that took more than one attempt.
    pub retried: u64,
}

pub fn count(history: &[Event]) -> Counts {
    let mut c = Counts::default();
    for e in history {
        match e.kind {
            EventType::Ok => c.ok += 1,
            EventType::Fail => c.fail += 1,
            EventType::Info => c.info += 1,
            EventType::Invoke => {}
        }
        if let Some(a) = &e.attempts {
            c.attempts += u64::from(a.sent);
            c.retried += u64::from(a.sent > 1);
        }
    }
    c
}

/// xorshift, seeded per process: the workload needs spread, not secrecy.
fn next(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// Runs the workload until `stop` is set. Returns once every client has finished its
/// current operation.
pub async fn run(
    cfg: WorkloadConfig,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) -> Result<(), async_nats::ConnectError> {
    let conns = Arc::new(connect(&cfg.urls).await?);
    let values = Arc::new(AtomicU64::new(1));
    let mut tasks = Vec::new();
    for slot in 0..cfg.clients {
        let (cfg, recorder, stop, values, conns) = (
            cfg.clone(),
            recorder.clone(),
            stop.clone(),
            values.clone(),
            conns.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut process = slot as u64;
            let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ ((slot as u64 + 1) << 17);
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{}", next(&mut rng) % cfg.keys.max(1) as u64);
                let roll = next(&mut rng) % 100;
                let (f, value) = if roll < 50 {
                    (Func::Read, Value::Null)
                } else if roll < 90 {
                    (Func::Write, json!(values.fetch_add(1, Ordering::Relaxed)))
                } else {
                    (Func::Delete, Value::Null)
                };
                let op = (f, key.as_str(), &value);
                let outcome = one_op(&conns, slot, &cfg, &recorder, process, op).await;
                if outcome == Outcome::Info {
                    process += cfg.clients as u64;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// One client connection per NATS server, in `urls` order.
async fn connect(urls: &[String]) -> Result<Vec<async_nats::Client>, async_nats::ConnectError> {
    let mut conns = Vec::new();
    for url in urls {
        let c = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url.as_str())
            .await?;
        conns.push(c);
    }
    Ok(conns)
}

/// One logical operation `(f, key, value)` of `process`, starting on server `home`: its
/// invoke, its attempts, and its completion with how the attempts went.
async fn one_op(
    conns: &[async_nats::Client],
    home: usize,
    cfg: &WorkloadConfig,
    recorder: &Recorder,
    process: u64,
    (f, key, value): (Func, &str, &Value),
) -> Outcome {
    // A fresh id per logical operation; every attempt of it carries the same one.
    let request_id = (f != Func::Read).then(|| uuid::Uuid::new_v4().to_string());
    let req = retry::Request {
        prefix: &cfg.prefix,
        f,
        key,
        value,
        request_id: request_id.as_deref(),
    };
    recorder.record(process, (EventType::Invoke, f), key, value.clone(), None);
    let (outcome, attempts) = retry::perform(conns, home, &cfg.policy, &req).await;
    let (kind, recorded) = match &outcome {
        Outcome::Ok(v) if f == Func::Read => (EventType::Ok, v.clone()),
        Outcome::Ok(_) => (EventType::Ok, value.clone()),
        Outcome::Fail => (EventType::Fail, value.clone()),
        Outcome::Info => (EventType::Info, value.clone()),
    };
    recorder.record(process, (kind, f), key, recorded, Some(attempts));
    if outcome == Outcome::Fail {
        // Back off a little: a cluster without a leader answers fast.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    outcome
}

/// The key the revision probes write; not one of the workload's (`k0`, `k1`, …).
pub const PROBE_KEY: &str = "revision-probe";

/// The store's revision, read by a put of [`PROBE_KEY`] (with an id, retried within
/// `deadline`): the probe's own revision, and how many of its attempts had an unknown
/// outcome (each may have applied too, taking a revision below it). Not recorded in the
/// history.
pub async fn revision_probe(
    cfg: &WorkloadConfig,
    deadline: Duration,
) -> Result<(u64, u32), String> {
    let conns = connect(&cfg.urls)
        .await
        .map_err(|e| format!("revision probe: cannot connect: {e}"))?;
    let policy = RetryPolicy {
        retry: true,
        op_deadline: deadline,
        ..cfg.policy
    };
    let id = uuid::Uuid::new_v4().to_string();
    let value = json!(id);
    let req = retry::Request {
        prefix: &cfg.prefix,
        f: Func::Write,
        key: PROBE_KEY,
        value: &value,
        request_id: Some(&id),
    };
    match retry::perform(&conns, 0, &policy, &req).await {
        (Outcome::Ok(_), a) => a
            .revision
            .map(|r| (r, a.unknown))
            .ok_or_else(|| "revision probe: the put's reply has no revision".to_string()),
        (other, a) => Err(format!(
            "revision probe: the put did not succeed within {deadline:?} ({other:?} after {} attempts)",
            a.sent
        )),
    }
}

/// After the faults heal: one linearizable read of every key, retried until it succeeds
/// (bounded by `deadline`), by fresh processes numbered from `first_process`.
pub async fn final_reads(
    cfg: &WorkloadConfig,
    recorder: &Recorder,
    first_process: u64,
    deadline: Duration,
) -> Result<Vec<(String, Value)>, String> {
    let conns = connect(&cfg.urls)
        .await
        .map_err(|e| format!("final reads: cannot connect: {e}"))?;
    let until = Instant::now() + deadline;
    let mut process = first_process;
    let mut out = Vec::new();
    for k in 0..cfg.keys {
        let key = format!("k{k}");
        loop {
            if Instant::now() > until {
                return Err(format!(
                    "final read of {key} did not succeed within {deadline:?}"
                ));
            }
            let op = (Func::Read, key.as_str(), &Value::Null);
            match one_op(&conns, 0, cfg, recorder, process, op).await {
                Outcome::Ok(v) => {
                    out.push((key.clone(), v));
                    break;
                }
                Outcome::Fail => {}
                Outcome::Info => process += 1_000_000,
            }
        }
        process += 1;
    }
    Ok(out)
}

/// Acknowledged writes that the final state contradicts. An acknowledged write `w` is lost
/// when whatever produced the final value had certainly finished before `w` began: the write
/// of that value (or every delete, for a final "absent") was acknowledged before `w` was
/// invoked. A write with an unknown outcome may land at any later time, so it excuses a
/// final value it wrote.
pub fn lost_writes(history: &[Event], finals: &[(String, Value)]) -> Vec<String> {
    /// One write or delete: invoke time, the invoke event, completion (kind, time).
    struct Op<'a> {
        invoked: u64,
        event: &'a Event,
        done: Option<(EventType, u64)>,
    }
    let mut lost = Vec::new();
    for (key, final_value) in finals {
        let mut ops: Vec<Op> = Vec::new();
        let mut open: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
        for e in history
            .iter()
            .filter(|e| &e.key == key && e.f != Func::Read)
        {
            match e.kind {
                EventType::Invoke => {
                    open.insert(e.process, ops.len());
                    ops.push(Op {
                        invoked: e.time,
                        event: e,
                        done: None,
                    });
                }
                kind => {
                    if let Some(i) = open.remove(&e.process) {
                        ops[i].done = Some((kind, e.time));
                    }
                }
            }
        }
        // The operations that could have produced the final value.
        let producers: Vec<&Op> = ops
            .iter()
            .filter(|o| !matches!(o.done, Some((EventType::Fail, _))))
            .filter(|o| match o.event.f {
                Func::Write => &o.event.value == final_value,
                _ => final_value.is_null(),
            })
            .collect();
        for w in ops.iter().filter(|o| o.event.f == Func::Write) {
            let Some((EventType::Ok, w_done)) = w.done else {
                continue;
            };
            if &w.event.value == final_value {
                continue;
            }
            // Superseded by a later acknowledged write or delete: not this write's to keep.
            let superseded = ops
                .iter()
                .any(|o| o.invoked > w_done && matches!(o.done, Some((EventType::Ok, _))));
            if superseded {
                continue;
            }
            let all_before = producers
                .iter()
                .all(|p| matches!(p.done, Some((EventType::Ok, t)) if t < w.invoked));
            if all_before {
                lost.push(format!(
                    "key {key}: acknowledged write of {} (process {}) was overwritten by nothing that started after it, yet the final read returns {final_value}",
                    w.event.value, w.event.process
                ));
            }
        }
    }
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(process: u64, kind: EventType, f: Func, value: Value, time: u64) -> Event {
        Event {
            process,
            kind,
            f,
            key: "k".into(),
            value,
            time,
            attempts: None,
        }
    }

    #[test]
    fn a_lost_write_is_named() {
        let h = vec![
            ev(1, EventType::Invoke, Func::Write, json!(1), 1),
            ev(1, EventType::Ok, Func::Write, json!(1), 2),
            ev(1, EventType::Invoke, Func::Write, json!(2), 3),
            ev(1, EventType::Ok, Func::Write, json!(2), 4),
        ];
        assert!(lost_writes(&h, &[("k".into(), json!(2))]).is_empty());
        assert_eq!(lost_writes(&h, &[("k".into(), json!(1))]).len(), 1);
        assert_eq!(lost_writes(&h, &[("k".into(), Value::Null)]).len(), 1);
    }

    #[test]
    fn an_earlier_unknown_write_may_land_last() {
        // w(1) invoked first and timed out; w(2) acknowledged later; w(1) may still apply.
        let h = vec![
            ev(1, EventType::Invoke, Func::Write, json!(1), 1),
            ev(2, EventType::Invoke, Func::Write, json!(2), 2),
            ev(2, EventType::Ok, Func::Write, json!(2), 3),
            ev(1, EventType::Info, Func::Write, json!(1), 4),
        ];
        assert!(lost_writes(&h, &[("k".into(), json!(1))]).is_empty());
        // Had w(1) been acknowledged before w(2) began, w(2) would be lost.
        let h2 = vec![
            ev(1, EventType::Invoke, Func::Write, json!(1), 1),
            ev(1, EventType::Ok, Func::Write, json!(1), 2),
            ev(2, EventType::Invoke, Func::Write, json!(2), 3),
            ev(2, EventType::Ok, Func::Write, json!(2), 4),
        ];
        assert_eq!(lost_writes(&h2, &[("k".into(), json!(1))]).len(), 1);
    }

    #[test]
    fn a_later_unknown_write_excuses_the_final_value() {
        let h = vec![
            ev(1, EventType::Invoke, Func::Write, json!(1), 1),
            ev(1, EventType::Ok, Func::Write, json!(1), 2),
            ev(2, EventType::Invoke, Func::Delete, Value::Null, 3),
            ev(2, EventType::Info, Func::Delete, Value::Null, 4),
        ];
        assert!(lost_writes(&h, &[("k".into(), Value::Null)]).is_empty());
        // A failed later write does not excuse anything.
        let h2 = vec![
            ev(1, EventType::Invoke, Func::Write, json!(1), 1),
            ev(1, EventType::Ok, Func::Write, json!(1), 2),
            ev(2, EventType::Invoke, Func::Write, json!(5), 3),
            ev(2, EventType::Fail, Func::Write, json!(5), 4),
        ];
        assert_eq!(lost_writes(&h2, &[("k".into(), json!(5))]).len(), 1);
    }
}
