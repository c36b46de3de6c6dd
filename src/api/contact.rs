//! "In contact with a leader", decided in one place for the stale-read check
//! ([`handler`](super::handler)) and for readiness (`node::health`): a leader counts while a
//! quorum acknowledged it within the window, anyone else while it accepted entries from the
//! leader within the window (`raft.election_timeout_min_ms`).
//!
//! "Within" is inclusive (`<=`), as the README words both: an acknowledgment exactly one
//! window old still counts.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;

use crate::raft::service::LeaderContact;
use crate::raft::types::RaftMetrics;

/// Why a node is not in contact with a leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoContact {
    /// A leader no quorum has acknowledged yet.
    LeaderNeverAcknowledged,
    /// A leader whose last quorum acknowledgment is this many milliseconds old.
    LeaderAcknowledgedAgo(u64),
    /// Not a leader, and never heard from one.
    NeverHeard,
    /// Not a leader, and last heard from the leader this long ago.
    HeardAgo(Duration),
}

/// When this node last heard from a leader, and how recent that must be.
pub struct ContactWindow {
    contact: Arc<LeaderContact>,
    window: Duration,
    /// A follower that heard from its leader within this (a few heartbeats) may believe it
    /// is alive: see [`ContactWindow::heard_lately`].
    lately: Duration,
    /// A leader no quorum acknowledged for longer than this has most likely been replaced
    /// (see [`ContactWindow::cut_off_leader`]).
    deposed_after: Duration,
}

impl ContactWindow {
    /// `heartbeat` is `raft.heartbeat_interval_ms`: the leader's appends come at least that often.
    pub fn new(
        contact: Arc<LeaderContact>,
        window: Duration,
        heartbeat: Duration,
    ) -> ContactWindow {
        ContactWindow {
            contact,
            window,
            lately: (heartbeat * 2).max(Duration::from_millis(100)),
            deposed_after: Duration::MAX,
        }
    }

    /// Sets how long a leader may go without a quorum's acknowledgment before it stops
    /// taking requests: twice `raft.election_timeout_max_ms` in the node.
    pub fn deposed_after(mut self, after: Duration) -> ContactWindow {
        self.deposed_after = after;
        self
    }

    /// How long ago a quorum last acknowledged this node, when it is the leader and that is
    /// longer than `deposed_after`: by then the others have campaigned and most likely
    /// elected another (openraft 0.9 keeps the old leader leading until it hears of the new
    /// term), so it refuses what it has not taken yet, and a client tries another node at
    /// once instead of waiting out its deadline at a leader cut off from the rest
    /// (etcd's CheckQuorum makes such a leader step down for the same reason).
    pub fn cut_off_leader(&self, m: &RaftMetrics) -> Option<u64> {
        if m.state != ServerState::Leader {
            return None;
        }
        let ms = m.millis_since_quorum_ack?;
        (u128::from(ms) > self.deposed_after.as_millis()).then_some(ms)
    }

    /// Whether this follower heard from its leader within two heartbeats. A write is
    /// forwarded only then: once published it is never re-sent (an unsigned "no responders"
    /// cannot prove it was not delivered), so a leader that stopped or died must be noticed
    /// before the write leaves, not after.
    pub fn heard_lately(&self) -> bool {
        self.contact.since().is_some_and(|d| d <= self.lately)
    }

    /// When this node last accepted entries from a leader.
    pub fn last_heard(&self) -> &LeaderContact {
        &self.contact
    }

    /// `Ok` while in contact with a leader: as the leader, acknowledged by a quorum within
    /// the window; otherwise, heard from the leader within the window.
    pub fn check(&self, m: &RaftMetrics) -> Result<(), NoContact> {
        let window_ms = self.window.as_millis();
        if m.state == ServerState::Leader {
            match m.millis_since_quorum_ack {
                Some(ms) if u128::from(ms) <= window_ms => Ok(()),
                Some(ms) => Err(NoContact::LeaderAcknowledgedAgo(ms)),
                None => Err(NoContact::LeaderNeverAcknowledged),
            }
        } else {
            match self.contact.since() {
                Some(d) if d.as_millis() <= window_ms => Ok(()),
                Some(d) => Err(NoContact::HeardAgo(d)),
                None => Err(NoContact::NeverHeard),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader_acked(ms: Option<u64>) -> RaftMetrics {
        let mut m = RaftMetrics::new_initial(1);
        m.state = ServerState::Leader;
        m.millis_since_quorum_ack = ms;
        m
    }

    /// The boundary is inclusive: an acknowledgment exactly one window old still counts.
    #[test]
    fn leader_in_contact_up_to_and_including_the_window() {
        let w = ContactWindow::new(
            Arc::default(),
            Duration::from_millis(1000),
            Duration::from_millis(150),
        );
        assert_eq!(w.check(&leader_acked(Some(999))), Ok(()));
        assert_eq!(w.check(&leader_acked(Some(1000))), Ok(()));
        assert_eq!(
            w.check(&leader_acked(Some(1001))),
            Err(NoContact::LeaderAcknowledgedAgo(1001))
        );
        assert_eq!(
            w.check(&leader_acked(None)),
            Err(NoContact::LeaderNeverAcknowledged)
        );
    }

    /// A leader counts as cut off only past `deposed_after`, and only with an acknowledgment
    /// to measure from (a new leader has none yet).
    #[test]
    fn a_leader_is_cut_off_past_deposed_after() {
        let w = ContactWindow::new(
            Arc::default(),
            Duration::from_millis(300),
            Duration::from_millis(100),
        )
        .deposed_after(Duration::from_millis(800));
        assert_eq!(w.cut_off_leader(&leader_acked(Some(800))), None);
        assert_eq!(w.cut_off_leader(&leader_acked(Some(801))), Some(801));
        assert_eq!(w.cut_off_leader(&leader_acked(None)), None);
        let mut follower = leader_acked(Some(5_000));
        follower.state = ServerState::Follower;
        assert_eq!(w.cut_off_leader(&follower), None);
    }

    /// A follower that never heard from a leader is not in contact.
    #[test]
    fn follower_never_heard_is_out_of_contact() {
        let w = ContactWindow::new(
            Arc::default(),
            Duration::from_millis(1000),
            Duration::from_millis(150),
        );
        let m = RaftMetrics::new_initial(1);
        assert_eq!(w.check(&m), Err(NoContact::NeverHeard));
    }
}
