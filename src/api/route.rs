//! Getting a request to the leader: the leader serves it, a follower forwards it to the
//! leader's node subject (`P.node.<leader>.…`), and while there is no leader it waits until
//! its deadline.
//!
//! The reply code at the deadline says whether the command reached Raft: `cluster_not_ready`
//! if it never did, `timeout` once it may have. A write without a request id is never re-sent
//! once it may have been delivered: a second apply could overwrite a later write. Only a
//! signed refusal from the leader proves a forwarded write was not delivered; NATS's "no
//! responders" status carries no MAC (anyone who learns the reply subject can forge one), so
//! after it a published write is answered `timeout`, not re-sent.
//!
//! A write with a request id (format 2) is *resendable*: the state machine answers a copy
//! that already applied from its idempotency table, so it is sent again whenever an attempt
//! ends without an answer: to a new leader as soon as the leader changes, after "no
//! responders", after a lost connection. Its reply at the deadline stays `timeout` once any
//! copy may have been delivered.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::Message;
use futures::FutureExt;
use openraft::ServerState;
use tokio::time::Instant;

use super::{Ctx, RequestLimits};
use crate::error::{
    cluster_not_ready, internal, timeout, unauthorized, value_too_large, WireError,
};
use crate::raft::inbox::CallError;
use crate::signing::{self, Mac};
use crate::subjects::{
    HEADER_CLUSTER_ID, HEADER_FORWARDED, HEADER_NONCE, HEADER_TERM, HEADER_TIMEOUT_MS,
};

/// Pause before retrying after a failed attempt, so a dead leader is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Why an attempt did not produce a reply.
pub enum AttemptError {
    /// Not handed to Raft (or certainly not applied): try again, perhaps elsewhere.
    Retry,
    Fail(WireError),
}

impl From<WireError> for AttemptError {
    fn from(e: WireError) -> Self {
        AttemptError::Fail(e)
    }
}

/// Whether a request may have taken effect: marked once its command may have reached Raft
/// (or a backup started being written), unmarked when it certainly did not. At the deadline
/// it decides between `timeout` and `cluster_not_ready`.
#[derive(Default)]
pub struct Delivery {
    marked: AtomicBool,
    /// A resendable write: an earlier copy may still apply after a later one was refused,
    /// so once marked it stays marked.
    sticky: bool,
}

impl Delivery {
    pub fn mark(&self) {
        self.marked.store(true, Ordering::Release);
    }

    pub fn unmark(&self) {
        if !self.sticky {
            self.marked.store(false, Ordering::Release);
        }
    }

    pub fn may_have_effect(&self) -> bool {
        self.marked.load(Ordering::Acquire)
    }
}

/// What the reply at the deadline says, by kind of request.
#[derive(Clone, Copy)]
pub enum DeadlineWording {
    /// A command for Raft: it "reached Raft and may still be applied".
    Command,
    /// A backup: it "was not written" yet, and may still finish.
    Backup,
}

/// One request on its way to the leader: the routing preamble every routed request
/// (key space, membership, tokens, backup) shares.
pub struct Routed<'a> {
    pub msg: &'a Message,
    /// Marked forwarded by a follower: never forwarded again.
    pub forwarded: bool,
    /// May sending it change state (a write)?
    pub is_write: bool,
    /// A write with a request id: it may be sent again after it may have been delivered.
    pub resendable: bool,
    pub deadline: Instant,
    /// How long the request may take: named in the reply at the deadline.
    pub timeout_len: Duration,
    pub delivery: Delivery,
    wording: DeadlineWording,
}

impl<'a> Routed<'a> {
    /// A request that arrived at `arrival`, with the body's own `timeout_ms` if it has one.
    pub fn new(
        ctx: &Ctx,
        msg: &'a Message,
        arrival: Instant,
        body_timeout: Option<Duration>,
        is_write: bool,
    ) -> Routed<'a> {
        let timeout_len = timeout_len(msg, body_timeout, &ctx.limits);
        Routed {
            msg,
            forwarded: is_forwarded(msg),
            is_write,
            resendable: false,
            deadline: deadline_for(arrival, timeout_len),
            timeout_len,
            delivery: Delivery::default(),
            wording: DeadlineWording::Command,
        }
    }

    /// Marks a write with a request id as resendable (see the module doc).
    pub fn resendable(mut self, resendable: bool) -> Routed<'a> {
        self.resendable = resendable && self.is_write;
        self.delivery.sticky = self.resendable;
        self
    }

    /// Words the reply at the deadline for this kind of request.
    pub fn worded(mut self, wording: DeadlineWording) -> Routed<'a> {
        self.wording = wording;
        self
    }

    /// Runs `route` until the deadline; at the deadline answers `timeout` if the request
    /// may have taken effect and `cluster_not_ready` if it certainly did not.
    ///
    /// A combinator, not an `async fn`: as an `async fn` it kept `route` both as its
    /// argument and inside the timeout, 2.6 KiB around a 1.2 KiB route, and every request
    /// task carried that.
    pub fn within_deadline<'b, F>(
        &'b self,
        route: F,
    ) -> impl Future<Output = Result<Vec<u8>, WireError>> + 'b
    where
        F: Future<Output = Result<Vec<u8>, WireError>> + 'b,
    {
        let (delivery, ms, wording) = (&self.delivery, self.timeout_len.as_millis(), self.wording);
        tokio::time::timeout_at(self.deadline, route).map(move |res| match res {
            Ok(res) => res,
            Err(_) => Err(late(wording, delivery.may_have_effect(), ms)),
        })
    }

    /// Serves the request with `serve` on the leader, or forwards it to the leader's
    /// subject `leader_subject(id)`, within the deadline (see [`to_leader`]).
    pub fn to_leader_within_deadline<'b, S, F, Fut>(
        &'b self,
        ctx: &'b Ctx,
        leader_subject: S,
        serve: F,
    ) -> impl Future<Output = Result<Vec<u8>, WireError>> + 'b
    where
        S: Fn(u64) -> String + 'b,
        F: FnMut() -> Fut + 'b,
        Fut: Future<Output = Result<Vec<u8>, AttemptError>> + 'b,
    {
        self.within_deadline(to_leader(ctx, self, leader_subject, serve))
    }
}

/// The reply at the deadline.
fn late(wording: DeadlineWording, may_have_effect: bool, ms: u128) -> WireError {
    match (wording, may_have_effect) {
        (DeadlineWording::Command, true) => timeout(format!(
            "no outcome within {ms} ms; the command reached Raft and may still be applied"
        )),
        (DeadlineWording::Command, false) => {
            cluster_not_ready(format!("no leader could serve the request within {ms} ms"))
        }
        (DeadlineWording::Backup, true) => timeout(format!(
            "the backup was not written within {ms} ms; allow more time (--timeout-ms)"
        )),
        (DeadlineWording::Backup, false) => {
            cluster_not_ready(format!("no leader could take the backup within {ms} ms"))
        }
    }
}

/// The deadline of a request: its own `timeout_ms` (field or header) or the default, less a
/// margin so the reply reaches the client before the client gives up.
pub fn deadline_for(arrival: Instant, timeout: Duration) -> Instant {
    let margin = (timeout / 10).min(Duration::from_millis(100));
    arrival + timeout.saturating_sub(margin)
}

/// How long a request may take: the `Concord-Timeout-Ms` header, else the body's
/// `timeout_ms`, else the node's default; never longer than `limits.max_timeout_ms`.
pub fn timeout_len(msg: &Message, body: Option<Duration>, limits: &RequestLimits) -> Duration {
    clamp_timeout(
        header_timeout(msg.headers.as_ref()).or(body),
        limits.default_timeout,
        limits.max_timeout,
    )
}

/// The requested timeout, or `default`, clamped to `max`. Clamped, not refused: a request
/// that named a longer deadline still works, it just gives up sooner. Unbounded, a stale
/// get waiting for a revision that never comes held an in-flight slot for as long as its
/// sender asked, and enough of them answered `busy` to every request until a restart.
fn clamp_timeout(requested: Option<Duration>, default: Duration, max: Duration) -> Duration {
    requested.unwrap_or(default).min(max)
}

fn header_timeout(headers: Option<&HeaderMap>) -> Option<Duration> {
    let v = headers?.get(HEADER_TIMEOUT_MS)?;
    v.as_str()
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
}

pub fn is_forwarded(msg: &Message) -> bool {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(HEADER_FORWARDED))
        .is_some()
}

/// Serves the request with `serve` on the leader, or forwards it to the leader's subject
/// `leader_subject(id)`, or waits for an election; retries what certainly had no effect.
pub async fn to_leader<F, Fut>(
    ctx: &Ctx,
    r: &Routed<'_>,
    leader_subject: impl Fn(u64) -> String,
    mut serve: F,
) -> Result<Vec<u8>, WireError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Vec<u8>, AttemptError>>,
{
    let mut metrics = ctx.consensus.raft.metrics();
    loop {
        let (leader, cut_off) = {
            let m = metrics.borrow_and_update();
            (m.current_leader, ctx.consensus.contact.cut_off_leader(&m))
        };
        let attempt = match leader {
            Some(l) if l == ctx.cluster.me => match cut_off {
                Some(ms) => return Err(cut_off_leader(ctx, r, ms)),
                None => serve().await,
            },
            // Boxed: forwarding is rare (leader-direct routing), and inline its future would
            // size every request task.
            Some(_) if !r.forwarded && r.is_write && !ctx.consensus.contact.heard_lately() => {
                // The leader has gone quiet: wait to hear from it or from its successor
                // rather than publish a write that could not be re-sent (issue #20, item 4).
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            Some(l) if !r.forwarded => Box::pin(forward(ctx, r, l, leader_subject(l))).await,
            // A forwarded request is never forwarded again: the sender retries.
            Some(l) => {
                return Err(cluster_not_ready(format!(
                    "node {} is not the leader (node {l} is)",
                    ctx.cluster.me
                )))
            }
            None if r.forwarded => {
                return Err(cluster_not_ready(format!(
                    "node {} knows no leader",
                    ctx.cluster.me
                )))
            }
            None => {
                // Wait for an election to name one; the deadline bounds the wait.
                let _ = metrics.wait_for(|m| m.current_leader.is_some()).await;
                continue;
            }
        };
        match attempt {
            Ok(bytes) => return Ok(bytes),
            Err(AttemptError::Fail(e)) => return Err(e),
            Err(AttemptError::Retry) => tokio::time::sleep(RETRY_PAUSE).await,
        }
    }
}

/// The reply of a leader no quorum has acknowledged for `ms` ms (see
/// [`super::contact::ContactWindow::cut_off_leader`]): `cluster_not_ready` for a request it
/// has not taken, so the client tries another node at once; `timeout` for a write an
/// earlier attempt may have delivered (a resendable one, sent again from here).
fn cut_off_leader(ctx: &Ctx, r: &Routed<'_>, ms: u64) -> WireError {
    let why = format!(
        "node {} leads, but no quorum has acknowledged it for {ms} ms: it is likely cut off \
         from the other nodes, which elect another leader; try another node",
        ctx.cluster.me
    );
    if r.delivery.may_have_effect() {
        timeout(format!("{why} (an earlier attempt may still be applied)"))
    } else {
        cluster_not_ready(why)
    }
}

/// The admin requests' check on the leader: caught up (see [`leader_caught_up`]), then the
/// credential against the applied token table, for `role`.
pub async fn authorize_on_leader(
    ctx: &Ctx,
    cred: crate::auth::Credential<'_>,
    role: crate::auth::Role,
) -> Result<(), AttemptError> {
    leader_caught_up(ctx).await?;
    ctx.security
        .auth
        .check(ctx.consensus.view.tokens(), cred, role)?;
    Ok(())
}

/// A leader decides authorization only once it has applied an entry of its own term: by
/// then every entry committed before it was elected (a token revocation among them) is
/// applied too. Without auth there is nothing to wait for.
pub async fn leader_caught_up(ctx: &Ctx) -> Result<(), AttemptError> {
    if !ctx.security.auth.enabled() {
        return Ok(());
    }
    let mut rx = ctx.consensus.raft.metrics();
    let still_leader = rx
        .wait_for(|m| {
            m.state != ServerState::Leader
                || m.last_applied
                    .is_some_and(|l| l.leader_id.term == m.current_term)
        })
        .await
        .map(|m| m.state == ServerState::Leader)
        .map_err(|e| AttemptError::Fail(internal(format!("raft stopped: {e}"))))?;
    if still_leader {
        Ok(())
    } else {
        Err(AttemptError::Retry)
    }
}

/// Headers of a forwarded request that its MAC covers, in order: the sender, the deadline,
/// the client's credential, and what binds it to one cluster, one term and one use (see
/// [`super::forwarded`]). The MAC also covers the subject, the reply subject and the body.
pub const SIGNED_FORWARD_HEADERS: [&str; 6] = [
    HEADER_FORWARDED,
    HEADER_TIMEOUT_MS,
    "Authorization",
    HEADER_CLUSTER_ID,
    HEADER_TERM,
    HEADER_NONCE,
];

/// Whether a write that may already have reached the leader may be sent to it (or a new
/// leader) again: only one whose request id the state machine deduplicates.
fn may_resend_delivered_write(r: &Routed<'_>) -> bool {
    r.resendable
}

/// Relays the request to the leader's node subject and its answer back, through the node's
/// inbox, which signs it and accepts only a verified reply (`cluster.secret`).
async fn forward(
    ctx: &Ctx,
    r: &Routed<'_>,
    leader: u64,
    subject: String,
) -> Result<Vec<u8>, AttemptError> {
    let msg = r.msg;
    let remaining = r.deadline.saturating_duration_since(Instant::now());
    let mut headers = super::forwarded::forward_headers(ctx, msg.headers.as_ref());
    let inner = remaining.saturating_sub((remaining / 10).max(Duration::from_millis(2)));
    headers.insert(HEADER_TIMEOUT_MS, inner.as_millis().to_string().as_str());
    if r.is_write {
        r.delivery.mark();
    }
    let request = ctx.cluster.inbox.request_with_headers(
        subject,
        Some(headers),
        &SIGNED_FORWARD_HEADERS,
        msg.payload.clone(),
        remaining,
    );
    let sent = if may_resend_delivered_write(r) {
        // Sent again, to the new leader, as soon as the leader changes: the old one may be
        // dead, and waiting for its answer would take the whole deadline.
        let mut metrics = ctx.consensus.raft.metrics();
        tokio::select! {
            sent = request => sent,
            _ = metrics.wait_for(|m| m.current_leader != Some(leader)) => {
                return Err(AttemptError::Retry);
            }
        }
    } else {
        request.await
    };
    match sent {
        Ok(reply) => {
            if is_not_ready(&reply.payload) {
                // The leader refused it before Raft saw it.
                r.delivery.unmark();
                Err(AttemptError::Retry)
            } else {
                Ok(reply.payload.to_vec())
            }
        }
        // "No responders" carries no MAC: it proves nothing, so a write it answers may have
        // reached the leader (a forged status while the leader has the request) and is
        // never re-sent. Anything without effect may be.
        Err(CallError::NoResponders) if r.is_write && !may_resend_delivered_write(r) => {
            Err(AttemptError::Fail(timeout(format!(
                "the leader (node {leader}) did not confirm the write: NATS answered \"no \
                 responders\", which no node signs, so the write may have been applied; it is \
                 not sent again"
            ))))
        }
        // It never left this node: certainly not delivered.
        Err(CallError::NoResponders | CallError::Publish(_)) => {
            r.delivery.unmark();
            Err(AttemptError::Retry)
        }
        // It never left this node, and never will: retrying cannot help.
        Err(CallError::TooLarge) => {
            r.delivery.unmark();
            Err(AttemptError::Fail(value_too_large(format!(
                "the request with the headers forwarding adds exceeds the NATS max payload \
                 ({} bytes); send a smaller body or smaller headers",
                ctx.limits.max_payload
            ))))
        }
        Err(CallError::TimedOut(_)) => Err(AttemptError::Fail(timeout(format!(
            "the leader (node {leader}) did not answer in time"
        )))),
        Err(CallError::Closed) if may_resend_delivered_write(r) => Err(AttemptError::Retry),
        Err(e @ CallError::Closed) if r.is_write => Err(AttemptError::Fail(timeout(format!(
            "forwarding to the leader (node {leader}) failed after sending: {e}"
        )))),
        Err(CallError::Closed) => Err(AttemptError::Retry),
    }
}

/// On the receiving node: a request marked forwarded must carry a valid MAC when the cluster
/// has a secret. Returns the MAC to bind the reply to, `None` for other requests. Once it
/// verified, [`super::forwarded::admit`] checks its cluster id, term and nonce; that
/// refusal is signed, so the sender believes it.
pub fn verify_forwarded(ctx: &Ctx, msg: &Message) -> Result<Option<Mac>, WireError> {
    if !is_forwarded(msg) {
        return Ok(None);
    }
    let Some(signer) = &ctx.security.signer else {
        super::forwarded::admit(ctx, msg, false)?;
        return Ok(None);
    };
    signing::verify_received(
        signer,
        &ctx.security.rejections,
        msg,
        &SIGNED_FORWARD_HEADERS,
    )
    .map(Some)
    .map_err(|why| {
        unauthorized(format!(
            "forwarded request refused: {why} (nodes of a cluster must share cluster.secret)"
        ))
    })
}

/// The leader refused the request before Raft saw it.
pub fn is_not_ready(payload: &[u8]) -> bool {
    super::codec::reply_code(payload) == Err(crate::error::ErrorKind::ClusterNotReady)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(default_ms: u64, max_ms: u64) -> RequestLimits {
        RequestLimits {
            sizes: super::super::validate::Limits {
                max_value_bytes: 1024,
                max_entry_bytes: 4096,
                max_scan_limit: 100,
                max_txn_ops: 128,
                max_delete_keys: 10_000,
                max_data_bytes: 0,
            },
            default_timeout: Duration::from_millis(default_ms),
            max_timeout: Duration::from_millis(max_ms),
            max_payload: 1 << 20,
        }
    }

    fn request(header_ms: Option<&str>) -> Message {
        let headers = header_ms.map(|v| {
            let mut h = HeaderMap::new();
            h.insert(HEADER_TIMEOUT_MS, v);
            h
        });
        Message {
            subject: "concord.kv.get".into(),
            reply: None,
            payload: bytes::Bytes::from_static(b"{}"),
            headers,
            status: None,
            description: None,
            length: 0,
        }
    }

    /// Issue #20 item 1: a requested timeout past `limits.max_timeout_ms`, in the body or the
    /// header, is clamped to it (not refused); shorter ones and the default pass unchanged.
    #[test]
    fn timeout_past_the_max_is_clamped() {
        let l = limits(3000, 60_000);
        let ms = Duration::from_millis;
        assert_eq!(timeout_len(&request(None), None, &l), ms(3000));
        assert_eq!(timeout_len(&request(None), Some(ms(500)), &l), ms(500));
        assert_eq!(
            timeout_len(&request(None), Some(ms(60_000)), &l),
            ms(60_000)
        );
        assert_eq!(
            timeout_len(&request(None), Some(ms(3_600_000)), &l),
            ms(60_000)
        );
        assert_eq!(
            timeout_len(&request(None), Some(Duration::MAX), &l),
            ms(60_000)
        );
        let huge = u64::MAX.to_string();
        assert_eq!(timeout_len(&request(Some(&huge)), None, &l), ms(60_000));
        assert_eq!(
            timeout_len(&request(Some("3600000")), Some(ms(10)), &l),
            ms(60_000)
        );
        assert_eq!(timeout_len(&request(Some("250")), None, &l), ms(250));
        // The clamped deadline is still in the future and within the max.
        let now = Instant::now();
        let d = deadline_for(now, timeout_len(&request(Some(&huge)), None, &l));
        assert!(d > now && d <= now + ms(60_000));
    }
}
