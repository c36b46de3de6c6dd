//! Cluster time (DESIGN.md "Foundations"): milliseconds that every format-2 log entry is
//! stamped with by its leader, and that lease expiry, the idempotency window and change-log
//! retention are judged in, at apply.
//!
//! A node's reading is the newest stamp it has appended plus its monotonic time since that
//! append; a restart resumes from the newest stamp it holds (log, applied state, or its own
//! saved reading) and counts from the replay. No wall clock is read anywhere, and no other
//! node's reading is trusted: only stamps that came through the log.
//!
//! A node that holds no stamp at all (a new cluster, or one still on log format 1) reads 0
//! and does not count: its own start is no stamp, and counting from it would let a node that
//! started early read ahead of every leader. It starts counting from the first stamp it
//! appends, or, as a leader, from the first stamp it writes.
//!
//! Why it never runs backwards: a reading only moves to a newer stamp when that stamp is
//! ahead of it (a follower's own count may run a little ahead of a leader's stamps that
//! arrive later), and a leader stamps its reading, which is at least every stamp it has
//! appended. Why it runs no faster than real time: every stamp is some reading, and every
//! reading is an older stamp plus the real time since that stamp reached the node.

use std::sync::Mutex;
use std::time::Instant;

/// One node's reading of cluster time.
#[derive(Debug)]
pub struct ClusterClock {
    base: Mutex<Base>,
}

#[derive(Debug, Clone, Copy)]
struct Base {
    /// Cluster time (ms) at `at`.
    ms: u64,
    /// `None`: not counting yet (no stamp known).
    at: Option<Instant>,
}

impl Base {
    /// Moves up to `stamp` if it is ahead of the reading at `now`, or starts counting.
    fn advance(&mut self, stamp: u64, now: Instant) {
        if stamp > self.reading(now) || self.at.is_none() {
            *self = Base {
                ms: stamp.max(self.ms),
                at: Some(now),
            };
        }
    }

    fn reading(&self, now: Instant) -> u64 {
        let Some(at) = self.at else {
            return self.ms;
        };
        let since = now.saturating_duration_since(at).as_millis();
        self.ms
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }
}

impl ClusterClock {
    /// A clock that reads `start` now, the newest stamp this node holds at start, and counts
    /// from now; with no stamp at all (`0`) it waits for one.
    pub fn starting_at(start: u64) -> ClusterClock {
        ClusterClock {
            base: Mutex::new(Base {
                ms: start,
                at: (start > 0).then(Instant::now),
            }),
        }
    }

    /// The reading now.
    pub fn reading(&self) -> u64 {
        self.lock().reading(Instant::now())
    }

    /// A stamp was appended (or applied, or installed with a snapshot): the reading moves up
    /// to it if it is ahead. Never moves the reading back.
    pub fn observe(&self, stamp: u64) {
        self.lock().advance(stamp, Instant::now());
    }

    /// The stamp for an entry a leader proposes now: its reading, which is at least every
    /// stamp it has appended (and `floor`, the newest stamp it applied, for good measure).
    pub fn stamp(&self, floor: u64) -> u64 {
        // A leader of a cluster without stamps starts its time now. One lock for both: this
        // runs for every batch a leader proposes.
        let now = Instant::now();
        let mut base = self.lock();
        base.advance(floor, now);
        base.reading(now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Base> {
        self.base.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn observing_moves_forward_only() {
        let clock = ClusterClock::starting_at(5_000);
        clock.observe(1_000);
        assert!(
            clock.reading() >= 5_000,
            "an older stamp does not move it back"
        );
        clock.observe(9_000);
        let r = clock.reading();
        assert!(
            (9_000..9_100).contains(&r),
            "a newer stamp moves it up: {r}"
        );
        assert!(clock.stamp(0) >= r);
    }

    #[test]
    fn without_a_stamp_it_waits_until_one_comes() {
        let clock = ClusterClock::starting_at(0);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(clock.reading(), 0, "its own start is no stamp");
        clock.observe(0);
        std::thread::sleep(Duration::from_millis(20));
        assert!(clock.reading() >= 20, "counts from the first stamp");
    }

    #[test]
    fn runs_at_real_time_between_stamps() {
        let clock = ClusterClock::starting_at(100);
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(30));
        let r = clock.reading();
        let real = started.elapsed().as_millis() as u64;
        assert!(r >= 130, "counts real time: {r}");
        assert!(
            r <= 100 + real + 1,
            "no faster than real time: {r} after {real} ms"
        );
    }
}
