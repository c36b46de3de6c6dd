//! The change log's retention: the leader proposes compaction past `history.retain_ms` of
//! cluster time and `history.max_bytes` (a log entry, so every node compacts at the same
//! revision), and every node removes what compaction left on its disk.

use std::sync::Arc;

use openraft::ServerState;

use super::Watches;
use crate::command::{Command, LogCommand, FORMAT_V2};
use crate::config::HistoryConfig;

pub async fn run(w: Arc<Watches>, history: HistoryConfig) {
    let every = std::time::Duration::from_millis(history.check_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = w.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let view = w.ctx.consensus.view.clone();
        if view.cluster_format() < FORMAT_V2 {
            continue;
        }
        let leading = w.ctx.consensus.raft.metrics().borrow().state == ServerState::Leader;
        if leading {
            propose(&w, &history).await;
        }
        let observer = &w.ctx.observer;
        let compact = view.compact_revision();
        let v = view.clone();
        match tokio::task::spawn_blocking(move || v.remove_compacted()).await {
            Ok(Ok(removed)) if removed.chunks > 0 => {
                tracing::debug!(compact, removed.bytes, "compacted change log removed");
                observer.history_compacted(compact, view.history_bytes(), removed.bytes);
            }
            Ok(Ok(_)) => observer.history_figures(compact, view.history_bytes()),
            Ok(Err(e)) => tracing::warn!("removing the compacted change log failed: {e}"),
            Err(e) => tracing::warn!("removing the compacted change log failed: {e}"),
        }
    }
}

/// Proposes compaction through the revision that retention gives up, if it moved.
async fn propose(w: &Watches, history: &HistoryConfig) {
    let view = w.ctx.consensus.view.clone();
    let now = view.clock().reading();
    let (retain, max) = (history.retain_ms, history.max_bytes);
    let target = tokio::task::spawn_blocking(move || view.retention_target(now, retain, max)).await;
    let revision = match target {
        Ok(Ok(Some(revision))) => revision,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return tracing::warn!("reading the change log's figures failed: {e}"),
        Err(e) => return tracing::warn!("reading the change log's figures failed: {e}"),
    };
    let compact = LogCommand::new(Command::Compact { revision });
    if let Err(e) = w.ctx.consensus.raft.client_write(compact).await {
        tracing::debug!(revision, "compaction not committed ({e}); trying again");
    }
}
