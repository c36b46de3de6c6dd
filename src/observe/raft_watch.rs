//! Follows openraft's metrics channel: keeps the Raft gauges current, counts leader changes,
//! emits `state.change` on every change of role, term or known leader, and logs it.
//!
//! Each wakeup copies a few scalars out of the borrowed metrics; the borrow is never held
//! across an `.await`.

use std::sync::Arc;

use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use super::metrics::RAFT_STATES;
use super::Observer;
use crate::types::role_name;
use crate::types::{Raft, RaftMetrics};

/// What the last wakeup saw.
#[derive(Default)]
struct Seen {
    role: Option<(ServerState, u64, Option<u64>)>,
    /// The last leader known (never reset to `None`): a change counts only to a new one.
    leader: Option<u64>,
}

pub async fn watch(raft: Raft, observer: Arc<Observer>, cancel: CancellationToken) {
    let mut rx = raft.metrics();
    let mut seen = Seen::default();
    loop {
        {
            let m = rx.borrow_and_update();
            update(&observer, &m, &mut seen);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

fn update(observer: &Observer, m: &RaftMetrics, seen: &mut Seen) {
    let g = &observer.metrics;
    g.raft_term.set(m.current_term as f64);
    let role = role_name(m.state);
    for (gauge, name) in g.raft_state.iter().zip(RAFT_STATES) {
        gauge.set(if name == role { 1.0 } else { 0.0 });
    }
    g.raft_leader_id.set(m.current_leader.unwrap_or(0) as f64);
    g.raft_applied_index
        .set(m.last_applied.map_or(0, |l| l.index) as f64);
    let last_log = m.last_log_index.unwrap_or(0);
    g.raft_last_log_index.set(last_log as f64);
    let membership = m.membership_config.membership();
    g.raft_voters.set(membership.voter_ids().count() as f64);
    g.raft_learners.set(membership.learner_ids().count() as f64);
    for id in membership.nodes().map(|(id, _)| *id) {
        if id != observer.node {
            // Registers a peer's series the first time it shows up.
            let _ = g.peer(id);
        }
    }
    for (peer, pm) in g.peers() {
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&peer))
            .map(|l| l.as_ref().map_or(0, |l| l.index));
        let lag = match matched {
            Some(matched) => last_log.saturating_sub(matched),
            None => 0,
        };
        pm.lag.set(lag as f64);
    }
    if let Some(l) = m.current_leader {
        if seen.leader != Some(l) {
            g.raft_leader_changes.increment(1);
            seen.leader = Some(l);
        }
    }
    let now = (m.state, m.current_term, m.current_leader);
    if seen.role != Some(now) {
        tracing::info!(role, leader = ?m.current_leader, term = m.current_term, "raft role");
        observer.state_changed(role, m.current_term, m.current_leader);
        seen.role = Some(now);
    }
}
