//! Settings every node must apply alike, replicated through the log: the idempotency table's
//! window and limit judge which request ids are still known, so two nodes with different
//! values would answer a retry differently. A leader whose configuration differs from what
//! the cluster applied proposes its own (`Command::IdempotencySettings`); until the first
//! such entry, every node uses the built-in defaults.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use crate::api::Ctx;
use crate::command::{Command, IdempotencySettings, FORMAT_V2};

/// How often a leader compares its configuration with the applied settings.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Runs on every node; proposes while this node leads a format-2 cluster whose applied
/// settings differ from `wanted`.
pub async fn run(ctx: Arc<Ctx>, wanted: IdempotencySettings, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let view = &ctx.consensus.view;
        let applied = view.idempotency();
        let same =
            applied.window_ms == wanted.window_ms && applied.max_entries == wanted.max_entries;
        let leads = ctx.consensus.raft.metrics().borrow().state == ServerState::Leader;
        if same || !leads || view.cluster_format() < FORMAT_V2 {
            continue;
        }
        match ctx
            .consensus
            .proposer
            .propose(Command::IdempotencySettings(wanted))
            .await
        {
            Ok(_) => tracing::info!(
                window_ms = wanted.window_ms,
                max_entries = wanted.max_entries,
                "the cluster applies this leader's idempotency settings"
            ),
            Err(e) => tracing::info!("idempotency settings not committed ({e:?}); trying again"),
        }
    }
}
