//! Membership changes through `concord cluster add|remove`: growing 3 → 5 and shrinking back
//! under the fault suite's workload (checked for linearizability and lost writes), learners
//! that receive data but do not vote, and the refusals that keep a change safe.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{Cluster, ClusterOptions};
use concord_check::linearizable::{self, Limits, Verdict};
use concord_check::retry::RetryPolicy;
use concord_check::workload::{self, Recorder, Workload, WorkloadConfig};
use serde_json::{json, Value};

const JOIN: [(&str, &str); 1] = [("CONCORD_CLUSTER__JOIN", "true")];

/// Fast elections so that removing the leader costs about a second.
fn options() -> ClusterOptions {
    concord_check::run::node_timings(concord_check::run::Timings::Suite)
        .into_iter()
        .fold(ClusterOptions::default(), |o, (k, v)| o.env(k, v))
}

async fn voters(cluster: &Cluster, id: u64) -> Result<Vec<u64>> {
    let s = cluster.status(id).await?;
    Ok(s["members"]["voters"]
        .as_array()
        .context("voters")?
        .iter()
        .filter_map(Value::as_u64)
        .collect())
}

/// Every remaining node applied the same entries and holds the same data.
async fn wait_identical(cluster: &Cluster, ids: &[u64]) -> Result<()> {
    cluster
        .wait_until(
            Duration::from_secs(30),
            "the nodes to hold identical data",
            || async {
                let mut seen = Vec::new();
                for &id in ids {
                    let s = cluster
                        .node_request(id, "admin.status", json!({"digest": true}))
                        .await?;
                    seen.push((s["last_applied"].clone(), s["digest"].clone()));
                }
                Ok(seen.windows(2).all(|w| w[0] == w[1]) && !seen[0].1.is_null())
            },
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grow_to_five_and_shrink_to_three_under_load() -> Result<()> {
    let cluster = Cluster::start_with(3, options()).await?;
    cluster.wait_stable(Duration::from_secs(30)).await?;

    let wl = WorkloadConfig {
        workload: Workload::Register,
        urls: vec![cluster.nats_url().to_string()],
        prefix: cluster.prefix().to_string(),
        clients: 4,
        keys: 6,
        // Writes carry request ids and are retried through the membership changes: the
        // server applies each once.
        policy: RetryPolicy::retrying(Duration::from_millis(1000), Duration::from_secs(10)),
    };
    let recorder = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(workload::run(wl.clone(), recorder.clone(), stop.clone()));

    for id in [4, 5] {
        cluster.add_node(id, &JOIN).await?;
        let run = cluster
            .run_cli(&["--json", "cluster", "add", &id.to_string(), "--wait", "60s"])
            .await?;
        ensure!(run.code == Some(0), "cluster add {id}: {run:?}");
        ensure!(run.json()?["role"] == "voter", "cluster add {id}: {run:?}");
        ensure!(
            run.stderr.contains("added as a learner") && run.stderr.contains("replicated"),
            "cluster add {id} shows its progress: {run:?}"
        );
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    ensure!(voters(&cluster, leader).await? == vec![1, 2, 3, 4, 5]);

    // Remove the leader first, then one more of the first three.
    let run = cluster
        .run_cli(&["--json", "cluster", "remove", &leader.to_string()])
        .await?;
    ensure!(run.code == Some(0), "cluster remove {leader}: {run:?}");
    let exit = cluster.wait_exit(leader, Duration::from_secs(20)).await?;
    ensure!(exit.success(), "removed leader {leader} exited with {exit}");
    // The next change goes to the new leader: until the others elect one, a follower may
    // still forward to the node that left, and a membership change (no request id) is never
    // re-sent after "no responders" (it answers `timeout`, as an operator would then see).
    cluster
        .wait_until(Duration::from_secs(20), "a new leader", || async {
            Ok(cluster.wait_for_leader(Duration::from_secs(5)).await? != leader)
        })
        .await?;
    let second = [1, 2, 3].into_iter().find(|&i| i != leader).context("id")?;
    let run = cluster
        .run_cli(&["--json", "cluster", "remove", &second.to_string()])
        .await?;
    ensure!(run.code == Some(0), "cluster remove {second}: {run:?}");
    let exit = cluster.wait_exit(second, Duration::from_secs(20)).await?;
    ensure!(exit.success(), "removed node {second} exited with {exit}");

    let remaining: Vec<u64> = cluster.live_ids();
    ensure!(remaining.len() == 3, "remaining {remaining:?}");
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    ensure!(voters(&cluster, leader).await? == remaining);

    // Keep writing a little on the final membership, then check the history.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    load.await??;
    let finals = workload::final_reads(&wl, &recorder, 10_000_000, Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    let history = recorder.history();
    let counts = workload::count(&history);
    ensure!(counts.ok > 50, "too little load ran: {counts:?}");
    let lost = workload::lost_writes(&history, &finals);
    ensure!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let report = linearizable::check(&history, &Limits::default()).map_err(anyhow::Error::msg)?;
    ensure!(
        report.verdict == Verdict::Linearizable,
        "history not linearizable: {:?}",
        report
            .keys
            .iter()
            .filter_map(|k| k.explanation.clone())
            .collect::<Vec<_>>()
    );
    wait_identical(&cluster, &remaining).await?;

    // A removed node's data dir may not serve again.
    let exit = cluster
        .run_node_until_exit(second, Duration::from_secs(20))
        .await?;
    ensure!(!exit.success(), "a removed node started again");
    ensure!(cluster.log(second).contains("was removed from the cluster"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learner_receives_data_but_does_not_vote_and_unsafe_changes_are_refused() -> Result<()> {
    let cluster = Cluster::start_with(3, options()).await?;
    cluster.wait_stable(Duration::from_secs(30)).await?;

    // A node that does not answer cannot be added.
    let run = cluster.run_cli(&["--json", "cluster", "add", "9"]).await?;
    ensure!(run.code != Some(0), "adding a silent node: {run:?}");
    ensure!(run.stdout.contains("does not answer"), "{run:?}");

    cluster.add_node(4, &JOIN).await?;
    let run = cluster
        .run_cli(&["--json", "cluster", "add", "4", "--learner"])
        .await?;
    ensure!(run.code == Some(0), "{run:?}");
    ensure!(run.json()?["role"] == "learner", "{run:?}");
    for i in 0..20 {
        let r = cluster
            .request("kv.put", json!({"key": format!("k{i}"), "value": i}))
            .await?;
        ensure!(r["ok"] == true, "{r}");
    }
    let revision = cluster.status(1).await?["revision"]
        .as_u64()
        .context("rev")?;
    cluster
        .wait_until(
            Duration::from_secs(20),
            "the learner to apply every write",
            || async { Ok(cluster.status(4).await?["revision"].as_u64() >= Some(revision)) },
        )
        .await?;
    let learner = cluster.status(4).await?;
    ensure!(learner["role"] == "learner", "{learner}");
    let members = cluster.run_cli(&["--json", "cluster", "members"]).await?;
    let nodes = members.json()?["nodes"].clone();
    ensure!(
        nodes.as_array().is_some_and(|n| n
            .iter()
            .any(|n| n["id"] == 4 && n["role"] == "learner" && n["lag"].is_u64())),
        "members shows the learner and its lag: {nodes}"
    );

    // With one voter down, removing another would leave 1 answering voter of 2.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    cluster.kill(others[0]).await?;
    let run = cluster
        .run_cli(&["--json", "cluster", "remove", &others[1].to_string()])
        .await?;
    ensure!(run.code != Some(0), "unsafe removal was accepted: {run:?}");
    ensure!(run.stdout.contains("not a majority"), "{run:?}");
    ensure!(voters(&cluster, leader).await? == vec![1, 2, 3]);

    // With two of three voters down (the leader among them) the learner does not make a
    // majority: the last voter campaigns in vain, the learner does not campaign at all.
    cluster.kill(leader).await?;
    let term_before = cluster.status(4).await?["term"].as_u64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    for id in [others[1], 4] {
        let s = cluster.status(id).await?;
        ensure!(
            s["role"] != "leader",
            "node {id} leads without a majority: {s}"
        );
    }
    let r = cluster
        .request_timeout(
            "kv.put",
            json!({"key": "x", "value": 1, "timeout_ms": 1000}),
            Duration::from_secs(3),
        )
        .await?;
    ensure!(
        r["ok"] == false,
        "a write succeeded without a majority: {r}"
    );
    let learner = cluster.status(4).await?;
    ensure!(learner["role"] == "learner", "{learner}");
    ensure!(
        learner["term"].as_u64() == term_before,
        "the learner campaigned: {learner}"
    );

    // Back to three voters; then the learner is removed and stops.
    cluster.restart(others[0]).await?;
    cluster.restart(leader).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let run = cluster
        .run_cli(&["--json", "cluster", "remove", "4"])
        .await?;
    ensure!(run.code == Some(0), "{run:?}");
    let exit = cluster.wait_exit(4, Duration::from_secs(20)).await?;
    ensure!(exit.success(), "removed learner exited with {exit}");
    let r = cluster
        .request("kv.put", json!({"key": "after", "value": 1}))
        .await?;
    ensure!(r["ok"] == true, "{r}");
    let s = cluster.status(leader).await?;
    ensure!(
        s["members"]["learners"]
            .as_array()
            .is_some_and(|l| l.is_empty()),
        "{s}"
    );

    // A voter removed while it is down learns it at its next start and refuses to serve.
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    let gone = others[1];
    cluster.kill(gone).await?;
    let run = cluster
        .run_cli(&["--json", "cluster", "remove", &gone.to_string()])
        .await?;
    ensure!(run.code == Some(0), "{run:?}");
    let exit = cluster
        .run_node_until_exit(gone, Duration::from_secs(20))
        .await?;
    ensure!(!exit.success(), "a removed voter started serving again");
    ensure!(
        cluster.log(gone).contains("is not among them"),
        "{}",
        cluster.log(gone)
    );

    // A voter that misses the leader's removal notice (dropped here by a failpoint, as a
    // partition would) hears from no leader afterwards; it asks the cluster, finds itself
    // left out, and stops.
    cluster.set_node_env(others[0], "CONCORD_FAILPOINTS", "ignore-removal-notice")?;
    cluster.restart(others[0]).await?;
    cluster.wait_stable(Duration::from_secs(30)).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    ensure!(
        leader != others[0],
        "the node with the failpoint leads; it must be a follower"
    );
    let run = cluster
        .run_cli(&["--json", "cluster", "remove", &others[0].to_string()])
        .await?;
    ensure!(run.code == Some(0), "{run:?}");
    let exit = cluster
        .wait_exit(others[0], Duration::from_secs(30))
        .await?;
    ensure!(
        exit.success(),
        "the silently removed voter exited with {exit}"
    );
    ensure!(
        cluster.log(others[0]).contains("no longer lists this node"),
        "{}",
        cluster.log(others[0])
    );

    let r = cluster
        .request("kv.put", json!({"key": "alone", "value": 1}))
        .await?;
    ensure!(r["ok"] == true, "the last voter still serves: {r}");
    Ok(())
}
