//! Leadership hand-off when a leader shuts down gracefully.
//!
//! openraft 0.9 has no leadership-transfer call, and a follower only campaigns once its
//! leader lease (`election_timeout_max` since the leader's last heartbeat) plus an election
//! timeout have passed: 3–4 s with the default timings. So a departing leader, once it has
//! stopped taking requests and its in-flight ones are answered, picks a voter whose log has
//! every entry of its own and sends it `P.raft.<cluster>.<id>.elect` (signed like every Raft
//! RPC). That follower calls `raft.trigger().elect()`: it campaigns in the next term at once.
//!
//! Who grants the vote: the other followers refuse it (their lease from our heartbeats has
//! not expired), but the departing leader grants it. A leader's own lease is the time it was
//! elected, which no heartbeat refreshes, so once it has led for `election_timeout_max` it
//! votes for a candidate of a higher term whose log is at least as long as its own. The
//! candidate's own vote and the leader's make a majority of three. With five voters it still
//! needs a vote that a lease refuses, and simply wins later.
//!
//! Safety is openraft's: a vote is granted only to a candidate whose log is at least as up
//! to date, and the leader has stopped appending before it asks. If the attempt fails (the
//! leader was elected less than a lease ago, the follower is gone), the cluster elects a new
//! leader by timeout as it would without the hand-off.

use std::time::Duration;

use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::network::Network;
use super::types::{NodeId, Raft, RaftMetrics};
use super::wire::{self, RpcReply};

/// Body of `P.raft.<cluster>.<id>.elect`: the sender's leadership, so that the follower acts
/// only for its current leader in the current term (a stale or replayed request does
/// nothing).
#[derive(Debug, Serialize, Deserialize)]
pub struct ElectRequest {
    pub leader: NodeId,
    pub term: u64,
}

/// What a hand-off attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum HandOff {
    /// This node is not the leader: nothing to hand off.
    NotLeader,
    /// There is no other voter.
    SoleVoter,
    /// No other voter has every entry (within the time given), or there is none.
    NoCandidate,
    /// `node` is the leader now.
    HandedTo { node: NodeId, after: Duration },
    /// Asked `node`, but no other leader was seen within the time given.
    NotTaken { node: NodeId, reason: String },
}

/// On the leader, after it stopped taking requests: hands leadership to a caught-up voter,
/// waiting at most `wait` in all.
pub async fn hand_off(raft: &Raft, net: &Network, wait: Duration) -> HandOff {
    let started = Instant::now();
    let deadline = started + wait;
    let net = net.transport();
    let me = net.me;
    let mut rx = raft.metrics();
    {
        let m = rx.borrow();
        if m.state != ServerState::Leader {
            return HandOff::NotLeader;
        }
        if !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id != me)
        {
            return HandOff::SoleVoter;
        }
        // No follower has answered for a while (the others are down): nobody to wait for.
        let wait_ms = wait.as_millis() as u64;
        if m.millis_since_quorum_ack.is_none_or(|ms| ms > wait_ms) {
            return HandOff::NoCandidate;
        }
    }
    let (term, target) = {
        let found = tokio::time::timeout_at(
            deadline,
            rx.wait_for(|m| m.state != ServerState::Leader || caught_up_voter(m, me).is_some()),
        )
        .await;
        let m = match found {
            Ok(Ok(m)) => m,
            Ok(Err(_)) => return HandOff::NotLeader,
            Err(_) => return HandOff::NoCandidate,
        };
        if m.state != ServerState::Leader {
            return HandOff::NotLeader;
        }
        match caught_up_voter(&m, me) {
            Some(t) => (m.current_term, t),
            None => return HandOff::NoCandidate,
        }
    };
    let not_taken = |reason: String| HandOff::NotTaken {
        node: target,
        reason,
    };
    let envelope = net.envelope(target, ElectRequest { leader: me, term });
    let bytes = match wire::encode(&envelope) {
        Ok(b) => b,
        Err(e) => return not_taken(format!("cannot encode the request: {e}")),
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    let reply = net
        .inbox
        .request(net.subjects.raft_elect(target), bytes.into(), remaining)
        .await;
    match reply.map(|m| wire::decode::<RpcReply<bool, String>>(&m.payload)) {
        Ok(Ok(RpcReply::Ok(true))) => {}
        Ok(Ok(RpcReply::Ok(false))) => {
            return not_taken("it no longer follows this node in this term".into())
        }
        Ok(Ok(RpcReply::Err(e) | RpcReply::Refused(e))) => return not_taken(e),
        Ok(Err(e)) => return not_taken(format!("undecodable reply: {e}")),
        Err(e) => return not_taken(e.to_string()),
    }
    let taken = tokio::time::timeout_at(
        deadline,
        rx.wait_for(|m| m.current_leader.is_some_and(|l| l != me)),
    )
    .await;
    match taken {
        Ok(Ok(m)) => HandOff::HandedTo {
            node: m.current_leader.unwrap_or(target),
            after: started.elapsed(),
        },
        Ok(Err(_)) => not_taken("raft stopped".into()),
        Err(_) => not_taken(format!("no new leader within {wait:?}")),
    }
}

/// The lowest voter other than `me` whose replicated log reaches the leader's last entry.
fn caught_up_voter(m: &RaftMetrics, me: NodeId) -> Option<NodeId> {
    if m.state != ServerState::Leader {
        return None;
    }
    let last = m.last_log_index?;
    let replication = m.replication.as_ref()?;
    m.membership_config
        .membership()
        .voter_ids()
        .filter(|&id| id != me)
        .find(|id| {
            replication
                .get(id)
                .and_then(|l| l.as_ref())
                .is_some_and(|l| l.index >= last)
        })
}

/// On the follower: campaign now if the request comes from this node's leader of the
/// current term. Returns whether it did.
pub async fn campaign(raft: &Raft, req: &ElectRequest) -> Result<bool, String> {
    let (leader, term, state) = {
        let m = raft.metrics();
        let m = m.borrow();
        (m.current_leader, m.current_term, m.state)
    };
    if leader != Some(req.leader) || term != req.term || state != ServerState::Follower {
        tracing::info!(
            from = req.leader,
            term = req.term,
            "ignoring a hand-off request: not from this node's leader of the current term"
        );
        return Ok(false);
    }
    tracing::info!(
        from = req.leader,
        term = req.term,
        "leader {} hands off: campaigning now",
        req.leader
    );
    raft.trigger().elect().await.map_err(|e| e.to_string())?;
    Ok(true)
}
