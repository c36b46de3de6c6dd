//! The lock workload over the wire: the holders and the stale holder (see the module docs).
//! Records into a [`LockHistory`]; never judges.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    value, Acquire, LockHistory, Release, Write, HOLD_TTL_MS, KEY, NAME, STALE_TTL_MS, WAIT_MS,
    WRITES,
};
use crate::call::{self, perform, Clock, Outcome};
use crate::workload::WorkloadConfig;

/// An acquire attempt's deadline: above `wait_ms` with room for the withdrawal.
const ACQUIRE_ATTEMPT: Duration = Duration::from_millis(WAIT_MS + 1500);
/// An acquire over its attempts.
const ACQUIRE_DEADLINE: Duration = Duration::from_secs(12);
const ATTEMPT: Duration = Duration::from_millis(1000);
const WRITE_DEADLINE: Duration = Duration::from_secs(6);

pub struct LockRun {
    pub clock: Clock,
    pub cfg: WorkloadConfig,
    conns: Vec<async_nats::Client>,
    pub election_timeout_max_ms: u64,
    pub history: Mutex<LockHistory>,
}

impl LockRun {
    pub async fn new(
        cfg: WorkloadConfig,
        election_timeout_max_ms: u64,
    ) -> Result<Arc<LockRun>, String> {
        let conns = call::connect(&cfg.urls).await?;
        Ok(Arc::new(LockRun {
            clock: Clock::new(),
            cfg,
            conns,
            election_timeout_max_ms,
            history: Mutex::new(LockHistory::default()),
        }))
    }

    fn record(&self, f: impl FnOnce(&mut LockHistory)) {
        f(&mut self.history.lock().unwrap_or_else(|e| e.into_inner()));
    }

    async fn perform(
        &self,
        home: usize,
        op: &str,
        body: &Value,
        timing: (Duration, Duration),
    ) -> (Outcome, call::Tries) {
        let subject = call::subject(&self.cfg.prefix, op);
        perform(&self.conns, home, (&subject, body), timing.0, timing.1).await
    }

    /// An acquire with a fresh request id, retried with it; its fence and lease if granted.
    async fn acquire(&self, client: u64, ttl_ms: u64) -> Option<(u64, u64)> {
        let request_id = call::request_id();
        let body =
            json!({"name": NAME, "ttl_ms": ttl_ms, "wait_ms": WAIT_MS, "request_id": request_id});
        let invoked = self.clock.now();
        let timing = (ACQUIRE_ATTEMPT, ACQUIRE_DEADLINE);
        let (outcome, tries) = self
            .perform(client as usize, "lock.acquire", &body, timing)
            .await;
        let granted = outcome
            .reply()
            .and_then(|r| Some((r["fence"].as_u64()?, r["lease"].as_u64()?)));
        let completed = self.clock.now();
        self.record(|h| {
            h.acquires.push(Acquire {
                client,
                request_id,
                invoked,
                completed,
                outcome,
                tries,
            })
        });
        granted
    }

    /// A fenced put of `value` into [`KEY`] with a fresh request id.
    async fn write(&self, client: u64, fence: u64, value: String, stale: (bool, bool)) -> Outcome {
        let body = json!({"key": KEY, "value": value, "fence": {"lock": NAME, "token": fence},
            "request_id": call::request_id()});
        let invoked = self.clock.now();
        let timing = (ATTEMPT, WRITE_DEADLINE);
        let (outcome, _) = self.perform(client as usize, "kv.put", &body, timing).await;
        let completed = self.clock.now();
        let w = Write {
            client,
            fence,
            value,
            invoked,
            completed,
            outcome: outcome.clone(),
            stale: stale.0,
            lease_seen_ended: stale.1,
        };
        self.record(|h| h.writes.push(w));
        outcome
    }

    async fn release(&self, client: u64, fence: u64, stale: bool) {
        let body = json!({"name": NAME, "fence": fence, "request_id": call::request_id()});
        let timing = (ATTEMPT, WRITE_DEADLINE);
        let (outcome, _) = self
            .perform(client as usize, "lock.release", &body, timing)
            .await;
        self.record(|h| {
            h.releases.push(Release {
                client,
                fence,
                outcome,
                stale,
            })
        });
    }
}

/// Runs the holders (clients 1..) and the stale holder (client 0) until `stop`.
pub async fn run(r: Arc<LockRun>, clients: usize, stop: Arc<AtomicBool>) -> Result<(), String> {
    let mut tasks = vec![tokio::spawn(stale_holder(r.clone(), stop.clone()))];
    for c in 1..clients.max(2) as u64 {
        tasks.push(tokio::spawn(holder(r.clone(), c, stop.clone())));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Acquire, keep the lease alive, [`WRITES`] fenced writes, release; until `stop`.
async fn holder(r: Arc<LockRun>, client: u64, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Some((fence, lease)) = r.acquire(client, HOLD_TTL_MS).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let held = Arc::new(AtomicBool::new(true));
        let keeper = tokio::spawn(keep_alive(r.clone(), client, lease, held.clone()));
        for n in 0..WRITES {
            let out = r
                .write(client, fence, value(client, fence, n), (false, false))
                .await;
            if out.code() == Some("conflict") {
                // The lock is lost (the lease ended): the fence is stale now.
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        held.store(false, Ordering::Relaxed);
        if keeper.await.unwrap_or(false) {
            r.record(|h| h.leases_lost += 1);
        }
        r.release(client, fence, false).await;
    }
}

/// Keepalives of `lease` every third of the hold ttl while `held`; true if it ended.
async fn keep_alive(r: Arc<LockRun>, client: u64, lease: u64, held: Arc<AtomicBool>) -> bool {
    let body = json!({ "id": lease });
    loop {
        let until = Instant::now() + Duration::from_millis(HOLD_TTL_MS / 3);
        while Instant::now() < until {
            if !held.load(Ordering::Relaxed) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let timing = (ATTEMPT, Duration::from_millis(HOLD_TTL_MS / 3));
        let (out, _) = r
            .perform(client as usize, "lease.keepalive", &body, timing)
            .await;
        if out.code() == Some("not_found") {
            return true;
        }
    }
}

/// The stale holder: acquire, one write, then silence past the lease's end and a write
/// with the old fence; until `stop`.
async fn stale_holder(r: Arc<LockRun>, stop: Arc<AtomicBool>) {
    let client = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some((fence, lease)) = r.acquire(client, STALE_TTL_MS).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        r.write(client, fence, value(client, fence, 0), (false, false))
            .await;
        // As if SIGSTOPped: no keepalive, past the latest end the lease may have.
        let past = STALE_TTL_MS + 2 * r.election_timeout_max_ms + 1000 + 200;
        tokio::time::sleep(Duration::from_millis(past)).await;
        let ended = lease_ended(&r, lease, Duration::from_secs(5)).await;
        r.write(client, fence, value(client, fence, 1), (true, ended))
            .await;
        r.release(client, fence, true).await;
    }
}

/// Polls `lease.get` until `not_found` or `deadline`.
async fn lease_ended(r: &LockRun, lease: u64, deadline: Duration) -> bool {
    let until = Instant::now() + deadline;
    let body = json!({ "id": lease });
    while Instant::now() < until {
        let (out, _) = r.perform(0, "lease.get", &body, (ATTEMPT, ATTEMPT)).await;
        if out.code() == Some("not_found") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
