//! Replication: everything between a leader's log and its followers' appends.
//!
//! ```text
//! store::log_store ── AppendObserver ──▶ Replication ─┬─ tail:   vote, commit, last entry, log end
//!   (vote, commit,                                     └─ early:  leader's entries, sent before
//!    entries, truncation)                                         its own fsync ends ──▶ rpc
//! openraft ── append_entries ──▶ network::Connection ──▶ PeerAppends
//!                                    skip a commit notice the next append carries (notice)
//!                                    or answer with an early append's Success     (early)
//!                                    or send it ──▶ rpc ──▶ inbox
//! ```
//!
//! The log store knows nothing of Raft messages: it reports what it saved through
//! [`AppendObserver`], which [`Replication`] implements. Replication sends through
//! [`rpc`](super::rpc) only, and every task it spawns is on the node's tracker.

mod append;
mod early;
mod notice;
mod tail;

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{RPCError, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::{EntryPayload, RPCTypes};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

pub use append::PeerAppends;
use early::{Answer, EarlyAppends};
use notice::Notices;
use tail::LogTail;

use super::rpc::{Peer, Transport, PAYLOAD_HEADROOM};
use super::types::{Entry, LogId, Node, NodeId, RaftMetrics, TypeConfig, Vote};
use crate::store::log_store::AppendObserver;
use crate::subjects::RaftRpc;

/// A node's replication state, shared by its log store (as the observer) and its
/// connections.
pub struct Replication {
    transport: Arc<Transport>,
    /// Early appends' tasks run on the node's tracker, so shutdown waits for them (each
    /// waits at most `early_ttl`).
    tracker: TaskTracker,
    /// How long an early append waits for its reply.
    early_ttl: Duration,
    tail: LogTail,
    /// The leader's entries sent before its own fsync completed, per follower.
    early: Arc<EarlyAppends>,
}

impl Replication {
    pub fn new(transport: Arc<Transport>, early_ttl: Duration, tracker: TaskTracker) -> Self {
        Replication {
            transport,
            tracker,
            early_ttl,
            tail: LogTail::new(),
            early: Arc::default(),
        }
    }

    /// The Raft metrics, which name the followers early appends go to. Set once, after
    /// construction: Raft's metrics exist only once `Raft::new` ran, and that needs the
    /// network and the log store, which hold this. Until then no early append is sent.
    pub fn set_raft_metrics(&self, metrics: watch::Receiver<RaftMetrics>) {
        self.early.set_metrics(metrics);
    }

    /// The state of openraft's appends to `peer`, for a new connection to it.
    pub fn peer_appends(&self, peer: Peer) -> PeerAppends {
        PeerAppends {
            peer,
            log_end: self.tail.end(),
            early: self.early.clone(),
            notices: Notices::default(),
        }
    }

    /// Sends the entries the leader is appending to every follower that holds everything
    /// before them, without waiting for the leader's fsync. Entries of `size` bytes that
    /// need splitting go the usual way only, and so does a membership change: openraft
    /// alone knows whom it goes to (a removed node must not receive the change that removes
    /// it, see `api::admin::membership::watch_removal`).
    fn send_early(&self, rpc: AppendEntriesRequest<TypeConfig>, size: usize) {
        let membership = rpc
            .entries
            .iter()
            .any(|e| matches!(e.payload, EntryPayload::Membership(_)));
        if membership || size + PAYLOAD_HEADROOM > self.transport.max_payload {
            return;
        }
        let rpc = Arc::new(rpc);
        for target in self.early.targets(self.transport.me) {
            let Some(answer) = self.early.plan(target, &rpc) else {
                continue;
            };
            let peer = self.transport.peer(target);
            let rpc = rpc.clone();
            let early = self.early.clone();
            let ttl = self.early_ttl;
            self.tracker.spawn(async move {
                let n = rpc.entries.len() as u64;
                let reply: Result<
                    AppendEntriesResponse<NodeId>,
                    RPCError<NodeId, Node, RaftError<NodeId>>,
                > = peer
                    .call(RaftRpc::Append, RPCTypes::AppendEntries, &*rpc, ttl, n)
                    .await;
                let got = match reply {
                    Ok(AppendEntriesResponse::Success) => Answer::Accepted(Instant::now()),
                    _ => Answer::Refused,
                };
                peer.metrics().early_append_done(got != Answer::Refused);
                answer.send_replace(Some(got));
                early.answered(target, rpc.vote, got);
            });
        }
    }
}

/// Contract: called by the log store on openraft's storage task, in the order of the saves;
/// nothing here blocks (an early append's RPC runs on its own task), and the only IO is the
/// read-back of an early append's previous log id when the tail does not know it.
impl AppendObserver for Replication {
    fn proposed_here(&self, first: &LogId) -> bool {
        first.leader_id.node_id == self.transport.me
    }

    fn appended(
        &self,
        entries: &[Entry],
        encoded_bytes: usize,
        log_id_at: &dyn Fn(u64) -> Option<LogId>,
    ) {
        let Some(first) = entries.first() else {
            return;
        };
        if self.proposed_here(&first.log_id) {
            if let Some(rpc) = self
                .tail
                .early_request(self.transport.me, entries, log_id_at)
            {
                self.send_early(rpc, encoded_bytes);
            }
        }
        if let Some(last) = entries.last() {
            self.tail.appended(last.log_id);
        }
    }

    fn truncating(&self, since: LogId) {
        self.tail.truncating(since);
    }

    fn vote_saved(&self, vote: Vote) {
        self.tail.vote_saved(vote);
    }

    fn committed_saved(&self, committed: Option<LogId>) {
        self.tail.committed_saved(committed);
    }
}
