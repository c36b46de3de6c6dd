//! The leader's side of lease expiry (DESIGN.md "Leases and TTL"). Every `lease.check_ms`
//! the leader reads its cluster time and proposes the end of each lease whose last renewal
//! stamp + ttl it has passed, naming that renewal. It only proposes: the expire entry's apply
//! decides, on every node alike, and does nothing if a later renewal applied first. A leader
//! that lost its leadership proposes nothing that commits; a new leader reads the same
//! applied table and its own clock, which starts from the newest stamp it appended, so no
//! leader change restarts a countdown.
//!
//! Every node also publishes the lease figures of its applied table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::command::{Applied, Command, FORMAT_V2};

/// Leases proposed per tick, at most: a burst of expiries is spread over the next ticks.
const PER_TICK: usize = 512;
/// A proposal not yet applied is made again after this long (it may have been lost with a
/// leader).
const REPROPOSE_AFTER: Duration = Duration::from_secs(1);

pub async fn run(ctx: Arc<Ctx>, check: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Lease id → (renewal proposed, when): not proposed again while in flight.
    let mut proposed: HashMap<u64, (u64, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let view = &ctx.consensus.view;
        let (leases, keys) = view.with_leases(|t| (t.len(), t.key_count()));
        ctx.observer.lease_figures(leases, keys);
        let leading = ctx.consensus.raft.metrics().borrow().state == ServerState::Leader;
        if !leading || view.cluster_format() < FORMAT_V2 || leases == 0 {
            proposed.clear();
            continue;
        }
        let now = view.clock().reading();
        let due = view.with_leases(|t| t.due(now, PER_TICK));
        let fresh: Vec<(u64, u64)> = due
            .into_iter()
            .filter(|(id, renewal)| {
                proposed
                    .get(id)
                    .is_none_or(|(r, at)| r != renewal || at.elapsed() >= REPROPOSE_AFTER)
            })
            .collect();
        proposed.retain(|_, (_, at)| at.elapsed() < REPROPOSE_AFTER * 4);
        for (id, renewal) in &fresh {
            proposed.insert(*id, (*renewal, Instant::now()));
        }
        // Proposed together: the proposer batches them into shared entries.
        let ends = fresh.into_iter().map(|(id, renewal)| {
            let ctx = &ctx;
            async move {
                let cmd = Command::LeaseExpire { id, renewal };
                (id, ctx.consensus.proposer.propose(cmd).await)
            }
        });
        for (id, outcome) in futures::future::join_all(ends).await {
            match outcome {
                Ok(Applied::LeaseEnded { revision, count }) => {
                    tracing::debug!(id, revision, count, "lease expired");
                    ctx.observer.lease_expired(id, count, revision);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(id, "lease expiry not committed ({e:?}); trying again"),
            }
        }
    }
}
