//! The election watchdog: a follower that has heard nothing from its leader for longer than
//! openraft's own election timer allows (leader lease + `election_timeout_max`, plus half a
//! heartbeat) campaigns itself.
//!
//! Why it is needed: openraft 0.9 adds `2 × election_timeout_max` to a node's election timer
//! once one of its vote requests was refused for a shorter log, and clears that only when the
//! node next campaigns on its own timer, which a follower of a healthy leader never does. So
//! a node that lost one election because its log was behind waits 1.5–1.6 s, not 0.7–0.8 s,
//! at the next failover, and when both survivors carry that flag the cluster has no leader
//! for 1.6 s. Campaigning here is always safe (an election only changes who leads), and a
//! candidate whose log is behind cannot win: the node it asks campaigns at once
//! (`service::RaftService::campaign_if_ahead`).

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use super::service::LeaderContact;
use super::types::{NodeId, Raft};

/// How often the watchdog looks.
const TICK: Duration = Duration::from_millis(25);

/// Watches until `cancel`: campaigns when this voter, a follower that believes in a leader,
/// has not heard from it for `after`; at most once per term.
pub async fn run(
    raft: Raft,
    me: NodeId,
    contact: Arc<LeaderContact>,
    after: Duration,
    cancel: CancellationToken,
) {
    let mut campaigned_in = None;
    // Silence counts from when this node began to follow its current leader at the
    // earliest: a node that led, or voted, heard from no leader meanwhile.
    let mut following = (0, None);
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        let (term, leader, due) = {
            let m = raft.metrics();
            let m = m.borrow();
            let voter = m.membership_config.voter_ids().any(|id| id == me);
            let follows =
                m.state == ServerState::Follower && m.current_leader.is_some_and(|l| l != me);
            (m.current_term, m.current_leader, voter && follows)
        };
        if following != (term, leader) {
            following = (term, leader);
            since = tokio::time::Instant::now();
        }
        let Some(heard) = contact.since() else {
            continue;
        };
        let silent = heard.min(since.elapsed());
        if silent <= after || !due || campaigned_in == Some(term) {
            continue;
        }
        campaigned_in = Some(term);
        tracing::info!(
            silent_ms = silent.as_millis() as u64,
            term,
            "the leader has been silent past the election timer; campaigning"
        );
        if let Err(e) = raft.trigger().elect().await {
            tracing::debug!(error = %e, "campaign not started");
        }
    }
}
