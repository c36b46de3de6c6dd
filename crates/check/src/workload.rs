//! The workload: concurrent client processes doing random reads, writes (each with a
//! unique value) and deletes on a small key set over the wire protocol, recording every
//! operation. Processes are pinned to NATS servers round-robin, so every side of a
//! partition sees client traffic.
//!
//! A process whose operation ends with an unknown outcome (`timeout`, `internal`, a lost
//! connection) is retired and replaced by a new process id, as in Jepsen: a process has at
//! most one operation in flight, and an unknown one stays open forever.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::RequestErrorKind;
use serde_json::{json, Value};

use crate::history::{Event, EventType, Func, History};
use concord_wire::ErrorKind;

#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// One NATS URL per server; process `p` uses `urls[p % len]`.
    pub urls: Vec<String>,
    pub prefix: String,
    pub clients: usize,
    pub keys: usize,
    /// Deadline of one operation (sent as `timeout_ms`).
    pub op_timeout: Duration,
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

    fn record(&self, process: u64, kind: EventType, f: Func, key: &str, value: Value) {
        // The time is taken under the lock so the history's order matches its times.
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.push(Event {
            process,
            kind,
            f,
            key: key.to_string(),
            value,
            time: self.start.elapsed().as_nanos() as u64,
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
    }
    c
}

/// How a reply is recorded.
enum ReplyClass {
    Ok(Value),
    Fail,
    Info,
}

fn classify(f: Func, reply: &Value) -> ReplyClass {
    if reply["ok"] == json!(true) {
        return match f {
            Func::Read => ReplyClass::Ok(reply["value"].clone()),
            _ => ReplyClass::Ok(Value::Null),
        };
    }
    let code: Option<ErrorKind> = serde_json::from_value(reply["error"]["code"].clone()).ok();
    match code {
        // A read of an absent key observed "absent".
        Some(ErrorKind::NotFound) if f == Func::Read => ReplyClass::Ok(Value::Null),
        // DESIGN.md: these mean the command did not happen.
        Some(
            ErrorKind::ClusterNotReady
            | ErrorKind::Busy
            | ErrorKind::BadRequest
            | ErrorKind::InvalidKey
            | ErrorKind::ValueTooLarge
            | ErrorKind::Unauthorized
            | ErrorKind::NoSpace
            | ErrorKind::NotFound
            | ErrorKind::Conflict,
        ) => ReplyClass::Fail,
        Some(ErrorKind::Timeout | ErrorKind::Internal) | None => ReplyClass::Info,
    }
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
    let mut conns = Vec::new();
    for url in &cfg.urls {
        let c = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url.as_str())
            .await?;
        conns.push(c);
    }
    let values = Arc::new(AtomicU64::new(1));
    let mut tasks = Vec::new();
    for slot in 0..cfg.clients {
        let nats = conns[slot % conns.len()].clone();
        let (cfg, recorder, stop, values) =
            (cfg.clone(), recorder.clone(), stop.clone(), values.clone());
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
                let class = one_op(&nats, &cfg, &recorder, process, f, &key, &value).await;
                if matches!(class, ReplyClass::Info) {
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

async fn one_op(
    nats: &async_nats::Client,
    cfg: &WorkloadConfig,
    recorder: &Recorder,
    process: u64,
    f: Func,
    key: &str,
    value: &Value,
) -> ReplyClass {
    let timeout_ms = cfg.op_timeout.as_millis() as u64;
    let (op, body) = match f {
        Func::Read => ("get", json!({"key": key, "timeout_ms": timeout_ms})),
        Func::Write => (
            "put",
            json!({"key": key, "value": value, "timeout_ms": timeout_ms}),
        ),
        Func::Delete => ("delete", json!({"key": key, "timeout_ms": timeout_ms})),
    };
    let subject = format!("{}.kv.{op}", cfg.prefix);
    recorder.record(process, EventType::Invoke, f, key, value.clone());
    let request = async_nats::Request::new()
        .payload(body.to_string().into())
        .timeout(Some(cfg.op_timeout + Duration::from_millis(500)));
    let class = match nats.send_request(subject, request).await {
        Ok(reply) => match serde_json::from_slice::<Value>(&reply.payload) {
            Ok(v) => classify(f, &v),
            Err(_) => ReplyClass::Info,
        },
        // Nobody subscribed: the request was not delivered.
        Err(e) if e.kind() == RequestErrorKind::NoResponders => ReplyClass::Fail,
        Err(_) => ReplyClass::Info,
    };
    let (kind, recorded) = match &class {
        ReplyClass::Ok(v) => (
            EventType::Ok,
            if f == Func::Read {
                v.clone()
            } else {
                value.clone()
            },
        ),
        ReplyClass::Fail => (EventType::Fail, value.clone()),
        ReplyClass::Info => (EventType::Info, value.clone()),
    };
    recorder.record(process, kind, f, key, recorded);
    if matches!(class, ReplyClass::Fail) {
        // Back off a little: a cluster without a leader answers fast.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    class
}

/// After the faults heal: one linearizable read of every key, retried until it succeeds
/// (bounded by `deadline`), by fresh processes numbered from `first_process`.
pub async fn final_reads(
    cfg: &WorkloadConfig,
    recorder: &Recorder,
    first_process: u64,
    deadline: Duration,
) -> Result<Vec<(String, Value)>, String> {
    let nats = async_nats::connect(cfg.urls[0].as_str())
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
            match one_op(
                &nats,
                cfg,
                recorder,
                process,
                Func::Read,
                &key,
                &Value::Null,
            )
            .await
            {
                ReplyClass::Ok(v) => {
                    out.push((key.clone(), v));
                    break;
                }
                ReplyClass::Fail => {}
                ReplyClass::Info => process += 1_000_000,
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

    #[test]
    fn replies_are_classified_by_the_design_table() {
        let ok = classify(Func::Read, &json!({"ok": true, "value": 3, "revision": 1}));
        assert!(matches!(ok, ReplyClass::Ok(v) if v == json!(3)));
        let nf = classify(
            Func::Read,
            &json!({"ok": false, "error": {"code": "not_found", "message": "x"}}),
        );
        assert!(matches!(nf, ReplyClass::Ok(Value::Null)));
        let cnr = classify(
            Func::Write,
            &json!({"ok": false, "error": {"code": "cluster_not_ready", "message": "x"}}),
        );
        assert!(matches!(cnr, ReplyClass::Fail));
        let t = classify(
            Func::Write,
            &json!({"ok": false, "error": {"code": "timeout", "message": "x"}}),
        );
        assert!(matches!(t, ReplyClass::Info));
        let junk = classify(Func::Write, &json!({"weird": 1}));
        assert!(matches!(junk, ReplyClass::Info));
    }
}
