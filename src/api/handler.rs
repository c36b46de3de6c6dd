//! Routing of one client request: the leader serves it, a follower forwards it to
//! `P.node.<leader>.kv.<op>`, and while there is no leader it waits until its deadline.
//!
//! The reply code at the deadline says whether the command reached Raft: `cluster_not_ready`
//! if it never did, `timeout` once it may have. A write is never re-sent once it may have
//! been delivered: a second apply could overwrite a later write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::{Message, RequestErrorKind};
use openraft::ServerState;
use tokio::time::Instant;

use super::codec::{self, Consistency, DeleteReply, KvRequest, PutReply};
use super::propose::ProposeError;
use super::read_index::ReadIndexError;
use super::{validate, Ctx};
use crate::command::{Command, Outcome};
use crate::error::{cluster_not_ready, internal, not_found, timeout, WireError};
use crate::raft::types::RaftMetrics;
use crate::subjects::{KvOp, HEADER_FORWARDED, HEADER_TIMEOUT_MS};

/// Pause before retrying after a failed attempt, so a dead leader is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Default page size of a scan.
const DEFAULT_SCAN_LIMIT: usize = 1000;

/// Why an attempt did not produce a reply.
enum Step {
    /// Not handed to Raft (or certainly not applied): try again, perhaps elsewhere.
    Retry,
    Fail(WireError),
}

impl From<WireError> for Step {
    fn from(e: WireError) -> Self {
        Step::Fail(e)
    }
}

/// The deadline of a request: its own `timeout_ms` (field or header) or the default, less a
/// margin so the reply reaches the client before the client gives up.
pub fn deadline_for(arrival: Instant, timeout: Duration) -> Instant {
    let margin = (timeout / 10).min(Duration::from_millis(100));
    arrival + timeout.saturating_sub(margin)
}

fn header_timeout(headers: Option<&HeaderMap>) -> Option<Duration> {
    let v = headers?.get(HEADER_TIMEOUT_MS)?;
    v.as_str()
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
}

pub async fn handle_kv(ctx: &Ctx, op: KvOp, msg: &Message) -> Vec<u8> {
    let arrival = Instant::now();
    match handle_kv_inner(ctx, op, msg, arrival).await {
        Ok(bytes) => bytes,
        Err(e) => codec::encode_error(&e),
    }
}

async fn handle_kv_inner(
    ctx: &Ctx,
    op: KvOp,
    msg: &Message,
    arrival: Instant,
) -> Result<Vec<u8>, WireError> {
    let (req, common) = codec::decode_kv(op, &msg.payload)?;
    validate::request(&req, &ctx.limits)?;
    let forwarded = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(HEADER_FORWARDED))
        .is_some();
    let timeout_len = header_timeout(msg.headers.as_ref())
        .or(common.timeout)
        .unwrap_or(ctx.default_timeout);
    let deadline = deadline_for(arrival, timeout_len);
    let handed = AtomicBool::new(false);
    let attempt = route(ctx, op, &req, msg, forwarded, deadline, &handed);
    match tokio::time::timeout_at(deadline, attempt).await {
        Ok(res) => res,
        Err(_) if handed.load(Ordering::Acquire) => Err(timeout(format!(
            "no outcome within {} ms; the command reached Raft and may still be applied",
            timeout_len.as_millis()
        ))),
        Err(_) => Err(cluster_not_ready(format!(
            "no leader could serve the request within {} ms",
            timeout_len.as_millis()
        ))),
    }
}

async fn route(
    ctx: &Ctx,
    op: KvOp,
    req: &KvRequest,
    msg: &Message,
    forwarded: bool,
    deadline: Instant,
    handed: &AtomicBool,
) -> Result<Vec<u8>, WireError> {
    let mut metrics = ctx.raft.metrics();
    loop {
        let leader = metrics.borrow_and_update().current_leader;
        if is_stale_read(req) && may_serve_stale(ctx, &metrics) {
            return read_local(ctx, req, handed).await;
        }
        if !op.is_write() && crate::failpoints::enabled(crate::failpoints::Failpoint::StaleReads) {
            return read_local(ctx, req, handed).await;
        }
        let step = match leader {
            Some(l) if l == ctx.me => serve_on_leader(ctx, req, handed).await,
            Some(l) if !forwarded => forward(ctx, l, op, msg, deadline, handed).await,
            // A forwarded request is never forwarded again: the sender retries.
            Some(l) => {
                return Err(cluster_not_ready(format!(
                    "node {} is not the leader (node {l} is)",
                    ctx.me
                )))
            }
            None if forwarded => {
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

fn is_stale_read(req: &KvRequest) -> bool {
    matches!(
        req,
        KvRequest::Get {
            consistency: Consistency::Stale,
            ..
        } | KvRequest::Scan {
            consistency: Consistency::Stale,
            ..
        }
    )
}

/// A voter may answer stale reads only while in recent contact with a leader.
fn may_serve_stale(ctx: &Ctx, metrics: &tokio::sync::watch::Receiver<RaftMetrics>) -> bool {
    // Borrowed, not cloned: this runs on every stale read, and the guard is never held
    // across an await.
    let m = metrics.borrow();
    let window = ctx.stale_window.as_millis() as u64;
    match m.state {
        ServerState::Leader => m.millis_since_quorum_ack.is_some_and(|ms| ms < window),
        ServerState::Follower => {
            let voter = m.membership_config.voter_ids().any(|id| id == ctx.me);
            voter
                && ctx
                    .contact
                    .since()
                    .is_some_and(|d| d.as_millis() < window as u128)
        }
        _ => false,
    }
}

async fn serve_on_leader(ctx: &Ctx, req: &KvRequest, handed: &AtomicBool) -> Result<Vec<u8>, Step> {
    match req {
        KvRequest::Put { key, value } => {
            let cmd = Command::Put {
                key: key.clone(),
                value: value.clone(),
            };
            match propose(ctx, cmd, handed).await? {
                Outcome::Put { revision } => Ok(codec::encode_ok(&PutReply { ok: true, revision })),
                other => Err(Step::Fail(internal(format!(
                    "unexpected outcome {other:?}"
                )))),
            }
        }
        KvRequest::Delete { key } => {
            let cmd = Command::Delete { key: key.clone() };
            match propose(ctx, cmd, handed).await? {
                Outcome::Delete { deleted, revision } => Ok(codec::encode_ok(&DeleteReply {
                    ok: true,
                    deleted,
                    revision,
                })),
                other => Err(Step::Fail(internal(format!(
                    "unexpected outcome {other:?}"
                )))),
            }
        }
        KvRequest::Get { .. } | KvRequest::Scan { .. } => {
            if !is_stale_read(req) {
                confirm_leadership(ctx).await?;
            }
            read_local(ctx, req, handed).await.map_err(Step::Fail)
        }
    }
}

/// ReadIndex: the leader confirms it still leads with a quorum round that starts after the
/// read arrived, then waits until it has applied up to the commit index it saw.
async fn confirm_leadership(ctx: &Ctx) -> Result<(), Step> {
    match ctx.read_index.confirm().await {
        Ok(()) => Ok(()),
        Err(ReadIndexError::NotConfirmed) => Err(Step::Retry),
        Err(ReadIndexError::Stopped(e)) => Err(Step::Fail(internal(format!("raft stopped: {e}")))),
    }
}

async fn propose(ctx: &Ctx, cmd: Command, handed: &AtomicBool) -> Result<Outcome, Step> {
    handed.store(true, Ordering::Release);
    match ctx.proposer.propose(cmd).await {
        Ok(outcome) => Ok(outcome),
        // Not appended, or truncated before commit: it will never apply. Safe to retry.
        Err(ProposeError::NotLeader) => {
            handed.store(false, Ordering::Release);
            Err(Step::Retry)
        }
        Err(ProposeError::Failed(e)) => Err(Step::Fail(internal(e))),
    }
}

/// Reads this node's state machine, after it has applied `min_revision` if one is given.
async fn read_local(ctx: &Ctx, req: &KvRequest, handed: &AtomicBool) -> Result<Vec<u8>, WireError> {
    let min_revision = match req {
        KvRequest::Get { min_revision, .. } | KvRequest::Scan { min_revision, .. } => *min_revision,
        _ => None,
    };
    if let Some(min) = min_revision {
        if ctx.view.revision() < min {
            // From here a deadline means "not yet", not "no leader".
            handed.store(true, Ordering::Release);
            let mut rx = ctx.view.watch_revision();
            let _ = rx.wait_for(|r| *r >= min).await;
        }
    }
    let storage = |e: crate::store::Error| {
        tracing::error!(error = %e, "read failed");
        internal(format!("storage read failed: {e}"))
    };
    match req {
        KvRequest::Get { key, .. } => match ctx.view.get(key).map_err(storage)? {
            Some((revision, json)) => codec::encode_get(revision, &json),
            None => Err(not_found(format!("key '{key}' not found"))),
        },
        KvRequest::Scan {
            prefix,
            limit,
            after,
            ..
        } => {
            let limit = limit.unwrap_or(DEFAULT_SCAN_LIMIT);
            let max_bytes = ctx.max_payload.saturating_sub(64 * 1024).max(16 * 1024);
            let (items, more) = ctx
                .view
                .scan(prefix, after.as_deref(), limit, max_bytes)
                .map_err(storage)?;
            codec::encode_scan(&items, more)
        }
        _ => Err(internal("read_local called for a write")),
    }
}

/// Relays the request to the leader's node subject and its answer back.
async fn forward(
    ctx: &Ctx,
    leader: u64,
    op: KvOp,
    msg: &Message,
    deadline: Instant,
    handed: &AtomicBool,
) -> Result<Vec<u8>, Step> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let mut headers = msg.headers.clone().unwrap_or_default();
    headers.insert(HEADER_FORWARDED, ctx.me.to_string().as_str());
    let inner = remaining.saturating_sub((remaining / 10).max(Duration::from_millis(2)));
    headers.insert(HEADER_TIMEOUT_MS, inner.as_millis().to_string().as_str());
    let request = async_nats::Request::new()
        .payload(msg.payload.clone())
        .headers(headers)
        .timeout(Some(remaining));
    if op.is_write() {
        handed.store(true, Ordering::Release);
    }
    let subject = ctx.subjects.node_kv(leader, op);
    match ctx.client.send_request(subject, request).await {
        Ok(reply) => {
            if is_not_ready(&reply.payload) {
                // The leader refused it before Raft saw it.
                handed.store(false, Ordering::Release);
                Err(Step::Retry)
            } else {
                Ok(reply.payload.to_vec())
            }
        }
        Err(e) => match e.kind() {
            // Nobody listens on the leader's subject: certainly not delivered.
            RequestErrorKind::NoResponders => {
                handed.store(false, Ordering::Release);
                Err(Step::Retry)
            }
            RequestErrorKind::TimedOut => Err(Step::Fail(timeout(format!(
                "the leader (node {leader}) did not answer in time"
            )))),
            _ if op.is_write() => Err(Step::Fail(timeout(format!(
                "forwarding to the leader (node {leader}) failed after sending: {e}"
            )))),
            _ => Err(Step::Retry),
        },
    }
}

fn is_not_ready(payload: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Code {
        code: crate::error::ErrorKind,
    }
    #[derive(serde::Deserialize)]
    struct Reply {
        ok: bool,
        error: Option<Code>,
    }
    // Cheap pre-check: only error replies are parsed.
    if payload.len() > 512 || !payload.starts_with(br#"{"ok":false"#) {
        return false;
    }
    matches!(
        serde_json::from_slice::<Reply>(payload),
        Ok(Reply {
            ok: false,
            error: Some(Code {
                code: crate::error::ErrorKind::ClusterNotReady
            })
        })
    )
}
