//! Early appends: the leader's new entries go to followers while its own fsync runs.
//!
//! openraft 0.9 replicates an entry only after the leader's flush of it completed
//! (`RaftCore::append_to_log` awaits it), so a put waited for two fsyncs one after the
//! other, the leader's then a follower's. Raft lets a leader send entries before its own
//! copy is durable: it counts itself towards the quorum only once it is, and openraft still
//! does that. So when the leader's log store appends entries of its own term (it tells
//! [`Replication`](super::Replication) through its `AppendObserver`), they become a normal
//! append request under the leader's vote and go at once to every follower that holds, or
//! is being sent, everything before them; this file keeps what is known per follower. Each
//! follower's core checks the vote and the log like for any append.
//!
//! When openraft then replicates those entries, the connection answers with the early
//! append's reply if it was `Success` and covered them (same vote, last index at least as
//! high): a `Success` says the follower's log matched ours up to its last entry, and a
//! leader never rewrites its own log within its term. Any other outcome, and openraft's
//! append is sent as usual.
//!
//! The decisions per follower live here; [`Replication`](super::Replication) sends the
//! early appends and [`PeerAppends`](super::PeerAppends) answers openraft's with them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use tokio::sync::watch;

use crate::raft::types::{NodeId, RaftMetrics, TypeConfig, Vote};

/// Early appends in flight or answered (and not yet matched to an openraft append) per
/// follower, beyond which none is sent: a follower that stopped answering should not
/// collect more.
const MAX_OUTSTANDING: usize = 32;

/// How a follower answered an early append.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Answer {
    /// `Success`, received at this instant.
    Accepted(Instant),
    /// Anything else: a conflict, a higher vote, an error or no reply.
    Refused,
}

/// The answer to an early append, once it came.
pub type AwaitedAnswer = watch::Receiver<Option<Answer>>;

struct Follower {
    vote: Vote,
    /// The follower holds the entries up to here, or they are on their way to it.
    sent_upto: Option<u64>,
    /// The follower answered `Success` for the entries up to here.
    confirmed: Option<u64>,
    /// Early appends by the index of their last entry.
    outstanding: BTreeMap<u64, AwaitedAnswer>,
}

impl Follower {
    fn new(vote: Vote) -> Follower {
        Follower {
            vote,
            sent_upto: None,
            confirmed: None,
            outstanding: BTreeMap::new(),
        }
    }
}

/// What is known per follower about early appends, shared by the leader's connections.
#[derive(Default)]
pub struct EarlyAppends {
    followers: Mutex<HashMap<NodeId, Follower>>,
    /// The node's Raft metrics, set once Raft runs: they name the followers. A typed
    /// set-once slot, not a constructor argument, because Raft is built from the network
    /// that holds this (see `Replication::set_raft_metrics`).
    metrics: OnceLock<watch::Receiver<RaftMetrics>>,
}

impl EarlyAppends {
    pub fn set_metrics(&self, metrics: watch::Receiver<RaftMetrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// The followers (and learners) of the membership, other than `me`.
    pub fn targets(&self, me: NodeId) -> Vec<NodeId> {
        let Some(m) = self.metrics.get() else {
            return Vec::new();
        };
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| *id != me)
            .collect()
    }

    /// Whether `rpc` goes early to `target`; if so, where to put its answer.
    pub fn plan(
        &self,
        target: NodeId,
        rpc: &AppendEntriesRequest<TypeConfig>,
    ) -> Option<watch::Sender<Option<Answer>>> {
        let last = rpc.entries.last()?.log_id.index;
        let mut all = self.lock();
        let f = follower(&mut all, target, rpc.vote);
        let holds_prev = match rpc.prev_log_id {
            None => true,
            Some(prev) => f.sent_upto.is_some_and(|s| s >= prev.index),
        };
        if !holds_prev || f.outstanding.len() >= MAX_OUTSTANDING {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        f.outstanding.insert(last, rx);
        f.sent_upto = Some(last);
        Some(tx)
    }

    /// Records the answer to an early append; after a refusal the follower is sent nothing
    /// early until it holds everything before the next entries.
    pub fn answered(&self, target: NodeId, vote: Vote, answer: Answer) {
        if answer != Answer::Refused {
            return;
        }
        let mut all = self.lock();
        if let Some(f) = all.get_mut(&target).filter(|f| f.vote == vote) {
            f.sent_upto = f.confirmed;
        }
    }

    /// For openraft's append `rpc`: an early append whose `Success` would answer it.
    pub fn covering(
        &self,
        target: NodeId,
        rpc: &AppendEntriesRequest<TypeConfig>,
    ) -> Option<AwaitedAnswer> {
        let last = rpc.entries.last()?.log_id.index;
        let mut all = self.lock();
        let f = all.get_mut(&target).filter(|f| f.vote == rpc.vote)?;
        // Later appends end later: early ones ending before this one answer none of them.
        f.outstanding = f.outstanding.split_off(&last);
        f.outstanding.first_key_value().map(|(_, a)| a.clone())
    }

    /// openraft's append `rpc` is being sent to `target`: its entries are on their way.
    pub fn sending(&self, target: NodeId, rpc: &AppendEntriesRequest<TypeConfig>) {
        let Some(last) = rpc.entries.last().map(|e| e.log_id.index) else {
            return;
        };
        let mut all = self.lock();
        let f = follower(&mut all, target, rpc.vote);
        f.sent_upto = f.sent_upto.max(Some(last));
    }

    /// What openraft's append `rpc` to `target` got as a reply.
    pub fn replied<E>(
        &self,
        target: NodeId,
        rpc_vote: Vote,
        matched: Option<u64>,
        reply: &Result<AppendEntriesResponse<NodeId>, E>,
    ) {
        let mut all = self.lock();
        let f = follower(&mut all, target, rpc_vote);
        match reply {
            Ok(AppendEntriesResponse::Success) => {
                f.confirmed = f.confirmed.max(matched);
                f.sent_upto = f.sent_upto.max(matched);
            }
            _ => f.sent_upto = f.confirmed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Follower>> {
        // Every update leaves the map consistent, so a poisoned lock is still usable.
        self.followers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The state of `target` under `vote`; a new vote starts it afresh.
fn follower(all: &mut HashMap<NodeId, Follower>, target: NodeId, vote: Vote) -> &mut Follower {
    let f = all.entry(target).or_insert_with(|| Follower::new(vote));
    if f.vote != vote {
        *f = Follower::new(vote);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(vote: Vote, prev: u64, entries: u64) -> AppendEntriesRequest<TypeConfig> {
        super::super::notice::tests::append(vote, prev, entries, 0)
    }

    const PEER: NodeId = 2;

    #[test]
    fn only_a_follower_known_to_hold_the_entries_before_gets_them_early() {
        let vote = Vote::new_committed(2, 1);
        let early = EarlyAppends::default();
        assert!(early.plan(PEER, &append(vote, 10, 2)).is_none(), "unknown");

        early.replied::<()>(PEER, vote, Some(10), &Ok(AppendEntriesResponse::Success));
        assert!(early.plan(PEER, &append(vote, 10, 2)).is_some());
        assert!(early.plan(PEER, &append(vote, 12, 3)).is_some(), "chained");
        assert!(early.plan(PEER, &append(vote, 16, 1)).is_none(), "a gap");

        early.answered(PEER, vote, Answer::Refused);
        assert!(early.plan(PEER, &append(vote, 15, 1)).is_none(), "refused");
        early.sending(PEER, &append(vote, 10, 6));
        assert!(early.plan(PEER, &append(vote, 16, 1)).is_some(), "resent");

        let newer = Vote::new_committed(3, 1);
        assert!(
            early.plan(PEER, &append(newer, 17, 1)).is_none(),
            "new vote"
        );
    }

    #[test]
    fn an_append_is_covered_by_the_first_early_one_reaching_its_last_entry() {
        let vote = Vote::new_committed(2, 1);
        let early = EarlyAppends::default();
        early.replied::<()>(PEER, vote, Some(10), &Ok(AppendEntriesResponse::Success));
        let first = early.plan(PEER, &append(vote, 10, 2));
        let second = early.plan(PEER, &append(vote, 12, 2));
        let (Some(first), Some(second)) = (first, second) else {
            panic!("both go early");
        };
        let at = Instant::now();
        first.send_replace(Some(Answer::Accepted(at)));
        second.send_replace(Some(Answer::Refused));

        let answer = |rpc| early.covering(PEER, &rpc).and_then(|p| *p.borrow());
        assert_eq!(answer(append(vote, 10, 1)), Some(Answer::Accepted(at)));
        assert_eq!(answer(append(vote, 10, 2)), Some(Answer::Accepted(at)));
        assert_eq!(answer(append(vote, 10, 3)), Some(Answer::Refused));
        assert_eq!(answer(append(vote, 10, 5)), None, "past every early one");
        assert_eq!(answer(append(vote, 10, 2)), None, "pruned");
        let other = Vote::new_committed(3, 1);
        assert_eq!(answer(append(other, 10, 1)), None);
    }
}
