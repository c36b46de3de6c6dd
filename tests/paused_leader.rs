//! Issue #21, item 5: a hung leader stops swallowing requests. With the leader SIGSTOPped,
//! nats-server (running the ping settings every shipped config uses,
//! compose/nats/liveness.conf) must drop the paused node's connection, and with it the 64
//! `P.kv.*` queue subscriptions a leader holds, so that requests through the queue group are
//! answered by the survivors once they have a new leader. When the node wakes, it must
//! reconnect, resubscribe, and hold a follower's single queue subscription.
//!
//! With NATS's default ping settings (2 min, 2 pings) the paused node keeps its
//! subscriptions for minutes: the wait for its connection to go fails (and without that
//! wait, the run of gets through the queue group would: each has even odds of reaching it).

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::{to_bytes, wait_until, Cluster, ClusterOptions};
use serde_json::{json, Value};

const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Gets in a row through the queue group that must all be answered once the paused node is
/// gone: with its 64 subscriptions still there, each would have about even odds of reaching
/// it, so 40 in a row would pass by chance about once in 10^12.
const GETS_IN_A_ROW: usize = 40;
/// One get's deadline: the survivors answer in milliseconds.
const GET_TIMEOUT: Duration = Duration::from_secs(1);
/// From the SIGSTOP to nats-server closing the paused node's connections: the shipped
/// settings (250 ms, 2 pings) take 0.75-1 s; the rest is room for 2 loaded cores. NATS's defaults
/// (2 min, 2 pings) take 6-8 minutes.
const DROP_BOUND: Duration = Duration::from_secs(10);

/// The shipped ping settings, plus the monitor the test reads `/connz` from.
fn nats_config() -> Result<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/compose/nats/liveness.conf");
    let shipped = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    Ok(format!("{shipped}\nhttp_port: -1\n"))
}

/// A linearizable get of `key` through the queue group, answered `ok` (or `not_found`)
/// within [`GET_TIMEOUT`].
async fn queue_get(c: &Cluster, key: &str) -> Result<()> {
    let body = to_bytes(&json!({"key": key, "consistency": "linearizable"}));
    let reply: Value = c
        .request_raw(&c.subject("kv.get"), None, body, GET_TIMEOUT)
        .await
        .with_context(|| format!("get {key} through the queue group"))?;
    ensure!(
        reply["ok"] == json!(true) || reply["error"]["code"] == json!("not_found"),
        "get {key}: {reply}"
    );
    Ok(())
}

/// The paused leader's connection goes, its subscriptions with it, and the survivors answer
/// every request through the queue group; after SIGCONT it comes back as a follower with one
/// queue subscription, and answers through its own node subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_leaves_the_queue_group() -> Result<()> {
    let config = nats_config()?;
    let c = Cluster::start_with(3, ClusterOptions::default().nats_server_config(config)).await?;
    let r = async {
        let leader = c.wait_for_leader(LEADER_TIMEOUT).await?;
        let mine = format!("concord-{leader}");
        // The leader holds its extra subscriptions: what a pause would leave behind.
        wait_until(
            Duration::from_secs(10),
            "the leader's 64 queue subscriptions",
            || async { Ok(c.kv_queue_subscriptions().await?.get(&mine).copied() == Some(64)) },
        )
        .await?;
        queue_get(&c, "k").await?;

        let paused_at = Instant::now();
        c.pause(leader).await?;
        let new_leader = c.wait_for_leader(LEADER_TIMEOUT).await?;
        ensure!(
            new_leader != leader,
            "node {leader} still leads while paused"
        );
        let left = DROP_BOUND.saturating_sub(paused_at.elapsed());
        wait_until(
            left,
            "nats-server to drop the paused node's connections",
            || async { Ok(!c.node_connected(leader).await?) },
        )
        .await?;
        for i in 0..GETS_IN_A_ROW {
            queue_get(&c, &format!("k{i}"))
                .await
                .with_context(|| format!("get {i} of {GETS_IN_A_ROW} with node {leader} paused"))?;
        }

        c.resume(leader).await?;
        // Reconnected, resubscribed, and back to a follower's single queue subscription.
        wait_until(
            Duration::from_secs(15),
            "the woken node's one queue subscription",
            || async { Ok(c.kv_queue_subscriptions().await?.get(&mine).copied() == Some(1)) },
        )
        .await?;
        let status = c.status(leader).await?;
        ensure!(status["role"] == json!("follower"), "woken node: {status}");
        let via_own = to_bytes(&json!({"key": "k", "consistency": "linearizable"}));
        let reply: Value = c
            .request_raw(
                &c.subject(&format!("node.{leader}.kv.get")),
                None,
                via_own,
                GET_TIMEOUT * 5,
            )
            .await?;
        ensure!(
            reply["ok"] == json!(true) || reply["error"]["code"] == json!("not_found"),
            "get through the woken node: {reply}"
        );
        let closed = c.closed_connections().await?;
        ensure!(
            closed
                .iter()
                .any(|c| c.name == mine && c.reason == "Stale Connection"),
            "nats-server closed no connection of node {leader} as stale: {closed:?}"
        );
        Ok(())
    }
    .await;
    c.fail_on_err(r)
}
