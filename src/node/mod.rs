//! One Concord node: wires NATS, the fjall store, Raft and the request servers, and owns
//! the shutdown order (stop intake and answer what is in flight, hand leadership off,
//! `raft.shutdown()`, persist fjall, drain NATS).
//!
//! [`run`] reads as the node's life, one stage per module: [`start`] opens what the node
//! stands on (signing secret, metrics listener, NATS, the store), [`bootstrap`] checks who
//! else serves the subject prefix and forms or joins the cluster, [`wiring`] builds Raft, its
//! RPC service and the request servers, [`health`] answers `/readyz` and refreshes the
//! on-demand gauges, and [`shutdown`] takes it all down in order.

mod bootstrap;
pub mod health;
mod shutdown;
mod start;
mod wiring;

use crate::config::Config;
use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Nats(#[from] crate::nats::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Raft(#[from] crate::raft::Error),
    #[error("NATS subscription failed: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("{0}")]
    OtherCluster(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Runs one node until `shutdown` resolves or the cluster removes it, then stops it in order.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let me = config.node.id;
    tracing::info!(node = me, config = %config.redacted(), "starting");
    let opened = start::open(&config).await?;
    let live_cluster = bootstrap::check_prefix(&config, &opened).await?;
    let (pristine, prefix) = (opened.pristine, opened.subjects.prefix().to_string());
    let running = wiring::wire(&config, opened, live_cluster).await?;
    bootstrap::form_cluster(&config, &running.raft, pristine, live_cluster, &prefix).await?;
    tracing::info!(node = me, prefix, "node ready");

    let was_removed = tokio::select! {
        _ = shutdown => false,
        _ = running.removed.cancelled() => true,
    };
    shutdown::stop(&config, running, was_removed).await;
    Ok(())
}

/// Runs a task and logs its failure: for the long-lived tasks whose error has nowhere else
/// to go.
async fn log_failure<E: std::fmt::Display>(
    what: &'static str,
    fut: impl std::future::Future<Output = Result<(), E>>,
) {
    if let Err(e) = fut.await {
        tracing::error!(error = %e, "{what} failed");
    }
}
