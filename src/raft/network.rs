//! Outbound Raft RPCs: each is one NATS request to `P.raft.<cluster>.<target>.<rpc>`, its
//! reply received (and, with `cluster.secret`, verified) by the node's [`Inbox`].
//!
//! Error mapping follows openraft's retry rules: nobody subscribed means `Unreachable` (it
//! backs off), a timeout is `Timeout`, an oversize append is `PayloadTooLarge` with a hint
//! so openraft resends fewer entries.

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
use openraft::{LogId, RPCTypes, Vote};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use super::inbox::{CallError, Inbox};
use super::types::{Node, NodeId, TypeConfig};
use super::wire::{self, RpcReply, RpcRequest, RPC_FORMAT};
use crate::observe::metrics::PeerMetrics;
use crate::observe::{Observer, RpcFailure};
use crate::subjects::{RaftRpc, Subjects};

/// Room left in a NATS message for headers and the envelope.
pub const PAYLOAD_HEADROOM: usize = 16 * 1024;

#[derive(Clone)]
pub struct Network {
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

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> Connection {
        Connection {
            net: self.clone(),
            target,
            metrics: self.observer.metrics.peer(target),
            acked: None,
        }
    }
}

/// A one-way commit notice is sent only while the target's last real reply on this
/// connection is younger than this.
const ONE_WAY_FRESH: Duration = Duration::from_millis(100);

pub struct Connection {
    net: Network,
    target: NodeId,
    metrics: Arc<PeerMetrics>,
    /// The target's last successful append reply on this connection.
    acked: Option<Acked>,
}

/// An append the target accepted: in `vote`, its log matching ours up to `matched`, told
/// that `committed` is committed.
struct Acked {
    vote: Vote<NodeId>,
    matched: Option<LogId<NodeId>>,
    committed: Option<LogId<NodeId>>,
    at: Instant,
}

impl Acked {
    /// Whether `rpc` only tells the target a newer commit index. openraft 0.9 sends one
    /// after each commit and waits for its reply before the next entries go out. A reply
    /// could only repeat the last one (same vote, same log), so it is sent one-way and
    /// answered here, as etcd's transport does with every message. A connection that has
    /// not had a reply yet, like the fresh one openraft opens for each ReadIndex round,
    /// always makes the real call, so leadership is confirmed by real replies only.
    fn covers(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        rpc.entries.is_empty()
            && rpc.vote == self.vote
            && rpc.prev_log_id == self.matched
            && rpc.leader_commit > self.committed
            && self.at.elapsed() < ONE_WAY_FRESH
    }
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
    /// `body` in the RPC envelope, encoded.
    fn envelope<Req: Serialize, E: std::error::Error>(
        &self,
        body: Req,
    ) -> Result<Vec<u8>, RPCError<NodeId, Node, E>> {
        let net = &self.net;
        let envelope = RpcRequest {
            format: RPC_FORMAT,
            cluster_name: net.cluster_name.clone(),
            cluster_id: *net.cluster_id.borrow(),
            from: net.me,
            to: self.target,
            body,
        };
        wire::encode(&envelope).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

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
        let bytes = self.envelope(body)?;
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

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        if let Some(acked) = self.acked.as_mut().filter(|a| a.covers(&rpc)) {
            acked.committed = rpc.leader_commit;
            let bytes = self.envelope(rpc)?;
            let subject = self.net.subjects.raft(self.target, RaftRpc::Append);
            return match self.net.inbox.notify(subject, bytes.into()).await {
                Ok(()) => {
                    self.metrics.commit_notices.increment(1);
                    Ok(AppendEntriesResponse::Success)
                }
                Err(e) => {
                    self.acked = None;
                    Err(RPCError::Network(NetworkError::new(&e)))
                }
            };
        }
        let n = rpc.entries.len() as u64;
        let sent = Acked {
            vote: rpc.vote,
            matched: rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id),
            committed: rpc.leader_commit,
            at: Instant::now(),
        };
        let res = self
            .call(
                RaftRpc::Append,
                RPCTypes::AppendEntries,
                rpc,
                option.hard_ttl(),
                n,
            )
            .await;
        self.acked = match res {
            Ok(AppendEntriesResponse::Success) => Some(Acked {
                at: Instant::now(),
                ..sent
            }),
            _ => None,
        };
        res
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

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn append(
        vote: Vote<NodeId>,
        prev: u64,
        entries: u64,
        commit: u64,
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote,
            prev_log_id: Some(log_id(2, prev)),
            entries: (prev + 1..=prev + entries)
                .map(|i| Entry {
                    log_id: log_id(2, i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: Some(log_id(2, commit)),
        }
    }

    fn acked(vote: Vote<NodeId>, matched: u64, committed: u64, age: Duration) -> Acked {
        Acked {
            vote,
            matched: Some(log_id(2, matched)),
            committed: Some(log_id(2, committed)),
            at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
        }
    }

    #[test]
    fn only_a_fresh_commit_notice_goes_one_way() {
        let vote = Vote::new_committed(2, 1);
        let fresh = acked(vote, 10, 8, Duration::ZERO);
        assert!(
            fresh.covers(&append(vote, 10, 0, 10)),
            "a newer commit only"
        );

        assert!(
            !fresh.covers(&append(vote, 10, 2, 10)),
            "entries need a reply"
        );
        assert!(
            !fresh.covers(&append(vote, 10, 0, 8)),
            "no newer commit: a heartbeat"
        );
        assert!(
            !fresh.covers(&append(vote, 9, 0, 10)),
            "another prev log id"
        );
        let newer = Vote::new_committed(3, 1);
        assert!(!fresh.covers(&append(newer, 10, 0, 10)), "another vote");

        let stale = acked(vote, 10, 8, ONE_WAY_FRESH * 2);
        assert!(!stale.covers(&append(vote, 10, 0, 10)), "no recent reply");
    }
}
