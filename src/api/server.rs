//! NATS intake: a request that can be answered at once (a stale get, a malformed request) is
//! answered by the intake task itself; any other gets a task of its own, bounded by an
//! in-flight semaphore (`busy` past it). Admin requests draw on a pool of their own
//! (`limits.max_admin_in_flight`), so key-space requests that fill theirs cannot lock the
//! operator out.
//! Every request this node answers for a client is counted here, once (see [`Server::record`]).
//!
//! Node subjects (`P.node.<id>.*`) are always served. The cluster subjects (`P.kv.*`,
//! `P.admin.*`, one queue group) are served only while this node is a voter of a cluster
//! whose id it knows, so a node waiting to join never answers for the cluster.

use std::sync::Arc;
use std::time::Instant;

use async_nats::{Message, Subscriber};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handler::Intake;
use super::{admin, codec, handler, route, Ctx};
use crate::error::{busy, internal, value_too_large, ErrorKind};
use crate::limits::excerpt;
use crate::observe::ReqOp;
use crate::signing::{self, HEADER_MAC};
use crate::subjects::{last_token, Addressed, AdminOp, KvOp, KV_FAMILIES};

/// Queue subscriptions the leader holds on `P.kv.*` (a follower holds one): NATS picks a
/// queue member at random, so with 3 nodes 2 of 66 requests reach a follower first (and pay a
/// forwarding hop) instead of 2 of 3. Measured at 64 clients against 16 subscriptions (2 of
/// 18): 8 % more puts and 10-20 % more linearizable gets per second, 8-12 % less CPU per op.
const LEADER_KV_SUBSCRIPTIONS: usize = 64;

/// Replies up to this size are published without a look at the max payload: every write
/// reply and every error is smaller (`codec` tests the largest of each), and a node refuses
/// to start on a NATS server whose max payload is under 16 KiB (`PAYLOAD_HEADROOM`). So a
/// write that was applied always gets its reply.
pub const SMALL_REPLY_BYTES: usize = 4 * 1024;

/// Longest a cancelled subscription keeps delivering what NATS had routed to it.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

pub struct Server {
    pub ctx: Arc<Ctx>,
    /// Key-space requests (and anything not an admin request) in progress.
    pub permits: Arc<Semaphore>,
    /// Admin requests in progress: apart from `permits`, so that a flood of parked gets
    /// leaves the operator a way in (`admin.status`, `token revoke`).
    pub admin_permits: Arc<Semaphore>,
    /// Lock acquires in progress: a waiting claim may take seconds, so waiters have a pool
    /// of their own and hold none of `permits` (DESIGN.md "Locks and fencing").
    pub waiter_permits: Arc<Semaphore>,
}

/// Lock acquires one node serves at once (each a parked task, no thread).
const MAX_LOCK_WAITERS: usize = 10_000;

impl Server {
    pub fn new(ctx: Arc<Ctx>, max_in_flight: usize, max_admin_in_flight: usize) -> Arc<Server> {
        Arc::new(Server {
            ctx,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            admin_permits: Arc::new(Semaphore::new(max_admin_in_flight)),
            waiter_permits: Arc::new(Semaphore::new(MAX_LOCK_WAITERS)),
        })
    }

    /// Serves `P.node.<me>.{kv,lease,lock}.*` and `P.node.<me>.admin.*` until cancelled.
    pub async fn serve_node_subjects(
        self: Arc<Self>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<(), async_nats::SubscribeError> {
        let s = &self.ctx.cluster.subjects;
        let me = self.ctx.cluster.me;
        let mut pumps = Vec::new();
        for family in KV_FAMILIES {
            let sub = self
                .ctx
                .cluster
                .client
                .subscribe(s.node_family_wildcard(me, family))
                .await?;
            pumps.push(tracker.spawn(self.clone().pump_node(sub, cancel.clone(), tracker.clone())));
        }
        let adm = self
            .ctx
            .cluster
            .client
            .subscribe(s.node_admin_wildcard(me))
            .await?;
        pumps.push(tracker.spawn(self.clone().pump_node(adm, cancel, tracker.clone())));
        futures::future::join_all(pumps).await;
        Ok(())
    }

    /// Subscribes to the cluster subjects while this node may answer for the cluster.
    pub async fn serve_cluster_subjects(
        self: Arc<Self>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) {
        let mut metrics = self.ctx.consensus.raft.metrics();
        let mut cluster_id = self.ctx.consensus.view.watch_cluster_id();
        let mut active: Option<CancellationToken> = None;
        let mut boost: Option<CancellationToken> = None;
        loop {
            let (eligible, leader) = {
                let m = metrics.borrow_and_update();
                let voter = m
                    .membership_config
                    .voter_ids()
                    .any(|id| id == self.ctx.cluster.me);
                let eligible = voter && cluster_id.borrow_and_update().is_some();
                (
                    eligible,
                    eligible && m.state == openraft::ServerState::Leader,
                )
            };
            // Leader-direct routing: NATS picks a queue subscription at random, so the
            // leader holds several and most requests skip the forwarding hop. Followers
            // keep one each and still answer (by forwarding) whatever reaches them.
            match (&boost, leader) {
                (None, true) => {
                    let child = cancel.child_token();
                    // `P.lease.*` too: keepalives come as often as puts in a fleet of
                    // sessions, and every one a follower takes pays the forwarding hop.
                    let families = ["kv", "lease"].map(|f| (f, LEADER_KV_SUBSCRIPTIONS));
                    let extra = families
                        .into_iter()
                        .flat_map(|(f, n)| (1..n).map(move |_| f));
                    for family in extra {
                        match self.subscribe_family(family).await {
                            Ok(kv) => {
                                tracker.spawn(self.clone().pump(
                                    kv,
                                    child.clone(),
                                    tracker.clone(),
                                ));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot add a leader subscription")
                            }
                        }
                    }
                    boost = Some(child);
                }
                (Some(child), false) => {
                    child.cancel();
                    boost = None;
                }
                _ => {}
            }
            match (&active, eligible) {
                (None, true) => {
                    let child = cancel.child_token();
                    match self.subscribe_cluster().await {
                        Ok(subs) => {
                            tracing::info!("serving the cluster subjects");
                            for sub in subs {
                                tracker.spawn(self.clone().pump(
                                    sub,
                                    child.clone(),
                                    tracker.clone(),
                                ));
                            }
                            active = Some(child);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot subscribe to cluster subjects")
                        }
                    }
                }
                (Some(child), false) => {
                    tracing::info!("no longer a voter: leaving the cluster subjects");
                    child.cancel();
                    active = None;
                }
                _ => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = metrics.changed() => if r.is_err() { break },
                r = cluster_id.changed() => if r.is_err() { break },
            }
        }
    }

    async fn subscribe_family(
        &self,
        family: &str,
    ) -> Result<Subscriber, async_nats::SubscribeError> {
        let s = &self.ctx.cluster.subjects;
        self.ctx
            .cluster
            .client
            .queue_subscribe(s.family_wildcard(family), s.queue_group())
            .await
    }

    /// `P.kv.*`, `P.lease.*`, `P.lock.*` and `P.admin.>`, in the cluster's queue group.
    async fn subscribe_cluster(&self) -> Result<Vec<Subscriber>, async_nats::SubscribeError> {
        let s = &self.ctx.cluster.subjects;
        let client = &self.ctx.cluster.client;
        let mut subs = Vec::new();
        for family in KV_FAMILIES {
            subs.push(
                client
                    .queue_subscribe(s.family_wildcard(family), s.queue_group())
                    .await?,
            );
        }
        subs.push(
            client
                .queue_subscribe(s.admin_wildcard(), s.queue_group())
                .await?,
        );
        Ok(subs)
    }

    /// Takes messages off one subscription, a task each, until cancelled. Then it drains
    /// the subscription: NATS stops routing to it (a queue group's other members get the
    /// new requests), and what was already routed here is still answered.
    async fn pump(
        self: Arc<Self>,
        sub: Subscriber,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) {
        if let Some(mut sub) = self.clone().pump_until(sub, cancel, tracker, false).await {
            let _ = sub.unsubscribe().await;
        }
    }

    /// A node subject's pump: as [`Server::pump`] until intake stops; then, until Raft has
    /// stopped, it refuses every request (`cluster_not_ready`, signed when forwarded)
    /// instead of leaving the subject. A follower forwarding a write here while this node
    /// stops and hands leadership off then gets a refusal it can trust and retries with the
    /// new leader; with no subscriber it would get "no responders", which proves nothing,
    /// and would have to answer `timeout`.
    async fn pump_node(
        self: Arc<Self>,
        sub: Subscriber,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) {
        if let Some(sub) = self.clone().pump_until(sub, cancel, tracker, true).await {
            // On the node's tracker, which shutdown waits for only after Raft stopped.
            let lifecycle = &self.ctx.lifecycle;
            lifecycle
                .tracker
                .spawn(self.clone().refuse_until_stopped(sub));
        }
    }

    /// Refuses what arrives on `sub` until the node's background tasks stop.
    async fn refuse_until_stopped(self: Arc<Self>, mut sub: Subscriber) {
        let me = self.ctx.cluster.me;
        loop {
            let msg = tokio::select! {
                _ = self.ctx.lifecycle.cancel.cancelled() => break,
                m = sub.next() => match m { Some(m) => m, None => return },
            };
            let Some(reply_to) = msg.reply.clone() else {
                continue;
            };
            let refusal = crate::error::cluster_not_ready(format!(
                "node {me} is shutting down; retry with the other nodes"
            ));
            let (body, headers) = match route::verify_forwarded(&self.ctx, &msg) {
                Ok(Some(mac)) => self.signed(&mac, codec::encode_error(&refusal)),
                Ok(None) => (codec::encode_error(&refusal), None),
                Err(e) => (codec::encode_error(&e), None),
            };
            self.send(reply_to, body, headers).await;
        }
        let _ = sub.unsubscribe().await;
    }

    /// The pump's loop. Returns the subscription when `keep` and cancelled (still
    /// subscribed), or when it was never drained; `None` once drained.
    async fn pump_until(
        self: Arc<Self>,
        mut sub: Subscriber,
        cancel: CancellationToken,
        tracker: TaskTracker,
        keep: bool,
    ) -> Option<Subscriber> {
        // Set once draining: the stream ends when NATS confirms the unsubscribe, which a
        // lost connection may never do.
        let mut draining: Option<tokio::time::Instant> = None;
        loop {
            let next = if let Some(until) = draining {
                match tokio::time::timeout_at(until, sub.next()).await {
                    Ok(m) => m,
                    Err(_) => break,
                }
            } else {
                tokio::select! {
                    _ = cancel.cancelled() => {
                        if keep {
                            return Some(sub);
                        }
                        if sub.drain().await.is_err() {
                            break;
                        }
                        draining = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
                        continue;
                    }
                    m = sub.next() => m,
                }
            };
            let Some(msg) = next else {
                break;
            };
            let Some(reply_to) = msg.reply.clone() else {
                continue;
            };
            let started = Instant::now();
            // Counted where the client is answered: a forwarded request counts on the node
            // that forwarded it.
            let counted = if route::is_forwarded(&msg) {
                None
            } else {
                self.counted_op(&msg.subject)
            };
            // Counted means not forwarded: a forwarded request is verified (and its reply
            // signed) in its task.
            let call = match counted {
                Some(ReqOp::Kv(op)) => match handler::intake(&self.ctx, op, &msg) {
                    Intake::Answered(body) => {
                        let body = self.fit(&msg.subject, body);
                        self.record(ReqOp::Kv(op), &msg, &body, started);
                        let client = self.reply_client(body.len());
                        if let Err(e) = client.publish(reply_to, body.into()).await {
                            tracing::debug!(error = %e, "reply not sent");
                        }
                        continue;
                    }
                    Intake::Call(call) => Some(call),
                },
                _ => None,
            };
            let pool = match self.ctx.cluster.subjects.classify(&msg.subject) {
                Some(Addressed::Admin(_)) => &self.admin_permits,
                Some(a) if a.kv_op() == Some(KvOp::LockAcquire) => &self.waiter_permits,
                _ => &self.permits,
            };
            let permit = match pool.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    let body = codec::encode_error(&busy(
                        "the node's in-flight request limit is reached; retry with backoff",
                    ));
                    if let Some(op) = counted {
                        self.record(op, &msg, &body, started);
                    }
                    let _ = self.ctx.cluster.client.publish(reply_to, body.into()).await;
                    continue;
                }
            };
            tracker.spawn(
                self.clone()
                    .answer(msg, reply_to, call, counted, started, permit),
            );
        }
        draining.is_none().then_some(sub)
    }

    /// Answers one request on its own task: verifies a forwarded one (and signs its reply),
    /// serves it, counts it, and publishes the reply.
    async fn answer(
        self: Arc<Self>,
        msg: Message,
        reply_to: async_nats::Subject,
        call: Option<handler::KvCall>,
        counted: Option<ReqOp>,
        started: Instant,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let (body, headers) = match route::verify_forwarded(&self.ctx, &msg) {
            Ok(None) => {
                let body = match call {
                    Some(call) => handler::handle_call(&self.ctx, call, &msg).await,
                    None => self.dispatch(&msg).await,
                };
                (self.fit(&msg.subject, body), None)
            }
            // A forwarded request's reply is bound to its MAC (computed over what is sent, so
            // after `fit`), a refusal's too: the sender believes only a signed refusal, and
            // retries after it.
            Ok(Some(mac)) => {
                let body = match super::forwarded::admit(&self.ctx, &msg, true) {
                    Ok(()) => self.fit(&msg.subject, self.dispatch(&msg).await),
                    Err(e) => codec::encode_error(&e),
                };
                self.signed(&mac, body)
            }
            Err(e) => (codec::encode_error(&e), None),
        };
        if let Some(op) = counted {
            self.record(op, &msg, &body, started);
        }
        self.send(reply_to, body, headers).await;
        drop(permit);
    }

    /// A reply to a forwarded request, with its MAC bound to the request's `mac`.
    fn signed(
        &self,
        mac: &signing::Mac,
        body: Vec<u8>,
    ) -> (Vec<u8>, Option<async_nats::HeaderMap>) {
        let reply_mac = self
            .ctx
            .security
            .signer
            .as_ref()
            .map(|s| s.reply_mac(mac, &body));
        let mut headers = async_nats::HeaderMap::new();
        if let Some(m) = reply_mac {
            headers.insert(HEADER_MAC, signing::to_hex(&m).as_str());
        }
        (body, Some(headers))
    }

    async fn send(
        &self,
        reply_to: async_nats::Subject,
        body: Vec<u8>,
        headers: Option<async_nats::HeaderMap>,
    ) {
        let client = self.reply_client(body.len());
        let sent = match headers {
            Some(h) => client.publish_with_headers(reply_to, h, body.into()).await,
            None => client.publish(reply_to, body.into()).await,
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "reply not sent");
        }
    }

    /// The connection a reply of `len` bytes goes out on: small ones (every write reply,
    /// every error) on the client connection with Raft's traffic, larger ones on the bulk
    /// connection, so they never queue ahead of a heartbeat (issue #20, item 7).
    fn reply_client(&self, len: usize) -> &async_nats::Client {
        if len <= SMALL_REPLY_BYTES {
            &self.ctx.cluster.client
        } else {
            &self.ctx.cluster.bulk
        }
    }

    /// The reply to publish: `body`, or a short error if `body` would not fit in one NATS
    /// message, which NATS would refuse, leaving the client with nothing (issue #20, item 6).
    /// A read whose result is too big is `value_too_large`; any other reply this big is a bug
    /// (writes and errors have short replies: see [`SMALL_REPLY_BYTES`]), so `internal`.
    fn fit(&self, subject: &str, body: Vec<u8>) -> Vec<u8> {
        if body.len() <= SMALL_REPLY_BYTES {
            return body;
        }
        // The server's INFO as of now: a NATS server restarted with a smaller max payload
        // is seen here, not only the one this node started with.
        let max_payload = self
            .ctx
            .limits
            .max_payload
            .min(self.ctx.cluster.client.server_info().max_payload);
        let room = max_payload.saturating_sub(codec::REPLY_HEADER_ROOM);
        if body.len() <= room {
            return body;
        }
        let e = if self.is_read(subject) && codec::reply_code(&body).is_ok() {
            value_too_large(format!(
                "the reply would be {} bytes, over the {room} that fit in one NATS message (max payload {max_payload}); ask for less",
                body.len()
            ))
        } else {
            internal(format!(
                "a reply of {} bytes does not fit in one NATS message (max payload {max_payload})",
                body.len()
            ))
        };
        tracing::warn!(bytes = body.len(), max_payload, error = %e.message, "reply too large; sent an error instead");
        codec::encode_error(&e)
    }

    /// Whether a subject asks for a read: its reply carries data whose size the client chose.
    fn is_read(&self, subject: &str) -> bool {
        match self.ctx.cluster.subjects.classify(subject) {
            Some(a @ (Addressed::Kv(_) | Addressed::Family(_))) => {
                a.kv_op().is_some_and(|op| !op.is_write())
            }
            Some(Addressed::Admin(op)) => matches!(
                AdminOp::parse(op),
                Some(
                    AdminOp::Status | AdminOp::Members | AdminOp::TokenList | AdminOp::BackupChunk
                )
            ),
            None => false,
        }
    }

    /// The counted operation a subject asks for; `None` for unknown ones (bounded labels).
    fn counted_op(&self, subject: &str) -> Option<ReqOp> {
        match self.ctx.cluster.subjects.classify(subject)? {
            a @ (Addressed::Kv(_) | Addressed::Family(_)) => a.kv_op().map(ReqOp::Kv),
            Addressed::Admin(op) => AdminOp::parse(op).and_then(ReqOp::of_admin),
        }
    }

    /// Metrics and, for key-space requests, the api event of one answered request.
    fn record(&self, op: ReqOp, msg: &Message, body: &[u8], started: Instant) {
        let result = codec::reply_code(body);
        if let (Err(ErrorKind::Conflict), ReqOp::Kv(kv)) = (result, op) {
            let reason = codec::conflict_reason(body);
            self.ctx.observer.metrics.conflict(kv, &reason);
        }
        self.ctx
            .observer
            .request_done(op, result, started.elapsed(), || {
                codec::request_key(&msg.payload)
            });
    }

    async fn dispatch(&self, msg: &Message) -> Vec<u8> {
        match self.ctx.cluster.subjects.classify(&msg.subject) {
            Some(Addressed::Admin(op)) => match AdminOp::parse(op) {
                // Boxed: admin requests are rare and their futures large.
                Some(op) => Box::pin(admin::handle_admin(&self.ctx, op, msg)).await,
                None => codec::encode_error(&crate::error::bad_request(format!(
                    "unknown admin operation '{}' ({})",
                    excerpt(op),
                    AdminOp::ALL.map(AdminOp::as_str).join(", ")
                ))),
            },
            Some(a @ (Addressed::Kv(_) | Addressed::Family(_))) => match a.kv_op() {
                Some(op) => handler::handle_kv(&self.ctx, op, msg).await,
                None => codec::encode_error(&crate::error::bad_request(format!(
                    "unknown operation '{}' ({})",
                    excerpt(last_token(&msg.subject)),
                    KvOp::ALL.map(KvOp::subject_tail).join(", ")
                ))),
            },
            None => codec::encode_error(&crate::error::bad_request(format!(
                "unknown subject '{}'",
                excerpt(&msg.subject)
            ))),
        }
    }
}
