//! The lease workload over the wire: the kept lease, the abandoned leases and the revokes
//! (see the module docs). Records into a [`LeaseHistory`]; never judges.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    Abandoned, Keepalive, LeaseHistory, Revoke, ABANDONED_TTL_MS, KEPT_TTL_MS, LATE_SLACK_MS,
    PREFIX, REVOKE_KEYS,
};
use crate::call::{self, attempt, perform, Clock, Outcome, Reply};
use crate::workload::WorkloadConfig;

/// Deadline of one attempt.
const ATTEMPT: Duration = Duration::from_millis(1000);
/// Deadline of one write over its attempts.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// How often a new abandoned lease is granted.
const ABANDON_EVERY: Duration = Duration::from_millis(700);
/// How often an abandoned lease is polled.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// Past the late bound, how long polls go on before the lease is given up on.
const POLL_PAST_BOUND: Duration = Duration::from_secs(3);

/// The workload's shared state: its clock, connections and what it recorded.
pub struct LeaseRun {
    pub clock: Clock,
    pub cfg: WorkloadConfig,
    conns: Vec<async_nats::Client>,
    pub history: Mutex<LeaseHistory>,
}

impl LeaseRun {
    pub async fn new(
        cfg: WorkloadConfig,
        election_timeout_max_ms: u64,
    ) -> Result<Arc<LeaseRun>, String> {
        let conns = call::connect(&cfg.urls).await?;
        Ok(Arc::new(LeaseRun {
            clock: Clock::new(),
            cfg,
            conns,
            history: Mutex::new(LeaseHistory {
                election_timeout_max_ms,
                ..LeaseHistory::default()
            }),
        }))
    }

    fn subject(&self, op: &str) -> String {
        call::subject(&self.cfg.prefix, op)
    }

    fn record(&self, f: impl FnOnce(&mut LeaseHistory)) {
        f(&mut self.history.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// One write (a fresh `request_id` in `body`) retried within [`WRITE_DEADLINE`].
    async fn write(&self, home: usize, op: &str, mut body: Value) -> Outcome {
        body["request_id"] = json!(call::request_id());
        let subject = self.subject(op);
        perform(
            &self.conns,
            home,
            (&subject, &body),
            ATTEMPT,
            WRITE_DEADLINE,
        )
        .await
        .0
    }

    /// A read retried within `deadline`.
    async fn read(&self, home: usize, op: &str, body: Value, deadline: Duration) -> Outcome {
        let subject = self.subject(op);
        perform(&self.conns, home, (&subject, &body), ATTEMPT, deadline)
            .await
            .0
    }

    /// A lease of `ttl_ms` with a key attached: its id, once both were acknowledged, and
    /// the first grant attempt's send time (a lower bound of the grant's stamp).
    async fn grant_with_key(&self, home: usize, ttl_ms: u64, key: &str) -> Option<(u64, u64)> {
        let sent = self.clock.now();
        let grant = self
            .write(home, "lease.grant", json!({ "ttl_ms": ttl_ms }))
            .await;
        let id = grant.reply()?["id"].as_u64()?;
        let put = json!({"key": key, "value": key, "lease": id});
        self.write(home, "kv.put", put)
            .await
            .is_ok()
            .then_some((id, sent))
    }
}

/// Runs the kept lease, the abandoned leases and the revokes until `stop`; returns once
/// every abandoned lease was seen to end or given up on.
pub async fn run(r: Arc<LeaseRun>, stop: Arc<AtomicBool>) -> Result<(), String> {
    let kept = tokio::spawn(kept(r.clone(), stop.clone()));
    let revokes = tokio::spawn(revokes(r.clone(), stop.clone()));
    let mut abandoned = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        abandoned.push(tokio::spawn(abandon(r.clone(), n)));
        tokio::time::sleep(ABANDON_EVERY).await;
    }
    for t in abandoned {
        let _ = t.await;
    }
    let _ = revokes.await;
    kept.await.map_err(|e| e.to_string())?
}

/// The kept lease: granted, a key attached, then a keepalive every second until `stop`.
async fn kept(r: Arc<LeaseRun>, stop: Arc<AtomicBool>) -> Result<(), String> {
    let key = format!("{PREFIX}kept");
    let Some((id, _)) = r.grant_with_key(0, KEPT_TTL_MS, &key).await else {
        return Err("the kept lease or its key was not acknowledged".into());
    };
    r.record(|h| {
        h.kept.id = id;
        h.kept.key = key.clone();
    });
    let subject = r.subject("lease.keepalive");
    let body = json!({ "id": id });
    let mut server = 0;
    while !stop.load(Ordering::Relaxed) {
        let at = Instant::now();
        let sent = r.clock.now();
        let reply = attempt(&r.conns[server % r.conns.len()], &subject, &body, ATTEMPT).await;
        let outcome = match reply {
            Reply::Ok(v) => Outcome::Ok { reply: v },
            Reply::Err {
                code,
                reason,
                error,
            } => Outcome::Refused {
                code,
                reason,
                error,
            },
            Reply::NoReply => Outcome::Unknown {
                last: "no_reply".into(),
            },
            Reply::NoResponders => Outcome::NotTaken {
                last: "no_responders".into(),
            },
        };
        if !outcome.is_ok() {
            server += 1;
        }
        let done = r.clock.now();
        r.record(|h| {
            h.kept.keepalives.push(Keepalive {
                sent,
                done,
                outcome,
            })
        });
        tokio::time::sleep_until((at + Duration::from_secs(1)).into()).await;
    }
    Ok(())
}

/// After the faults: the kept lease read, and its key.
pub async fn finish_kept(r: &LeaseRun, deadline: Duration) {
    let (id, key) = {
        let h = r.history.lock().unwrap_or_else(|e| e.into_inner());
        (h.kept.id, h.kept.key.clone())
    };
    if id == 0 {
        return;
    }
    let get = r.read(0, "lease.get", json!({ "id": id }), deadline).await;
    let key = r.read(0, "kv.get", json!({ "key": key }), deadline).await;
    r.record(|h| {
        h.kept.final_get = Some(get);
        h.kept.final_key = Some(key);
    });
}

/// One abandoned lease: granted with a key, one keepalive acknowledged, then polled until
/// it ends.
async fn abandon(r: Arc<LeaseRun>, n: usize) {
    let ttl = ABANDONED_TTL_MS;
    let key = format!("{PREFIX}a{n}");
    let Some((id, grant_sent)) = r.grant_with_key(n, ttl, &key).await else {
        r.record(|h| h.abandoned_skipped += 1);
        return;
    };
    let grant_acked = r.clock.now();
    let mut a = Abandoned {
        id,
        ttl_ms: ttl,
        key,
        renewed_sent: grant_sent,
        renewed_acked: grant_acked,
        ..Abandoned::default()
    };
    tokio::time::sleep(Duration::from_millis(ttl / 3)).await;
    keepalive_once(&r, n, &mut a).await;
    if a.ended.is_none() {
        poll_until_ended(&r, n, &mut a).await;
    }
    if a.ended.is_some() {
        let get = json!({ "key": a.key });
        a.key_after_end = Some(r.read(n, "kv.get", get, WRITE_DEADLINE).await);
    }
    r.record(|h| h.abandoned.push(a));
}

/// Keepalive attempts (each one a renewal if it applies) until one is acknowledged, one
/// says the lease ended, or a third of the ttl passed.
async fn keepalive_once(r: &LeaseRun, n: usize, a: &mut Abandoned) {
    let subject = r.subject("lease.keepalive");
    let body = json!({ "id": a.id });
    let until = Instant::now() + Duration::from_millis(a.ttl_ms / 3);
    let mut server = n;
    while Instant::now() < until {
        let sent = r.clock.now();
        let reply = attempt(&r.conns[server % r.conns.len()], &subject, &body, ATTEMPT).await;
        let done = r.clock.now();
        match reply {
            Reply::Ok(_) => {
                a.renewed_sent = sent;
                a.renewed_acked = done;
                a.unknown_renewal = None;
                return;
            }
            Reply::Err { code, .. } if code == "not_found" => {
                a.ended = Some((sent, done));
                return;
            }
            Reply::Err { code, .. } if code == "busy" || code == "cluster_not_ready" => {}
            Reply::NoResponders => {}
            _ => a.unknown_renewal = Some(done),
        }
        server += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `lease.get` until `not_found`, or [`POLL_PAST_BOUND`] past the late bound.
async fn poll_until_ended(r: &LeaseRun, n: usize, a: &mut Abandoned) {
    let etm = r
        .history
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .election_timeout_max_ms;
    let base = a.renewed_acked.max(a.unknown_renewal.unwrap_or(0));
    let bound_ms = a.ttl_ms + 2 * etm + LATE_SLACK_MS;
    let give_up = base + (Duration::from_millis(bound_ms) + POLL_PAST_BOUND).as_nanos() as u64;
    let subject = r.subject("lease.get");
    let body = json!({ "id": a.id });
    let mut server = n;
    while r.clock.now() < give_up {
        let at = Instant::now();
        let sent = r.clock.now();
        let reply = attempt(&r.conns[server % r.conns.len()], &subject, &body, ATTEMPT).await;
        let done = r.clock.now();
        match reply {
            Reply::Ok(_) => a.last_found_sent = Some(sent),
            Reply::Err { code, .. } if code == "not_found" => {
                a.ended = Some((sent, done));
                return;
            }
            _ => {
                a.polls_unanswered += 1;
                server += 1;
            }
        }
        tokio::time::sleep_until((at + POLL_EVERY).into()).await;
    }
}

/// Leases with [`REVOKE_KEYS`] keys each, revoked, until `stop`.
async fn revokes(r: Arc<LeaseRun>, stop: Arc<AtomicBool>) {
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        if let Some(rec) = revoke_one(&r, n).await {
            r.record(|h| h.revokes.push(rec));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One lease granted, its keys attached, revoked, and each key read after the revoke.
async fn revoke_one(r: &LeaseRun, n: usize) -> Option<Revoke> {
    let grant = r.write(n, "lease.grant", json!({"ttl_ms": 60_000})).await;
    let id = grant.reply()?["id"].as_u64()?;
    let mut rec = Revoke {
        id,
        ..Revoke::default()
    };
    for k in 0..REVOKE_KEYS {
        let key = format!("{PREFIX}r{n}/{k}");
        let put = json!({"key": key, "value": k, "lease": id});
        match r.write(n, "kv.put", put).await {
            Outcome::Ok { .. } => rec.keys.push(key),
            Outcome::Unknown { .. } => rec.keys_unknown.push(key),
            _ => {}
        }
    }
    let outcome = r.write(n, "lease.revoke", json!({ "id": id })).await;
    if outcome.is_ok() {
        for key in rec.keys.iter().chain(&rec.keys_unknown) {
            let get = json!({ "key": key });
            match r.read(n, "kv.get", get, WRITE_DEADLINE).await {
                Outcome::Ok { .. } => rec.present_after.push(key.clone()),
                Outcome::Refused { code, .. } if code == "not_found" => {}
                _ => rec.unchecked += 1,
            }
        }
    }
    rec.outcome = Some(outcome);
    Some(rec)
}
