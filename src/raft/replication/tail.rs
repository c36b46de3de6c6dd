//! The log tail as replication sees it: what the log store last saved (vote, committed,
//! last entry) and a live view of the log's end, kept up to date through
//! [`AppendObserver`](crate::store::AppendObserver).
//!
//! From it come the early append for a leader's own entries (their previous log id is
//! usually the last entry appended, so no read) and the end of the log that tells a commit
//! notice whether entries to carry it are there.

use std::sync::Mutex;

use openraft::raft::AppendEntriesRequest;
use tokio::sync::watch;

use crate::raft::types::{Entry, LogId, NodeId, TypeConfig, Vote};

pub(super) struct LogTail {
    saved: Mutex<Saved>,
    /// The index of the last entry this process appended to the log (0 before its first
    /// append, which only makes the network send commit notices it could skip).
    end: watch::Sender<u64>,
}

/// What this process last saved, to build an early append from a leader's entries.
#[derive(Default)]
struct Saved {
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// The last entry appended; `None` when unknown (before the first append, after a
    /// truncation).
    last: Option<LogId>,
}

impl LogTail {
    pub(super) fn new() -> LogTail {
        LogTail {
            saved: Mutex::default(),
            end: watch::Sender::new(0),
        }
    }

    fn saved(&self) -> std::sync::MutexGuard<'_, Saved> {
        // Single-field updates: a poisoned lock is still consistent.
        self.saved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live view of the index of the last entry appended: entries past a follower's
    /// matched index are about to be sent to it.
    pub(super) fn end(&self) -> watch::Receiver<u64> {
        self.end.subscribe()
    }

    pub(super) fn vote_saved(&self, vote: Vote) {
        self.saved().vote = Some(vote);
    }

    pub(super) fn committed_saved(&self, committed: Option<LogId>) {
        self.saved().committed = committed;
    }

    pub(super) fn appended(&self, last: LogId) {
        self.saved().last = Some(last);
        self.end.send_replace(last.index);
    }

    /// The entries from `since` on are being removed: the log ends before it.
    pub(super) fn truncating(&self, since: LogId) {
        let before = since.index.saturating_sub(1);
        self.saved().last = None;
        self.end.send_if_modified(|end| {
            let moved = *end > before;
            *end = (*end).min(before);
            moved
        });
    }

    /// The append request for `entries` if node `me` proposed them as the leader of its
    /// current vote, with their previous log id known (`log_id_at` reads an earlier one
    /// back from the log).
    pub(super) fn early_request(
        &self,
        me: NodeId,
        entries: &[Entry],
        log_id_at: &dyn Fn(u64) -> Option<LogId>,
    ) -> Option<AppendEntriesRequest<TypeConfig>> {
        let first = entries.first()?.log_id;
        let (vote, committed, last) = {
            let s = self.saved();
            (s.vote?, s.committed, s.last)
        };
        let leading = vote.is_committed()
            && vote.leader_id().voted_for() == Some(me)
            && *vote.leader_id() == first.leader_id;
        if !leading {
            return None;
        }
        let prev_log_id = match first.index.checked_sub(1) {
            None => None,
            Some(i) if last.is_some_and(|l| l.index == i) => last,
            Some(i) => Some(log_id_at(i)?),
        };
        Some(AppendEntriesRequest {
            vote,
            prev_log_id,
            entries: entries.to_vec(),
            leader_commit: committed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries of leader 1 in term 2, after `prev`.
    fn entries(prev: u64, n: u64) -> Vec<Entry> {
        super::super::notice::tests::append(Vote::new_committed(2, 1), prev, n, 0).entries
    }

    fn no_read(_: u64) -> Option<LogId> {
        panic!("the previous entry is the last one appended: no read");
    }

    #[test]
    fn only_the_leader_of_the_saved_vote_builds_an_early_append() {
        let tail = LogTail::new();
        let batch = entries(10, 2);
        assert!(tail.early_request(1, &batch, &no_read).is_none(), "no vote");

        tail.vote_saved(Vote::new(2, 1));
        assert!(
            tail.early_request(1, &batch, &no_read).is_none(),
            "not committed"
        );
        tail.vote_saved(Vote::new_committed(2, 1));
        assert!(tail.early_request(2, &batch, &no_read).is_none(), "not me");
        tail.vote_saved(Vote::new_committed(3, 1));
        assert!(
            tail.early_request(1, &batch, &no_read).is_none(),
            "entries of an earlier term"
        );
    }

    #[test]
    fn the_previous_log_id_is_the_last_appended_or_read_back() {
        let tail = LogTail::new();
        let committed = entries(7, 1)[0].log_id;
        tail.vote_saved(Vote::new_committed(2, 1));
        tail.committed_saved(Some(committed));
        let prev = entries(9, 1)[0].log_id;
        tail.appended(prev);

        let rpc = tail.early_request(1, &entries(10, 2), &no_read);
        let rpc = rpc.expect("leader's own entries");
        assert_eq!(rpc.prev_log_id, Some(prev));
        assert_eq!(rpc.leader_commit, Some(committed));
        assert_eq!(rpc.vote, Vote::new_committed(2, 1));
        assert_eq!(rpc.entries.len(), 2);

        tail.truncating(entries(10, 1)[0].log_id);
        let rpc = tail.early_request(1, &entries(10, 1), &|i| (i == 10).then_some(prev));
        assert_eq!(rpc.map(|r| r.prev_log_id), Some(Some(prev)), "read back");
        assert!(
            tail.early_request(1, &entries(10, 1), &|_| None).is_none(),
            "previous entry unknown"
        );
    }

    #[test]
    fn the_end_follows_appends_and_truncations() {
        let tail = LogTail::new();
        let end = tail.end();
        assert_eq!(*end.borrow(), 0);
        tail.appended(entries(11, 1)[0].log_id);
        assert_eq!(*end.borrow(), 12);
        tail.truncating(entries(9, 1)[0].log_id);
        assert_eq!(*end.borrow(), 9, "ends before the first removed entry");
        tail.truncating(entries(10, 1)[0].log_id);
        assert_eq!(*end.borrow(), 9, "never raised by a truncation");
    }
}
