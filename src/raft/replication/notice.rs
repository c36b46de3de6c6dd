//! Commit notices: appends that only tell a follower a newer commit index.
//!
//! openraft 0.9 sends one to every follower after each commit, and waits for its reply
//! before the next entries go out. Under load the leader's log holds the next entries then,
//! or within a fraction of a millisecond, and the append that carries them carries the
//! newer commit index too. Such a notice is not sent: the connection answers `Success` for
//! it, which can only repeat the target's last reply (same vote, same log). When no entries
//! come within [`NOTICE_WAIT`], the notice goes out as usual, so an idle follower learns the
//! commit at most that much later.
//!
//! A connection without a reply yet, like the fresh one openraft opens for each ReadIndex
//! round, always sends: leadership is confirmed by real replies only.

use std::time::{Duration, Instant};

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::{LogId, Vote};

use crate::raft::types::{NodeId, TypeConfig};

/// A notice is skipped only while the target's last reply on this connection is younger
/// than this. openraft takes the `Success` of a skipped notice as an acknowledgment sent
/// now, so the leader's quorum-acknowledgment clock (used for the stale-read window and
/// status, never for linearizable reads) may run ahead of the real replies by at most this.
/// A notice follows a commit, which itself needed a quorum of real replies just before.
const NOTICE_FRESH: Duration = Duration::from_millis(20);

/// How long a notice waits for entries to carry it before it is sent.
pub const NOTICE_WAIT: Duration = Duration::from_millis(1);

/// An append the target accepted: in `vote`, its log matching ours up to `matched`, told
/// that `committed` is committed.
struct Acked {
    vote: Vote<NodeId>,
    matched: Option<LogId<NodeId>>,
    committed: Option<LogId<NodeId>>,
    at: Instant,
}

/// Per connection: what the target last accepted.
#[derive(Default)]
pub struct Notices {
    acked: Option<Acked>,
}

/// The ids of an append sent now, whose reply is awaited.
pub struct Awaited(Acked);

impl Awaited {
    /// The reply came at `at` (an early append's), not now.
    pub fn at(mut self, at: Instant) -> Awaited {
        self.0.at = at;
        self
    }

    /// The index the target's log matches ours up to if it accepts.
    pub fn matched(&self) -> Option<u64> {
        self.0.matched.map(|m| m.index)
    }

    pub fn new(rpc: &AppendEntriesRequest<TypeConfig>) -> Awaited {
        Awaited(Acked {
            vote: rpc.vote,
            matched: rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id),
            committed: rpc.leader_commit,
            at: Instant::now(),
        })
    }
}

impl Notices {
    /// For a notice that may be skipped: the index the target's log matches ours up to.
    /// Once the leader's log holds an entry past it, the notice need not be sent.
    pub fn skippable(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> Option<u64> {
        let acked = self.acked.as_ref().filter(|a| a.is_notice(rpc))?;
        Some(acked.matched.map_or(0, |m| m.index))
    }

    /// Records that the notice `rpc` was answered without sending it.
    pub fn skipped(&mut self, rpc: &AppendEntriesRequest<TypeConfig>) {
        if let Some(acked) = self.acked.as_mut() {
            acked.committed = rpc.leader_commit;
        }
    }

    /// What the awaited append told about the target.
    pub fn after<E>(&mut self, sent: Awaited, reply: &Result<AppendEntriesResponse<NodeId>, E>) {
        self.acked = match reply {
            Ok(AppendEntriesResponse::Success) => Some(sent.0),
            _ => None,
        };
    }
}

impl Acked {
    fn is_notice(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        rpc.entries.is_empty()
            && rpc.vote == self.vote
            && rpc.prev_log_id == self.matched
            && rpc.leader_commit > self.committed
            && self.at.elapsed() < NOTICE_FRESH
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(2, 1), index)
    }

    /// An append of `entries` blank entries after `prev`, all of leader 1 in term 2.
    pub(in crate::raft::replication) fn append(
        vote: Vote<NodeId>,
        prev: u64,
        entries: u64,
        commit: u64,
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote,
            prev_log_id: Some(log_id(prev)),
            entries: (prev + 1..=prev + entries)
                .map(|i| Entry {
                    log_id: log_id(i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: Some(log_id(commit)),
        }
    }

    /// Notices after the target accepted entries up to 10, with commit 8, at `at`.
    fn accepted(vote: Vote<NodeId>, at: Instant) -> Notices {
        let mut sent = Awaited::new(&append(vote, 8, 2, 8));
        sent.0.at = at;
        let mut n = Notices::default();
        n.after::<()>(sent, &Ok(AppendEntriesResponse::Success));
        n
    }

    #[test]
    fn only_a_notice_after_a_fresh_reply_may_be_skipped() {
        let vote = Vote::new_committed(2, 1);
        let now = Instant::now();
        let notice = append(vote, 10, 0, 10);
        assert_eq!(accepted(vote, now).skippable(&notice), Some(10));

        assert_eq!(Notices::default().skippable(&notice), None, "no reply yet");
        let cases = [
            (append(vote, 10, 2, 10), "entries"),
            (append(vote, 10, 0, 8), "no newer commit: a heartbeat"),
            (append(vote, 9, 0, 10), "another log"),
            (append(Vote::new_committed(3, 1), 10, 0, 10), "another vote"),
        ];
        for (rpc, why) in cases {
            assert_eq!(accepted(vote, now).skippable(&rpc), None, "{why}");
        }
        if let Some(old) = now.checked_sub(NOTICE_FRESH * 2) {
            assert_eq!(
                accepted(vote, old).skippable(&notice),
                None,
                "no recent reply"
            );
        }

        let mut n = accepted(vote, now);
        n.skipped(&notice);
        assert_eq!(n.skippable(&notice), None, "that commit was answered");
        assert_eq!(
            n.skippable(&append(vote, 10, 0, 11)),
            Some(10),
            "a newer one"
        );
    }

    #[test]
    fn a_failed_reply_makes_every_append_wait() {
        let vote = Vote::new_committed(2, 1);
        let rpc = append(vote, 10, 2, 10);
        let notice = append(vote, 12, 0, 12);
        let mut n = accepted(vote, Instant::now());
        n.after(Awaited::new(&rpc), &Err("timed out"));
        assert_eq!(n.skippable(&notice), None);

        let mut n = accepted(vote, Instant::now());
        let higher = Vote::new_committed(3, 2);
        n.after::<()>(
            Awaited::new(&rpc),
            &Ok(AppendEntriesResponse::HigherVote(higher)),
        );
        assert_eq!(n.skippable(&notice), None);

        let mut n = accepted(vote, Instant::now());
        n.after::<()>(Awaited::new(&rpc), &Ok(AppendEntriesResponse::Success));
        assert_eq!(n.skippable(&notice), Some(12), "after entries up to 12");
    }
}
