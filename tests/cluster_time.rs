//! Cluster time on a real 3-node cluster (real `nats-server`, real `concord serve` processes,
//! temp data dirs): the leader is killed with SIGKILL again and again under writes, a node is
//! left behind until only a snapshot install brings it back, and every node's reading
//! (`admin.status` `cluster_time_ms`) is compared with the test's own monotonic clock.
//!
//! What must hold (DESIGN.md "Foundations", `src/store/clock.rs`):
//! - a node's reading never runs backwards while it runs, and its applied cluster time
//!   never runs backwards at all, across restarts and snapshot installs;
//! - after a restart a node resumes at least at its newest applied stamp, and at most one
//!   floor-save interval (500 ms) behind the reading it had when it was killed;
//! - no reading ever runs ahead of real time: a reading is at most any earlier leader's
//!   reading plus the real time between them (a leader's reading is the newest there is);
//! - cluster time keeps running: over the test it advances by most of the real time.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::{Cluster, ClusterOptions};
use serde_json::{json, Value};

const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const KILLS: usize = 4;
/// How far a restart may resume behind the reading the node had (its floor is saved every
/// 500 ms), with room for the save itself on a loaded machine.
const RESTART_SLACK_MS: u64 = 1_000;
/// Readings are whole milliseconds, truncated; a newly elected leader's reading lags the
/// old one's by the time its newest stamp took to reach it.
const SLACK_MS: u64 = 25;

/// One reading of one node: its cluster time and applied cluster time, and the test's clock
/// just before the request went out and just after its reply came.
#[derive(Debug, Clone, Copy)]
struct Reading {
    sent: Instant,
    received: Instant,
    clock: u64,
    applied: u64,
    /// Whether the node said it leads: a leader's reading is the newest cluster time there
    /// is (every stamp is some leader's reading), up to the few ms a new one lags.
    leader: bool,
}

#[derive(Default)]
struct Readings {
    /// Per node: its readings since its last (re)start, and everything before.
    current: BTreeMap<u64, Vec<Reading>>,
    all: Vec<(u64, Reading)>,
    /// Per node: its last reading before each kill, to compare with the first after.
    before_kill: BTreeMap<u64, Reading>,
}

impl Readings {
    fn record(&mut self, id: u64, r: Reading) -> Result<()> {
        let mine = self.current.entry(id).or_default();
        if let Some(prev) = mine.last() {
            ensure!(
                r.clock >= prev.clock,
                "node {id}'s cluster time ran backwards while it ran: {} then {}",
                prev.clock,
                r.clock
            );
        }
        if let Some(before) = self.before_kill.get(&id) {
            if mine.is_empty() {
                ensure!(
                    r.clock >= before.applied,
                    "node {id} restarted at {} below the stamp it had applied ({})",
                    r.clock,
                    before.applied
                );
                ensure!(
                    r.clock + RESTART_SLACK_MS >= before.clock,
                    "node {id} restarted at {}, more than {RESTART_SLACK_MS} ms behind its reading before the kill ({})",
                    r.clock,
                    before.clock
                );
            }
        }
        let last_applied = self
            .all
            .iter()
            .rev()
            .find(|(n, _)| *n == id)
            .map(|(_, p)| p.applied);
        if let Some(prev) = last_applied {
            ensure!(
                r.applied >= prev,
                "node {id}'s applied cluster time ran backwards: {prev} then {}",
                r.applied
            );
        }
        // No faster than real time: against every earlier leader's reading.
        for (other, earlier) in self.all.iter().filter(|(_, e)| e.leader) {
            let real = r
                .received
                .saturating_duration_since(earlier.sent)
                .as_millis() as u64;
            ensure!(
                r.clock <= earlier.clock + real + SLACK_MS,
                "node {id} read {} only {real} ms after node {other} read {}: faster than real time",
                r.clock,
                earlier.clock
            );
        }
        mine.push(r);
        self.all.push((id, r));
        Ok(())
    }

    fn killed(&mut self, id: u64) {
        if let Some(last) = self.current.remove(&id).and_then(|v| v.last().copied()) {
            self.before_kill.insert(id, last);
        }
    }
}

async fn read(cluster: &Cluster, id: u64) -> Result<Reading> {
    let sent = Instant::now();
    let s = cluster.status(id).await?;
    let received = Instant::now();
    let field = |name: &str| {
        s[name]
            .as_u64()
            .with_context(|| format!("status of node {id} lacks {name}: {s}"))
    };
    Ok(Reading {
        sent,
        received,
        clock: field("cluster_time_ms")?,
        applied: field("applied_cluster_time_ms")?,
        leader: s["role"] == json!("leader"),
    })
}

/// Reads every live node `rounds` times, with a put through the cluster between rounds.
async fn sample(cluster: &Cluster, readings: &mut Readings, rounds: usize) -> Result<()> {
    for i in 0..rounds {
        for id in cluster.live_ids() {
            let r = read(cluster, id).await?;
            readings.record(id, r)?;
        }
        // Writes move the stamps; a failure during an election is fine here.
        let _ = cluster
            .request("kv.put", json!({"key": format!("t{}", i % 5), "value": i}))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn wait_switched(cluster: &Cluster) -> Result<()> {
    cluster
        .wait_until(
            LEADER_TIMEOUT,
            "every node to apply the log format switch",
            || async {
                for id in cluster.live_ids() {
                    let s: Value = cluster.status(id).await?;
                    if s["log_format"]["cluster"] != json!(2) {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_time_survives_leader_kills_restarts_and_snapshot_installs() -> Result<()> {
    let opts = ClusterOptions::default()
        .env("CONCORD_RAFT__SNAPSHOT_EVERY", 200)
        .env("CONCORD_RAFT__MAX_IN_SNAPSHOT_LOG_TO_KEEP", 0);
    let cluster = Cluster::start_with(3, opts).await?;
    let r = body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn body(cluster: &Cluster) -> Result<()> {
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    wait_switched(cluster).await?;
    let started = Instant::now();
    let mut readings = Readings::default();
    sample(cluster, &mut readings, 10).await?;
    let first = readings.all.iter().map(|(_, r)| r.clock).max().unwrap_or(0);

    for k in 0..KILLS {
        let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
        readings.killed(leader);
        cluster.kill(leader).await?;
        eprintln!("kill {}: node {leader}", k + 1);
        cluster.wait_for_leader(LEADER_TIMEOUT).await?;
        sample(cluster, &mut readings, 10).await?;
        cluster.restart(leader).await?;
        sample(cluster, &mut readings, 10).await?;
    }

    // A follower left behind catches up by a snapshot install: its applied time jumps to
    // the snapshot's and never back.
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let behind = cluster.a_follower(leader)?;
    readings.killed(behind);
    cluster.restart_behind_snapshot(behind).await?;
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    sample(cluster, &mut readings, 10).await?;
    let installed = cluster.log(behind);
    ensure!(
        installed.contains("snapshot installed"),
        "node {behind} did not catch up by a snapshot install"
    );

    let last = readings.all.iter().map(|(_, r)| r.clock).max().unwrap_or(0);
    let real = started.elapsed().as_millis() as u64;
    eprintln!(
        "{} readings; cluster time advanced {} ms in {real} ms of real time",
        readings.all.len(),
        last - first
    );
    // The time a leader is down counts too (the survivors' readings run on); only what a
    // restart skips is lost, so most of the real time must show.
    ensure!(
        (last - first) * 2 >= real,
        "cluster time advanced only {} ms in {real} ms",
        last - first
    );
    Ok(())
}
