//! The watch workload over the wire: the writers' puts (through [`crate::retry`]), the
//! watchers ([`super::follow`]), the store revision by a scan, and the truth. Records;
//! never judges (that is [`super::check`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::follow::{self, Control, Spec};
use super::{PutOutcome, PutRecord, WatcherLog, PREFIX};
use crate::history::{Event, EventType, Func};
use crate::retry::{self, Outcome};
use crate::workload::WorkloadConfig;

/// Messages a watch may have unacknowledged: small, so that flow control is exercised.
const WINDOW: u32 = 16;
/// A writer's pause between puts: bounds the history (about 100 puts/s per writer at most).
const PACE: Duration = Duration::from_millis(10);

/// The workload's clock and its puts.
pub struct PutRecorder {
    pub start: Instant,
    puts: Mutex<Vec<PutRecord>>,
}

impl PutRecorder {
    pub fn new() -> Arc<PutRecorder> {
        Arc::new(PutRecorder {
            start: Instant::now(),
            puts: Mutex::new(Vec::new()),
        })
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// `at` as a history time (ns since the workload started; 0 if before it).
    pub fn time_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_nanos() as u64
    }

    pub fn puts(&self) -> Vec<PutRecord> {
        self.puts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

async fn connect(urls: &[String]) -> Result<Vec<async_nats::Client>, String> {
    let mut conns = Vec::new();
    for url in urls {
        let c = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url.as_str())
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        conns.push(c);
    }
    Ok(conns)
}

/// The store revision by a linearizable scan of the prefix (one item is enough: every page
/// carries `store_revision`), retried on any server until `deadline`.
pub async fn store_revision(cfg: &WorkloadConfig, deadline: Duration) -> Result<u64, String> {
    let conns = connect(&cfg.urls).await?;
    let until = Instant::now() + deadline;
    let body = json!({"prefix": PREFIX, "limit": 1, "timeout_ms": 1000}).to_string();
    let mut last = String::from("no attempt");
    for i in 0.. {
        if Instant::now() >= until {
            break;
        }
        let c = &conns[i % conns.len()];
        let asked = c.request(format!("{}.kv.scan", cfg.prefix), body.clone().into());
        match tokio::time::timeout(Duration::from_millis(1500), asked).await {
            Ok(Ok(m)) => match serde_json::from_slice::<Value>(&m.payload) {
                Ok(r) if r["ok"] == true => match r["store_revision"].as_u64() {
                    Some(rev) => return Ok(rev),
                    None => last = format!("no store_revision in {r}"),
                },
                Ok(r) => last = r.to_string(),
                Err(e) => last = e.to_string(),
            },
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no reply".into(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "the scan for the store revision did not succeed within {deadline:?} ({last})"
    ))
}

/// Waits until every node of `ids` (`cfg.urls` in the same order) serves a watch: the
/// cluster keeps a change log only once it writes log format 2, and revisions before that
/// count as compacted. Each test watch is cancelled at once.
pub async fn wait_watchable(
    cfg: &WorkloadConfig,
    ids: &[u64],
    deadline: Duration,
) -> Result<(), String> {
    let conns = connect(&cfg.urls).await?;
    let until = Instant::now() + deadline;
    for (id, c) in ids.iter().zip(&conns) {
        loop {
            let inbox = c.new_inbox();
            let body = json!({"prefix": PREFIX, "deliver": inbox, "timeout_ms": 1000});
            let subject = format!("{}.node.{id}.watch.create", cfg.prefix);
            let asked = c.request(subject, body.to_string().into());
            let last = match tokio::time::timeout(Duration::from_millis(1500), asked).await {
                Ok(Ok(m)) => match serde_json::from_slice::<Value>(&m.payload) {
                    Ok(r) if r["ok"] == true => {
                        let cancel = json!({"watch_id": r["watch_id"]}).to_string();
                        let subject = format!("{}.node.{id}.watch.cancel", cfg.prefix);
                        let asked = c.request(subject, cancel.into());
                        let _ = tokio::time::timeout(Duration::from_secs(1), asked).await;
                        break;
                    }
                    Ok(r) => r.to_string(),
                    Err(e) => e.to_string(),
                },
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no reply".into(),
            };
            if Instant::now() >= until {
                return Err(format!(
                    "node {id} did not serve a watch within {deadline:?} (last: {last})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// The writers: `cfg.clients` of them put unique values into `cfg.keys` keys under
/// [`PREFIX`] until `stop` is set.
pub async fn run_writers(
    cfg: WorkloadConfig,
    recorder: Arc<PutRecorder>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let conns = Arc::new(connect(&cfg.urls).await?);
    let mut tasks = Vec::new();
    for writer in 0..cfg.clients as u64 {
        let (cfg, recorder, stop, conns) =
            (cfg.clone(), recorder.clone(), stop.clone(), conns.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("{PREFIX}{}", (writer + n) % cfg.keys.max(1) as u64);
                put(&conns, &cfg, &recorder, (writer, &key, value_of(writer, n))).await;
                tokio::time::sleep(PACE).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// Every `LARGE_EVERY`th put of a writer carries a value this long: past the 16 KiB from
/// which the change log leaves a put's record in kv instead of its chunk, so the faults cover
/// that path too (versions read back from kv, and from the copy moved aside when replaced).
const LARGE_VALUE_BYTES: usize = 17 * 1024;
const LARGE_EVERY: u64 = 4;

/// The `n`th value of `writer`: unique, and now and then large.
fn value_of(writer: u64, n: u64) -> String {
    let value = format!("w{writer}-{n}");
    match n % LARGE_EVERY {
        0 => format!("{value}-{}", "x".repeat(LARGE_VALUE_BYTES)),
        _ => value,
    }
}

/// One put with a fresh request id, retried as the policy says, and recorded.
async fn put(
    conns: &[async_nats::Client],
    cfg: &WorkloadConfig,
    recorder: &PutRecorder,
    (writer, key, value): (u64, &str, String),
) {
    let invoked = recorder.now();
    let id = uuid::Uuid::new_v4().to_string();
    let json_value = json!(value);
    let req = retry::Request {
        prefix: &cfg.prefix,
        f: Func::Write,
        key,
        value: &json_value,
        request_id: Some(&id),
        if_revision: None,
        txn: None,
    };
    let (outcome, attempts) = retry::perform(conns, writer as usize, &cfg.policy, &req).await;
    let (outcome, revision) = match outcome {
        Outcome::Ok(reply) => match reply["revision"].as_u64().or(attempts.revision) {
            Some(rev) => (PutOutcome::Ok, Some(rev)),
            // An acknowledgement without a revision: the contract's put always has one.
            None => (PutOutcome::Unknown, None),
        },
        Outcome::Fail => (PutOutcome::Failed, None),
        Outcome::Info => (PutOutcome::Unknown, None),
    };
    let record = PutRecord {
        writer,
        key: key.to_string(),
        value,
        outcome,
        revision,
        invoked,
        completed: recorder.now(),
        attempts: Some(attempts),
    };
    recorder
        .puts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(record);
}

/// Starts one watcher per node (`ids[i]` served by `cfg.urls[i]`), each homed on its node,
/// following [`PREFIX`] from `start_revision` until `control` says stop.
pub async fn start_watchers(
    cfg: &WorkloadConfig,
    ids: &[u64],
    start_revision: u64,
    clock: Instant,
    control: Arc<Control>,
) -> Result<Vec<tokio::task::JoinHandle<WatcherLog>>, String> {
    let conns = connect(&cfg.urls).await?;
    let nodes: Vec<(u64, async_nats::Client)> = ids.iter().copied().zip(conns).collect();
    let mut tasks = Vec::new();
    for i in 0..nodes.len() {
        // Home first, then the others in turn.
        let order = (0..nodes.len())
            .map(|k| nodes[(i + k) % nodes.len()].clone())
            .collect();
        let spec = Spec {
            name: format!("watcher-n{}", nodes[i].0),
            subjects: cfg.prefix.clone(),
            watch_prefix: PREFIX.into(),
            nodes: order,
            start_revision,
            window: WINDOW,
            clock,
        };
        tasks.push(tokio::spawn(follow::follow(spec, control.clone())));
    }
    Ok(tasks)
}

/// The truth: a fresh watch from `start_revision` (on the first node of `ids` that serves
/// it), read until it has fully seen `final_revision` or `deadline` passes.
pub async fn truth(
    cfg: &WorkloadConfig,
    ids: &[u64],
    (start_revision, final_revision): (u64, u64),
    clock: Instant,
    deadline: Duration,
) -> Result<WatcherLog, String> {
    change_log(
        cfg,
        ids,
        PREFIX,
        (start_revision, final_revision),
        clock,
        deadline,
    )
    .await
}

/// The change log of `prefix` from `start_revision`, by a fresh watch (on the first node of
/// `ids` that serves it) read until it has fully seen `final_revision` or `deadline` passes.
pub async fn change_log(
    cfg: &WorkloadConfig,
    ids: &[u64],
    prefix: &str,
    (start_revision, final_revision): (u64, u64),
    clock: Instant,
    deadline: Duration,
) -> Result<WatcherLog, String> {
    let conns = connect(&cfg.urls).await?;
    let control = Arc::new(Control {
        target: AtomicU64::new(final_revision),
        give_up: AtomicBool::new(false),
    });
    let spec = Spec {
        name: "truth".into(),
        subjects: cfg.prefix.clone(),
        watch_prefix: prefix.into(),
        nodes: ids.iter().copied().zip(conns).collect(),
        start_revision,
        window: 1024,
        clock,
    };
    let task = tokio::spawn(follow::follow(spec, control.clone()));
    Ok(finish(vec![task], &control, deadline)
        .await
        .pop()
        .unwrap_or_default())
}

/// Waits for `tasks` until `deadline`, then tells them to give up and collects their logs.
pub async fn finish(
    tasks: Vec<tokio::task::JoinHandle<WatcherLog>>,
    control: &Control,
    deadline: Duration,
) -> Vec<WatcherLog> {
    let until = Instant::now() + deadline;
    while Instant::now() < until && tasks.iter().any(|t| !t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    control.give_up.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for t in tasks {
        logs.push(t.await.unwrap_or_default());
    }
    logs
}

/// The puts as the register workload's events (an invoke and a completion per put, by
/// time), for what reads only times and outcomes: the failover gaps and the counts.
pub fn as_register_events(puts: &[PutRecord]) -> Vec<Event> {
    let mut events = Vec::new();
    for p in puts {
        let event = |kind, time| Event {
            process: p.writer,
            kind,
            f: Func::Write,
            key: p.key.clone(),
            value: json!(p.value),
            time,
            attempts: p.attempts.clone(),
            if_revision: None,
        };
        events.push(event(EventType::Invoke, p.invoked));
        let kind = match p.outcome {
            PutOutcome::Ok => EventType::Ok,
            PutOutcome::Failed => EventType::Fail,
            PutOutcome::Unknown => EventType::Info,
        };
        events.push(event(kind, p.completed));
    }
    events.sort_by_key(|e| e.time);
    events
}
