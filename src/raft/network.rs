//! Outbound Raft RPCs: each is one NATS request to `P.raft.<cluster>.<target>.<rpc>`, its
//! reply received (and, with `cluster.secret`, verified) by the node's [`Inbox`].
//!
//! Error mapping follows openraft's retry rules: nobody subscribed means `Unreachable` (it
//! backs off), a timeout is `Timeout`, an oversize append is `PayloadTooLarge` with a hint
//! so openraft resends fewer entries. A commit notice that the next append will carry is not
//! sent at all (see [`notice`](super::notice)), and an append whose entries already went out
//! early is answered by that early append's reply (see [`early`](super::early)).

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{EntryPayload, RPCTypes};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use super::early::{Answer, EarlyAppends};
use super::inbox::{CallError, Inbox};
use super::notice::{Awaited, Notices, NOTICE_WAIT};
use super::types::{Node, NodeId, TypeConfig};
use super::wire::{self, RpcReply, RpcRequest, RPC_FORMAT};
use crate::observe::metrics::PeerMetrics;
use crate::observe::{Observer, RpcFailure};
use crate::subjects::{RaftRpc, Subjects};

/// Room left in a NATS message for headers and the envelope.
pub const PAYLOAD_HEADROOM: usize = 16 * 1024;

#[derive(Clone)]
pub struct Network {
    /// The index of the last entry in this node's log.
    pub log_end: watch::Receiver<u64>,
    /// Sends RPCs and matches (and verifies) their replies.
    pub inbox: Arc<Inbox>,
    pub subjects: Subjects,
    pub me: NodeId,
    pub cluster_name: String,
    pub cluster_id: watch::Receiver<Option<Uuid>>,
    pub max_payload: usize,
    /// RPC latency and error metrics, per peer.
    pub observer: Arc<Observer>,
    /// The leader's entries sent before its own fsync completed, per follower.
    pub early: Arc<EarlyAppends>,
    /// How long an early append waits for its reply.
    pub early_ttl: Duration,
}

impl Network {
    /// Sends the entries the leader is appending to every follower that holds everything
    /// before them, without waiting for the leader's fsync. Entries of `size` bytes that
    /// need splitting go the usual way only, and so does a membership change: openraft
    /// alone knows whom it goes to (a removed node must not receive the change that removes
    /// it, see `api::admin::membership::watch_removal`).
    pub fn send_early(&self, rpc: AppendEntriesRequest<TypeConfig>, size: usize) {
        let membership = rpc
            .entries
            .iter()
            .any(|e| matches!(e.payload, EntryPayload::Membership(_)));
        if membership || size + PAYLOAD_HEADROOM > self.max_payload {
            return;
        }
        let rpc = Arc::new(rpc);
        for target in self.early.targets(self.me) {
            let Some(answer) = self.early.plan(target, &rpc) else {
                continue;
            };
            let conn = self.connect(target);
            let rpc = rpc.clone();
            tokio::spawn(async move {
                let n = rpc.entries.len() as u64;
                let reply: Result<
                    AppendEntriesResponse<NodeId>,
                    RPCError<NodeId, Node, RaftError<NodeId>>,
                > = conn
                    .call(
                        RaftRpc::Append,
                        RPCTypes::AppendEntries,
                        &*rpc,
                        conn.net.early_ttl,
                        n,
                    )
                    .await;
                let got = match reply {
                    Ok(AppendEntriesResponse::Success) => Answer::Accepted(Instant::now()),
                    _ => Answer::Refused,
                };
                conn.metrics.early_append_done(got != Answer::Refused);
                answer.send_replace(Some(got));
                conn.net.early.answered(target, rpc.vote, got);
            });
        }
    }

    fn connect(&self, target: NodeId) -> Connection {
        Connection {
            net: self.clone(),
            target,
            metrics: self.observer.metrics.peer(target),
            notices: Notices::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> Connection {
        self.connect(target)
    }
}

pub struct Connection {
    net: Network,
    target: NodeId,
    metrics: Arc<PeerMetrics>,
    notices: Notices,
}

#[derive(Debug)]
struct Oversize;

impl std::fmt::Display for Oversize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("message exceeds the NATS max payload")
    }
}

impl std::error::Error for Oversize {}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

impl Connection {
    /// One RPC, timed and counted by outcome.
    async fn call<Req, Resp, E>(
        &self,
        rpc: RaftRpc,
        action: RPCTypes,
        body: Req,
        ttl: Duration,
        entries: u64,
    ) -> Result<Resp, RPCError<NodeId, Node, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let started = Instant::now();
        let res = self.call_untimed(rpc, action, body, ttl, entries).await;
        let failure = res.as_ref().err().map(|e| match e {
            RPCError::Unreachable(_) => RpcFailure::Unreachable,
            RPCError::Timeout(_) => RpcFailure::Timeout,
            RPCError::RemoteError(_) => RpcFailure::Remote,
            RPCError::PayloadTooLarge(_) => RpcFailure::PayloadTooLarge,
            RPCError::Network(_) => RpcFailure::Network,
        });
        self.metrics
            .rpc_done(rpc, started.elapsed().as_secs_f64(), failure);
        res
    }

    async fn call_untimed<Req, Resp, E>(
        &self,
        rpc: RaftRpc,
        action: RPCTypes,
        body: Req,
        ttl: Duration,
        entries: u64,
    ) -> Result<Resp, RPCError<NodeId, Node, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let net = &self.net;
        let envelope = RpcRequest {
            format: RPC_FORMAT,
            cluster_name: net.cluster_name.clone(),
            cluster_id: *net.cluster_id.borrow(),
            from: net.me,
            to: self.target,
            body,
        };
        let bytes =
            wire::encode(&envelope).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let too_large = || -> RPCError<NodeId, Node, E> {
            if entries > 1 {
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(entries / 2))
            } else {
                RPCError::Network(NetworkError::new(&Oversize))
            }
        };
        if bytes.len() + 1024 > net.max_payload {
            return Err(too_large());
        }
        let subject = net.subjects.raft(self.target, rpc);
        let reply = match net.inbox.request(subject, bytes.into(), ttl).await {
            Ok(m) => m,
            Err(e) => {
                return Err(match e {
                    CallError::NoResponders => RPCError::Unreachable(Unreachable::new(&e)),
                    CallError::TimedOut(_) => RPCError::Timeout(Timeout {
                        action,
                        id: net.me,
                        target: self.target,
                        timeout: ttl,
                    }),
                    CallError::TooLarge => too_large(),
                    CallError::Publish(_) | CallError::Closed => {
                        RPCError::Network(NetworkError::new(&e))
                    }
                })
            }
        };
        match wire::decode::<RpcReply<Resp, E>>(&reply.payload) {
            Ok(RpcReply::Ok(v)) => Ok(v),
            Ok(RpcReply::Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            // A node of another cluster, or one we cannot talk to: back off.
            Ok(RpcReply::Refused(msg)) => {
                Err(RPCError::Unreachable(Unreachable::new(&Refused(msg))))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl Connection {
    /// When the entries of `rpc` went early and the target accepted them: when it did.
    async fn answered_early(
        &self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> Option<Instant> {
        let mut pending = self.net.early.covering(self.target, rpc)?;
        let answer = match tokio::time::timeout(ttl, pending.wait_for(Option::is_some)).await {
            Ok(Ok(a)) => *a,
            _ => None,
        };
        match answer {
            Some(Answer::Accepted(at)) => Some(at),
            _ => None,
        }
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        if let Some(matched) = self.notices.skippable(&rpc) {
            let carried = self.net.log_end.wait_for(|&end| end > matched);
            if let Ok(Ok(_)) = tokio::time::timeout(NOTICE_WAIT, carried).await {
                self.notices.skipped(&rpc);
                self.metrics.commit_notices_skipped.increment(1);
                return Ok(AppendEntriesResponse::Success);
            }
        }
        if let Some(at) = self.answered_early(&rpc, option.hard_ttl()).await {
            self.metrics.answered_early.increment(1);
            self.notices.after::<()>(
                Awaited::new(&rpc).at(at),
                &Ok(AppendEntriesResponse::Success),
            );
            return Ok(AppendEntriesResponse::Success);
        }
        self.net.early.sending(self.target, &rpc);
        let sent = Awaited::new(&rpc);
        let (vote, matched) = (rpc.vote, sent.matched());
        let n = rpc.entries.len() as u64;
        let reply = self
            .call(
                RaftRpc::Append,
                RPCTypes::AppendEntries,
                rpc,
                option.hard_ttl(),
                n,
            )
            .await;
        self.notices.after(sent, &reply);
        self.net.early.replied(self.target, vote, matched, &reply);
        reply
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(
            RaftRpc::Snapshot,
            RPCTypes::InstallSnapshot,
            rpc,
            option.hard_ttl(),
            0,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(RaftRpc::Vote, RPCTypes::Vote, rpc, option.hard_ttl(), 0)
            .await
    }
}
