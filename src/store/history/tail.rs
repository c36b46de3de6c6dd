//! The newest events in memory, in the order apply made them: every watch that is caught
//! up reads them here, sharing the same batches (one read of the change log per revision,
//! however many watchers). It holds every revision from `first` to the applied revision;
//! older ones are read from disk ([`super::read`]).

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

use super::ChangeEvent;

/// Memory the tail may hold; the oldest batches go first (a slow watcher then reads disk).
const MAX_TAIL_BYTES: usize = 16 << 20;

/// One apply batch's events, in revision order.
pub type Batch = Arc<[ChangeEvent]>;

#[derive(Default)]
pub struct Tail {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    batches: VecDeque<(Batch, usize)>,
    bytes: usize,
    /// Every revision from `first` to `last` is here (a revision with no events has none).
    first: u64,
    last: u64,
}

/// What the tail holds from a revision on.
pub struct Since {
    pub batches: Vec<Batch>,
    /// The newest revision covered: every event up to it is in `batches`.
    pub last: u64,
}

impl Tail {
    /// Starts over with nothing before `next` held: at open, at the format switch and when
    /// a snapshot install replaced the state.
    pub fn reset(&self, next: u64) {
        let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
        *t = Inner {
            first: next,
            last: next.saturating_sub(1),
            ..Inner::default()
        };
    }

    /// Adds one apply batch's events; `last` is the revision the batch left.
    pub fn push(&self, events: Batch, last: u64) {
        let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if !events.is_empty() {
            let size: usize = events.iter().map(ChangeEvent::size).sum();
            t.bytes += size;
            t.batches.push_back((events, size));
        }
        t.last = t.last.max(last);
        while t.bytes > MAX_TAIL_BYTES && t.batches.len() > 1 {
            if let Some((old, size)) = t.batches.pop_front() {
                t.bytes -= size;
                t.first = old[old.len() - 1].revision + 1;
            }
        }
    }

    /// Every event of revision `from` and later, or `None` when the tail no longer holds
    /// `from` (read it from disk).
    pub fn since(&self, from: u64) -> Option<Since> {
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if from < t.first {
            return None;
        }
        // Batches are in revision order: find the first one reaching `from` by bisection
        // (every watch asks at every wake-up, and the tail holds thousands of batches).
        let first = t
            .batches
            .partition_point(|(b, _)| b[b.len() - 1].revision < from);
        let batches = t.batches.range(first..).map(|(b, _)| b.clone()).collect();
        Some(Since {
            batches,
            last: t.last,
        })
    }

    /// The put event of `key` at `revision`, if the tail holds it.
    pub fn find(&self, key: &str, revision: u64) -> Option<ChangeEvent> {
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let first = t
            .batches
            .partition_point(|(b, _)| b[b.len() - 1].revision < revision);
        t.batches
            .range(first..)
            .take_while(|(b, _)| b[0].revision <= revision)
            .flat_map(|(b, _)| b.iter())
            .find(|e| e.revision == revision && e.key == key)
            .cloned()
    }

    /// The newest revision held whose events' cluster time is at most `cutoff` (stamps grow
    /// with revisions).
    pub fn newest_by(&self, cutoff: u64) -> Option<u64> {
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut newest = None;
        for (b, _) in &t.batches {
            if b[0].stamp > cutoff {
                break;
            }
            let upto = b.partition_point(|e| e.stamp <= cutoff);
            newest = Some(b[upto - 1].revision);
        }
        newest
    }

    /// The oldest revision held.
    pub fn first(&self) -> u64 {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::history::EventKind;

    fn ev(revision: u64, key: &str, bytes: usize) -> ChangeEvent {
        ChangeEvent {
            kind: EventKind::Put,
            revision,
            key: key.into(),
            record: fjall::Slice::from(vec![1u8; bytes]),
            prev_revision: 0,
            prev_inline: None,
            prev_large: None,
            stamp: revision * 10,
        }
    }

    #[test]
    fn the_tail_serves_what_it_holds_and_forgets_the_oldest() {
        let t = Tail::default();
        t.reset(5);
        assert!(t.since(4).is_none(), "before the start");
        let s = t.since(5).expect("from the start");
        assert!(s.batches.is_empty());
        assert_eq!(s.last, 4);
        t.push(vec![ev(5, "a", 10), ev(6, "b", 10)].into(), 6);
        t.push(vec![ev(7, "a", 10)].into(), 7);
        let s = t.since(7).expect("held");
        assert_eq!(s.batches.len(), 1);
        assert_eq!(s.last, 7);
        assert_eq!(t.find("a", 5).map(|e| e.revision), Some(5));
        // Stamps: revision * 10 (see `ev`).
        assert_eq!(t.newest_by(49), None);
        assert_eq!(t.newest_by(65), Some(6));
        assert_eq!(t.newest_by(1000), Some(7));
        assert!(t.find("a", 6).is_none());
        t.push(vec![ev(8, "big", MAX_TAIL_BYTES)].into(), 8);
        assert_eq!(t.first(), 8, "the older batches went");
        assert!(t.since(7).is_none());
        assert_eq!(t.since(8).map(|s| s.batches.len()), Some(1));
    }
}
