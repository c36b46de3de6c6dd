//! One key-space request: stale reads are served locally by a voter in recent contact with
//! a leader; everything else goes to the leader ([`route`]), which proposes writes and
//! confirms leadership (ReadIndex) before linearizable reads.

use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::Message;
use openraft::ServerState;
use tokio::time::Instant;

use super::codec::{self, Common, Consistency, DeleteReply, KvRequest, PutReply};
use super::propose::ProposeError;
use super::read_index::ReadIndexError;
use super::route::{self, Routed, Step};
use super::{validate, Ctx};
use crate::auth::{Credential, Role};
use crate::command::{Applied, Command};
use crate::error::{internal, not_found, timeout, WireError};
use crate::raft::types::RaftMetrics;
use crate::subjects::KvOp;

/// Default page size of a scan.
const DEFAULT_SCAN_LIMIT: usize = 1000;

/// A key-space request, decoded and checked, that has to be routed or waited for.
pub struct KvCall {
    op: KvOp,
    req: KvRequest,
    common: Common,
    arrival: Instant,
}

/// What the intake makes of a key-space request before anything is awaited.
pub enum Intake {
    /// Answered on the spot: refused, or a stale get served from this node's state.
    Answered(Vec<u8>),
    Call(KvCall),
}

/// Decodes and checks a request, and answers it at once when nothing has to be awaited: a
/// stale get this node may serve, or a request refused as malformed. The intake task calls
/// this, so such requests cost no task of their own (a spawn per request was a tenth of the
/// leader's CPU under stale-read load).
pub fn intake(ctx: &Ctx, op: KvOp, msg: &Message) -> Intake {
    let arrival = Instant::now();
    let decoded = codec::decode_kv(op, &msg.payload)
        .and_then(|(req, common)| validate::request(&req, &ctx.limits).map(|()| (req, common)));
    let (req, common) = match decoded {
        Ok(d) => d,
        Err(e) => return Intake::Answered(codec::encode_error(&e)),
    };
    if let KvRequest::Get {
        consistency: Consistency::Stale,
        min_revision,
        ..
    } = &req
    {
        let caught_up = min_revision.is_none_or(|min| ctx.view.revision() >= min);
        if caught_up && may_serve_stale(ctx, &ctx.raft.metrics()) {
            let read = Access::of(op, &common, msg)
                .check(ctx)
                .and_then(|()| read_now(ctx, &req));
            return Intake::Answered(read.unwrap_or_else(|e| codec::encode_error(&e)));
        }
    }
    Intake::Call(KvCall {
        op,
        req,
        common,
        arrival,
    })
}

pub async fn handle_kv(ctx: &Ctx, op: KvOp, msg: &Message) -> Vec<u8> {
    match intake(ctx, op, msg) {
        Intake::Answered(bytes) => bytes,
        Intake::Call(call) => handle_call(ctx, call, msg).await,
    }
}

/// Routes a request the intake could not answer at once, within its deadline.
pub async fn handle_call(ctx: &Ctx, call: KvCall, msg: &Message) -> Vec<u8> {
    let KvCall {
        op,
        req,
        common,
        arrival,
    } = call;
    let timeout_len = route::timeout_len(msg, common.timeout, ctx.default_timeout);
    let handed = AtomicBool::new(false);
    let r = Routed {
        msg,
        forwarded: route::is_forwarded(msg),
        is_write: op.is_write(),
        deadline: route::deadline_for(arrival, timeout_len),
        handed: &handed,
    };
    let access = Access::of(op, &common, msg);
    route::within_deadline(&r, timeout_len, kv_route(ctx, op, &req, &r, access))
        .await
        .unwrap_or_else(|e| codec::encode_error(&e))
}

/// The credential a request presented and the role its operation needs.
#[derive(Clone, Copy)]
struct Access<'a> {
    cred: Credential<'a>,
    needed: Role,
}

impl<'a> Access<'a> {
    /// What `op` needs, and the credential its request presented (body or header).
    fn of(op: KvOp, common: &'a Common, msg: &'a Message) -> Self {
        Access {
            cred: Credential::of(common.token.as_deref(), msg.headers.as_ref()),
            needed: if op.is_write() {
                Role::Readwrite
            } else {
                Role::Read
            },
        }
    }

    fn check(&self, ctx: &Ctx) -> Result<(), WireError> {
        ctx.auth.check(ctx.view.tokens(), self.cred, self.needed)
    }
}

async fn kv_route(
    ctx: &Ctx,
    op: KvOp,
    req: &KvRequest,
    r: &Routed<'_>,
    access: Access<'_>,
) -> Result<Vec<u8>, WireError> {
    if is_stale_read(req) && may_serve_stale(ctx, &ctx.raft.metrics()) {
        return read_local(ctx, req, r.handed, access).await;
    }
    if !op.is_write() && crate::failpoints::enabled(crate::failpoints::Failpoint::StaleReads) {
        return read_local(ctx, req, r.handed, access).await;
    }
    route::to_leader(
        ctx,
        r,
        |leader| ctx.subjects.node_kv(leader, op),
        || serve_on_leader(ctx, req, r.handed, access),
    )
    .await
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

async fn serve_on_leader(
    ctx: &Ctx,
    req: &KvRequest,
    handed: &AtomicBool,
    access: Access<'_>,
) -> Result<Vec<u8>, Step> {
    if req.is_write() {
        // Writes are authorized against the applied token table of a caught-up leader.
        route::leader_caught_up(ctx).await?;
        access.check(ctx)?;
    }
    match req {
        KvRequest::Put { key, value } => {
            check_quota(ctx, key, value)?;
            let cmd = Command::Put {
                key: key.clone(),
                value: value.clone(),
            };
            match propose(ctx, cmd, handed).await? {
                Applied::Put { revision } => Ok(codec::encode_ok(&PutReply { ok: true, revision })),
                other => Err(Step::Fail(internal(format!(
                    "unexpected outcome {other:?}"
                )))),
            }
        }
        KvRequest::Delete { key } => {
            let cmd = Command::Delete { key: key.clone() };
            match propose(ctx, cmd, handed).await? {
                Applied::Delete { deleted, revision } => Ok(codec::encode_ok(&DeleteReply {
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
            read_local(ctx, req, handed, access)
                .await
                .map_err(Step::Fail)
        }
    }
}

/// The storage quota, on the leader before proposing. It reads the applied state, so writes
/// in flight may overshoot the limit by at most what is in flight.
fn check_quota(ctx: &Ctx, key: &str, value: &str) -> Result<(), WireError> {
    let limits = &ctx.limits;
    if limits.max_data_bytes == 0 {
        return Ok(());
    }
    let current = ctx.view.data_bytes();
    let new = validate::put_bytes(key, value);
    if validate::quota(limits, current, new, None).is_ok() {
        return Ok(());
    }
    // Near the limit only: an overwrite counts what the key holds now.
    let old = ctx.view.entry_bytes(key).map_err(|e| {
        tracing::error!(error = %e, "read failed");
        internal(format!("storage read failed: {e}"))
    })?;
    validate::quota(limits, current, new, old)
}

/// ReadIndex: the leader confirms it still leads with a quorum round that starts after the
/// read arrived, then waits until it has applied up to the commit index it saw.
pub(super) async fn confirm_leadership(ctx: &Ctx) -> Result<(), Step> {
    match ctx.read_index.confirm().await {
        Ok(()) => Ok(()),
        Err(ReadIndexError::NotConfirmed) => Err(Step::Retry),
        Err(ReadIndexError::Stopped(e)) => Err(Step::Fail(internal(format!("raft stopped: {e}")))),
    }
}

pub(super) async fn propose(ctx: &Ctx, cmd: Command, handed: &AtomicBool) -> Result<Applied, Step> {
    handed.store(true, Ordering::Release);
    match ctx.proposer.propose(cmd).await {
        Ok(outcome) => Ok(outcome),
        // Not appended, or truncated before commit: it will never apply. Safe to retry.
        Err(ProposeError::NotLeader) => {
            handed.store(false, Ordering::Release);
            Err(Step::Retry)
        }
        Err(ProposeError::Failed(e)) => Err(Step::Fail(internal(e))),
        Err(ProposeError::Unknown(e)) => Err(Step::Fail(timeout(e))),
    }
}

/// Reads this node's state machine, after it has applied `min_revision` if one is given.
/// The token is checked here against this node's applied table: after ReadIndex for a
/// linearizable read on the leader, as of now for a stale read.
async fn read_local(
    ctx: &Ctx,
    req: &KvRequest,
    handed: &AtomicBool,
    access: Access<'_>,
) -> Result<Vec<u8>, WireError> {
    access.check(ctx)?;
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
    read_now(ctx, req)
}

/// Reads this node's state machine as it is now.
fn read_now(ctx: &Ctx, req: &KvRequest) -> Result<Vec<u8>, WireError> {
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
