//! `P.node.<id>.admin.snapshot`, the admin command "take a snapshot now": this node builds a
//! Raft snapshot now (admin credential when auth is on) and answers once it is built, with
//! its index. The wire op keeps its name `snapshot`.
//!
//! Waits for a build that started after the request and covers what was applied when the
//! request arrived; a policy build already running is waited out and the trigger repeated.

use std::time::Duration;

use async_nats::Message;
use serde::Serialize;
use tokio::time::Instant;

use crate::api::{codec, route, Ctx};
use crate::auth::{Credential, Role};
use crate::error::{internal, timeout, WireError};

/// How long Raft gets to record a finished build before the trigger is repeated.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize)]
struct SnapshotTaken {
    ok: bool,
    node: u64,
    /// Last log index the snapshot covers.
    snapshot_index: Option<u64>,
}

pub async fn handle_take_snapshot(ctx: &Ctx, msg: &Message) -> Vec<u8> {
    match take_snapshot(ctx, msg).await {
        Ok(b) => b,
        Err(e) => codec::encode_error(&e),
    }
}

async fn take_snapshot(ctx: &Ctx, msg: &Message) -> Result<Vec<u8>, WireError> {
    let arrival = Instant::now();
    let body: codec::AdminBody = super::decode(&msg.payload)?;
    let cred = Credential::of(body.token.as_deref(), msg.headers.as_ref());
    ctx.security
        .auth
        .check(ctx.consensus.view.tokens(), cred, Role::Admin)?;
    let timeout_len =
        route::timeout_len(msg, body.timeout_ms.map(Duration::from_millis), &ctx.limits);
    let deadline = route::deadline_for(arrival, timeout_len);
    // One heavy job at a time (issue #20, item 7): the build itself runs where Raft runs
    // it, but requests for one wait for the heavy pool's permit, `busy` past the deadline.
    let _heavy = ctx
        .workers
        .heavy
        .permit(deadline, "building a snapshot")
        .await?;
    let mut metrics = ctx.consensus.raft.metrics();
    let target = metrics.borrow().last_applied.map(|l| l.index);
    let mut built = ctx.observer.watch_snapshots_built();
    let stopped = |e: &dyn std::fmt::Display| internal(format!("raft stopped: {e}"));
    let late = || {
        timeout(format!(
            "no snapshot built within {} ms; it may still finish",
            timeout_len.as_millis()
        ))
    };
    loop {
        let before = *built.borrow_and_update();
        ctx.consensus
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| stopped(&e))?;
        match tokio::time::timeout_at(deadline, built.wait_for(|n| *n > before)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(stopped(&e)),
            Err(_) => return Err(late()),
        }
        // Raft records the snapshot just after the build returns.
        let settle = deadline.min(Instant::now() + SETTLE);
        let covers = |m: &crate::raft::types::RaftMetrics| m.snapshot.map(|l| l.index) >= target;
        if let Ok(Ok(m)) = tokio::time::timeout_at(settle, metrics.wait_for(covers)).await {
            return Ok(codec::encode_ok(&SnapshotTaken {
                ok: true,
                node: ctx.cluster.me,
                snapshot_index: m.snapshot.map(|l| l.index),
            }));
        }
        if Instant::now() >= deadline {
            return Err(late());
        }
    }
}
