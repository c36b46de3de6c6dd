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
