//! Watch fan-out bookkeeping: when each put was acknowledged and when its event reached each
//! watcher, all on this process's monotonic clock, so a (put, watcher) delivery time is the
//! arrival instant minus the ack instant of the same revision.
//!
//! [`Tracker`] is shared by the putting clients (they record acks) and every watcher (they
//! record arrivals). It is lock-free: one slot per revision from a base revision on, in
//! chunks allocated on first use, so thousands of watchers recording the same revision
//! contend only on that slot's atomics. Each watcher keeps its own [`Histogram`] of delivery
//! times and the arrivals that beat their put's ack (the reply and the event race), which
//! are resolved when the run ends. Nothing here does IO.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Revisions per chunk of slots.
const CHUNK: usize = 1 << 16;
/// Chunks: 4,194,304 revisions from the base, about 7 minutes of puts at 10,000/s. Acks
/// and arrivals past that are counted as `out_of_range`, not measured.
const CHUNKS: usize = 64;

/// One revision: its put's ack and its arrivals. Instants are microseconds since the
/// tracker's epoch plus 1, so that 0 means "not yet".
#[derive(Default)]
struct Slot {
    ack: AtomicU64,
    last: AtomicU64,
    count: AtomicU32,
}

pub(crate) struct Tracker {
    epoch: Instant,
    /// The first revision a slot exists for (the watches' first revision).
    base: AtomicU64,
    chunks: Vec<OnceLock<Box<[Slot]>>>,
    /// The highest revision acknowledged, + 1 (0: none).
    top: AtomicU64,
    acked: AtomicU64,
    /// Arrivals recorded in a slot (one per (revision, watcher)).
    arrived: AtomicU64,
    out_of_range: AtomicU64,
    /// Whether the measured puts are running: arrivals then count for the delivery rate.
    window: AtomicBool,
}

/// What one watcher measured.
#[derive(Default)]
pub(crate) struct WatcherStats {
    pub hist: Histogram,
    /// (revision, arrival) of events that came before their put's ack was recorded.
    pub pending: Vec<(u64, u64)>,
    /// Arrivals while the puts ran.
    pub in_window: u64,
    /// Revisions that arrived (each once).
    pub revisions: u64,
    /// Messages received, of which progress notices (no events).
    pub messages: u64,
    pub progress: u64,
    /// Messages whose `seq` was not the one after the previous (lost or duplicated).
    pub gaps: u64,
    /// The code the watch ended with (`cancelled` after the run), or the stream's error.
    pub end: Option<String>,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker {
            epoch: Instant::now(),
            base: AtomicU64::new(0),
            chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
            top: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            arrived: AtomicU64::new(0),
            out_of_range: AtomicU64::new(0),
            window: AtomicBool::new(false),
        }
    }

    /// Slots start at `base`: set once every watch is in place, before the first put.
    pub fn set_base(&self, base: u64) {
        self.base.store(base, Ordering::Release);
    }

    pub fn set_window(&self, open: bool) {
        self.window.store(open, Ordering::Release);
    }

    /// Now, as microseconds since the epoch.
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn slot(&self, revision: u64) -> Option<&Slot> {
        let i = revision.checked_sub(self.base.load(Ordering::Acquire))? as usize;
        let chunk = self.chunks.get(i / CHUNK)?;
        let slots = chunk.get_or_init(|| (0..CHUNK).map(|_| Slot::default()).collect());
        Some(&slots[i % CHUNK])
    }

    /// The put that wrote `revision` was acknowledged now.
    pub fn ack(&self, revision: u64) {
        self.ack_at(revision, self.now_us());
    }

    /// The put that wrote `revision` was acknowledged at `at`.
    fn ack_at(&self, revision: u64, at: u64) {
        match self.slot(revision) {
            Some(s) => {
                s.ack.store(at + 1, Ordering::Release);
                self.acked.fetch_add(1, Ordering::Relaxed);
                self.top.fetch_max(revision + 1, Ordering::Relaxed);
            }
            None => {
                self.out_of_range.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `revision`'s event reached a watcher at `at` (from [`Tracker::now_us`]).
    pub fn arrive(&self, revision: u64, at: u64, w: &mut WatcherStats) {
        let Some(s) = self.slot(revision) else {
            self.out_of_range.fetch_add(1, Ordering::Relaxed);
            return;
        };
        s.count.fetch_add(1, Ordering::Relaxed);
        s.last.fetch_max(at + 1, Ordering::Relaxed);
        self.arrived.fetch_add(1, Ordering::Relaxed);
        w.revisions += 1;
        if self.window.load(Ordering::Relaxed) {
            w.in_window += 1;
        }
        match s.ack.load(Ordering::Acquire) {
            0 => w.pending.push((revision, at)),
            ack => w.hist.record(at.saturating_sub(ack - 1)),
        }
    }

    /// Whether every acknowledged put has reached `watchers` watchers (by count: puts whose
    /// ack was lost still make events, so this may say yes a little early, never late).
    pub fn drained(&self, watchers: u64) -> bool {
        self.arrived.load(Ordering::Relaxed) >= self.acked.load(Ordering::Relaxed) * watchers
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    pub fn out_of_range(&self) -> u64 {
        self.out_of_range.load(Ordering::Relaxed)
    }

    /// Records the pending arrivals of `w` into its histogram now that the acks are in (an
    /// arrival before its ack counts as 0). Returns (arrivals before their ack, arrivals of
    /// revisions that no measured put acknowledged).
    pub fn resolve(&self, w: &mut WatcherStats) -> (u64, u64) {
        let (mut early, mut unmatched) = (0, 0);
        for (revision, at) in std::mem::take(&mut w.pending) {
            match self.slot(revision).map(|s| s.ack.load(Ordering::Acquire)) {
                Some(ack) if ack > 0 => {
                    early += u64::from(at + 1 < ack);
                    w.hist.record(at.saturating_sub(ack - 1));
                }
                _ => unmatched += 1,
            }
        }
        (early, unmatched)
    }

    /// For every acknowledged put: the time until its event had reached `watchers` watchers
    /// (the last arrival), and how many puts did not reach them all.
    pub fn all_watchers(&self, watchers: u32) -> (Histogram, u64) {
        let (mut hist, mut incomplete) = (Histogram::default(), 0);
        let base = self.base.load(Ordering::Acquire);
        for revision in base..self.top.load(Ordering::Relaxed) {
            let Some(s) = self.slot(revision) else { break };
            let ack = s.ack.load(Ordering::Acquire);
            if ack == 0 {
                continue;
            }
            if s.count.load(Ordering::Relaxed) >= watchers {
                hist.record(s.last.load(Ordering::Relaxed).saturating_sub(ack));
            } else {
                incomplete += 1;
            }
        }
        (hist, incomplete)
    }
}

/// Sub-buckets per power of two: values are kept to within 1/64 (1.6 %) below them.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values at or above 2^40 us (12 days) are counted as 2^40 - 1.
const MAX_BITS: u32 = 40;
const BUCKETS: usize = (SUB * 2 + (MAX_BITS - SUB_BITS - 1) as u64 * SUB) as usize;

/// A log-linear histogram of microseconds: exact below 128, then 64 buckets per power of
/// two. Small (18 KiB) and mergeable, so a thousand watchers can each keep one.
#[derive(Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    let v = v.min((1 << MAX_BITS) - 1);
    if v < SUB * 2 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let mantissa = (v >> (e - SUB_BITS)) & (SUB - 1);
    (SUB * 2 + u64::from(e - SUB_BITS - 1) * SUB + mantissa) as usize
}

/// The smallest value of bucket `i`.
fn bucket_floor(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB * 2 {
        return i;
    }
    let e = (i - SUB * 2) / SUB + u64::from(SUB_BITS) + 1;
    let mantissa = (i - SUB * 2) % SUB;
    (1 << e) | (mantissa << (e - u64::from(SUB_BITS)))
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        self.counts[bucket(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (the floor of its bucket; the same rank as
    /// `crate::percentile` over the sorted values), 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((self.total as f64 - 1.0) * q).round() as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                return bucket_floor(i).min(self.max);
            }
        }
        self.max
    }

    /// p50, p90, p99, p99.9 and max, as in the summary's `latency_us`.
    pub fn summary(&self) -> std::collections::BTreeMap<String, u64> {
        let mut m = std::collections::BTreeMap::new();
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            m.insert(name.to_string(), self.quantile(q));
        }
        m.insert("max".into(), self.max);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_exact_then_within_a_64th() {
        for v in 0..128 {
            assert_eq!(bucket_floor(bucket(v)), v);
        }
        let mut last = 0;
        for v in (128..10_000_000u64)
            .step_by(997)
            .chain([(1 << 40) - 1, u64::MAX])
        {
            let i = bucket(v);
            assert!(i < BUCKETS, "{v} -> {i}");
            assert!(i >= last, "buckets grow with the value");
            last = i;
            let floor = bucket_floor(i);
            let v = v.min((1 << 40) - 1);
            assert!(
                floor <= v && v - floor <= v / 64,
                "{v} in a bucket from {floor}"
            );
        }
    }

    #[test]
    fn quantiles_match_the_sorted_values() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), 0);
        for v in 1..=100 {
            h.record(v);
        }
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(h.quantile(0.5), crate::percentile(&sorted, 0.5));
        assert_eq!(h.quantile(0.99), crate::percentile(&sorted, 0.99));
        let mut big = Histogram::default();
        big.record(1_000_000);
        h.merge(&big);
        assert_eq!(h.count(), 101);
        assert_eq!(h.summary()["max"], 1_000_000);
        // Within a 64th below the value.
        assert!((984_375..=1_000_000).contains(&h.quantile(1.0)));
    }

    #[test]
    fn deliveries_are_timed_from_the_ack_and_early_ones_resolved_later() {
        let t = Tracker::new();
        t.set_base(100);
        let (mut a, mut b) = (WatcherStats::default(), WatcherStats::default());
        let now = 1000;
        t.ack_at(100, now);
        t.arrive(100, now + 500, &mut a);
        t.arrive(100, now + 900, &mut b);
        assert!(t.drained(2), "one put, two arrivals");
        // Revision 101's event beats its ack.
        t.arrive(101, now + 1000, &mut a);
        assert_eq!(a.pending.len(), 1);
        t.ack_at(101, now + 1200);
        assert_eq!(
            t.resolve(&mut a),
            (1, 0),
            "one early arrival, none unmatched"
        );
        // Below the base: not measured.
        t.arrive(99, now, &mut b);
        assert_eq!(t.out_of_range(), 1);
        t.arrive(500, now, &mut b);
        assert_eq!(t.resolve(&mut b), (0, 1), "no put acknowledged 500");
        assert_eq!(a.hist.count(), 2);
        assert!(a.hist.quantile(0.0) == 0, "the early arrival counts as 0");
        // 100 reached both watchers, 101 only one.
        let (all, incomplete) = t.all_watchers(2);
        assert_eq!((all.count(), incomplete), (1, 1));
        assert_eq!(all.max, 900);
        assert_eq!(a.hist.max, 500);
        assert_eq!(a.revisions + b.revisions, 4, "99 is below the base");
    }

    #[test]
    fn arrivals_count_in_the_window_only_while_it_is_open() {
        let t = Tracker::new();
        t.set_base(1);
        let mut w = WatcherStats::default();
        t.arrive(1, 0, &mut w);
        t.set_window(true);
        t.arrive(2, 0, &mut w);
        t.set_window(false);
        t.arrive(3, 0, &mut w);
        assert_eq!((w.in_window, w.revisions), (1, 3));
        t.ack(1);
        t.ack(2);
        t.ack(3);
        assert!(t.drained(1));
        assert!(!t.drained(2));
    }
}
