//! Inbound Raft RPCs: subscribe to `P.raft.<cluster>.<me>.*` (openraft's three RPCs and
//! our `elect`, see [`handoff`](super::handoff)), verify the MAC (with
//! `cluster.secret`), check the envelope, hand the RPC to openraft, reply with its result
//! (signed with the reply MAC bound to the request's MAC).
//!
//! An unsigned or forged RPC is dropped before anything of it is decoded: no reply at all,
//! only a count in [`Rejections`] (and a log line). Without a secret the header is ignored.
//! An RPC whose envelope names another cluster id is refused and counted, whether or not
//! the cluster has a secret.
//!
//! Each message gets its own task so a slow snapshot chunk never holds up heartbeats.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, Message};
use futures::StreamExt;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::handoff::{self, ElectRequest};
use super::types::{NodeId, Raft, TypeConfig};
use super::wire::{self, RpcReply, RpcRequest, RPC_FORMAT};
use crate::signing::{self, Rejections, Signer};
use crate::store::StateView;
use crate::subjects::{last_token, RaftRpc, Subjects, RAFT_ELECT};

/// When this node last accepted entries or a heartbeat from a leader; decides whether it
/// may serve stale reads.
pub struct LeaderContact {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact {
            origin: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
        }
    }
}

impl LeaderContact {
    pub fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last contact, `None` if never.
    pub fn since(&self) -> Option<Duration> {
        match self.last_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(
                self.origin
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }
}

pub struct RaftService {
    pub client: Client,
    pub subjects: Subjects,
    pub me: NodeId,
    pub cluster_name: String,
    pub raft: Raft,
    pub view: Arc<StateView>,
    pub contact: Arc<LeaderContact>,
    /// Set for a node that started with an empty data dir while its cluster was live: it
    /// may have voted in the current term before its data was lost, so it grants no vote
    /// until a leader has reached it (and its vote is persisted again).
    pub hold_votes: AtomicBool,
    /// The leader lease (`raft.election_timeout_max_ms`): a follower that heard from its
    /// leader within it does not campaign on a candidate's request.
    pub lease: Duration,
    /// Set with `cluster.secret`: RPCs must carry a valid MAC, replies are signed.
    pub signer: Option<Signer>,
    pub rejections: Arc<Rejections>,
}

impl RaftService {
    pub async fn run(
        self: Arc<Self>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<(), async_nats::SubscribeError> {
        let mut sub = self
            .client
            .subscribe(self.subjects.raft_wildcard(self.me))
            .await?;
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => break,
                m = sub.next() => match m { Some(m) => m, None => break },
            };
            let this = self.clone();
            tracker.spawn(async move { this.handle(msg).await });
        }
        let _ = sub.unsubscribe().await;
        Ok(())
    }

    async fn handle(&self, msg: Message) {
        // Verified before anything is decoded. The request MAC also covers the reply subject
        // (unique per call), which ties the reply we sign to this one call.
        let request_mac = match &self.signer {
            None => None,
            Some(signer) => match signing::verify_received(signer, &self.rejections, &msg, &[]) {
                Ok(mac) => Some(mac),
                Err(_) => return,
            },
        };
        let Some(reply_to) = msg.reply.clone() else {
            return;
        };
        let Some(reply) = self.dispatch(&msg).await else {
            return;
        };
        let sent = match (&self.signer, request_mac) {
            (Some(signer), Some(mac)) => {
                let headers = signing::mac_header(&signer.reply_mac(&mac, &reply));
                self.client
                    .publish_with_headers(reply_to, headers, reply.into())
                    .await
            }
            _ => self.client.publish(reply_to, reply.into()).await,
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "raft rpc reply not sent");
        }
    }

    /// Serves one verified RPC; `None` for a subject that names no RPC (no reply).
    async fn dispatch(&self, msg: &Message) -> Option<Vec<u8>> {
        let reply = match RaftRpc::parse(last_token(&msg.subject)) {
            Some(RaftRpc::Append) => {
                self.serve(msg, |req: AppendEntriesRequest<TypeConfig>| async move {
                    let leader_vote = req.vote;
                    let res = self.raft.append_entries(req).await;
                    if let Ok(resp) = &res {
                        if resp.is_success() && leader_vote.is_committed() {
                            self.contact.touch();
                            if self.hold_votes.swap(false, Ordering::Relaxed) {
                                tracing::info!("reached by the leader; this node votes again");
                            }
                        }
                    }
                    res
                })
                .await
            }
            Some(RaftRpc::Vote) if self.hold_votes.load(Ordering::Relaxed) => {
                wire::encode(&RpcReply::<(), ()>::Refused(
                    "this node restarted with an empty data dir and votes only after a leader reaches it".into(),
                ))
                .unwrap_or_default()
            }
            Some(RaftRpc::Vote) => {
                self.serve(msg, |req: VoteRequest<NodeId>| async move {
                    let candidate_log = req.last_log_id;
                    let res = self.raft.vote(req).await;
                    if let Ok(resp) = &res {
                        self.campaign_if_ahead(resp, candidate_log);
                    }
                    res
                })
                .await
            }
            Some(RaftRpc::Snapshot) => {
                self.serve(msg, |req: InstallSnapshotRequest<TypeConfig>| async move {
                    self.raft.install_snapshot(req).await
                })
                .await
            }
            None if last_token(&msg.subject) == RAFT_ELECT => {
                self.serve(msg, |req: ElectRequest| async move {
                    if self.hold_votes.load(Ordering::Relaxed) {
                        return Ok(false);
                    }
                    handoff::campaign(&self.raft, &req).await
                })
                .await
            }
            None => return None,
        };
        Some(reply)
    }

    /// Campaigns at once when a candidate whose log is behind this node's asked for its vote
    /// after the leader went silent past its lease. That candidate cannot win, and openraft
    /// 0.9 restarts this node's election timer when the request arrives, so the election
    /// would otherwise wait a whole timeout more: after a partition of the leader, 1.6 s to a
    /// new leader instead of 0.8 s. A live leader's followers never do this (they heard from
    /// it within the lease), and a leader never does.
    fn campaign_if_ahead(
        &self,
        resp: &openraft::raft::VoteResponse<NodeId>,
        candidate_log: Option<openraft::LogId<NodeId>>,
    ) {
        if resp.vote_granted || resp.last_log_id <= candidate_log {
            return;
        }
        if self.contact.since().is_some_and(|d| d <= self.lease) {
            return;
        }
        let m = self.raft.metrics().borrow().clone();
        let voter = m.membership_config.voter_ids().any(|id| id == self.me);
        if !voter || m.state == openraft::ServerState::Leader {
            return;
        }
        tracing::info!(
            candidate_log = ?candidate_log,
            mine = ?resp.last_log_id,
            "a candidate behind this node's log asked for its vote; campaigning"
        );
        let raft = self.raft.clone();
        tokio::spawn(async move {
            if let Err(e) = raft.trigger().elect().await {
                tracing::debug!(error = %e, "campaign not started");
            }
        });
    }

    /// Decodes and checks the envelope, runs `f`, encodes its result.
    async fn serve<Req, Resp, E, F, Fut>(&self, msg: &Message, f: F) -> Vec<u8>
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        E: Serialize,
        F: FnOnce(Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, E>>,
    {
        let refused =
            |why: String| wire::encode(&RpcReply::<(), ()>::Refused(why)).unwrap_or_default();
        let req: RpcRequest<Req> = match wire::decode(&msg.payload) {
            Ok(r) => r,
            Err(e) => return refused(format!("undecodable raft rpc: {e}")),
        };
        if let Err(why) = self.check(&req.format, &req.cluster_name, req.to) {
            tracing::warn!(from = req.from, reason = %why, "refused raft rpc");
            return refused(why);
        }
        if let Err(why) = self.check_cluster_id(msg, req.cluster_id) {
            return refused(why);
        }
        let reply = match f(req.body).await {
            Ok(v) => RpcReply::Ok(v),
            Err(e) => RpcReply::Err(e),
        };
        wire::encode(&reply).unwrap_or_else(|e| refused(format!("unencodable reply: {e}")))
    }

    fn check(&self, format: &u8, cluster_name: &str, to: NodeId) -> Result<(), String> {
        // A build reads every format up to its own (the rolling-upgrade rule).
        if *format == 0 || *format > RPC_FORMAT {
            return Err(format!(
                "raft rpc format {format} is not supported (this node reads 1 to {RPC_FORMAT})"
            ));
        }
        if cluster_name != self.cluster_name {
            return Err(format!(
                "rpc for cluster '{cluster_name}', this node is in '{}'",
                self.cluster_name
            ));
        }
        if to != self.me {
            return Err(format!("rpc for node {to} reached node {}", self.me));
        }
        Ok(())
    }

    /// The envelope's cluster id (covered by the MAC) must be this node's; a mismatch is
    /// counted and logged once, loudly, naming both ids.
    fn check_cluster_id(&self, msg: &Message, cluster_id: Option<Uuid>) -> Result<(), String> {
        if let (Some(theirs), Some(ours)) = (cluster_id, self.view.cluster_id()) {
            if theirs != ours {
                self.rejections
                    .record_wrong_cluster(&msg.subject, &theirs.to_string(), &ours);
                return Err(format!(
                    "rpc from cluster id {theirs}, this node is in {ours}"
                ));
            }
        }
        Ok(())
    }
}
