//! Fault tolerance of a real 3-node cluster: real `nats-server`, real `concord serve`
//! processes, temp data dirs, no mocks. Nodes are killed with SIGKILL, frozen with SIGSTOP,
//! the NATS server is killed and restarted, a node is left behind until only a snapshot can
//! bring it back.
//!
//! Error semantics (DESIGN.md): an ok reply means acknowledged and must survive every fault;
//! `cluster_not_ready` / `busy` (and "no responders") mean not applied; `timeout`,
//! `internal` and transport errors mean unknown, so such a write may appear or not.
//!
//! Liveness deadlines are generous (2 loaded cores); safety assertions are strict. Every wait
//! polls a condition against a deadline, and every load loop is bounded in count and time.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use common::writes::{assert_digests_equal, check_write_log, read_back, wait_converged, WriteLog};
use common::{error_code, to_bytes, Cluster, ClusterOptions};
use concord::client::{Client, ClientError};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

/// Deadline for the first election of a fresh cluster, and for re-stabilizing.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for a restarted or lagging node to catch up with the leader.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(100);

// ----- the tests -------------------------------------------------------------------------

/// Proves that a SIGKILL of the leader under concurrent write load loses no acknowledged
/// write: a new leader (another node) is elected within 15 s, every acked key reads back
/// (linearizable) with its acked value and revision, writes refused with
/// `cluster_not_ready`/`busy` were not applied, writes of unknown outcome hold either
/// nothing or the value written, acked revisions are all distinct, and the killed node, once
/// restarted, catches up to the leader's commit index and revision with an identical
/// keyspace digest on all three nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_leader_kill() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let r = leader_kill_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn leader_kill_body(cluster: &Cluster) -> Result<()> {
    const TASKS: usize = 8;
    const OPS_PER_TASK: usize = 400;
    const LOAD_FOR: Duration = Duration::from_secs(15);
    /// At most one write per task per PACE, so that the load spans the kill and the
    /// election (400 ops take at least 10 s) even on a fast machine.
    const PACE: Duration = Duration::from_millis(25);

    let old_leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    eprintln!("leader before the kill: node {old_leader}");
    let client = kv_client(cluster, Duration::from_secs(5));

    let progress = Arc::new(AtomicUsize::new(0));
    let load_start = Instant::now();
    let mut writers = Vec::new();
    for task in 0..TASKS {
        let client = client.clone();
        let progress = progress.clone();
        writers.push(tokio::spawn(async move {
            let mut log = WriteLog::default();
            let mut pace = tokio::time::interval(PACE);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0..OPS_PER_TASK {
                pace.tick().await;
                if load_start.elapsed() >= LOAD_FOR {
                    break;
                }
                let key = format!("w{task}-{n}");
                let value = json!(format!("value-of-{key}"));
                let res = client.put(&key, &value).await;
                log.record(key, value, res);
                progress.fetch_add(1, Ordering::Relaxed);
            }
            log
        }));
    }

    // Let the load run for ~2 s (and at least some writes complete) before the fault.
    wait_for(Duration::from_secs(30), "2 s of write load", || {
        let done = progress.load(Ordering::Relaxed);
        async move { Ok(load_start.elapsed() >= Duration::from_secs(2) && done >= 8) }
    })
    .await?;
    let killed_at = Instant::now();
    cluster.kill(old_leader).await?;
    let done_at_kill = progress.load(Ordering::Relaxed);
    eprintln!(
        "killed leader {old_leader} after {:?} of load ({done_at_kill} writes done)",
        load_start.elapsed(),
    );
    ensure!(
        done_at_kill < TASKS * OPS_PER_TASK,
        "the write load was over before the kill: this run proves nothing"
    );

    // A new leader, another node, agreed by a majority, within 15 s of the kill.
    let election_deadline = killed_at + Duration::from_secs(15);
    let new_leader = loop {
        if let Ok(Some(l)) = cluster.agreed_leader().await {
            if l != old_leader {
                break l;
            }
        }
        ensure!(
            Instant::now() < election_deadline,
            "no new leader (other than killed node {old_leader}) within 15 s of the kill"
        );
        tokio::time::sleep(POLL).await;
    };
    eprintln!(
        "new leader: node {new_leader}, {:?} after the kill",
        killed_at.elapsed()
    );

    let mut log = WriteLog::default();
    for w in writers {
        log.merge(w.await.context("writer task panicked")?);
    }
    eprintln!(
        "writes: {} acked, {} refused, {} unknown, in {:?}",
        log.acked.len(),
        log.refused.len(),
        log.unknown.len(),
        load_start.elapsed()
    );
    ensure!(!log.acked.is_empty(), "no write was acknowledged at all");
    ensure!(
        log.acked.len() + log.refused.len() + log.unknown.len() > done_at_kill,
        "no write was attempted after the kill"
    );

    // The cluster keeps accepting writes after the failover.
    let rev = client
        .put("after-failover", &json!("ok"))
        .await
        .map_err(|e| anyhow!("a put after the failover failed: {e}"))?;
    ensure!(
        rev > log.max_acked_revision(),
        "revision {rev} of a later put is not above the acked ones"
    );

    check_write_log(cluster, &client, &log).await?;

    // The killed node comes back and converges.
    cluster.restart(old_leader).await?;
    let (leader, revision) = wait_converged(cluster, &[1, 2, 3], CATCH_UP_TIMEOUT).await?;
    eprintln!("node {old_leader} caught up: leader {leader}, revision {revision}");
    assert_digests_equal(cluster, &[1, 2, 3]).await?;
    Ok(())
}

/// Proves that acknowledged writes are durable across a crash of the whole cluster: 300
/// acked keys, SIGKILL of all three nodes, restart of all three; a leader is elected and
/// every key reads back (linearizable) with its acked value and revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_kill_and_restart_keeps_acknowledged_data() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let r = whole_cluster_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn whole_cluster_body(cluster: &Cluster) -> Result<()> {
    const N: usize = 300;
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    let client = kv_client(cluster, Duration::from_secs(10));

    let results: Vec<(String, Value, Result<u64, ClientError>)> = stream::iter(0..N)
        .map(|i| {
            let client = client.clone();
            async move {
                let key = format!("durable-{i:04}");
                let value = json!({"i": i, "text": format!("value {i}")});
                let res = client.put(&key, &value).await;
                (key, value, res)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut acked = BTreeMap::new();
    for (key, value, res) in results {
        let rev = res.map_err(|e| anyhow!("put of {key} on a healthy cluster failed: {e}"))?;
        acked.insert(key, (value, rev));
    }
    let max_rev = acked.values().map(|(_, r)| *r).max().unwrap_or(0);
    eprintln!("{N} keys acked, highest revision {max_rev}");

    for id in cluster.ids() {
        cluster.kill(id).await?;
    }
    eprintln!("killed all three nodes");
    for id in cluster.ids() {
        cluster.start_node(id).await?;
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    eprintln!("leader after the restart: node {leader}");
    let status = cluster.status(leader).await?;
    let revision = status["revision"].as_u64().unwrap_or(0);
    ensure!(
        revision >= max_rev,
        "after the restart the leader's revision is {revision}, below the highest acked revision {max_rev}: {status}"
    );

    let failures = read_back(&client, &acked).await;
    ensure!(
        failures.is_empty(),
        "{} of {N} acked keys did not read back after the whole-cluster restart:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// Proves that concurrent writers racing on the same 20 keys leave all three nodes with the
/// same keyspace: once every node has the leader's revision their digests are equal, a
/// linearizable read of each key equals a stale read (with `min_revision`) through every
/// node's own subject, the revision counter gave every acked put (and every delete that
/// removed a key) its own number, and each key's final state is consistent with the acked
/// operations on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_overlapping_keys_converge() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let r = overlapping_writers_body(&cluster).await;
    cluster.fail_on_err(r)
}

/// One acked operation of the overlapping-writers test.
#[derive(Debug)]
enum Acked {
    Put {
        key: String,
        value: Value,
        revision: u64,
    },
    Delete {
        key: String,
        deleted: bool,
        revision: u64,
    },
}

async fn overlapping_writers_body(cluster: &Cluster) -> Result<()> {
    const TASKS: u64 = 16;
    const OPS: u64 = 150;
    const KEYS: u64 = 20;
    const LOAD_FOR: Duration = Duration::from_secs(120);

    cluster.wait_stable(LEADER_TIMEOUT).await?;
    let client = kv_client(cluster, Duration::from_secs(10));
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    eprintln!("random seed {seed}");

    let load_start = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed ^ (task + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut acked = Vec::new();
            let mut errors = Vec::new();
            for i in 0..OPS {
                if load_start.elapsed() >= LOAD_FOR {
                    break;
                }
                let key = format!("k{:02}", rng.below(KEYS));
                if rng.below(10) < 7 {
                    let value = json!({"task": task, "op": i});
                    match client.put(&key, &value).await {
                        Ok(revision) => acked.push(Acked::Put {
                            key,
                            value,
                            revision,
                        }),
                        Err(e) => errors.push(format!("put {key}: {e}")),
                    }
                } else {
                    match client.delete(&key).await {
                        Ok((deleted, revision)) => acked.push(Acked::Delete {
                            key,
                            deleted,
                            revision,
                        }),
                        Err(e) => errors.push(format!("delete {key}: {e}")),
                    }
                }
            }
            (acked, errors)
        }));
    }
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        let (a, e) = t.await.context("writer task panicked")?;
        acked.extend(a);
        errors.extend(e);
    }
    eprintln!(
        "{} ops acked, {} errors, in {:?}",
        acked.len(),
        errors.len(),
        load_start.elapsed()
    );
    if !errors.is_empty() {
        eprintln!(
            "errors (allowed, outcome per code): {:?}",
            &errors[..errors.len().min(10)]
        );
    }
    ensure!(!acked.is_empty(), "no operation was acknowledged");

    // One revision per keyspace-changing write.
    let mut seen: BTreeMap<u64, String> = BTreeMap::new();
    for op in &acked {
        let (revision, what) = match op {
            Acked::Put { key, revision, .. } => (*revision, format!("put {key}")),
            Acked::Delete {
                key,
                deleted: true,
                revision,
            } => (*revision, format!("delete {key}")),
            Acked::Delete { .. } => continue,
        };
        if let Some(prev) = seen.insert(revision, what.clone()) {
            bail!("revision {revision} was returned twice: to {prev} and to {what}");
        }
    }

    let ids = cluster.ids();
    let (leader, revision) = wait_converged(cluster, &ids, CATCH_UP_TIMEOUT).await?;
    eprintln!("converged: leader {leader}, revision {revision}");
    let max_acked = seen.keys().next_back().copied().unwrap_or(0);
    ensure!(
        revision >= max_acked,
        "leader revision {revision} is below the highest acked revision {max_acked}"
    );
    assert_digests_equal(cluster, &ids).await?;

    let mut failures = Vec::new();
    for k in 0..KEYS {
        let key = format!("k{k:02}");
        let linear = match client.get(&key).await {
            Ok(v) => v.map(|v| (v.value, v.revision)),
            Err(e) => {
                failures.push(format!("linearizable get {key}: {e}"));
                continue;
            }
        };
        for &id in &ids {
            match stale_get_on_node(cluster, id, &key, revision).await {
                Ok(stale) if stale == linear => {}
                Ok(stale) => failures.push(format!(
                    "{key}: linearizable read {linear:?} but node {id} stale read {stale:?}"
                )),
                Err(e) => failures.push(format!("{key}: stale read on node {id}: {e:#}")),
            }
        }
        // The final state must agree with the acked operations on this key.
        let ops = acked.iter().filter(|op| match op {
            Acked::Put { key: k, .. } | Acked::Delete { key: k, .. } => *k == key,
        });
        for op in ops {
            match (op, &linear) {
                (
                    Acked::Put {
                        value, revision: r, ..
                    },
                    Some((v, rev)),
                ) => {
                    if rev < r {
                        failures.push(format!(
                            "{key}: final revision {rev} is below acked put revision {r}"
                        ));
                    } else if rev == r && v != value {
                        failures.push(format!(
                            "{key}: holds {v} at revision {rev}, but the put acked with that revision wrote {value}"
                        ));
                    }
                }
                (
                    Acked::Delete {
                        deleted: true,
                        revision: r,
                        ..
                    },
                    Some((_, rev)),
                ) if rev <= r => failures.push(format!(
                    "{key}: present at revision {rev}, not above the acked delete at revision {r}"
                )),
                _ => {}
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// Proves that a follower that missed more than the leader keeps in its log catches up by
/// snapshot installation, and that this works when the snapshot (600 values of 8 KiB, over
/// 4 MiB) is larger than the NATS max payload (1 MiB): once the leader has purged the log
/// the stopped follower would need, the restarted follower reaches the leader's revision
/// and digest, reports a `snapshot_index`, logs "snapshot installed", and holds the values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_by_snapshot_larger_than_max_payload() -> Result<()> {
    let opts = ClusterOptions::default()
        .env("CONCORD_RAFT__SNAPSHOT_EVERY", 200)
        .env("CONCORD_RAFT__MAX_IN_SNAPSHOT_LOG_TO_KEEP", 10);
    let cluster = Cluster::start_with(3, opts).await?;
    let r = snapshot_catch_up_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn snapshot_catch_up_body(cluster: &Cluster) -> Result<()> {
    const N: usize = 600;
    const VALUE_BYTES: usize = 8 * 1024;

    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let lagging = if leader == 3 { 2 } else { 3 };
    let had = cluster.status(lagging).await?["last_applied"]
        .as_u64()
        .unwrap_or(0);
    eprintln!("leader {leader}; stopping follower {lagging} at last_applied {had}");
    cluster.kill(lagging).await?;

    let client = kv_client(cluster, Duration::from_secs(20));
    let filler = "abcdefgh".repeat(VALUE_BYTES / 8);
    let results: Vec<(String, Result<u64, ClientError>)> = stream::iter(0..N)
        .map(|i| {
            let client = client.clone();
            let key = format!("big-{i:04}");
            let value = json!(format!("{key}:{filler}"));
            async move {
                let res = client.put(&key, &value).await;
                (key, res)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for (key, res) in &results {
        if let Err(e) = res {
            bail!("put of {key} (two of three nodes up) failed: {e}");
        }
    }
    eprintln!(
        "{N} values of {VALUE_BYTES} bytes acked ({} MiB)",
        N * VALUE_BYTES / (1024 * 1024)
    );

    // The log node `lagging` would need must be gone, so that only a snapshot can bring it
    // back. openraft purges in batches behind the latest snapshot (the node sets
    // `purge_batch_size` 256), and several puts may share one entry, so the 600 puts may not
    // be enough for a purge yet: top up with small writes (bounded) until the leader has
    // purged beyond what `lagging` had.
    const FILL_MAX: usize = 6000;
    const FILL_BATCH: usize = 50;
    let fill_for = Duration::from_secs(120);
    let fill_start = Instant::now();
    let mut filled = 0;
    let (leader, ls) = loop {
        let last = match leader_status(cluster).await {
            Ok((leader, s)) if s["purged_index"].as_u64().is_some_and(|p| p > had + 10) => {
                break (leader, s);
            }
            Ok((leader, s)) => format!(
                "leader {leader}: last_log_index={} snapshot_index={} purged_index={}",
                s["last_log_index"], s["snapshot_index"], s["purged_index"]
            ),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            filled < FILL_MAX && fill_start.elapsed() < fill_for,
            "the leader did not purge its log beyond index {had} (what node {lagging} had) \
             after {filled} extra writes in {:?} (last: {last})",
            fill_start.elapsed()
        );
        let results: Vec<(String, Result<u64, ClientError>)> =
            stream::iter(filled..filled + FILL_BATCH)
                .map(|i| {
                    let client = client.clone();
                    async move {
                        let key = format!("fill-{i:05}");
                        let res = client.put(&key, &json!(i)).await;
                        (key, res)
                    }
                })
                .buffer_unordered(4)
                .collect()
                .await;
        for (key, res) in &results {
            if let Err(e) = res {
                bail!("put of {key} (two of three nodes up) failed: {e}");
            }
        }
        filled += FILL_BATCH;
    };
    eprintln!(
        "leader {leader} after {filled} extra writes: last_log_index={} snapshot_index={} \
         purged_index={} storage={}",
        ls["last_log_index"], ls["snapshot_index"], ls["purged_index"], ls["storage"]
    );

    cluster.restart(lagging).await?;
    let ids = cluster.ids();
    let (leader, revision) = wait_converged(cluster, &ids, Duration::from_secs(120)).await?;
    eprintln!("node {lagging} caught up: leader {leader}, revision {revision}");
    assert_digests_equal(cluster, &ids).await?;

    let s = cluster.status(lagging).await?;
    ensure!(
        s["snapshot_index"].as_u64().is_some(),
        "node {lagging} caught up but reports no snapshot_index: {s}"
    );
    let log = cluster.log(lagging);
    ensure!(
        log.contains("snapshot installed"),
        "node {lagging} caught up but its log has no \"snapshot installed\" line"
    );

    // Spot-check values on the lagging node itself.
    for i in [0, N / 2, N - 1] {
        let key = format!("big-{i:04}");
        let got = stale_get_on_node(cluster, lagging, &key, revision).await?;
        let want = json!(format!("{key}:{filler}"));
        ensure!(
            got.as_ref().map(|(v, _)| v) == Some(&want),
            "node {lagging} holds a wrong value for {key}: {:?}",
            got.map(|(v, r)| (v.to_string().len(), r))
        );
    }
    Ok(())
}

/// Proves that the cluster survives a restart of the NATS server (same port): after an
/// outage longer than an election timeout, within 20 s of NATS coming back the cluster has
/// a leader agreed by a majority, accepts a put, and every node answers its admin status;
/// data written before the outage is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_rejoins_after_nats_restart() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let r = nats_restart_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn nats_restart_body(cluster: &Cluster) -> Result<()> {
    /// How long NATS stays down: longer than the maximum election timeout (1.6 s).
    const OUTAGE: Duration = Duration::from_secs(3);
    const RECOVERY: Duration = Duration::from_secs(20);

    cluster.wait_stable(LEADER_TIMEOUT).await?;
    let client = kv_client(cluster, Duration::from_secs(10));
    let before = client
        .put("before-outage", &json!("kept"))
        .await
        .map_err(|e| anyhow!("put before the outage failed: {e}"))?;

    cluster.kill_nats().await?;
    let nats = cluster.client();
    wait_for(
        Duration::from_secs(10),
        "the test's NATS client to notice the outage",
        || {
            let state = nats.connection_state();
            async move { Ok(state != async_nats::connection::State::Connected) }
        },
    )
    .await?;
    // The fault itself: NATS stays down for OUTAGE.
    tokio::time::sleep(OUTAGE).await;
    cluster.start_nats().await?;
    let restarted = Instant::now();
    let deadline = restarted + RECOVERY;
    eprintln!("nats-server restarted on {}", cluster.nats_url());

    let leader = cluster
        .wait_for_leader(deadline.saturating_duration_since(Instant::now()))
        .await?;
    eprintln!(
        "leader after the NATS restart: node {leader} ({:?})",
        restarted.elapsed()
    );

    // A put is accepted (retried on any error until the deadline; same key and value, so a
    // retry of an unknown outcome is harmless).
    let mut last_err = String::new();
    let revision = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "no put accepted within {RECOVERY:?} of the NATS restart (last error: {last_err})"
        );
        let c = kv_client(cluster, left.min(Duration::from_secs(5)));
        match c.put("after-outage", &json!("accepted")).await {
            Ok(r) => break r,
            Err(e) => last_err = e.to_string(),
        }
        tokio::time::sleep(POLL).await;
    };
    ensure!(
        revision > before,
        "put after the outage got revision {revision}, not above {before}"
    );
    eprintln!("put accepted ({:?} after the restart)", restarted.elapsed());

    for id in cluster.ids() {
        let left = deadline.saturating_duration_since(Instant::now());
        let what = format!("node {id} to answer its admin status after the NATS restart");
        cluster
            .wait_until(left, &what, || async move {
                cluster.status(id).await.map(|_| true)
            })
            .await?;
    }
    eprintln!(
        "every node answers ({:?} after the restart)",
        restarted.elapsed()
    );

    let got = client
        .get("before-outage")
        .await
        .map_err(|e| anyhow!("get after the outage failed: {e}"))?;
    ensure!(
        got.as_ref().map(|v| (&v.value, v.revision)) == Some((&json!("kept"), before)),
        "the key written before the outage reads back as {got:?}"
    );
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    Ok(())
}

/// Proves that a leader frozen (SIGSTOP) while the others elect a new leader and commit a
/// newer value does not, once resumed, serve its old value to linearizable reads on its own
/// subject: each of 20 gets right after SIGCONT returns the new value or an error code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_does_not_serve_stale_linearizable_reads() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let r = paused_leader_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn paused_leader_body(cluster: &Cluster) -> Result<()> {
    let old = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let client = kv_client(cluster, Duration::from_secs(10));
    let rev1 = client
        .put("k", &json!("v1"))
        .await
        .map_err(|e| anyhow!("put k=v1 failed: {e}"))?;
    // Every node has k=v1 before the fault.
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    eprintln!("k=v1 at revision {rev1}; pausing leader {old}");

    cluster.pause(old).await?;
    let paused_at = Instant::now();
    let found = std::cell::Cell::new(None);
    let found_ref = &found;
    cluster
        .wait_until(
            Duration::from_secs(20),
            "a new leader among the two running nodes",
            || async move {
                match cluster.agreed_leader().await? {
                    Some(l) if l != old => {
                        found_ref.set(Some(l));
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            },
        )
        .await?;
    let new = found
        .get()
        .ok_or_else(|| anyhow!("no new leader recorded"))?;
    eprintln!(
        "new leader: node {new} ({:?} after the pause)",
        paused_at.elapsed()
    );

    // k=v2 through the new leader's own subject (the paused node still holds its queue
    // subscription on P.kv.*, so the cluster subject could route to it).
    let put_subject = cluster.subject(&format!("node.{new}.kv.put"));
    let put_deadline = Instant::now() + Duration::from_secs(20);
    let rev2 = loop {
        let reply = cluster
            .request_raw(
                &put_subject,
                None,
                to_bytes(&json!({"key": "k", "value": "v2"})),
                Duration::from_secs(10),
            )
            .await
            .context("put k=v2 on the new leader")?;
        if reply["ok"] == json!(true) {
            break reply["revision"]
                .as_u64()
                .ok_or_else(|| anyhow!("put reply without revision: {reply}"))?;
        }
        // Only "not applied" codes may be retried; anything else leaves k unknown.
        ensure!(
            matches!(error_code(&reply), Some("cluster_not_ready" | "busy")),
            "put k=v2 on node {new} failed: {reply}"
        );
        ensure!(
            Instant::now() < put_deadline,
            "put k=v2 on node {new} not accepted within 20 s: {reply}"
        );
        tokio::time::sleep(POLL).await;
    };
    ensure!(rev2 > rev1, "k=v2 got revision {rev2}, not above {rev1}");
    eprintln!("k=v2 acked at revision {rev2}; resuming node {old}");

    cluster.resume(old).await?;
    let get_subject = cluster.subject(&format!("node.{old}.kv.get"));
    let body = to_bytes(&json!({"key": "k", "consistency": "linearizable"}));
    let get = |i: usize| {
        let subject = get_subject.clone();
        let body = body.clone();
        async move {
            let r = cluster
                .request_raw(&subject, None, body, Duration::from_secs(10))
                .await;
            (i, r)
        }
    };
    // A burst of 10 at once right after SIGCONT, then 10 one after the other.
    let mut results = futures::future::join_all((0..10).map(get)).await;
    for i in 10..20 {
        results.push(get(i).await);
    }
    let mut stale = Vec::new();
    let mut outcomes = BTreeMap::new();
    for (i, r) in results {
        let reply = r.with_context(|| {
            format!("linearizable get #{i} on the resumed old leader {old}: no reply")
        })?;
        if reply["ok"] == json!(true) {
            if reply["value"] != json!("v2") || reply["revision"].as_u64() != Some(rev2) {
                stale.push(format!("get #{i}: {reply}"));
            }
            *outcomes.entry("v2".to_string()).or_insert(0) += 1;
        } else {
            let code = error_code(&reply)
                .ok_or_else(|| anyhow!("get #{i}: error reply without a code: {reply}"))?;
            *outcomes.entry(code.to_string()).or_insert(0) += 1;
        }
    }
    eprintln!("reads on the resumed old leader: {outcomes:?}");
    ensure!(
        stale.is_empty(),
        "the resumed old leader {old} served a stale linearizable read:\n{}",
        stale.join("\n")
    );

    // It rejoins and agrees.
    let (leader, revision) = wait_converged(cluster, &cluster.ids(), CATCH_UP_TIMEOUT).await?;
    eprintln!("converged: leader {leader}, revision {revision}");
    let got = stale_get_on_node(cluster, old, "k", rev2).await?;
    ensure!(
        got == Some((json!("v2"), rev2)),
        "node {old} holds k = {got:?} after rejoining"
    );
    Ok(())
}

// ----- helpers ---------------------------------------------------------------------------

fn kv_client(cluster: &Cluster, timeout: Duration) -> Client {
    Client::from_nats(cluster.client(), cluster.prefix(), timeout)
}

/// Polls `check` every 100 ms until `Ok(true)` or `timeout`.
async fn wait_for<F, Fut>(timeout: Duration, what: &str, check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    common::wait_until(timeout, what, check).await
}

/// A stale get of `key` on node `id`'s own subject, after it has applied `min_revision`.
/// `None` when the node answers `not_found`.
async fn stale_get_on_node(
    cluster: &Cluster,
    id: u64,
    key: &str,
    min_revision: u64,
) -> Result<Option<(Value, u64)>> {
    let subject = cluster.subject(&format!("node.{id}.kv.get"));
    let body = json!({"key": key, "consistency": "stale", "min_revision": min_revision});
    let reply = cluster
        .request_raw(&subject, None, to_bytes(&body), Duration::from_secs(10))
        .await?;
    if reply["ok"] == json!(true) {
        let revision = reply["revision"]
            .as_u64()
            .ok_or_else(|| anyhow!("get reply without revision: {reply}"))?;
        return Ok(Some((reply["value"].clone(), revision)));
    }
    match error_code(&reply) {
        Some("not_found") => Ok(None),
        _ => bail!("stale get of {key} on node {id}: {reply}"),
    }
}

/// The agreed leader and its status.
async fn leader_status(cluster: &Cluster) -> Result<(u64, Value)> {
    let leader = cluster
        .agreed_leader()
        .await?
        .ok_or_else(|| anyhow!("no leader agreed by a majority"))?;
    Ok((leader, cluster.status(leader).await?))
}

/// xorshift64*: enough randomness for choosing keys and operations, no extra crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}
