//! `P.watch.create` (a queue group of its own) and `P.node.<id>.watch.{create,cancel}`:
//! answered by this node from its own state, never forwarded. A watch's task starts only
//! after its create reply is published, on the same connection as its messages, so the
//! reply comes before the first message.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use async_nats::Message;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use super::request::{decode_cancel, decode_create, Spec};
use super::{stream, Shared, Watches};
use crate::api::codec;
use crate::auth::{Credential, Role};
use crate::command::FORMAT_V2;
use crate::error::{bad_request, busy, cluster_not_ready, not_found, WireError};
use crate::subjects::last_token;

#[derive(Serialize)]
struct Created<'a> {
    ok: bool,
    watch_id: &'a str,
    node: u64,
    store_revision: u64,
    compact_revision: u64,
    progress_ms: u64,
}

/// Serves the watch subjects until the node stops.
pub async fn run(w: Arc<Watches>) -> Result<(), async_nats::SubscribeError> {
    let ctx = &w.ctx;
    let s = &ctx.cluster.subjects;
    let client = &ctx.cluster.client;
    let create = client
        .queue_subscribe(s.watch_create(), s.watch_queue_group())
        .await?;
    let node = client
        .subscribe(s.node_watch_wildcard(ctx.cluster.me))
        .await?;
    let mut requests = futures::stream::select(create, node);
    loop {
        let msg = tokio::select! {
            _ = w.cancel.cancelled() => return Ok(()),
            m = requests.next() => match m { Some(m) => m, None => return Ok(()) },
        };
        w.tracker.spawn(handle(w.clone(), msg));
    }
}

async fn handle(w: Arc<Watches>, msg: Message) {
    let Some(reply) = msg.reply.clone() else {
        return;
    };
    let (body, started) = match last_token(msg.subject.as_str()) {
        "create" => match create(&w, &msg) {
            Ok((body, started)) => (body, Some(started)),
            Err(e) => (codec::encode_error(&e), None),
        },
        "cancel" => match cancel(&w, &msg) {
            Ok(body) => (body, None),
            Err(e) => (codec::encode_error(&e), None),
        },
        other => (
            codec::encode_error(&bad_request(format!(
                "unknown watch operation '{}' (create or cancel)",
                crate::limits::excerpt(other)
            ))),
            None,
        ),
    };
    // On the connection the watch's messages take: NATS keeps one connection's order, so
    // the reply is delivered before the first message.
    if let Err(e) = w.ctx.cluster.bulk.publish(reply, Bytes::from(body)).await {
        tracing::debug!("watch reply not sent: {e}");
    }
    if let Some((shared, spec, start)) = started {
        w.tracker.spawn(stream::run(w.clone(), shared, spec, start));
    }
}

/// The token a request presented (body or header), kept to check it again while the watch
/// lives.
fn token_of(spec_token: Option<&str>, msg: &Message) -> Option<String> {
    match Credential::of(spec_token, msg.headers.as_ref()) {
        Credential::Token(t) => Some(t.to_owned()),
        _ => None,
    }
}

type Started = (Arc<Shared>, Spec, u64);

fn create(w: &Watches, msg: &Message) -> Result<(Vec<u8>, Started), WireError> {
    let ctx = &w.ctx;
    let mut spec = decode_create(&msg.payload, ctx.cluster.subjects.prefix())?;
    let cred = Credential::of(spec.token.as_deref(), msg.headers.as_ref());
    let view = &ctx.consensus.view;
    ctx.security.auth.check(view.tokens(), cred, Role::Read)?;
    spec.token = token_of(spec.token.as_deref(), msg);
    if view.cluster_format() < FORMAT_V2 || view.history_start() == 0 {
        return Err(cluster_not_ready(
            "the cluster keeps no change log until every node runs a build that reads log format 2",
        ));
    }
    if !is_member(w) {
        return Err(cluster_not_ready(format!(
            "node {} is not a voter or learner of the cluster: watch on another node",
            ctx.cluster.me
        )));
    }
    let store_revision = view.revision();
    let start = match spec.start {
        0 => store_revision + 1,
        s => s,
    };
    let compact = view.compact_revision();
    if start <= compact {
        return Err(WireError::compacted(
            compact,
            format!("revision {start} is compacted (compact revision {compact}): list again, then watch from the list's revision"),
        ));
    }
    let held_from = view.history_start();
    if start < held_from {
        return Err(cluster_not_ready(format!(
            "node {}'s change log starts at revision {held_from} (it installed a snapshot): watch on another node",
            ctx.cluster.me
        )));
    }
    let Some((shared, watches)) = w.register(spec.filter.clone()) else {
        return Err(busy(format!(
            "node {} serves watch.max_watches ({}) watches: watch on another node or later",
            ctx.cluster.me, w.config.max_watches
        )));
    };
    ctx.observer.watch_created(watches);
    let body = codec::encode_ok(&Created {
        ok: true,
        watch_id: &shared.id,
        node: ctx.cluster.me,
        store_revision,
        compact_revision: compact,
        progress_ms: w.config.progress_ms,
    });
    Ok((body, (shared, spec, start)))
}

/// Whether this node is a voter or learner of the membership it applied.
fn is_member(w: &Watches) -> bool {
    let m = w.ctx.consensus.raft.metrics();
    let m = m.borrow();
    let membership = m.membership_config.membership();
    let me = w.ctx.cluster.me;
    membership.voter_ids().any(|id| id == me) || membership.learner_ids().any(|id| id == me)
}

fn cancel(w: &Watches, msg: &Message) -> Result<Vec<u8>, WireError> {
    let (id, token) = decode_cancel(&msg.payload)?;
    let ctx = &w.ctx;
    let cred = Credential::of(token.as_deref(), msg.headers.as_ref());
    ctx.security
        .auth
        .check(ctx.consensus.view.tokens(), cred, Role::Read)?;
    let shared = w.find(&id).ok_or_else(|| {
        not_found(format!(
            "no watch '{}' on node {}",
            crate::limits::excerpt(&id),
            ctx.cluster.me
        ))
    })?;
    shared.cancelled.store(true, Relaxed);
    shared.stop.cancel();
    Ok(br#"{"ok":true}"#.to_vec())
}
