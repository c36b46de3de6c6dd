//! openraft's appends to one follower, on one connection: a commit notice that the next
//! append will carry is answered without sending (see [`notice`](super::notice)), an append
//! whose entries already went out early is answered by that early append's reply (see
//! [`early`](super::early)), and any other goes out as one RPC.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{RPCError, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::RPCTypes;
use tokio::sync::watch;

use super::early::{Answer, EarlyAppends};
use super::notice::{Awaited, Notices, NOTICE_WAIT};
use crate::raft::rpc::Peer;
use crate::raft::types::{Node, NodeId, TypeConfig};
use crate::subjects::RaftRpc;

/// openraft's appends to one follower, with what its replies on this connection told.
pub struct PeerAppends {
    pub(super) peer: Peer,
    /// The index of the last entry in this node's log.
    pub(super) log_end: watch::Receiver<u64>,
    pub(super) early: Arc<EarlyAppends>,
    pub(super) notices: Notices,
}

impl PeerAppends {
    /// openraft's append `rpc`, answered within `ttl`.
    pub async fn append(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let target = self.peer.target();
        if let Some(matched) = self.notices.skippable(&rpc) {
            let carried = self.log_end.wait_for(|&end| end > matched);
            if let Ok(Ok(_)) = tokio::time::timeout(NOTICE_WAIT, carried).await {
                self.notices.skipped(&rpc);
                self.peer.metrics().commit_notices_skipped.increment(1);
                return Ok(AppendEntriesResponse::Success);
            }
        }
        if let Some(at) = self.answered_early(&rpc, ttl).await {
            self.peer.metrics().answered_early.increment(1);
            self.notices.after::<()>(
                Awaited::new(&rpc).at(at),
                &Ok(AppendEntriesResponse::Success),
            );
            return Ok(AppendEntriesResponse::Success);
        }
        self.early.sending(target, &rpc);
        let sent = Awaited::new(&rpc);
        let (vote, matched) = (rpc.vote, sent.matched());
        let n = rpc.entries.len() as u64;
        let reply = self
            .peer
            .call(RaftRpc::Append, RPCTypes::AppendEntries, rpc, ttl, n)
            .await;
        self.notices.after(sent, &reply);
        self.early.replied(target, vote, matched, &reply);
        reply
    }

    /// When the entries of `rpc` went early and the target accepted them: when it did.
    async fn answered_early(
        &self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> Option<Instant> {
        let mut awaited = self.early.covering(self.peer.target(), rpc)?;
        let answer = match tokio::time::timeout(ttl, awaited.wait_for(Option::is_some)).await {
            Ok(Ok(a)) => *a,
            _ => None,
        };
        match answer {
            Some(Answer::Accepted(at)) => Some(at),
            _ => None,
        }
    }
}
