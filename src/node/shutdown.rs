//! The last stage of a node's life, in this order: stop client intake and answer what is in
//! flight, hand leadership off, `raft.shutdown()`, stop every background task, persist fjall
//! (`SyncAll`), then drain both NATS connections (client, then Raft). A node the cluster
//! removed first marks its data dir so it never serves again.

use std::time::Duration;

use super::wiring::Running;
use crate::config::Config;
use crate::raft::handoff::{self, HandOff};

/// Shutdown bounds: requests in flight, the leadership hand-off (an election timeout at
/// most: past that the followers elect a leader by themselves), and background tasks and
/// the NATS drain.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(5);
const HANDOFF_WAIT_MAX: Duration = Duration::from_secs(5);
const TASKS_WAIT: Duration = Duration::from_secs(2);

pub(super) async fn stop(config: &Config, node: Running, was_removed: bool) {
    let Running {
        raft,
        network,
        service,
        server,
        intake,
        intake_tracker,
        removed: _,
        cancel,
        tracker,
        store,
        view,
        client,
        bulk_client,
    } = node;
    if was_removed {
        // The request that removed this node is still in flight: the intake waits for it.
        let note = format!(
            "removed at {} while term {} was current",
            crate::auth::tokens::rfc3339(crate::auth::tokens::now_ms()),
            raft.metrics().borrow().current_term
        );
        if let Err(e) = store.mark_removed(&note) {
            tracing::error!(error = %e, "could not mark the data dir as removed");
        }
    }
    let stopping = std::time::Instant::now();
    tracing::info!("shutting down: taking no new requests, answering those in flight");
    // 1. Intake: the subscriptions drain, so NATS routes new requests to the other nodes.
    intake.cancel();
    intake_tracker.close();
    if tokio::time::timeout(IN_FLIGHT_WAIT, intake_tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after {} s; stopping anyway",
            IN_FLIGHT_WAIT.as_secs()
        );
    }
    // 2. A leader hands off to a caught-up follower, so the cluster does not wait out an
    //    election timeout.
    let handoff_wait = config.raft.election_timeout_max().min(HANDOFF_WAIT_MAX);
    match handoff::hand_off(&raft, &network, handoff_wait).await {
        HandOff::NotLeader | HandOff::SoleVoter => {}
        HandOff::HandedTo { node, after } => {
            tracing::info!(
                to = node,
                ms = after.as_millis() as u64,
                "leadership handed off"
            )
        }
        other => tracing::warn!(
            outcome = ?other,
            "leadership not handed off; the cluster elects a leader after an election timeout"
        ),
    }
    // 3. Raft, then everything else, then the store and NATS.
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(TASKS_WAIT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks still running; stopping anyway");
    }
    drop(server);
    drop(service);
    // Flushed so that a restart has nothing to re-apply from the log.
    let persist = tokio::task::spawn_blocking(move || {
        if let Err(e) = view.flush() {
            tracing::warn!(error = %e, "state-machine flush");
        }
        store.db.persist(fjall::PersistMode::SyncAll)
    })
    .await;
    if let Ok(Err(e)) = persist {
        tracing::error!(error = %e, "final fsync failed");
    }
    let _ = tokio::time::timeout(TASKS_WAIT, client.drain()).await;
    let _ = tokio::time::timeout(TASKS_WAIT, bulk_client.drain()).await;
    tracing::info!(ms = stopping.elapsed().as_millis() as u64, "stopped");
}
