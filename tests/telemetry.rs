//! Telemetry events of a real 3-node cluster on `concord.telemetry.>`: each event arrives,
//! with the fields DESIGN.md lists, after the action that causes it.
//!
//! Exact counts need a barrier: a node publishes its events in order on one connection, so
//! once a `cluster.status` event of node X stamped after the last reply (and having applied
//! the last write) has arrived, every earlier event of X has arrived too.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, ensure, Context, Result};
use common::{Cluster, ClusterOptions};
use futures::StreamExt;
use serde_json::{json, Value};

const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// `telemetry.status_interval_ms` of these clusters.
const STATUS_INTERVAL_MS: u64 = 300;

// ----- the tests -------------------------------------------------------------------------

/// Proves that N puts give exactly N `api.put` events (result ok, each from the node the
/// client asked, never a second one from the leader for a forwarded request) and exactly N
/// `operation.apply` events on each of the three nodes, for the same log indices everywhere,
/// with no key (`include_keys` is off); and that `cluster.status` arrives every
/// `status_interval_ms` with the node's figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_give_one_api_event_each_and_one_apply_event_per_node() -> Result<()> {
    let opts = ClusterOptions::default()
        .env("CONCORD_TELEMETRY__STATUS_INTERVAL_MS", STATUS_INTERVAL_MS)
        .env("CONCORD_TELEMETRY__API_EVENTS", "all")
        .env("CONCORD_TELEMETRY__APPLY_EVENTS", "all");
    let cluster = Cluster::start_with(3, opts).await?;
    let r = puts_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn puts_body(cluster: &Cluster) -> Result<()> {
    const N: u64 = 30;
    let events = Events::subscribe(cluster).await?;
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let started = SystemTime::now();
    // Each node is asked for a third of the puts: followers forward theirs to the leader.
    for i in 0..N {
        let node = 1 + i % 3;
        let reply = cluster
            .node_request(node, "kv.put", json!({"key": format!("k{i}"), "value": i}))
            .await?;
        ensure!(
            reply["ok"] == json!(true),
            "put {i} via node {node}: {reply}"
        );
    }
    let done = SystemTime::now();
    let last = cluster.status(leader).await?["last_applied"]
        .as_u64()
        .context("leader status without last_applied")?;
    for node in 1..=3 {
        events.barrier(node, done, last).await?;
    }

    let puts = events.matching(|e| path(e) == "api.put");
    ensure!(
        puts.len() as u64 == N,
        "{} api.put events for {N} puts: {puts:#?}",
        puts.len()
    );
    for node in 1..=3u64 {
        let from: Vec<&Value> = puts.iter().filter(|e| e["node"] == json!(node)).collect();
        ensure!(
            from.len() as u64 == N / 3,
            "node {node} answered {} puts but sent {} api.put events (leader {leader})",
            N / 3,
            from.len()
        );
    }
    for e in &puts {
        check_shape(e)?;
        ensure!(
            e["metadata"] == json!({"result": "ok"}),
            "api.put metadata: {e}"
        );
        ensure!(
            e["measurements"]["duration_us"].as_u64().is_some(),
            "api.put without duration_us: {e}"
        );
        let t = event_time(e)?;
        ensure!(
            t >= started && t <= done,
            "api.put stamped outside the run: {e}"
        );
    }

    let mut indices_of = Vec::new();
    for node in 1..=3u64 {
        let applied = events.matching(|e| {
            path(e) == "operation.apply"
                && e["node"] == json!(node)
                && e["metadata"]["operation"] == json!("put")
        });
        ensure!(
            applied.len() as u64 == N,
            "node {node}: {} operation.apply events for {N} puts",
            applied.len()
        );
        let mut indices = Vec::new();
        for e in &applied {
            check_shape(e)?;
            ensure!(e["measurements"]["duration_us"].as_u64().is_some(), "{e}");
            ensure!(
                e["metadata"].get("key").is_none(),
                "a key without include_keys: {e}"
            );
            indices.push(
                e["metadata"]["index"]
                    .as_u64()
                    .context("apply without index")?,
            );
        }
        indices.sort_unstable();
        indices_of.push(indices);
    }
    ensure!(
        indices_of.windows(2).all(|w| w[0] == w[1]),
        "the nodes applied the puts at different indices: {indices_of:?}"
    );

    // cluster.status: periodic, with the node's figures.
    events
        .wait(
            EVENT_TIMEOUT,
            "4 cluster.status events from every node",
            |all| {
                (1..=3u64).all(|node| {
                    all.iter()
                        .filter(|e| path(e) == "cluster.status" && e["node"] == json!(node))
                        .count()
                        >= 4
                })
            },
        )
        .await?;
    for node in 1..=3u64 {
        let statuses = events.matching(|e| path(e) == "cluster.status" && e["node"] == json!(node));
        let mut gaps: Vec<u128> = Vec::new();
        for w in statuses.windows(2) {
            let (a, b) = (event_time(&w[0])?, event_time(&w[1])?);
            gaps.push(b.duration_since(a).unwrap_or_default().as_millis());
        }
        gaps.sort_unstable();
        let median = gaps[gaps.len() / 2];
        ensure!(
            (STATUS_INTERVAL_MS as u128 - 50..=STATUS_INTERVAL_MS as u128 * 3).contains(&median),
            "node {node}: cluster.status every {median} ms (median), configured {STATUS_INTERVAL_MS}: {gaps:?}"
        );
        let last_status = statuses.last().context("no cluster.status")?;
        check_shape(last_status)?;
        let m = &last_status["measurements"];
        ensure!(m["storage_keys"] == json!(N), "node {node}: {last_status}");
        ensure!(
            m["storage_bytes"].as_u64().is_some_and(|b| b > 0),
            "{last_status}"
        );
        let md = &last_status["metadata"];
        ensure!(md["leader"] == json!(leader), "node {node}: {last_status}");
        ensure!(md["term"].as_u64().is_some_and(|t| t > 0), "{last_status}");
        ensure!(
            md["commit_index"].as_u64().is_some_and(|c| c >= last),
            "{last_status}"
        );
    }
    events.check_subjects(cluster)?;
    Ok(())
}

/// Proves that each node follows its own settings: with `include_keys` the api and apply
/// events carry the key (and the default `apply_events = off` can be turned to `all`); `api_events = off` sends no api event and `apply_events =
/// sampled:0.5` every second apply event (without keys); `telemetry.enabled = false` sends
/// nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_keys_and_off_follow_each_nodes_settings() -> Result<()> {
    let opts = ClusterOptions::default()
        .env("CONCORD_TELEMETRY__STATUS_INTERVAL_MS", STATUS_INTERVAL_MS)
        .node_env(1, "CONCORD_TELEMETRY__INCLUDE_KEYS", "true")
        .node_env(1, "CONCORD_TELEMETRY__APPLY_EVENTS", "all")
        .node_env(2, "CONCORD_TELEMETRY__API_EVENTS", "off")
        .node_env(2, "CONCORD_TELEMETRY__APPLY_EVENTS", "sampled:0.5")
        .node_env(3, "CONCORD_TELEMETRY__ENABLED", "false");
    let cluster = Cluster::start_with(3, opts).await?;
    let r = sampling_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn sampling_body(cluster: &Cluster) -> Result<()> {
    const PER_NODE: u64 = 20;
    let events = Events::subscribe(cluster).await?;
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    for node in 1..=3u64 {
        for i in 0..PER_NODE {
            let key = format!("n{node}/k\"{i}");
            let reply = cluster
                .node_request(node, "kv.put", json!({"key": key, "value": i}))
                .await?;
            ensure!(reply["ok"] == json!(true), "put {key}: {reply}");
        }
    }
    let done = SystemTime::now();
    let last = cluster.status(leader).await?["last_applied"]
        .as_u64()
        .context("leader status without last_applied")?;
    events.barrier(1, done, last).await?;
    events.barrier(2, done, last).await?;

    // Node 1: every event, with keys.
    let api1 = events.matching(|e| path(e) == "api.put" && e["node"] == json!(1));
    let keys: Vec<String> = (0..PER_NODE).map(|i| format!("n1/k\"{i}")).collect();
    let got: Vec<String> = api1
        .iter()
        .map(|e| {
            e["metadata"]["key"]
                .as_str()
                .unwrap_or("<none>")
                .to_string()
        })
        .collect();
    ensure!(got == keys, "node 1 api.put keys: {got:?}");
    let apply1 = events.matching(|e| {
        path(e) == "operation.apply"
            && e["node"] == json!(1)
            && e["metadata"]["operation"] == json!("put")
    });
    ensure!(
        apply1.len() as u64 == 3 * PER_NODE,
        "node 1: {} apply events",
        apply1.len()
    );
    ensure!(
        apply1.iter().all(|e| e["metadata"]["key"]
            .as_str()
            .is_some_and(|k| k.starts_with('n'))),
        "node 1 apply events without keys: {apply1:#?}"
    );

    // Node 2: no api events, half the apply events, no keys.
    let api2 = events.matching(|e| path(e).starts_with("api.") && e["node"] == json!(2));
    ensure!(
        api2.is_empty(),
        "node 2 has api_events = off but sent {api2:#?}"
    );
    let apply2 = events.matching(|e| path(e) == "operation.apply" && e["node"] == json!(2));
    let n = apply2.len() as u64;
    // 3 * PER_NODE puts and the cluster id: every second one, give or take the first.
    ensure!(
        (3 * PER_NODE / 2 - 1..=3 * PER_NODE / 2 + 1).contains(&n),
        "node 2 (sampled:0.5) sent {n} apply events for {} commands",
        3 * PER_NODE + 1
    );
    ensure!(
        apply2.iter().all(|e| e["metadata"].get("key").is_none()),
        "node 2 has include_keys off but sent keys: {apply2:#?}"
    );

    // Node 3: nothing, not even its periodic status.
    let from3 = events.matching(|e| e["node"] == json!(3));
    ensure!(
        from3.is_empty(),
        "node 3 has telemetry off but sent {from3:#?}"
    );
    events.check_subjects(cluster)?;
    Ok(())
}

/// Proves that a SIGKILL of the leader leads to `state.change` events naming the new
/// leader: from the new leader itself (status leader, its node id, a higher term) and from
/// the other survivor (status follower, leader = the new leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_gives_state_change_events_naming_the_new_leader() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let r = leader_kill_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn leader_kill_body(cluster: &Cluster) -> Result<()> {
    let events = Events::subscribe(cluster).await?;
    let old = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let old_term = cluster.status(old).await?["term"]
        .as_u64()
        .context("status without term")?;
    cluster.kill(old).await?;
    let mut new_leader = None;
    events
        .wait(EVENT_TIMEOUT, "a state.change naming a new leader", |all| {
            new_leader = all.iter().find_map(|e| {
                let m = &e["metadata"];
                let is = path(e) == "state.change"
                    && m["status"] == json!("leader")
                    && m["node"] != json!(old)
                    && m["node"] == e["node"]
                    && m["term"].as_u64().is_some_and(|t| t > old_term);
                is.then(|| (m["node"].as_u64(), m["term"].as_u64()))
            });
            new_leader.is_some()
        })
        .await?;
    let Some((Some(leader), Some(term))) = new_leader else {
        bail!("state.change without node or term: {new_leader:?}");
    };
    let agreed = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    ensure!(
        agreed == leader,
        "state.change named node {leader}, the cluster agrees on {agreed}"
    );
    let other = (1..=3)
        .find(|&n| n != old && n != leader)
        .context("no third node")?;
    events
        .wait(EVENT_TIMEOUT, "the other survivor's state.change", |all| {
            all.iter().any(|e| {
                let m = &e["metadata"];
                path(e) == "state.change"
                    && e["node"] == json!(other)
                    && m["node"] == json!(other)
                    && m["status"] == json!("follower")
                    && m["leader"] == json!(leader)
                    && m["term"] == json!(term)
            })
        })
        .await?;
    events.check_subjects(cluster)?;
    Ok(())
}

/// Proves that `concord snapshot` makes every node build a snapshot and that each sends a
/// `snapshot.created` event for the index the command reports; and that a follower brought
/// back by a snapshot (its log was purged on the leader while it was down) sends
/// `snapshot.installed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_give_created_and_installed_events() -> Result<()> {
    let opts = ClusterOptions::default()
        .env("CONCORD_RAFT__SNAPSHOT_EVERY", 100)
        .env("CONCORD_RAFT__MAX_IN_SNAPSHOT_LOG_TO_KEEP", 10);
    let cluster = Cluster::start_with(3, opts).await?;
    let r = snapshots_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn snapshots_body(cluster: &Cluster) -> Result<()> {
    let events = Events::subscribe(cluster).await?;
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    for i in 0..5 {
        cluster
            .request("kv.put", json!({"key": format!("s{i}"), "value": i}))
            .await?;
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .args([
            "--nats-url",
            cluster.nats_url(),
            "--subject-prefix",
            cluster.prefix(),
        ])
        .args(["--json", "--timeout-ms", "20000", "snapshot"])
        .env_remove("CONCORD_TOKEN")
        .output()
        .await
        .context("running concord snapshot")?;
    let reply: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "concord snapshot printed {:?} (stderr {:?})",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    ensure!(
        out.status.success() && reply["ok"] == json!(true),
        "concord snapshot: {reply}"
    );
    let nodes = reply["nodes"].as_array().context("no nodes in the reply")?;
    ensure!(
        nodes.len() == 3,
        "concord snapshot asked {} nodes: {reply}",
        nodes.len()
    );
    for n in nodes {
        let (node, index) = (n["node"].clone(), n["snapshot_index"].clone());
        ensure!(index.as_u64().is_some(), "no snapshot index: {reply}");
        events
            .wait(EVENT_TIMEOUT, "snapshot.created of each node", |all| {
                all.iter().any(|e| {
                    path(e) == "snapshot.created"
                        && e["node"] == node
                        && e["metadata"]["index"] == index
                        && e["measurements"]["size_bytes"]
                            .as_u64()
                            .is_some_and(|s| s > 0)
                })
            })
            .await?;
    }

    // A follower left behind until only a snapshot can bring it back.
    let lagging = if leader == 3 { 2 } else { 3 };
    let purged = cluster.restart_behind_snapshot(lagging).await?;
    events
        .wait(
            Duration::from_secs(60),
            "snapshot.installed on the restarted node",
            |all| {
                all.iter().any(|e| {
                    path(e) == "snapshot.installed"
                        && e["node"] == json!(lagging)
                        && e["metadata"]["index"].as_u64().is_some_and(|i| i >= purged)
                        && e["measurements"]["size_bytes"]
                            .as_u64()
                            .is_some_and(|s| s > 0)
                })
            },
        )
        .await?;
    let installed = events.matching(|e| path(e) == "snapshot.installed");
    ensure!(
        installed.iter().all(|e| e["node"] == json!(lagging)),
        "only node {lagging} installed a snapshot: {installed:#?}"
    );
    events.check_subjects(cluster)?;
    Ok(())
}

// ----- helpers ---------------------------------------------------------------------------

/// Every event seen on `P.telemetry.>` since [`Events::subscribe`], with its subject.
struct Events {
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Events {
    async fn subscribe(cluster: &Cluster) -> Result<Events> {
        let client = cluster.connect().await?;
        let mut sub = client
            .subscribe(cluster.subject("telemetry.>"))
            .await
            .context("subscribing to the telemetry")?;
        // The subscription is known to the server before the test acts.
        client.flush().await.context("flushing the subscription")?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Some(msg) = sub.next().await {
                let v = serde_json::from_slice(&msg.payload).unwrap_or_else(|e| {
                    json!({"unparsable": String::from_utf8_lossy(&msg.payload), "error": e.to_string()})
                });
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((msg.subject.to_string(), v));
            }
        });
        Ok(Events { seen, task })
    }

    fn all(&self) -> Vec<Value> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter().map(|(_, v)| v.clone()).collect()
    }

    fn matching(&self, f: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.all().into_iter().filter(|e| f(e)).collect()
    }

    /// Polls until `done` holds for the events seen so far.
    async fn wait(
        &self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&[Value]) -> bool,
    ) -> Result<()> {
        let r = common::wait_until(timeout, what, || {
            let ok = done(&self.all());
            async move { Ok(ok) }
        })
        .await;
        r.map_err(|e| {
            let tail: Vec<String> = self
                .all()
                .iter()
                .rev()
                .take(20)
                .map(|e| e.to_string())
                .collect();
            anyhow!("{e:#}; last events (newest first):\n{}", tail.join("\n"))
        })
    }

    /// Waits for a `cluster.status` of `node` stamped after `after` that has applied `index`:
    /// every earlier event of that node has arrived by then.
    async fn barrier(&self, node: u64, after: SystemTime, index: u64) -> Result<()> {
        let what = format!("a cluster.status of node {node} after the last write (index {index})");
        self.wait(EVENT_TIMEOUT, &what, |all| {
            all.iter().any(|e| {
                path(e) == "cluster.status"
                    && e["node"] == json!(node)
                    && e["metadata"]["applied_index"]
                        .as_u64()
                        .is_some_and(|i| i >= index)
                    && event_time(e).is_ok_and(|t| t > after)
            })
        })
        .await
    }

    /// Every event came on `P.telemetry.<its path>` and has the common fields.
    fn check_subjects(&self, cluster: &Cluster) -> Result<()> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (subject, e) in &seen {
            check_shape(e)?;
            let want = cluster.subject(&format!("telemetry.{}", path(e)));
            ensure!(*subject == want, "event on {subject}, expected {want}: {e}");
        }
        Ok(())
    }
}

/// `api.put` for `{"event":["concord","api","put"],...}`.
fn path(e: &Value) -> String {
    e["event"]
        .as_array()
        .map(|a| {
            a.iter()
                .skip(1)
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(".")
        })
        .unwrap_or_default()
}

fn event_time(e: &Value) -> Result<SystemTime> {
    let t = e["time"]
        .as_str()
        .with_context(|| format!("event without time: {e}"))?;
    humantime::parse_rfc3339(t).with_context(|| format!("time {t:?} is not RFC 3339"))
}

/// The fields every event has: event path, measurements, metadata, node, time.
fn check_shape(e: &Value) -> Result<()> {
    let event = e["event"]
        .as_array()
        .with_context(|| format!("no event path: {e}"))?;
    ensure!(
        event.len() == 3 && event[0] == json!("concord"),
        "event path is not [\"concord\", area, name]: {e}"
    );
    ensure!(e["measurements"].is_object(), "no measurements object: {e}");
    ensure!(e["metadata"].is_object(), "no metadata object: {e}");
    ensure!(
        e["node"].as_u64().is_some_and(|n| n >= 1),
        "no node id: {e}"
    );
    event_time(e)?;
    let keys: Vec<&String> = e
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    ensure!(keys.len() == 5, "unexpected top-level fields {keys:?}: {e}");
    Ok(())
}
