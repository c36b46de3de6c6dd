//! `concord bench --leases N --keepalive-every 1s`: lease keepalives beside puts (issue 25).
//!
//! One run, three phases on the same cluster:
//! 1. the usual closed loop of puts, without leases (the baseline);
//! 2. N leases granted (`--lease-ttl`, at most [`GRANT_INFLIGHT`] grants in flight; not
//!    measured as puts);
//! 3. the same closed loop again while every lease is renewed once per `--keepalive-every`,
//!    the renewals spread evenly over the period (lease i is due at i/N of it), at most
//!    `--keepalive-inflight` of them in flight; when that bound is reached the schedule
//!    waits, and the lag shows in `late` and in the achieved rate.
//!
//! Then the leases are revoked (not measured), so that nothing expires under a later run.
//! The summary's own figures are phase 3's puts; `leases` adds the baseline, the puts kept
//! (phase 3 / phase 1), the keepalives' latency (send to reply), their rate achieved vs.
//! asked, and every keepalive answered `not_found` (a lease lost: must be 0).
//!
//! Targets: `concord` (`P.lease.*`) and `etcd` (LeaseGrant, LeaseKeepAlive streams,
//! LeaseRevoke), behind [`Leases`].

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::{drive, latencies, BenchConfig, Driver, Summary};

/// Grants and revokes in flight while the leases are set up and torn down.
pub(crate) const GRANT_INFLIGHT: usize = 64;
/// How long the keepalives still in flight when the puts stop may take to answer.
const KEEPALIVE_DRAIN: Duration = Duration::from_secs(10);

/// What a keepalive came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Renewal {
    Renewed,
    /// `not_found` (etcd: TTL 0): the lease had ended.
    Lost,
    Failed(String),
}

/// A system's leases, shared by every keepalive task.
pub(crate) trait Leases: Clone + Send + Sync + 'static {
    /// A new lease of `ttl`; its id.
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<i64, String>> + Send;
    fn keepalive(&self, id: i64) -> impl Future<Output = Renewal> + Send;
    fn revoke(&self, id: i64) -> impl Future<Output = Result<(), String>> + Send;
}

/// A closed-loop phase's own figures.
#[derive(Debug, Serialize)]
pub struct PhaseFigures {
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub latency_us: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
}

impl From<&Summary> for PhaseFigures {
    fn from(s: &Summary) -> PhaseFigures {
        PhaseFigures {
            ops: s.ops,
            seconds: s.seconds,
            ops_per_sec: s.ops_per_sec,
            latency_us: s.latency_us.clone(),
            errors: s.errors.clone(),
        }
    }
}

/// The lease half of a `--leases` run's summary.
#[derive(Debug, Serialize)]
pub struct LeaseSummary {
    pub leases: usize,
    pub granted: usize,
    pub grant_seconds: f64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub grant_errors: BTreeMap<String, u64>,
    pub ttl_ms: u64,
    pub keepalive_every_ms: u64,
    pub keepalive_inflight: usize,
    /// Phase 1: the same puts without leases.
    pub puts_without_leases: PhaseFigures,
    /// puts/s with the keepalives running / puts/s without.
    pub puts_kept: f64,
    /// granted / every: what the schedule asks for.
    pub keepalives_asked_per_sec: f64,
    /// Keepalives answered `ok` per second of the phase.
    pub keepalives_per_sec: f64,
    pub keepalives_sent: u64,
    pub keepalives_ok: u64,
    /// Send to reply, answered keepalives (ok or not_found).
    pub keepalive_latency_us: BTreeMap<String, u64>,
    /// Keepalives answered `not_found`, and the distinct leases they name: a lease lost.
    pub not_found: u64,
    pub leases_lost: usize,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub keepalive_errors: BTreeMap<String, u64>,
    /// Keepalives sent more than one period after they were due (the schedule fell behind).
    pub late: u64,
    pub max_lag_ms: f64,
    pub revoked: usize,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub revoke_errors: BTreeMap<String, u64>,
}

/// The keepalives' figures, collected by their tasks.
#[derive(Debug, Default)]
struct KeepaliveStats {
    sent: u64,
    ok: u64,
    lat: Vec<u64>,
    not_found: u64,
    lost: HashSet<i64>,
    errors: BTreeMap<String, u64>,
    late: u64,
    max_lag: Duration,
    seconds: f64,
}

/// Runs the three phases (module doc) with `leases` and the put clients of `handle`.
pub(crate) async fn run<L: Leases, D: Driver>(
    name: &str,
    leases: L,
    mut handle: impl FnMut(usize) -> D,
    cfg: &BenchConfig,
    progress: bool,
) -> anyhow::Result<Summary> {
    let base = drive(name, &mut handle, cfg, progress).await?;
    if progress {
        eprintln!(
            "{name}: {:.0} puts/s without leases; granting {} leases",
            base.ops_per_sec, cfg.leases
        );
    }
    let t0 = Instant::now();
    let (ids, grant_errors) = grant_all(&leases, cfg.leases, cfg.lease_ttl).await;
    let grant_seconds = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        !ids.is_empty(),
        "{name}: no lease granted ({grant_errors:?})"
    );
    let ids = Arc::new(ids);
    let stop = Arc::new(AtomicBool::new(false));
    let renewals = tokio::spawn(keepalive_loop(
        leases.clone(),
        ids.clone(),
        cfg.keepalive_every,
        cfg.keepalive_inflight,
        stop.clone(),
    ));
    let phase = BenchConfig {
        preload: false,
        ..cfg.clone()
    };
    let with = drive(name, &mut handle, &phase, progress).await;
    stop.store(true, Ordering::Relaxed);
    let stats = renewals.await.unwrap_or_default();
    let (revoked, revoke_errors) = revoke_all(&leases, &ids).await;
    let mut s = with?;
    let asked = ids.len() as f64 / cfg.keepalive_every.as_secs_f64().max(1e-3);
    s.leases = Some(LeaseSummary {
        leases: cfg.leases,
        granted: ids.len(),
        grant_seconds,
        grant_errors,
        ttl_ms: cfg.lease_ttl.as_millis() as u64,
        keepalive_every_ms: cfg.keepalive_every.as_millis() as u64,
        keepalive_inflight: cfg.keepalive_inflight,
        puts_kept: s.ops_per_sec / base.ops_per_sec.max(1e-9),
        puts_without_leases: PhaseFigures::from(&base),
        keepalives_asked_per_sec: asked,
        keepalives_per_sec: stats.ok as f64 / stats.seconds.max(1e-9),
        keepalives_sent: stats.sent,
        keepalives_ok: stats.ok,
        keepalive_latency_us: latencies(stats.lat),
        not_found: stats.not_found,
        leases_lost: stats.lost.len(),
        keepalive_errors: stats.errors,
        late: stats.late,
        max_lag_ms: stats.max_lag.as_secs_f64() * 1000.0,
        revoked,
        revoke_errors,
    });
    Ok(s)
}

/// Grants `n` leases of `ttl`, [`GRANT_INFLIGHT`] at a time: the ids, the failures by code.
async fn grant_all<L: Leases>(
    leases: &L,
    n: usize,
    ttl: Duration,
) -> (Vec<i64>, BTreeMap<String, u64>) {
    let results = bounded(n, |_| {
        let l = leases.clone();
        async move { l.grant(ttl).await }
    })
    .await;
    let mut ids = Vec::with_capacity(n);
    let mut errors = BTreeMap::new();
    for r in results {
        match r {
            Ok(id) => ids.push(id),
            Err(code) => *errors.entry(code).or_default() += 1,
        }
    }
    (ids, errors)
}

/// Revokes every lease of `ids`: how many went, the failures by code.
async fn revoke_all<L: Leases>(leases: &L, ids: &Arc<Vec<i64>>) -> (usize, BTreeMap<String, u64>) {
    let results = bounded(ids.len(), |i| {
        let (l, id) = (leases.clone(), ids[i]);
        async move { l.revoke(id).await }
    })
    .await;
    let mut errors = BTreeMap::new();
    let mut revoked = 0;
    for r in results {
        match r {
            Ok(()) => revoked += 1,
            Err(code) => *errors.entry(code).or_default() += 1,
        }
    }
    (revoked, errors)
}

/// Runs `task(0..n)`, [`GRANT_INFLIGHT`] at a time; the results in no particular order.
async fn bounded<T, F>(n: usize, mut task: impl FnMut(usize) -> F) -> Vec<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(GRANT_INFLIGHT));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let f = task(i);
        tasks.push(tokio::spawn(async move {
            let r = f.await;
            drop(permit);
            r
        }));
    }
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Renews every lease of `ids` once per `every`, spread evenly, until `stop`; at most
/// `inflight` keepalives in flight. Returns when the last one answered (or
/// [`KEEPALIVE_DRAIN`] after `stop`).
async fn keepalive_loop<L: Leases>(
    leases: L,
    ids: Arc<Vec<i64>>,
    every: Duration,
    inflight: usize,
    stop: Arc<AtomicBool>,
) -> KeepaliveStats {
    let inflight = inflight.clamp(1, Semaphore::MAX_PERMITS);
    let sem = Arc::new(Semaphore::new(inflight));
    // std Mutex: held only to record one reply, never across an await.
    let stats = Arc::new(Mutex::new(KeepaliveStats::default()));
    let slot = every.as_secs_f64() / ids.len().max(1) as f64;
    // tokio's clock: the schedule runs on the runtime's timers (and a paused test clock).
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut sent, mut late, mut max_lag) = (0u64, 0u64, Duration::ZERO);
    'run: while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() / slot) as u64;
        while sent < due {
            if stop.load(Ordering::Relaxed) {
                break 'run;
            }
            let Ok(permit) = sem.clone().acquire_owned().await else {
                break 'run;
            };
            let lag = start
                .elapsed()
                .saturating_sub(Duration::from_secs_f64(sent as f64 * slot));
            max_lag = max_lag.max(lag);
            late += u64::from(lag > every);
            let id = ids[(sent % ids.len() as u64) as usize];
            sent += 1;
            let (l, stats) = (leases.clone(), stats.clone());
            tokio::spawn(async move {
                let t0 = tokio::time::Instant::now();
                let r = l.keepalive(id).await;
                let us = t0.elapsed().as_micros() as u64;
                if let Ok(mut st) = stats.lock() {
                    st.record(id, r, us);
                }
                drop(permit);
            });
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // Every permit back: every keepalive sent has answered (or failed).
    let all = u32::try_from(inflight).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(KEEPALIVE_DRAIN, sem.acquire_many(all)).await;
    let mut st = stats
        .lock()
        .map(|mut s| std::mem::take(&mut *s))
        .unwrap_or_default();
    st.sent = sent;
    st.late = late;
    st.max_lag = max_lag;
    st.seconds = seconds;
    st
}

impl KeepaliveStats {
    fn record(&mut self, id: i64, r: Renewal, us: u64) {
        match r {
            Renewal::Renewed => {
                self.ok += 1;
                self.lat.push(us);
            }
            Renewal::Lost => {
                self.not_found += 1;
                self.lost.insert(id);
                self.lat.push(us);
            }
            Renewal::Failed(code) => *self.errors.entry(code).or_default() += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Leases in memory: every keepalive of an id above `lost_above` is `not_found`.
    #[derive(Clone, Default)]
    struct Fake {
        next: Arc<AtomicU64>,
        renewals: Arc<Mutex<BTreeMap<i64, u64>>>,
        lost_above: i64,
    }

    impl Leases for Fake {
        async fn grant(&self, _ttl: Duration) -> Result<i64, String> {
            Ok(self.next.fetch_add(1, Ordering::Relaxed) as i64 + 1)
        }
        async fn keepalive(&self, id: i64) -> Renewal {
            if let Ok(mut r) = self.renewals.lock() {
                *r.entry(id).or_default() += 1;
            }
            if id > self.lost_above {
                Renewal::Lost
            } else {
                Renewal::Renewed
            }
        }
        async fn revoke(&self, id: i64) -> Result<(), String> {
            if id % 2 == 0 {
                Ok(())
            } else {
                Err("not_found".into())
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keepalives_follow_the_schedule_and_count_losses() {
        let fake = Fake {
            lost_above: 8,
            ..Default::default()
        };
        let (ids, errors) = grant_all(&fake, 10, Duration::from_secs(10)).await;
        assert_eq!((ids.len(), errors.len()), (10, 0));
        let stop = Arc::new(AtomicBool::new(false));
        let every = Duration::from_millis(100);
        let task = tokio::spawn(keepalive_loop(
            fake.clone(),
            Arc::new(ids.clone()),
            every,
            4,
            stop.clone(),
        ));
        // Ten periods: every lease renewed about ten times.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        stop.store(true, Ordering::Relaxed);
        let st = task.await.unwrap();
        assert!((95..=101).contains(&st.sent), "sent {}", st.sent);
        assert_eq!(st.ok + st.not_found, st.sent);
        assert_eq!(st.lost.len(), 2, "ids 9 and 10 are lost");
        assert_eq!(st.late, 0);
        let per_lease = fake.renewals.lock().unwrap().clone();
        assert_eq!(per_lease.len(), 10);
        assert!(
            per_lease.values().all(|n| (9..=11).contains(n)),
            "{per_lease:?}"
        );
        let (revoked, errors) = revoke_all(&fake, &Arc::new(ids)).await;
        assert_eq!((revoked, errors["not_found"]), (5, 5));
    }
}
