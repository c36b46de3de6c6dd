//! A node's own control requests to other nodes (`status`, `members`, `member.removed`):
//! the startup prefix check, the removal watch, the leader's ping before a membership change
//! and its removal notice. Sent on both sides like a forwarded request:
//!
//! - the sender ([`send`]) goes through the node's [`Inbox`]: `Concord-Forwarded: <me>`,
//!   `Concord-Cluster-Id` when known, a per-call reply subject, and with `cluster.secret`
//!   a MAC over all of it; only a reply whose MAC is bound to the request's is accepted (an
//!   unsigned or forged one is counted and ignored). With the secret it sends NO admin
//!   token: the MAC is the node's credential. Without it, it sends the token as before.
//! - the receiver: `api::server` verifies the MAC of every forwarded request before it is
//!   dispatched, admits its cluster id (and, for `member.removed`, its term and nonce:
//!   `api::forwarded::admit`), and signs the reply; [`node_vouched`] then lets exactly these
//!   three operations through without a token.
//!
//! Never: accept a node MAC in place of a token for any other operation.

use std::time::Duration;

use async_nats::{HeaderMap, Message};
use bytes::Bytes;

use crate::api::forwarded::{self, Forwarding};
use crate::api::{route, Ctx};
use crate::raft::inbox::{CallError, Inbox};
use crate::raft::types::NodeId;

/// Who sends a control request, and how.
pub struct Sender<'a> {
    pub inbox: &'a Inbox,
    /// `cluster.secret` is set: the request is signed and carries no token.
    pub signed: bool,
    pub me: NodeId,
    pub cluster_id: Option<uuid::Uuid>,
    /// A running node binds its requests to its term and a nonce, so a captured one cannot
    /// be replayed (`api::forwarded`); the startup prefix check, before Raft runs, cannot.
    pub stamp: Option<(&'a Forwarding, u64)>,
}

impl<'a> Sender<'a> {
    /// The sender of a running node's requests.
    pub fn of(ctx: &'a Ctx) -> Sender<'a> {
        Sender {
            inbox: &ctx.cluster.inbox,
            signed: ctx.security.signer.is_some(),
            me: ctx.cluster.me,
            cluster_id: ctx.consensus.view.cluster_id(),
            stamp: Some((
                &ctx.security.forwarding,
                ctx.consensus.raft.metrics().borrow().current_term,
            )),
        }
    }

    /// Sends one control request and waits up to `timeout` for a reply (verified, with the
    /// secret). `auth` is the `Authorization` value to send when there is no secret.
    pub async fn send(
        &self,
        subject: String,
        auth: Option<&str>,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, CallError> {
        let mut headers = HeaderMap::new();
        forwarded::mark(&mut headers, self.me, self.cluster_id, self.stamp);
        if let (false, Some(a)) = (self.signed, auth) {
            headers.insert("Authorization", a);
        }
        self.inbox
            .request_with_headers(
                subject,
                Some(headers),
                &route::SIGNED_FORWARD_HEADERS,
                payload,
                timeout,
            )
            .await
    }
}

/// True when the request comes from another node of this cluster, proven by its MAC:
/// `api::server` verifies every request marked `Concord-Forwarded` before dispatching it
/// when the cluster has a secret, and answers a bad MAC with an error instead, so a request
/// that gets here marked forwarded, with a secret set, carried a valid MAC.
pub fn node_vouched(ctx: &Ctx, msg: &Message) -> bool {
    ctx.security.signer.is_some() && route::is_forwarded(msg)
}
