//! `P.admin.*` and `P.node.<id>.admin.*`: administering the cluster. [`handle_admin`]
//! dispatches by operation:
//!
//! - [`status`]: `status` and `members`, this node's own view of itself and the cluster;
//! - [`membership`]: `member.{add,promote,remove}` through the leader, and the removal notice;
//! - [`tokens`]: `token.{create,revoke,list}` through the leader;
//! - [`take_snapshot`]: the admin command `snapshot`, which makes this node build a Raft
//!   snapshot now (the wire op keeps its name);
//! - [`backup`]: `backup` written by the leader, and `backup.chunk` served in pieces;
//! - [`compact`]: `compact`, the change log compacted through a revision by the leader;
//! - [`control`]: a node's own signed requests to other nodes (status, members, removal);
//! - [`format_switch`] and [`cluster_settings`]: what a leader proposes on its own (the log
//!   format switch, the idempotency settings).
//!
//! Every admin body is decoded by [`decode`]; the routed ones (membership, tokens, backup)
//! go to the leader through [`route::Routed`](crate::api::route::Routed).

pub mod backup;
pub mod cluster_settings;
pub mod compact;
pub mod control;
pub mod format_switch;
pub mod membership;
pub mod status;
pub mod take_snapshot;
pub mod tokens;

use async_nats::Message;
use serde::de::DeserializeOwned;

use super::{codec, Ctx};
use crate::error::WireError;
use crate::subjects::AdminOp;

pub use status::role_name;

pub async fn handle_admin(ctx: &Ctx, op: AdminOp, msg: &Message) -> Vec<u8> {
    match op {
        AdminOp::TokenCreate | AdminOp::TokenRevoke | AdminOp::TokenList => {
            tokens::handle_token(ctx, op, msg).await
        }
        AdminOp::MemberAdd
        | AdminOp::MemberPromote
        | AdminOp::MemberRemove
        | AdminOp::MemberRemoved => membership::handle_member(ctx, op, msg).await,
        AdminOp::Snapshot => take_snapshot::handle_take_snapshot(ctx, msg).await,
        AdminOp::Compact => compact::handle_compact(ctx, msg).await,
        AdminOp::Backup => backup::handle_backup(ctx, msg).await,
        AdminOp::BackupChunk => backup::handle_chunk(ctx, msg).await,
        AdminOp::Status | AdminOp::Members => {
            match status::own_view(ctx, op == AdminOp::Status, msg).await {
                Ok(b) => b,
                Err(e) => codec::encode_error(&e),
            }
        }
    }
}

/// Decodes an admin request body: an empty body means `{}`; anything else must be a JSON
/// object of the operation's fields (unknown fields refused by each body type).
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    let body: &[u8] = if payload.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        payload
    };
    codec::check_object(body)?;
    codec::typed(body)
}
