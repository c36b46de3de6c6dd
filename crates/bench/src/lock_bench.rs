//! `concord bench --lock-handoff`: lock hand-off between contending clients (issue 25).
//!
//! `--clients` clients (2 or more) contend for one lock of a fresh name. Each in a loop:
//! acquire with a wait, one fenced put of a fresh value under the lock, release. The
//! hand-off latency is from the holder's release being sent to the next holder's grant
//! arriving (one process, one clock): just before a holder sends its release it leaves the
//! send time where the next grant takes it. The lock is held by one client at a time, so
//! the next grant is always the one that release made possible (the first grant of the run
//! has none and is not counted).
//!
//! The summary's ops are hand-offs, its latency the hand-off latency; `lock` adds each
//! step's own latency, waits that ended without the grant (retried), and `overlaps`: grants
//! that arrived while this process still thought another client held the lock (must be 0).
//!
//! Targets: `concord` (`P.lock.acquire` with `ttl_ms`, put with `fence`, `P.lock.release`)
//! and `etcd` (v3lock Lock on a lease per client, a Txn that puts only while the lock key
//! exists, Unlock), behind [`Locker`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::{latencies, summarize, BenchConfig, OpResult, Summary};

/// The code a [`Locker::acquire`] returns when its wait ended before the grant.
pub(crate) const WAIT_ENDED: &str = "lock_wait";
/// Pause after a failed acquire, so that a failing cluster is not hammered in a loop.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// No client holds the lock.
const NOBODY: usize = usize::MAX;

/// One client's hold on the lock, as a system expresses it.
pub(crate) trait Locker: Send + 'static {
    type Hold: Send;
    /// Waits for the lock; [`WAIT_ENDED`] when the wait ended first.
    fn acquire(&mut self) -> impl Future<Output = Result<Self::Hold, String>> + Send;
    /// One put that applies only while `hold` is the lock's holder.
    fn fenced_put(&mut self, hold: &Self::Hold) -> impl Future<Output = OpResult> + Send;
    fn release(&mut self, hold: Self::Hold) -> impl Future<Output = OpResult> + Send;
}

/// The lock half of a `--lock-handoff` run's summary.
#[derive(Debug, Serialize)]
pub struct LockSummary {
    pub name: String,
    pub clients: usize,
    /// Acquire, fenced put, release: completed rounds of all clients.
    pub cycles: u64,
    pub handoffs: u64,
    pub handoffs_per_sec: f64,
    /// Hand-offs from a client to itself (its next acquire came first in the queue).
    pub self_handoffs: u64,
    /// Acquires whose wait ended without the grant (then tried again).
    pub waits_ended: u64,
    pub overlaps: u64,
    pub acquire_us: BTreeMap<String, u64>,
    pub fenced_put_us: BTreeMap<String, u64>,
    pub release_us: BTreeMap<String, u64>,
}

/// What the clients share.
struct Shared {
    done: AtomicBool,
    /// The client that holds the lock as far as this process knows, or [`NOBODY`].
    holder: AtomicUsize,
    /// The last release's send time and its client, until the next grant takes it.
    released: Mutex<Option<(Instant, usize)>>,
    /// Cycles completed by all clients (`--ops` bounds them).
    cycles: AtomicU64,
}

#[derive(Debug, Default)]
struct ClientStats {
    handoff: Vec<u64>,
    acquire: Vec<u64>,
    put: Vec<u64>,
    release: Vec<u64>,
    errors: BTreeMap<String, u64>,
    cycles: u64,
    self_handoffs: u64,
    waits_ended: u64,
    overlaps: u64,
}

/// Runs `lockers` (one per client) against each other for `cfg.duration` or `cfg.ops`
/// cycles, whichever ends first.
pub(crate) async fn run<L: Locker>(
    target: &str,
    name: &str,
    lockers: Vec<L>,
    cfg: &BenchConfig,
    progress: bool,
) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        lockers.len() >= 2,
        "--lock-handoff needs at least 2 clients"
    );
    let shared = Arc::new(Shared {
        done: AtomicBool::new(false),
        holder: AtomicUsize::new(NOBODY),
        released: Mutex::new(None),
        cycles: AtomicU64::new(0),
    });
    let clients = lockers.len();
    let start = Instant::now();
    let tasks: Vec<_> = lockers
        .into_iter()
        .enumerate()
        .map(|(c, l)| tokio::spawn(client_loop(c, l, shared.clone(), cfg.ops)))
        .collect();
    let deadline = tokio::time::sleep(cfg.duration);
    tokio::pin!(deadline);
    let mut all = futures::future::join_all(tasks);
    let results = tokio::select! {
        r = &mut all => r,
        _ = &mut deadline => {
            shared.done.store(true, Ordering::Relaxed);
            all.await
        }
    };
    shared.done.store(true, Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    let mut t = ClientStats::default();
    for st in results.into_iter().flatten() {
        t.merge(st);
    }
    if progress {
        eprintln!(
            "{target}: {} cycles, {} hand-offs in {seconds:.1}s",
            t.cycles,
            t.handoff.len()
        );
    }
    let handoffs = t.handoff.len() as u64;
    let mut s = summarize(target, clients, t.handoff, t.errors, seconds);
    s.lock = Some(LockSummary {
        name: name.to_string(),
        clients,
        cycles: t.cycles,
        handoffs,
        handoffs_per_sec: handoffs as f64 / seconds.max(1e-9),
        self_handoffs: t.self_handoffs,
        waits_ended: t.waits_ended,
        overlaps: t.overlaps,
        acquire_us: latencies(t.acquire),
        fenced_put_us: latencies(t.put),
        release_us: latencies(t.release),
    });
    Ok(s)
}

impl ClientStats {
    fn merge(&mut self, o: ClientStats) {
        self.handoff.extend(o.handoff);
        self.acquire.extend(o.acquire);
        self.put.extend(o.put);
        self.release.extend(o.release);
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.cycles += o.cycles;
        self.self_handoffs += o.self_handoffs;
        self.waits_ended += o.waits_ended;
        self.overlaps += o.overlaps;
    }

    fn error(&mut self, step: &str, code: String) {
        *self.errors.entry(format!("{step}_{code}")).or_default() += 1;
    }
}

fn us_since(t: Instant) -> u64 {
    t.elapsed().as_micros() as u64
}

/// One client: acquire, fenced put, release, until `done` or `max_cycles` in all.
async fn client_loop<L: Locker>(
    c: usize,
    mut l: L,
    shared: Arc<Shared>,
    max_cycles: Option<u64>,
) -> ClientStats {
    let mut st = ClientStats::default();
    while !shared.done.load(Ordering::Relaxed) {
        if max_cycles.is_some_and(|m| shared.cycles.load(Ordering::Relaxed) >= m) {
            break;
        }
        let t0 = Instant::now();
        let hold = match l.acquire().await {
            Ok(h) => h,
            Err(code) if code == WAIT_ENDED => {
                st.waits_ended += 1;
                continue;
            }
            Err(code) => {
                st.error("acquire", code);
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let granted = Instant::now();
        st.acquire.push(us_since(t0));
        if shared.holder.swap(c, Ordering::SeqCst) != NOBODY {
            st.overlaps += 1;
        }
        let released = shared.released.lock().ok().and_then(|mut r| r.take());
        if let Some((sent, from)) = released {
            st.handoff
                .push(granted.saturating_duration_since(sent).as_micros() as u64);
            st.self_handoffs += u64::from(from == c);
        }
        let t1 = Instant::now();
        match l.fenced_put(&hold).await {
            Ok(()) => st.put.push(us_since(t1)),
            Err(code) => st.error("fenced_put", code),
        }
        // Before the release is sent: the next grant may arrive before its reply.
        shared.holder.store(NOBODY, Ordering::SeqCst);
        let t2 = Instant::now();
        if let Ok(mut r) = shared.released.lock() {
            *r = Some((t2, c));
        }
        match l.release(hold).await {
            Ok(()) => st.release.push(us_since(t2)),
            Err(code) => st.error("release", code),
        }
        st.cycles += 1;
        shared.cycles.fetch_add(1, Ordering::Relaxed);
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock in memory: a tokio mutex's owned guard is the hold.
    struct Fake {
        lock: Arc<tokio::sync::Mutex<u64>>,
        waits: u32,
    }

    impl Locker for Fake {
        type Hold = tokio::sync::OwnedMutexGuard<u64>;
        async fn acquire(&mut self) -> Result<Self::Hold, String> {
            if self.waits > 0 {
                self.waits -= 1;
                return Err(WAIT_ENDED.into());
            }
            Ok(self.lock.clone().lock_owned().await)
        }
        async fn fenced_put(&mut self, hold: &Self::Hold) -> OpResult {
            let _ = **hold;
            tokio::time::sleep(Duration::from_micros(200)).await;
            Ok(())
        }
        async fn release(&mut self, mut hold: Self::Hold) -> OpResult {
            *hold += 1;
            Ok(())
        }
    }

    #[tokio::test]
    async fn every_grant_after_a_release_is_one_handoff() {
        let lock = Arc::new(tokio::sync::Mutex::new(0));
        let lockers = (0..3)
            .map(|i| Fake {
                lock: lock.clone(),
                waits: i,
            })
            .collect();
        let cfg = crate::tests::config(Duration::from_millis(300));
        let s = run("fake", "l", lockers, &cfg, false).await.unwrap();
        let l = s.lock.as_ref().unwrap();
        assert_eq!(*lock.lock().await, l.cycles, "every cycle released once");
        assert!(l.cycles > 10, "{l:?}");
        assert_eq!(l.handoffs, l.cycles - 1, "all but the first grant");
        assert_eq!((s.ops, l.overlaps, l.waits_ended), (l.handoffs, 0, 3));
        assert!(s.errors.is_empty());
        assert!(s.latency_us["p50"] <= s.latency_us["max"]);
    }
}
