//! A node's health, read from Raft and the store on demand rather than on every change: the
//! commit index (a call into the Raft core), storage size, and readiness. Used by `/metrics`
//! before each render and by `/readyz` (through [`Health`]), and by the periodic
//! `cluster.status` event.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use futures::future::BoxFuture;

use crate::api::contact::{ContactWindow, NoContact};
use crate::observe::http::Health;
use crate::observe::{Event, Observer};
use crate::raft::types::Raft;
use crate::store::StateView;

/// How far the applied index may trail the commit index on a ready node.
pub const READY_MAX_APPLY_LAG: u64 = 1000;

pub struct Probe {
    pub me: u64,
    pub raft: Raft,
    pub view: Arc<StateView>,
    /// A leader without a quorum acknowledgment, or a member without leader contact, for
    /// longer than its window is not ready (`raft.election_timeout_min_ms`).
    pub contact: ContactWindow,
    pub observer: Arc<Observer>,
}

impl Probe {
    pub async fn commit_index(&self) -> Option<u64> {
        self.raft
            .with_raft_state(|s| s.committed.map(|l| l.index))
            .await
            .ok()
            .flatten()
    }

    /// Brings the on-demand gauges up to date; returns the `cluster.status` event.
    pub async fn refresh(&self) -> Event {
        let commit_index = self.commit_index().await;
        let storage_keys = self.view.key_count();
        let storage_bytes = self.view.store().disk_bytes();
        let g = &self.observer.metrics;
        g.raft_commit_index.set(commit_index.unwrap_or(0) as f64);
        g.storage_keys.set(storage_keys as f64);
        g.storage_bytes.set(storage_bytes as f64);
        g.storage_data_bytes.set(self.view.data_bytes() as f64);
        g.revision.set(self.view.revision() as f64);
        g.cluster_time
            .set(self.view.clock().reading() as f64 / 1000.0);
        g.log_format.set(f64::from(self.view.cluster_format()));
        let idem = self.view.idempotency();
        g.idempotency_entries.set(idem.entries as f64);
        g.idempotency_window.set(idem.window_ms as f64 / 1000.0);
        let left = idem
            .oldest_expiry
            .saturating_sub(self.view.applied_cluster_time());
        g.idempotency_oldest_left.set(left as f64 / 1000.0);
        g.idempotency_replays.absolute(idem.replays);
        g.idempotency_conflicts.absolute(idem.conflicts);
        let (leader, term, applied_index) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (
                m.current_leader,
                m.current_term,
                m.last_applied.map(|l| l.index),
            )
        };
        Event::ClusterStatus {
            storage_keys,
            storage_bytes,
            leader,
            term,
            commit_index,
            applied_index,
        }
    }

    /// `Ok` when the node is ready to serve: a member (voter or learner) of a cluster whose
    /// id it knows, with a known leader it is in contact with (a leader: acknowledged by a
    /// quorum; others: heard from the leader) within its window, and applied within
    /// [`READY_MAX_APPLY_LAG`] entries of the commit index. Else the reason, in one line.
    pub async fn readiness(&self) -> Result<(), String> {
        if self.view.cluster_id().is_none() {
            return Err("no cluster id yet: waiting to bootstrap or to be added".into());
        }
        let (applied, state) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            let member = membership.voter_ids().any(|id| id == self.me)
                || membership.learner_ids().any(|id| id == self.me);
            if !member {
                return Err(format!("node {} is not a member of the cluster", self.me));
            }
            let Some(leader) = m.current_leader else {
                return Err("no known leader".into());
            };
            match self.contact.check(&m) {
                Ok(()) => {}
                Err(NoContact::LeaderAcknowledgedAgo(ms)) => {
                    return Err(format!(
                        "leader without a quorum acknowledgment for {ms} ms"
                    ))
                }
                Err(NoContact::LeaderNeverAcknowledged) => {
                    return Err("leader not yet acknowledged by a quorum".into())
                }
                Err(NoContact::HeardAgo(d)) => {
                    return Err(format!(
                        "no contact with the leader (node {leader}) for {} ms",
                        d.as_millis()
                    ))
                }
                Err(NoContact::NeverHeard) => {
                    return Err(format!("no contact yet with the leader (node {leader})"))
                }
            }
            (m.last_applied.map_or(0, |l| l.index), m.state)
        };
        let commit = self.commit_index().await.unwrap_or(0);
        let behind = commit.saturating_sub(applied);
        if behind > READY_MAX_APPLY_LAG {
            return Err(format!(
                "{} applied {applied} of {commit} committed entries ({behind} behind)",
                crate::api::admin::role_name(state)
            ));
        }
        Ok(())
    }
}

impl Health for Probe {
    fn refresh(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            Probe::refresh(self).await;
        })
    }

    fn readiness(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(Probe::readiness(self))
    }
}

/// Refreshes the on-demand gauges and, with telemetry on, publishes `cluster.status`,
/// every `interval`.
pub async fn status_loop(probe: Arc<Probe>, interval: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let event = probe.refresh().await;
        probe.observer.cluster_status(event);
    }
}
