//! One key-space request: stale reads are served locally by a voter in recent contact with
//! a leader; everything else goes to the leader ([`route`]), which proposes writes and
//! confirms leadership (ReadIndex) before linearizable reads.

use async_nats::Message;
use openraft::ServerState;
use tokio::time::Instant;

use super::codec::{self, Common, Consistency, KvRequest};
use super::propose::ProposeError;
use super::read_index::ReadIndexError;
use super::route::{self, AttemptError, Delivery, Routed};
use super::writes::{self, WriteTag};
use super::{validate, Ctx};
use crate::auth::{Credential, Role};
use crate::command::{Applied, Command};
use crate::error::{internal, not_found, timeout, WireError};
use crate::limits::excerpt;
use crate::raft::types::RaftMetrics;
use crate::subjects::KvOp;

/// Default page size of a scan.
const DEFAULT_SCAN_LIMIT: usize = 1000;
/// Most bytes (keys and values as stored, plus a per-item allowance) one scan page reads.
const SCAN_PAGE_BYTES: usize = 256 * 1024;

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
    let decoded = codec::decode_kv(op, &msg.payload).and_then(|(req, common)| {
        validate::request(&req, &ctx.limits.sizes).map(|()| (req, common))
    });
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
        let caught_up = min_revision.is_none_or(|min| ctx.consensus.view.revision() >= min);
        if caught_up && may_serve_stale(ctx, &ctx.consensus.raft.metrics()) {
            let read = Access::of(&req, &common, msg)
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
    // A write with a request id may be sent again (to a new leader) once it may have been
    // delivered: the state machine answers a second copy from its idempotency table. Only
    // from log format 2 on, where the id travels with the command.
    // A keepalive or touch carries no id, but repeating one only renews again: it may be
    // resent too.
    let repeatable = matches!(op, KvOp::LeaseKeepalive | KvOp::Touch);
    let resendable = (common.request_id.is_some() || repeatable)
        && ctx.consensus.view.cluster_format() >= crate::command::FORMAT_V2;
    let r = Routed::new(ctx, msg, arrival, common.timeout, op.is_write()).resendable(resendable);
    if let KvRequest::Coord(c) = &req {
        if let Err(e) = super::coord::check_wait(c, &r) {
            return codec::encode_error(&e);
        }
    }
    let access = Access::of(&req, &common, msg);
    let write = WriteTag {
        request_id: common.request_id,
        token_id: ctx.security.auth.token_id(access.cred),
    };
    r.within_deadline(kv_route(ctx, op, &req, &r, access, &write))
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
    /// What `req` needs, and the credential its request presented (body or header).
    fn of(req: &KvRequest, common: &'a Common, msg: &'a Message) -> Self {
        Access {
            cred: Credential::of(common.token.as_deref(), msg.headers.as_ref()),
            needed: if req.may_change_keys() {
                Role::Readwrite
            } else {
                Role::Read
            },
        }
    }

    fn check(&self, ctx: &Ctx) -> Result<(), WireError> {
        ctx.security
            .auth
            .check(ctx.consensus.view.tokens(), self.cred, self.needed)
    }
}

async fn kv_route(
    ctx: &Ctx,
    op: KvOp,
    req: &KvRequest,
    r: &Routed<'_>,
    access: Access<'_>,
    write: &WriteTag,
) -> Result<Vec<u8>, WireError> {
    if is_stale_read(req) && may_serve_stale(ctx, &ctx.consensus.raft.metrics()) {
        return read_local(ctx, req, &r.delivery, access, r.deadline).await;
    }
    if !op.is_write() && crate::failpoints::enabled(crate::failpoints::Failpoint::StaleReads) {
        return read_local(ctx, req, &r.delivery, access, r.deadline).await;
    }
    route::to_leader(
        ctx,
        r,
        |leader| ctx.cluster.subjects.node_kv(leader, op),
        || serve_on_leader(ctx, req, r, access, write),
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
    let member = match m.state {
        ServerState::Leader => true,
        ServerState::Follower => m
            .membership_config
            .voter_ids()
            .any(|id| id == ctx.cluster.me),
        _ => false,
    };
    member && ctx.consensus.contact.check(&m).is_ok()
}

async fn serve_on_leader(
    ctx: &Ctx,
    req: &KvRequest,
    r: &Routed<'_>,
    access: Access<'_>,
    write: &WriteTag,
) -> Result<Vec<u8>, AttemptError> {
    let (delivery, deadline) = (&r.delivery, r.deadline);
    if req.is_write() {
        // Writes are authorized against the applied token table of a caught-up leader.
        route::leader_caught_up(ctx).await?;
        access.check(ctx)?;
    }
    if req.is_write() {
        return writes::serve(ctx, req, r, write).await;
    }
    if !is_stale_read(req) {
        confirm_leadership(ctx).await?;
    }
    read_local(ctx, req, delivery, access, deadline)
        .await
        .map_err(AttemptError::Fail)
}

/// ReadIndex: the leader confirms it still leads with a quorum round that starts after the
/// read arrived, then waits until it has applied up to the commit index it saw.
pub(crate) async fn confirm_leadership(ctx: &Ctx) -> Result<(), AttemptError> {
    match ctx.consensus.read_index.confirm().await {
        Ok(()) => Ok(()),
        Err(ReadIndexError::NotConfirmed) => Err(AttemptError::Retry),
        Err(ReadIndexError::Stopped(e)) => {
            Err(AttemptError::Fail(internal(format!("raft stopped: {e}"))))
        }
    }
}

pub(crate) async fn propose(
    ctx: &Ctx,
    cmd: Command,
    delivery: &Delivery,
) -> Result<Applied, AttemptError> {
    delivery.mark();
    propose_outcome(ctx.consensus.proposer.propose(cmd).await, delivery)
}

/// The reply to a proposal's outcome; `delivery` unmarked when it certainly did not apply.
pub(super) fn propose_outcome(
    outcome: Result<Applied, ProposeError>,
    delivery: &Delivery,
) -> Result<Applied, AttemptError> {
    match outcome {
        Ok(outcome) => Ok(outcome),
        // Not appended, or truncated before commit: it will never apply. Safe to retry.
        Err(ProposeError::NotLeader) => {
            delivery.unmark();
            Err(AttemptError::Retry)
        }
        Err(ProposeError::Failed(e)) => Err(AttemptError::Fail(internal(e))),
        Err(ProposeError::Unknown(e)) => Err(AttemptError::Fail(timeout(e))),
        Err(ProposeError::LeadershipLost) => Err(AttemptError::Fail(timeout(
            "this node stopped leading while the write was in flight; it may still be applied",
        ))),
    }
}

/// Reads this node's state machine, after it has applied `min_revision` if one is given.
/// The token is checked here against this node's applied table: after ReadIndex for a
/// linearizable read on the leader, as of now for a stale read, and again after a
/// `min_revision` wait, so a read parked before a `token.revoke` is refused once it wakes.
async fn read_local(
    ctx: &Ctx,
    req: &KvRequest,
    delivery: &Delivery,
    access: Access<'_>,
    deadline: Instant,
) -> Result<Vec<u8>, WireError> {
    access.check(ctx)?;
    let min_revision = match req {
        KvRequest::Get { min_revision, .. } | KvRequest::Scan { min_revision, .. } => *min_revision,
        _ => None,
    };
    if let Some(min) = min_revision {
        if ctx.consensus.view.revision() < min {
            // From here a deadline means "not yet", not "no leader".
            delivery.mark();
            let mut rx = ctx.consensus.view.watch_revision();
            let _ = rx.wait_for(|r| *r >= min).await;
            // The table may have changed while parked (issue #20, item 3).
            access.check(ctx)?;
        }
    }
    match req {
        KvRequest::Scan {
            prefix,
            limit,
            after,
            ..
        } => scan_page(ctx, prefix, *limit, after.as_deref(), deadline).await,
        _ => read_now(ctx, req),
    }
}

/// One scan page, read on the scan pool (issue #20, item 7): a full scan of large values
/// iterates fjall for a long time, which on an async worker would delay Raft's tasks on the
/// same worker. `busy` when the pool stays taken until the deadline.
async fn scan_page(
    ctx: &Ctx,
    prefix: &str,
    limit: Option<usize>,
    after: Option<&str>,
    deadline: Instant,
) -> Result<Vec<u8>, WireError> {
    // A lower `limits.max_scan_limit` caps the default page too (issue #20, item 8).
    let limit = limit
        .unwrap_or(DEFAULT_SCAN_LIMIT)
        .min(ctx.limits.sizes.max_scan_limit);
    let max_bytes = scan_page_bytes(ctx.limits.max_payload);
    let view = ctx.consensus.view.clone();
    // Read before the page: every write up to it is visible to the page (apply publishes
    // the revision after the writes).
    let store_revision = view.revision();
    let (prefix, after) = (prefix.to_string(), after.map(str::to_string));
    let (items, more) = ctx
        .workers
        .scans
        .run(deadline, "a scan page", move || {
            view.scan(&prefix, after.as_deref(), limit, max_bytes)
        })
        .await?
        .map_err(storage_failed)?;
    // The store's cut estimates; this one counts the encoded reply (issue #20, item 6).
    let reply_bytes = ctx
        .limits
        .max_payload
        .saturating_sub(codec::REPLY_HEADER_ROOM);
    codec::encode_scan(&items, more, reply_bytes, store_revision)
}

/// The byte budget of one scan page: the scan loop stops there. Well under the max payload
/// (a page is encoded as JSON, which may grow it), and at most [`SCAN_PAGE_BYTES`], so one
/// page of large values holds a scan thread and the connection's send queue only briefly.
fn scan_page_bytes(max_payload: usize) -> usize {
    (max_payload / 2).clamp(16 * 1024, SCAN_PAGE_BYTES)
}

fn storage_failed(e: crate::store::Error) -> WireError {
    tracing::error!(error = %e, "read failed");
    internal(format!("storage read failed: {e}"))
}

/// Reads one key of this node's state machine as it is now: a point read, cheap enough for
/// an async worker. Scans go through [`scan_page`].
fn read_now(ctx: &Ctx, req: &KvRequest) -> Result<Vec<u8>, WireError> {
    match req {
        KvRequest::Get { key, .. } => {
            // Read before the key: every write up to it is visible (apply publishes the
            // revision after the writes).
            let store_revision = ctx.consensus.view.revision();
            match ctx.consensus.view.record(key).map_err(storage_failed)? {
                Some((meta, json)) => codec::encode_get(&meta, &json, store_revision),
                None => Err(not_found(format!("key '{}' not found", excerpt(key)))
                    .at_store_revision(store_revision)),
            }
        }
        KvRequest::Coord(c) => super::coord::read(ctx, c),
        _ => Err(internal("read_now called for a scan or a write")),
    }
}
