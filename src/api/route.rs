//! Getting a request to the leader: the leader serves it, a follower forwards it to the
//! leader's node subject (`P.node.<leader>.…`), and while there is no leader it waits until
//! its deadline.
//!
//! The reply code at the deadline says whether the command reached Raft: `cluster_not_ready`
//! if it never did, `timeout` once it may have. A write is never re-sent once it may have
//! been delivered: a second apply could overwrite a later write.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::Message;
use futures::FutureExt;
use openraft::ServerState;
use tokio::time::Instant;

use super::Ctx;
use crate::error::{cluster_not_ready, internal, timeout, unauthorized, WireError};
use crate::raft::inbox::{header_bytes, CallError};
use crate::signing::{Direction, Mac, HEADER_MAC};
use crate::subjects::{HEADER_FORWARDED, HEADER_TIMEOUT_MS};

/// Pause before retrying after a failed attempt, so a dead leader is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Why an attempt did not produce a reply.
pub enum Step {
    /// Not handed to Raft (or certainly not applied): try again, perhaps elsewhere.
    Retry,
    Fail(WireError),
}

impl From<WireError> for Step {
    fn from(e: WireError) -> Self {
        Step::Fail(e)
    }
}

/// One request on its way to the leader.
pub struct Routed<'a> {
    pub msg: &'a Message,
    /// Marked forwarded by a follower: never forwarded again.
    pub forwarded: bool,
    /// May sending it change state (a write)?
    pub is_write: bool,
    pub deadline: Instant,
    /// Set once the command may have reached Raft.
    pub handed: &'a AtomicBool,
}

/// The deadline of a request: its own `timeout_ms` (field or header) or the default, less a
/// margin so the reply reaches the client before the client gives up.
pub fn deadline_for(arrival: Instant, timeout: Duration) -> Instant {
    let margin = (timeout / 10).min(Duration::from_millis(100));
    arrival + timeout.saturating_sub(margin)
}

/// How long a request may take: the `Concord-Timeout-Ms` header, else the body's
/// `timeout_ms`, else the node's default.
pub fn timeout_len(msg: &Message, body: Option<Duration>, default: Duration) -> Duration {
    header_timeout(msg.headers.as_ref())
        .or(body)
        .unwrap_or(default)
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

/// Runs `route` until the deadline; at the deadline answers `timeout` if the command may
/// have reached Raft and `cluster_not_ready` if it certainly did not.
///
/// A combinator, not an `async fn`: as an `async fn` it kept `route` both as its argument and
/// inside the timeout, 2.6 KiB around a 1.2 KiB route, and every request task carried that.
pub fn within_deadline<'a, F>(
    r: &Routed<'a>,
    timeout_len: Duration,
    route: F,
) -> impl Future<Output = Result<Vec<u8>, WireError>> + 'a
where
    F: Future<Output = Result<Vec<u8>, WireError>> + 'a,
{
    let handed = r.handed;
    tokio::time::timeout_at(r.deadline, route).map(move |res| match res {
        Ok(res) => res,
        Err(_) if handed.load(Ordering::Acquire) => Err(timeout(format!(
            "no outcome within {} ms; the command reached Raft and may still be applied",
            timeout_len.as_millis()
        ))),
        Err(_) => Err(cluster_not_ready(format!(
            "no leader could serve the request within {} ms",
            timeout_len.as_millis()
        ))),
    })
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
    Fut: Future<Output = Result<Vec<u8>, Step>>,
{
    let mut metrics = ctx.raft.metrics();
    loop {
        let leader = metrics.borrow_and_update().current_leader;
        let step = match leader {
            Some(l) if l == ctx.me => serve().await,
            // Boxed: forwarding is rare (leader-direct routing), and inline its future would
            // size every request task.
            Some(l) if !r.forwarded => Box::pin(forward(ctx, r, l, leader_subject(l))).await,
            // A forwarded request is never forwarded again: the sender retries.
            Some(l) => {
                return Err(cluster_not_ready(format!(
                    "node {} is not the leader (node {l} is)",
                    ctx.me
                )))
            }
            None if r.forwarded => {
                return Err(cluster_not_ready(format!(
                    "node {} knows no leader",
                    ctx.me
                )))
            }
            None => {
                // Wait for an election to name one; the deadline bounds the wait.
                let _ = metrics.wait_for(|m| m.current_leader.is_some()).await;
                continue;
            }
        };
        match step {
            Ok(bytes) => return Ok(bytes),
            Err(Step::Fail(e)) => return Err(e),
            Err(Step::Retry) => tokio::time::sleep(RETRY_PAUSE).await,
        }
    }
}

/// A leader decides authorization only once it has applied an entry of its own term: by
/// then every entry committed before it was elected (a token revocation among them) is
/// applied too. Without auth there is nothing to wait for.
pub async fn leader_caught_up(ctx: &Ctx) -> Result<(), Step> {
    if !ctx.auth.enabled() {
        return Ok(());
    }
    let mut rx = ctx.raft.metrics();
    let still_leader = rx
        .wait_for(|m| {
            m.state != ServerState::Leader
                || m.last_applied
                    .is_some_and(|l| l.leader_id.term == m.current_term)
        })
        .await
        .map(|m| m.state == ServerState::Leader)
        .map_err(|e| Step::Fail(internal(format!("raft stopped: {e}"))))?;
    if still_leader {
        Ok(())
    } else {
        Err(Step::Retry)
    }
}

/// Headers of a forwarded request that its MAC covers, in order: the sender, the deadline
/// and the client's credential.
pub const SIGNED_FORWARD_HEADERS: [&str; 3] =
    [HEADER_FORWARDED, HEADER_TIMEOUT_MS, "Authorization"];

/// Relays the request to the leader's node subject and its answer back, through the node's
/// inbox, which signs it and accepts only a verified reply (`cluster.secret`).
async fn forward(ctx: &Ctx, r: &Routed<'_>, leader: u64, subject: String) -> Result<Vec<u8>, Step> {
    let msg = r.msg;
    let remaining = r.deadline.saturating_duration_since(Instant::now());
    let mut headers = msg.headers.clone().unwrap_or_default();
    headers.insert(HEADER_FORWARDED, ctx.me.to_string().as_str());
    let inner = remaining.saturating_sub((remaining / 10).max(Duration::from_millis(2)));
    headers.insert(HEADER_TIMEOUT_MS, inner.as_millis().to_string().as_str());
    if r.is_write {
        r.handed.store(true, Ordering::Release);
    }
    let sent = ctx
        .inbox
        .request_with_headers(
            subject,
            Some(headers),
            &SIGNED_FORWARD_HEADERS,
            msg.payload.clone(),
            remaining,
        )
        .await;
    match sent {
        Ok(reply) => {
            if is_not_ready(&reply.payload) {
                // The leader refused it before Raft saw it.
                r.handed.store(false, Ordering::Release);
                Err(Step::Retry)
            } else {
                Ok(reply.payload.to_vec())
            }
        }
        // Nobody listens on the leader's subject, or it never left: certainly not delivered.
        Err(CallError::NoResponders | CallError::Publish(_) | CallError::TooLarge) => {
            r.handed.store(false, Ordering::Release);
            Err(Step::Retry)
        }
        Err(CallError::TimedOut(_)) => Err(Step::Fail(timeout(format!(
            "the leader (node {leader}) did not answer in time"
        )))),
        Err(e @ CallError::Closed) if r.is_write => Err(Step::Fail(timeout(format!(
            "forwarding to the leader (node {leader}) failed after sending: {e}"
        )))),
        Err(CallError::Closed) => Err(Step::Retry),
    }
}

/// On the receiving node: a request marked forwarded must carry a valid MAC when the cluster
/// has a secret. Returns the MAC to bind the reply to, `None` for other requests.
pub fn verify_forwarded(ctx: &Ctx, msg: &Message) -> Result<Option<Mac>, WireError> {
    let Some(signer) = &ctx.signer else {
        return Ok(None);
    };
    if !is_forwarded(msg) {
        return Ok(None);
    }
    let headers = msg.headers.as_ref();
    let mut extra: Vec<&[u8]> = vec![msg.reply.as_deref().unwrap_or("").as_bytes()];
    extra.extend(
        SIGNED_FORWARD_HEADERS
            .iter()
            .map(|n| header_bytes(headers, n)),
    );
    let given = headers.and_then(|h| h.get(HEADER_MAC)).map(|v| v.as_str());
    signer
        .verify_request(&msg.subject, &extra, &msg.payload, given)
        .map(Some)
        .map_err(|why| {
            ctx.rejections
                .record(Direction::Request, why, &msg.subject, msg.reply.as_deref());
            unauthorized(format!(
                "forwarded request refused: {why} (nodes of a cluster must share cluster.secret)"
            ))
        })
}

/// The leader refused the request before Raft saw it.
fn is_not_ready(payload: &[u8]) -> bool {
    super::codec::reply_code(payload) == Err(crate::error::ErrorKind::ClusterNotReady)
}
