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
//! The `cas` workload ([`Workload::Cas`]) adds compare-and-swap: a process remembers the
//! revision its last read of each key returned and sends some writes with `if_revision` set
//! to it (some with 0, "create only"); one that answers `conflict` is recorded `fail` with
//! the key's current revision, and the checker's model holds it to that.
//!
//! A process whose operation ends with an unknown outcome (every attempt timed out, or
//! `internal`) is retired and replaced by a new process id, as in Jepsen: a process has at
//! most one operation in flight, and an unknown one stays open forever.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::history::{Attempts, Event, EventType, Func, History};
use crate::retry::{self, Outcome, RetryPolicy};

/// Which operations the processes do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Reads, writes of unique values and deletes.
    Register,
    /// Reads, writes of unique values, compare-and-swap writes (`if_revision`) and a few
    /// deletes.
    Cas,
    /// Transfers between accounts by txn and reads of all accounts (its own client and
    /// checker: the `bank` module).
    Bank,
    /// Puts of unique values (every fourth of 17 KiB) under a prefix, followed by one watcher
    /// per node through every fault, and each watcher's stream checked against the change log
    /// (the `watch` module).
    Watch,
    /// A lease kept alive, leases abandoned and leases revoked, through every fault: never
    /// early, bounded late, revoke at one revision (the `lease` module).
    Lease,
    /// Clients taking a lock and writing under its fence, one of them stale: no two holders'
    /// writes interleave, stale fences refused (the `lock` module).
    Lock,
}

impl Workload {
    pub fn parse(s: &str) -> Option<Workload> {
        match s {
            "register" => Some(Workload::Register),
            "cas" => Some(Workload::Cas),
            "bank" => Some(Workload::Bank),
            "watch" => Some(Workload::Watch),
            "lease" => Some(Workload::Lease),
            "lock" => Some(Workload::Lock),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub workload: Workload,
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
        (key, value, if_revision): (&str, Value, Option<u64>),
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
            if_revision,
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

/// Compare-and-swap writes by outcome, for the verdict: a run that tests CAS has some of
/// each of the first two.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CasCounts {
    pub ok: u64,
    /// Answered `conflict`: the key's revision was another.
    pub conflict: u64,
    /// Refused otherwise, or of unknown outcome.
    pub other: u64,
}

pub fn count_cas(history: &[Event]) -> CasCounts {
    let mut c = CasCounts::default();
    for e in history
        .iter()
        .filter(|e| e.kind != EventType::Invoke && e.if_revision.is_some())
    {
        match e.kind {
            EventType::Ok => c.ok += 1,
            EventType::Fail if e.attempts.as_ref().is_some_and(|a| a.conflict) => c.conflict += 1,
            _ => c.other += 1,
        }
    }
    c
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
            // The revision this process's last read of each key returned (0: absent).
            let mut last_read: HashMap<String, u64> = HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{}", next(&mut rng) % cfg.keys.max(1) as u64);
                let roll = next(&mut rng) % 100;
                let (f, if_revision) = pick(cfg.workload, roll, last_read.get(&key).copied());
                let value = match f {
                    Func::Write => json!(values.fetch_add(1, Ordering::Relaxed)),
                    _ => Value::Null,
                };
                let op = (f, key.as_str(), &value, if_revision);
                let (outcome, revision) = one_op(&conns, slot, &cfg, &recorder, process, op).await;
                match outcome {
                    Outcome::Ok(v) if f == Func::Read => {
                        let rev = if v.is_null() {
                            0
                        } else {
                            revision.unwrap_or(0)
                        };
                        last_read.insert(key, rev);
                    }
                    Outcome::Info => process += cfg.clients as u64,
                    _ => {}
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// The next operation for a roll in 0..100: its function and, for a compare-and-swap, the
/// expected revision (`last_read`, the revision this process last read of the key, or 0,
/// "create only", when it read none, and for a few of them anyway).
fn pick(workload: Workload, roll: u64, last_read: Option<u64>) -> (Func, Option<u64>) {
    match workload {
        Workload::Register => match roll {
            0..50 => (Func::Read, None),
            50..90 => (Func::Write, None),
            _ => (Func::Delete, None),
        },
        // The bank, watch, lease and lock workloads run their own processes (their modules' clients);
        // never here.
        Workload::Cas | Workload::Bank | Workload::Watch | Workload::Lease | Workload::Lock => {
            match roll {
                0..45 => (Func::Read, None),
                45..60 => (Func::Write, None),
                60..90 => (Func::Write, Some(last_read.unwrap_or(0))),
                90..95 => (Func::Write, Some(0)),
                _ => (Func::Delete, None),
            }
        }
    }
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

/// One logical operation `(f, key, value, if_revision)` of `process`, starting on server
/// `home`: its invoke, its attempts, and its completion with how the attempts went. Returns
/// the outcome and the revision of its reply.
async fn one_op(
    conns: &[async_nats::Client],
    home: usize,
    cfg: &WorkloadConfig,
    recorder: &Recorder,
    process: u64,
    (f, key, value, if_revision): (Func, &str, &Value, Option<u64>),
) -> (Outcome, Option<u64>) {
    // A fresh id per logical operation; every attempt of it carries the same one.
    let request_id = (f != Func::Read).then(|| uuid::Uuid::new_v4().to_string());
    let req = retry::Request {
        prefix: &cfg.prefix,
        f,
        key,
        value,
        request_id: request_id.as_deref(),
        if_revision,
        txn: None,
    };
    let invoke = (key, value.clone(), if_revision);
    recorder.record(process, (EventType::Invoke, f), invoke, None);
    let (outcome, attempts) = retry::perform(conns, home, &cfg.policy, &req).await;
    let (kind, recorded) = match &outcome {
        Outcome::Ok(v) if f == Func::Read => (EventType::Ok, v.clone()),
        Outcome::Ok(_) => (EventType::Ok, value.clone()),
        Outcome::Fail => (EventType::Fail, value.clone()),
        Outcome::Info => (EventType::Info, value.clone()),
    };
    let revision = attempts.revision;
    let conflict = attempts.conflict;
    let done = (key, recorded, if_revision);
    recorder.record(process, (kind, f), done, Some(attempts));
    if outcome == Outcome::Fail && !conflict {
        // Back off a little: a cluster without a leader answers fast.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (outcome, revision)
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
        if_revision: None,
        txn: None,
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
            let op = (Func::Read, key.as_str(), &Value::Null, None);
            match one_op(&conns, 0, cfg, recorder, process, op).await.0 {
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
            if_revision: None,
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
