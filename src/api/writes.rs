//! Key-space writes on the leader: each request as the command the log carries, proposed,
//! and what applying it gave as the client's reply. Conditions are never checked here:
//! they are decided at apply, in log order (`store::apply`).

use super::codec::{self, DeletePrefixReply, DeleteReply, IncrReply, KvRequest, PutReply};
use super::handler::propose_outcome;
use super::propose::ProposeError;
use super::route::{AttemptError, Routed};
use super::{txn_codec, validate, Ctx};
use crate::command::{Applied, Command, ConflictReason, Op, Request, TxnOp, FORMAT_V2};
use crate::error::{
    bad_request, cluster_not_ready, internal, not_found, value_too_large, WireError,
};

/// What makes a write exactly-once: the client's request id, kept per token.
pub struct WriteTag {
    pub request_id: Option<uuid::Uuid>,
    pub token_id: Option<String>,
}

impl WriteTag {
    /// The command for `op`: a client write carrying the id once the cluster writes format
    /// 2 (the proposer would turn a plain put or delete into an untagged one), the format-1
    /// put or delete before, when ids cannot travel and are ignored. A condition
    /// (`if_revision`) and every Coordination write travel only in format 2: before the
    /// switch (a rolling upgrade in progress) they are refused, never dropped.
    fn command(&self, ctx: &Ctx, op: Op) -> Result<Command, WireError> {
        let needs_v2 = match &op {
            Op::Put {
                if_revision: None,
                lease: None,
                ttl_ms: None,
                fence: None,
                ..
            } => None,
            Op::Delete {
                if_revision: None,
                fence: None,
                ..
            } => None,
            Op::Put { .. } => Some("a put with if_revision, lease, ttl_ms or fence"),
            Op::Delete { .. } => Some("a delete with if_revision or fence"),
            Op::DeletePrefix { .. } => Some("a delete by prefix"),
            other => Some(other.name()),
        };
        let format_v2 = ctx.consensus.view.cluster_format() >= FORMAT_V2;
        if let (Some(what), false) = (needs_v2, format_v2) {
            return Err(cluster_not_ready(format!(
                "{what} is taken once the cluster writes log format 2 (every node upgraded; \
                 see admin.status log_format); it was not applied"
            )));
        }
        if needs_v2.is_none() && (!format_v2 || self.request_id.is_none()) {
            return Ok(match op {
                Op::Put { key, value, .. } => Command::Put { key, value },
                Op::Delete { key, .. } => Command::Delete { key },
                other => Command::Client(Request::untagged(other)),
            });
        }
        Ok(Command::Client(Request {
            request_id: self.request_id,
            token_id: self.token_id.clone(),
            op,
        }))
    }
}

/// Proposes write `req` and answers with what applying it gave.
pub(super) async fn serve(
    ctx: &Ctx,
    req: &KvRequest,
    r: &Routed<'_>,
    write: &WriteTag,
) -> Result<Vec<u8>, AttemptError> {
    let op = match req {
        KvRequest::Put {
            key,
            value,
            if_revision,
            lease,
            ttl_ms,
            fence,
        } => {
            check_quota(ctx, key, validate::put_bytes(key, value))?;
            Op::Put {
                key: key.clone(),
                value: value.clone(),
                if_revision: *if_revision,
                lease: *lease,
                ttl_ms: *ttl_ms,
                fence: fence.clone(),
            }
        }
        KvRequest::Delete {
            key,
            if_revision,
            fence,
        } => Op::Delete {
            key: key.clone(),
            if_revision: *if_revision,
            fence: fence.clone(),
        },
        KvRequest::Incr {
            key,
            by,
            min,
            max,
            ttl_ms,
            fence,
        } => {
            // At most an i64's digits.
            check_quota(ctx, key, validate::put_bytes(key, "-9223372036854775808"))?;
            Op::Incr {
                key: key.clone(),
                by: *by,
                min: *min,
                max: *max,
                ttl_ms: *ttl_ms,
                fence: fence.clone(),
            }
        }
        KvRequest::DeletePrefix { prefix, fence } => Op::DeletePrefix {
            prefix: prefix.clone(),
            limit: ctx.limits.sizes.max_delete_keys,
            fence: fence.clone(),
        },
        KvRequest::Txn(txn) => {
            let grows: u64 = [&txn.success, &txn.failure]
                .into_iter()
                .flatten()
                .map(|op| match op {
                    TxnOp::Put { key, value, .. } => validate::put_bytes(key, value),
                    _ => 0,
                })
                .sum();
            if grows > 0 {
                check_quota(ctx, "", grows)?;
            }
            Op::Txn(txn.clone())
        }
        KvRequest::Coord(c) => return super::coord::serve(ctx, c, r, write).await,
        KvRequest::Get { .. } | KvRequest::Scan { .. } => {
            return Err(AttemptError::Fail(internal(
                "a read reached the write path",
            )))
        }
    };
    let cmd = write.command(ctx, op)?;
    reply(propose_resendable(ctx, cmd, r).await?)
}

/// Proposes `op` with the request's exactly-once tag; what applying it gave.
pub(super) async fn propose_op(
    ctx: &Ctx,
    op: Op,
    r: &Routed<'_>,
    write: &WriteTag,
) -> Result<Applied, AttemptError> {
    let cmd = write.command(ctx, op)?;
    propose_resendable(ctx, cmd, r).await
}

/// The client's reply to an applied write.
pub(super) fn reply(applied: Applied) -> Result<Vec<u8>, AttemptError> {
    let ok = match applied {
        Applied::Put { revision } => codec::encode_ok(&PutReply {
            ok: true,
            revision,
            lease: None,
        }),
        Applied::PutLeased { revision, lease } => codec::encode_ok(&PutReply {
            ok: true,
            revision,
            lease: Some(lease),
        }),
        Applied::Delete { deleted, revision } => codec::encode_ok(&DeleteReply {
            ok: true,
            deleted,
            revision,
        }),
        Applied::Incr { value, revision } => codec::encode_ok(&IncrReply {
            ok: true,
            value,
            revision,
        }),
        Applied::DeletePrefix {
            count,
            more,
            revision,
        } => codec::encode_ok(&DeletePrefixReply {
            ok: true,
            deleted: count > 0,
            count,
            more,
            revision,
        }),
        Applied::Txn(t) => txn_codec::encode(&t)?,
        Applied::Conflict {
            reason: reason @ (ConflictReason::Fence | ConflictReason::LockHeld),
            revision,
        } => {
            return Err(AttemptError::Fail(WireError::lock_conflict(
                reason.as_str(),
                conflict_message(reason),
                revision.unwrap_or(0),
            )))
        }
        Applied::Conflict { reason, revision } => {
            return Err(AttemptError::Fail(WireError::conflict(
                reason.as_str(),
                conflict_message(reason),
                revision,
            )))
        }
        Applied::ConflictValue {
            reason,
            key,
            revision,
            value,
        } => {
            let value = value.and_then(|v| serde_json::from_str(&v).ok());
            return Err(AttemptError::Fail(
                WireError::conflict(reason.as_str(), conflict_message(reason), Some(revision))
                    .with_value(value)
                    .with_key(key),
            ));
        }
        Applied::TooLarge { bytes, limit } => {
            return Err(AttemptError::Fail(value_too_large(format!(
                "the txn's get results make a reply of about {bytes} bytes, over the {limit} \
                 one reply may hold (limits.max_reply_bytes); nothing was written"
            ))))
        }
        Applied::LeaseNotFound { id } => {
            return Err(AttemptError::Fail(not_found(format!(
                "lease {id} not found (never granted, revoked, or expired)"
            ))))
        }
        Applied::LeaseFull { id, limit } => {
            return Err(AttemptError::Fail(bad_request(format!(
                "lease {id} already holds {limit} keys, the most a lease may \
                 (limits.max_keys_per_lease); nothing was written"
            ))))
        }
        Applied::Unsupported { operation } => {
            return Err(AttemptError::Fail(bad_request(format!(
                "{operation} is not supported by this build; nothing was written"
            ))))
        }
        other => {
            return Err(AttemptError::Fail(internal(format!(
                "unexpected outcome {other:?}"
            ))))
        }
    };
    Ok(ok)
}

/// What a `conflict` says, by reason.
fn conflict_message(reason: ConflictReason) -> &'static str {
    match reason {
        ConflictReason::RequestId => {
            "this request_id was already used with another command; use a new id for a new \
             operation"
        }
        ConflictReason::Revision => {
            "if_revision did not match: the key changed (or was created or deleted) since that \
             revision; read it again and retry with its current revision"
        }
        ConflictReason::Bound => {
            "the result would be outside [min, max] or overflow an i64; nothing was written \
             (value is the key's current value)"
        }
        ConflictReason::NotInteger => {
            "the key holds a value that is not a JSON integer; nothing was written (value is \
             what it holds)"
        }
        ConflictReason::Fence => {
            "the fence is not the lock holder's (`fence` is the holder's, 0 when the lock is \
             free); nothing was written"
        }
        ConflictReason::LockHeld => {
            "the lock is held (`fence` is the holder's) and wait_ms was 0; no claim was left"
        }
        ConflictReason::LockWait => {
            "wait_ms passed before the lock was granted; the claim was withdrawn"
        }
        ConflictReason::LeaseExists => "a lease with this id exists; pick another id or none",
    }
}

/// The storage quota, on the leader before proposing: a write that adds `new` bytes. It
/// reads the applied state, so writes in flight may overshoot the limit by at most what is
/// in flight. `key` is the key an overwrite replaces, near the limit only ("" for none).
fn check_quota(ctx: &Ctx, key: &str, new: u64) -> Result<(), WireError> {
    let limits = &ctx.limits.sizes;
    if limits.max_data_bytes == 0 {
        return Ok(());
    }
    // The change log counts too: it is compacted, never refused (deletes and compaction
    // are always let through).
    let view = &ctx.consensus.view;
    let current = (view.data_bytes(), view.history_bytes());
    let as_new = validate::quota(limits, current, new, None);
    if as_new.is_ok() || key.is_empty() {
        return as_new;
    }
    // Near the limit only: an overwrite counts what the key holds now.
    let old = ctx.consensus.view.entry_bytes(key).map_err(|e| {
        tracing::error!(error = %e, "read failed");
        internal(format!("storage read failed: {e}"))
    })?;
    validate::quota(limits, current, new, old)
}

/// Proposes a write the route may send again: when this node stops leading while the write
/// is in flight, a write with a request id is routed again, to the new leader, whose state
/// machine answers a copy that already applied from its idempotency table.
async fn propose_resendable(
    ctx: &Ctx,
    cmd: Command,
    r: &Routed<'_>,
) -> Result<Applied, AttemptError> {
    r.delivery.mark();
    match ctx
        .consensus
        .proposer
        .propose_resendable(cmd, r.resendable)
        .await
    {
        Err(ProposeError::LeadershipLost) => Err(AttemptError::Retry),
        other => propose_outcome(other, &r.delivery),
    }
}
