//! A rolling upgrade with two real builds: a 3-node cluster of the previous build (the commit
//! before log format 2; `scripts/build-previous.sh` builds it, `CONCORD_TEST_PREVIOUS_BIN`
//! names it) is upgraded one node at a time to this build, under write load, on the same
//! data dirs. Proves:
//! - the mixed cluster keeps working: the new nodes write format 1 while an old node is a
//!   member (the old nodes apply what a new leader proposes, or they would stop);
//! - no acknowledged write is lost, and every node ends with the same key space;
//! - once the last node runs the new build, the leader commits the format switch by itself
//!   and every node reports `log_format.cluster` 2;
//! - a downgrade after the switch is refused: the previous build exits, naming the data
//!   directory's newer format.
//!
//! Without `CONCORD_TEST_PREVIOUS_BIN` the test says so and passes, unless
//! `CONCORD_TEST_REQUIRE_PREVIOUS=1` (set by `scripts/test.sh` when it built the binary, and
//! so in CI), which makes a missing binary a failure.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::writes::{assert_digests_equal, check_write_log, wait_converged, WriteLog};
use common::{Cluster, ClusterOptions};
use concord::client::Client;
use serde_json::{json, Value};

const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const SWITCH_TIMEOUT: Duration = Duration::from_secs(30);

fn previous_build() -> Result<Option<PathBuf>> {
    match std::env::var_os("CONCORD_TEST_PREVIOUS_BIN") {
        Some(p) => {
            let p = PathBuf::from(p);
            ensure!(p.is_file(), "CONCORD_TEST_PREVIOUS_BIN={} is not a file", p.display());
            Ok(Some(p))
        }
        None if std::env::var_os("CONCORD_TEST_REQUIRE_PREVIOUS").is_some() => bail!(
            "CONCORD_TEST_REQUIRE_PREVIOUS is set but CONCORD_TEST_PREVIOUS_BIN is not: build it with scripts/build-previous.sh"
        ),
        None => {
            eprintln!(
                "SKIPPED: the rolling-upgrade test needs the previous build; run it through scripts/test.sh, or set CONCORD_TEST_PREVIOUS_BIN=$(scripts/build-previous.sh)"
            );
            Ok(None)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_under_writes_then_switch_then_downgrade_refused() -> Result<()> {
    let Some(previous) = previous_build()? else {
        return Ok(());
    };
    let cluster = Cluster::start_with(3, ClusterOptions::default().start_nodes(false)).await?;
    let r = body(&cluster, previous).await;
    cluster.fail_on_err(r)
}

async fn body(cluster: &Cluster, previous: PathBuf) -> Result<()> {
    for id in cluster.ids() {
        cluster.set_node_bin(id, Some(previous.clone()))?;
    }
    for id in cluster.ids() {
        cluster.start_node(id).await?;
    }
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    let old = cluster.status(1).await?;
    ensure!(
        old.get("log_format").is_none(),
        "the previous build already reports a log format: is CONCORD_TEST_PREVIOUS_BIN the build before format 2? {old}"
    );

    // Writes run through the whole upgrade, on every key a few times.
    let client = Client::from_nats(cluster.client(), cluster.prefix(), Duration::from_secs(5));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_load(client.clone(), stop.clone()));

    // One node at a time, followers first, the leader last; each waits for the cluster to
    // be whole again before the next.
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let mut order: Vec<u64> = cluster.ids().into_iter().filter(|&i| i != leader).collect();
    order.push(leader);
    for (n, &id) in order.iter().enumerate() {
        cluster.stop(id).await?;
        cluster.set_node_bin(id, None)?;
        cluster.start_node(id).await?;
        cluster.wait_stable(LEADER_TIMEOUT).await?;
        let s = cluster.status(id).await?;
        ensure!(
            s["log_format"]["reads"] == json!(2),
            "node {id} runs the new build: {s}"
        );
        if n + 1 < order.len() {
            // An old node is still a member: the switch must wait, and every node must keep
            // applying what the leader writes.
            ensure!(
                s["log_format"]["cluster"] == json!(1),
                "the cluster switched while a node of the previous build was a member: {s}"
            );
        }
        eprintln!("node {id} upgraded ({} of {})", n + 1, order.len());
        // Some writes in each mixed configuration.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if n + 1 < order.len() {
            let leader_is_new = order[..=n].contains(&cluster.wait_stable(LEADER_TIMEOUT).await?);
            coordination_refused(cluster, leader_is_new).await?;
        }
    }

    cluster
        .wait_until(
            SWITCH_TIMEOUT,
            "every node to apply the format switch",
            || async {
                for id in cluster.ids() {
                    if cluster.status(id).await?["log_format"]["cluster"] != json!(2) {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let log = writer.await.context("write load task")??;
    ensure!(
        log.acked.len() > 50,
        "too few writes acknowledged: {}",
        log.acked.len()
    );
    check_write_log(cluster, &client, &log).await?;
    wait_converged(cluster, &cluster.ids(), Duration::from_secs(60)).await?;
    assert_digests_equal(cluster, &cluster.ids()).await?;
    eprintln!(
        "{} writes acknowledged through the upgrade",
        log.acked.len()
    );

    // A downgrade of one node after the switch is refused by the previous build itself.
    let victim = cluster.a_follower(cluster.wait_stable(LEADER_TIMEOUT).await?)?;
    cluster.stop(victim).await?;
    cluster.set_node_bin(victim, Some(previous))?;
    let exit = cluster
        .run_node_until_exit(victim, Duration::from_secs(60))
        .await?;
    ensure!(
        !exit.success(),
        "the previous build served a switched data dir"
    );
    let said = cluster.log(victim);
    ensure!(
        said.contains("newer Concord") && said.contains("format version 4"),
        "the previous build's refusal does not name the newer format:\n{said}"
    );
    Ok(())
}

/// While a node of the previous build is a member, counters, deletes by prefix, txns and
/// watches are refused, never applied: by a new leader with `cluster_not_ready` (they travel only in
/// log format 2), by an old one as requests it does not know.
async fn coordination_refused(cluster: &Cluster, leader_is_new: bool) -> Result<()> {
    let calls = [
        ("kv.incr", json!({"key": "upgrade:n"})),
        ("kv.delete", json!({"prefix": "up"})),
        (
            "kv.txn",
            json!({"success": [{"put": {"key": "upgrade:t", "value": 1}}]}),
        ),
    ];
    for (subject, body) in calls {
        let r = cluster.request(subject, body).await?;
        let code = r["error"]["code"].as_str().unwrap_or_default();
        ensure!(
            r["ok"] == false
                && (code == "cluster_not_ready" || (!leader_is_new && code == "bad_request")),
            "{subject} in a mixed cluster (leader of the {} build): {r}",
            if leader_is_new { "new" } else { "previous" }
        );
    }
    // Watches: a node of this build keeps no change log before the switch; one of the
    // previous build does not serve the subject at all (no responders).
    let deliver = json!({"prefix": "", "deliver": "upgrade.watch"});
    if let Ok(r) = cluster.request("watch.create", deliver).await {
        ensure!(
            r["error"]["code"] == "cluster_not_ready",
            "watch in a mixed cluster: {r}"
        );
    }
    Ok(())
}

/// Puts of unique keys until `stop`, each recorded with its outcome.
async fn write_load(client: Client, stop: Arc<AtomicBool>) -> Result<WriteLog> {
    let mut log = WriteLog::default();
    for i in 0..100_000u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("up/{i}");
        let value: Value = json!({"i": i});
        let res = client.put(&key, &value).await;
        log.record(key, value, res);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(log)
}
