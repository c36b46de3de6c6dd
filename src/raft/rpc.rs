//! One outbound Raft RPC to one peer: the versioned envelope, one NATS request to
//! `P.raft.<cluster>.<target>.<rpc>` through the node's [`Inbox`] (which signs it and
//! verifies the reply), and the mapping of what came back to openraft's errors.
//!
//! Sits below both users of the wire: [`network`](super::network) (votes, snapshots, and
//! openraft's appends via [`replication`](super::replication)) and the early appends that
//! `replication` sends on its own. It knows nothing of what an append means.
//!
//! Error mapping follows openraft's retry rules: nobody subscribed means `Unreachable` (it
//! backs off), a timeout is `Timeout`, an oversize append is `PayloadTooLarge` with a hint
//! so openraft resends fewer entries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{NetworkError, PayloadTooLarge, RPCError, RemoteError, Timeout, Unreachable};
use openraft::RPCTypes;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use super::inbox::{CallError, Inbox};
use super::types::{Node, NodeId};
use super::wire::{self, RpcReply, RpcRequest, RPC_FORMAT};
use crate::observe::metrics::PeerMetrics;
use crate::observe::{Observer, RpcFailure};
use crate::subjects::{RaftRpc, Subjects};

/// Room left in a NATS message for headers and the envelope.
pub const PAYLOAD_HEADROOM: usize = 16 * 1024;

/// What every outbound Raft RPC of this node needs, shared by all its peers.
pub struct Transport {
    /// Sends RPCs and matches (and verifies) their replies.
    pub inbox: Arc<Inbox>,
    pub subjects: Subjects,
    pub me: NodeId,
    pub cluster_name: String,
    pub cluster_id: watch::Receiver<Option<Uuid>>,
    pub max_payload: usize,
    /// RPC latency and error metrics, per peer.
    pub observer: Arc<Observer>,
}

impl Transport {
    /// The RPCs to `target`.
    pub fn peer(self: &Arc<Self>, target: NodeId) -> Peer {
        Peer {
            transport: self.clone(),
            target,
            metrics: self.observer.metrics.peer(target),
        }
    }

    /// `body` in this node's envelope, addressed to `to`.
    pub fn envelope<T>(&self, to: NodeId, body: T) -> RpcRequest<T> {
        RpcRequest {
            format: RPC_FORMAT,
            cluster_name: self.cluster_name.clone(),
            cluster_id: *self.cluster_id.borrow(),
            from: self.me,
            to,
            body,
        }
    }
}

/// RPCs to one peer, timed and counted in that peer's metrics.
#[derive(Clone)]
pub struct Peer {
    transport: Arc<Transport>,
    target: NodeId,
    metrics: Arc<PeerMetrics>,
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

impl Peer {
    pub fn target(&self) -> NodeId {
        self.target
    }

    pub fn metrics(&self) -> &PeerMetrics {
        &self.metrics
    }

    /// One RPC, timed and counted by outcome. `entries` is the number of log entries in
    /// `body`, for the `PayloadTooLarge` hint.
    pub async fn call<Req, Resp, E>(
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
        let net = &*self.transport;
        let envelope = net.envelope(self.target, body);
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
        // No `Concord-Cluster-Id` header: the envelope names the cluster id (under the MAC)
        // and the receiver checks it there. A header on every RPC cost about 2 % of a put's
        // latency (docs/bench-results/2026-12-07-hardening-ab.md).
        let sent = net.inbox.request(subject, bytes.into(), ttl);
        let reply = match sent.await {
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
