//! Consensus: openraft wired to NATS ([`network`] out, [`service`] in) and to the fjall
//! store. [`start`] builds the Raft instance with explicit timings.
//!
//! Outbound, openraft calls [`network`]: votes and snapshot chunks go straight to [`rpc`];
//! appends go through [`replication`], which the log store also tells what it saved (its
//! `AppendObserver`), so a leader's entries go to followers while its own fsync runs.
//! [`rpc`] wraps each message in the [`wire`] envelope and sends it through the node's
//! [`inbox`], where its reply arrives. [`handoff`] passes leadership on at shutdown;
//! [`watchdog`] campaigns when openraft's own election timer runs late.

pub mod handoff;
pub mod inbox;
pub mod network;
pub mod replication;
pub mod rpc;
pub mod service;
pub mod types;
pub mod watchdog;
pub mod wire;

use std::sync::Arc;

use openraft::SnapshotPolicy;

use crate::config::Config;
use crate::store::{LogStore, StateMachine};
use types::Raft;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("raft configuration: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("raft: {0}")]
    Fatal(#[from] openraft::error::Fatal<u64>),
}

/// The openraft configuration for a node, sized to the NATS server's max payload.
pub fn raft_config(config: &Config, max_payload: usize) -> Result<openraft::Config, Error> {
    let r = &config.raft;
    let chunk = max_payload
        .saturating_sub(rpc::PAYLOAD_HEADROOM)
        .clamp(16 * 1024, 4 * 1024 * 1024);
    let c = openraft::Config {
        cluster_name: config.cluster.name.clone(),
        heartbeat_interval: r.heartbeat_interval_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        install_snapshot_timeout: r.install_snapshot_timeout_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_every),
        max_in_snapshot_log_to_keep: r.max_in_snapshot_log_to_keep,
        snapshot_max_chunk_size: chunk as u64,
        // Upper bound; an append over the payload limit is split on PayloadTooLarge.
        max_payload_entries: 512,
        replication_lag_threshold: 1000,
        purge_batch_size: 256,
        ..Default::default()
    };
    Ok(c.validate()?)
}

pub async fn start(
    config: &Config,
    max_payload: usize,
    network: network::Network,
    log: LogStore,
    sm: StateMachine,
) -> Result<Raft, Error> {
    let rc = Arc::new(raft_config(config, max_payload)?);
    Ok(Raft::new(config.node.id, rc, network, log, sm).await?)
}
