//! The lease, lock and touch requests on the leader (DESIGN.md "Leases and TTL", "Locks and
//! fencing"). Everything is decided at apply (`store::apply::{lease,lock}`); what is done
//! here is what a state machine cannot do: wait. A lock waiter's claim is in the log; the
//! leader that serves the request watches its applied state until the claim holds the lock
//! or the wait ends, and then ends the wait by a log entry (`LockWithdraw`) whose apply says
//! which came first.

use std::time::Duration;

use tokio::time::Instant;

use super::codec;
use super::coord_codec::{
    lock_prefix, CoordRequest, LeaseGetReply, LeaseItem, LeaseListReply, LeaseReply, LockReply,
    ReleaseReply, RevokeReply, TouchReply,
};
use super::handler::propose;
use super::route::{AttemptError, Routed};
use super::writes::{self, propose_op, WriteTag};
use super::Ctx;
use crate::command::{Applied, Command, ConflictReason, Op};
use crate::error::{bad_request, internal, not_found, WireError};
use crate::limits::excerpt;
use crate::store::lease::LeaseInfo;

/// How long before the request's deadline a wait without `wait_ms` ends: room for the
/// withdrawal to commit and the reply to travel.
const WAIT_MARGIN: Duration = Duration::from_millis(250);

pub(super) async fn serve(
    ctx: &Ctx,
    req: &CoordRequest,
    r: &Routed<'_>,
    write: &WriteTag,
) -> Result<Vec<u8>, AttemptError> {
    let op = match req {
        CoordRequest::Touch { key, ttl_ms } => {
            let op = Op::Touch {
                key: key.clone(),
                ttl_ms: *ttl_ms,
            };
            return match propose_op(ctx, op, r, write).await? {
                Applied::Lease { id, ttl_ms } => Ok(codec::encode_ok(&TouchReply {
                    ok: true,
                    key,
                    lease: id,
                    ttl_ms,
                })),
                Applied::KeyNotLeased => Err(AttemptError::Fail(not_found(format!(
                    "key '{}' is absent or attached to no lease; nothing to touch",
                    excerpt(key)
                )))),
                other => writes::reply(other),
            };
        }
        CoordRequest::LeaseGrant { id, ttl_ms } => Op::LeaseGrant {
            id: *id,
            ttl_ms: *ttl_ms,
        },
        CoordRequest::LeaseKeepalive { id } => Op::LeaseKeepalive { id: *id },
        CoordRequest::LeaseRevoke { id } => Op::LeaseRevoke { id: *id },
        CoordRequest::LockAcquire { .. } => return acquire(ctx, req, r, write).await,
        CoordRequest::LockRelease { name, fence } => Op::LockRelease {
            name: name.clone(),
            fence: *fence,
        },
        CoordRequest::LeaseGet { .. } | CoordRequest::LeaseList { .. } => {
            return Err(AttemptError::Fail(internal(
                "a lease read reached the write path",
            )))
        }
    };
    reply(propose_op(ctx, op, r, write).await?)
}

fn reply(applied: Applied) -> Result<Vec<u8>, AttemptError> {
    match applied {
        Applied::Lease { id, ttl_ms } => Ok(codec::encode_ok(&LeaseReply {
            ok: true,
            id,
            ttl_ms,
        })),
        Applied::LeaseEnded { revision, count } => Ok(codec::encode_ok(&RevokeReply {
            ok: true,
            revision,
            count,
        })),
        Applied::LockReleased { revision } => {
            Ok(codec::encode_ok(&ReleaseReply { ok: true, revision }))
        }
        other => writes::reply(other),
    }
}

/// `P.lock.acquire`: the claim proposed; a waiting claim watched until it is granted or its
/// wait ends.
async fn acquire(
    ctx: &Ctx,
    req: &CoordRequest,
    r: &Routed<'_>,
    write: &WriteTag,
) -> Result<Vec<u8>, AttemptError> {
    let CoordRequest::LockAcquire {
        name,
        ttl_ms,
        lease,
        wait_ms,
    } = req
    else {
        return Err(AttemptError::Fail(internal("not an acquire")));
    };
    let wait_until = wait_end(r, *wait_ms);
    let op = Op::LockAcquire {
        name: name.clone(),
        ttl_ms: *ttl_ms,
        lease: *lease,
        wait: *wait_ms != Some(0),
    };
    let (claim, lease) = match propose_op(ctx, op, r, write).await? {
        Applied::LockGranted { fence, lease } => return Ok(granted(name, fence, lease)),
        Applied::LockWaiting { claim, lease } => (claim, lease),
        other => return writes::reply(other),
    };
    if wait_for_grant(ctx, name, claim, wait_until).await? {
        return Ok(granted(name, claim, lease));
    }
    // The wait ended: withdraw the claim by a log entry; its apply says whether the grant
    // came first.
    let withdraw = Command::LockWithdraw {
        name: name.clone(),
        claim,
    };
    match propose(ctx, withdraw, &r.delivery).await? {
        Applied::LockGranted { fence, lease } => Ok(granted(name, fence, lease)),
        Applied::LockWithdrawn => Err(AttemptError::Fail(WireError::conflict(
            ConflictReason::LockWait.as_str(),
            format!(
                "lock '{}' was not granted within the wait; the claim was withdrawn",
                excerpt(name)
            ),
            None,
        ))),
        other => writes::reply(other),
    }
}

/// When a wait ends: `wait_ms` from now, or shortly before the deadline, whichever comes
/// first (a resent or forwarded acquire waits within what is left of its deadline).
fn wait_end(r: &Routed<'_>, wait_ms: Option<u64>) -> Instant {
    let latest = r.deadline.checked_sub(WAIT_MARGIN).unwrap_or(r.deadline);
    match wait_ms {
        Some(ms) => (Instant::now() + Duration::from_millis(ms)).min(latest),
        None => latest,
    }
}

/// A `wait_ms` that could never end before the request's deadline is refused where the
/// client's request arrived, before it is routed: a forwarded copy carries only what is left
/// of the deadline, and a resent acquire must rejoin its claim, not be refused.
pub(super) fn check_wait(req: &CoordRequest, r: &Routed<'_>) -> Result<(), WireError> {
    let CoordRequest::LockAcquire {
        wait_ms: Some(ms), ..
    } = req
    else {
        return Ok(());
    };
    if r.forwarded || *ms == 0 || Duration::from_millis(*ms) + WAIT_MARGIN < r.timeout_len {
        return Ok(());
    }
    Err(bad_request(format!(
        "wait_ms ({ms}) must end before the request's deadline ({} ms, less {} ms to withdraw); raise timeout_ms or lower wait_ms",
        r.timeout_len.as_millis(),
        WAIT_MARGIN.as_millis()
    )))
}

/// Watches this node's applied state until claim `claim` of lock `name` holds it (true),
/// is gone (its lease ended: false) or `until` passes (false).
async fn wait_for_grant(
    ctx: &Ctx,
    name: &str,
    claim: u64,
    until: Instant,
) -> Result<bool, AttemptError> {
    let view = &ctx.consensus.view;
    let prefix = lock_prefix(name);
    let mut revisions = view.watch_revision();
    loop {
        let line = view.lock_line(&prefix).map_err(|e| {
            AttemptError::Fail(internal(format!("reading lock '{}': {e}", excerpt(name))))
        })?;
        match line.iter().position(|(c, _)| *c == claim) {
            Some(0) => return Ok(true),
            None => return Ok(false),
            Some(_) => {}
        }
        tokio::select! {
            changed = revisions.changed() => if changed.is_err() { return Ok(false) },
            _ = tokio::time::sleep_until(until) => return Ok(false),
        }
    }
}

fn granted(name: &str, fence: u64, lease: u64) -> Vec<u8> {
    codec::encode_ok(&LockReply {
        ok: true,
        name,
        fence,
        lease,
    })
}

/// `P.lease.get` and `P.lease.list`, from this node's applied table (after ReadIndex on the
/// leader); `remaining_ms` by this node's cluster time.
pub(super) fn read(ctx: &Ctx, req: &CoordRequest) -> Result<Vec<u8>, WireError> {
    let view = &ctx.consensus.view;
    let now = view.clock().reading();
    let remaining = |info: &LeaseInfo| {
        info.deadline
            .map_or(info.ttl_ms, |deadline| deadline.saturating_sub(now))
    };
    match req {
        CoordRequest::LeaseGet { id, keys } => {
            let Some(info) = view.with_leases(|t| t.info(*id, *keys)) else {
                return Err(not_found(format!(
                    "lease {id} not found (never granted, revoked, or expired)"
                )));
            };
            Ok(codec::encode_ok(&LeaseGetReply {
                ok: true,
                id: info.id,
                ttl_ms: info.ttl_ms,
                remaining_ms: remaining(&info),
                keys: info.keys.clone(),
            }))
        }
        CoordRequest::LeaseList { after, limit } => {
            let (page, more) = view.with_leases(|t| t.page(*after, *limit));
            let leases = page
                .iter()
                .map(|info| LeaseItem {
                    id: info.id,
                    ttl_ms: info.ttl_ms,
                    remaining_ms: remaining(info),
                })
                .collect();
            Ok(codec::encode_ok(&LeaseListReply {
                ok: true,
                leases,
                more,
            }))
        }
        _ => Err(internal("a lease write reached the read path")),
    }
}
