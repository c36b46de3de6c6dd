//! `concord bench --watchers N`: watch fan-out. N watchers on the prefix the puts write
//! under (Concord: `bench:` over the raw watch protocol; NATS KV: `bench.>` through
//! `Store::watch`) are in place before the first put; then the usual closed loop runs (its
//! summary is the puts' own), and the summary gains a `watch` section:
//! - `delivery_us`: per (put, watcher), the arrival of the put's event minus the put's
//!   acknowledgement, both on this process's clock (an event that beats its ack counts 0);
//! - `all_watchers_us`: per put, until its event had reached every watcher;
//! - `delivered_per_sec`: events that reached a watcher while the puts ran, all watchers
//!   together, per second of the run;
//! - `missing`: (put, watcher) deliveries that had not arrived when the drain ended (every
//!   acknowledged put delivered to every watcher, or [`DRAIN`] after the last put).
//!
//! The watchers' client work (parsing, acks) runs in this process next to the putting
//! clients, as it would in an application that watches what it writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::fanout::{Histogram, Tracker, WatcherStats};
use crate::{concord, concord_watch, drive, natskv, BenchConfig, Driver, Summary, Target};

/// How long after the last put the watchers may take to catch up.
pub const DRAIN: Duration = Duration::from_secs(10);
/// What the Concord watchers watch: every key the bench writes (`bench:N`).
const CONCORD_PREFIX: &str = "bench:";

/// The fan-out half of a watch run's summary.
#[derive(Debug, Serialize)]
pub struct WatchSummary {
    /// Watches in place during the run.
    pub watchers: usize,
    /// Creates refused or failed, by code (those watchers are not counted).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub create_errors: BTreeMap<String, u64>,
    /// Concord: watches per serving node (the create queue group's spread).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_node: BTreeMap<String, u64>,
    /// Puts acknowledged during the run (each should reach every watcher).
    pub puts_acked: u64,
    /// (put, watcher) deliveries of acknowledged puts.
    pub deliveries: u64,
    /// puts_acked x watchers - deliveries: not delivered by the end of the drain.
    pub missing: u64,
    /// Events that reached a watcher while the puts ran, all watchers, per second.
    pub delivered_per_sec: f64,
    /// Per (put, watcher): event arrival - put acknowledgement.
    pub delivery_us: BTreeMap<String, u64>,
    /// Per put: until its event had reached every watcher (puts that did not are in
    /// `incomplete_puts`).
    pub all_watchers_us: BTreeMap<String, u64>,
    pub incomplete_puts: u64,
    /// Deliveries that arrived before their put's reply (counted as 0 in `delivery_us`).
    pub early: u64,
    /// Events of revisions no acknowledged put of the run wrote (e.g. a put whose reply
    /// timed out), and revisions past the tracker's range.
    pub unmatched: u64,
    /// Watch messages received (Concord: progress notices among them; NATS KV: entries).
    pub messages: u64,
    pub progress: u64,
    /// Concord: messages whose `seq` did not follow the previous one's.
    pub gaps: u64,
    /// How the watches ended (`cancelled` after the run is the normal end).
    pub ends: BTreeMap<String, u64>,
    /// From the last put until every delivery arrived (or [`DRAIN`]).
    pub drain_seconds: f64,
}

/// Runs the closed loop with `cfg.watchers` watchers attached (see the module doc).
pub(crate) async fn run(
    target: Target,
    cfg: BenchConfig,
    progress: bool,
) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        !cfg.preload,
        "--preload with --watchers: a watch run measures puts; preload in a run of its own"
    );
    let name = target.name();
    let tracker = Arc::new(Tracker::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    match target {
        Target::Concord {
            nats,
            prefix,
            token,
        } => {
            let conns = connections(&cfg, &nats);
            let started = concord_watch::start(
                &conns,
                &prefix,
                token.as_deref(),
                CONCORD_PREFIX,
                cfg.watchers,
                tracker.clone(),
                stop_rx,
                cfg.timeout,
            )
            .await?;
            if progress {
                eprintln!(
                    "concord: {} watch(es) on '{CONCORD_PREFIX}' from revision {}, by node {:?}, create errors {:?}",
                    started.tasks.len(), started.base, started.by_node, started.create_errors
                );
            }
            let h = concord::ConcordHandle::new(
                nats,
                &prefix,
                None,
                cfg.value_size,
                cfg.stale,
                cfg.timeout,
            )
            .with_token(token.as_deref())
            .with_ids(cfg.ids)
            .with_tracker(tracker.clone());
            let fan = Fanout {
                tracker,
                stop: stop_tx,
                tasks: started.tasks,
                by_node: started.by_node,
                create_errors: started.create_errors,
            };
            measure(name, |_| h.clone(), &cfg, progress, fan).await
        }
        Target::NatsKv {
            nats,
            bucket,
            replicas,
        } => {
            let h = natskv::open(
                nats.clone(),
                &bucket,
                replicas,
                cfg.value_size,
                cfg.timeout,
                progress,
            )
            .await?
            .with_tracker(tracker.clone());
            let conns = connections(&cfg, &nats);
            let (base, tasks) = natskv::start_watchers(
                &conns,
                &bucket,
                cfg.watchers,
                tracker.clone(),
                stop_rx,
                cfg.timeout,
            )
            .await?;
            if progress {
                eprintln!(
                    "natskv: {} watch(es) on 'bench.>' from sequence {base}",
                    tasks.len()
                );
            }
            let fan = Fanout::without_nodes(tracker, stop_tx, tasks);
            measure(name, |_| h.clone(), &cfg, progress, fan).await
        }
        other => anyhow::bail!(
            "--watchers: the {} target has no watch (concord and natskv have)",
            other.name()
        ),
    }
}

/// The connections the watchers share: `--watch-conns` of them, else the puts' own.
fn connections(cfg: &BenchConfig, nats: &async_nats::Client) -> Vec<async_nats::Client> {
    if cfg.watch_conns.is_empty() {
        vec![nats.clone()]
    } else {
        cfg.watch_conns.clone()
    }
}

/// The watchers of a run, in place.
struct Fanout {
    tracker: Arc<Tracker>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<WatcherStats>>,
    by_node: BTreeMap<String, u64>,
    create_errors: BTreeMap<String, u64>,
}

impl Fanout {
    /// Watchers whose serving node is not known (NATS KV's).
    fn without_nodes(
        tracker: Arc<Tracker>,
        stop: watch::Sender<bool>,
        tasks: Vec<JoinHandle<WatcherStats>>,
    ) -> Fanout {
        Fanout {
            tracker,
            stop,
            tasks,
            by_node: BTreeMap::new(),
            create_errors: BTreeMap::new(),
        }
    }
}

/// The closed loop, then the drain, the watchers' end, and the summary.
async fn measure<D: Driver>(
    name: &str,
    handle: impl FnMut(usize) -> D,
    cfg: &BenchConfig,
    progress: bool,
    fan: Fanout,
) -> anyhow::Result<Summary> {
    let watchers = fan.tasks.len();
    fan.tracker.set_window(true);
    let run = drive(name, handle, cfg, progress).await;
    fan.tracker.set_window(false);
    let t0 = Instant::now();
    while !fan.tracker.drained(watchers as u64) && t0.elapsed() < DRAIN {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_seconds = t0.elapsed().as_secs_f64();
    // Every watcher cancels its watch and waits for the end, even when the loop failed.
    let _ = fan.stop.send(true);
    let stats: Vec<WatcherStats> = futures::future::join_all(fan.tasks)
        .await
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|_| WatcherStats {
                end: Some("watcher_panicked".into()),
                ..Default::default()
            })
        })
        .collect();
    let mut s = run?;
    let mut w = summarize(&fan.tracker, stats, s.seconds);
    w.drain_seconds = drain_seconds;
    w.by_node = fan.by_node;
    w.create_errors = fan.create_errors;
    s.watch = Some(w);
    Ok(s)
}

/// Merges the watchers' figures.
fn summarize(tracker: &Tracker, stats: Vec<WatcherStats>, seconds: f64) -> WatchSummary {
    let watchers = stats.len();
    let mut hist = Histogram::default();
    let mut w = WatchSummary {
        watchers,
        create_errors: BTreeMap::new(),
        by_node: BTreeMap::new(),
        puts_acked: tracker.acked(),
        deliveries: 0,
        missing: 0,
        delivered_per_sec: 0.0,
        delivery_us: BTreeMap::new(),
        all_watchers_us: BTreeMap::new(),
        incomplete_puts: 0,
        early: 0,
        unmatched: tracker.out_of_range(),
        messages: 0,
        progress: 0,
        gaps: 0,
        ends: BTreeMap::new(),
        drain_seconds: 0.0,
    };
    let mut in_window = 0;
    for mut st in stats {
        let (early, unmatched) = tracker.resolve(&mut st);
        w.early += early;
        w.unmatched += unmatched;
        hist.merge(&st.hist);
        in_window += st.in_window;
        w.messages += st.messages;
        w.progress += st.progress;
        w.gaps += st.gaps;
        let end = st.end.unwrap_or_else(|| "none".into());
        *w.ends.entry(end).or_default() += 1;
    }
    w.deliveries = hist.count();
    w.missing = (w.puts_acked * watchers as u64).saturating_sub(w.deliveries);
    w.delivered_per_sec = in_window as f64 / seconds.max(1e-9);
    w.delivery_us = hist.summary();
    let (all, incomplete) = tracker.all_watchers(watchers as u32);
    w.all_watchers_us = all.summary();
    w.incomplete_puts = incomplete;
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_what_did_not_arrive() {
        let t = Tracker::new();
        t.set_base(10);
        let (mut a, mut b) = (WatcherStats::default(), WatcherStats::default());
        for rev in 10..20 {
            t.ack(rev);
        }
        let now = t.now_us();
        for rev in 10..20 {
            t.arrive(rev, now + 100, &mut a);
        }
        // b misses the last three and ended early.
        for rev in 10..17 {
            t.arrive(rev, now + 300, &mut b);
        }
        a.end = Some("cancelled".into());
        b.end = Some("slow_consumer".into());
        let w = summarize(&t, vec![a, b], 2.0);
        assert_eq!((w.watchers, w.puts_acked), (2, 10));
        assert_eq!((w.deliveries, w.missing), (17, 3));
        assert_eq!(w.incomplete_puts, 3);
        assert_eq!(w.ends["cancelled"], 1);
        assert_eq!(w.ends["slow_consumer"], 1);
        assert!(w.delivery_us["p50"] >= 100 && w.delivery_us["max"] >= 300);
        assert!(w.all_watchers_us["p50"] >= 300);
        // No arrival counted in the window: it was never opened.
        assert_eq!(w.delivered_per_sec, 0.0);
    }
}
