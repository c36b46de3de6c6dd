//! Prometheus metrics and probes of a real 3-node cluster, each node with its own
//! `metrics.listen` port: every contract series is there from the start, counters move by
//! exactly what the test did, the Raft gauges agree with `admin.status`, and `/healthz` and
//! `/readyz` answer as documented.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use async_nats::HeaderMap;
use bytes::Bytes;
use common::{to_bytes, Cluster, ClusterOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const ADMIN: &str = "metrics-test-admin-credential-0123";

const OPS: [&str; 9] = [
    "put",
    "get",
    "delete",
    "scan",
    "status",
    "members",
    "token_create",
    "token_revoke",
    "token_list",
];
const RESULTS: [&str; 11] = [
    "ok",
    "not_found",
    "invalid_key",
    "value_too_large",
    "bad_request",
    "unauthorized",
    "busy",
    "no_space",
    "cluster_not_ready",
    "timeout",
    "internal",
];

// ----- the tests -------------------------------------------------------------------------

/// Proves that every series of the metric contract is registered when a node starts (the
/// counters of client requests at zero), that the Raft, storage and NATS gauges agree with
/// `admin.status` on every node, that `/healthz` answers 200 and `/readyz` 200 on a healthy
/// node, and that `/readyz` turns 503 with a one-line reason on a node that lost its quorum
/// (the other two killed) while `/healthz` stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_series_gauges_and_probes() -> Result<()> {
    let ports = free_ports(3)?;
    let cluster = Cluster::start_with(3, with_metrics(ClusterOptions::default(), &ports)).await?;
    let r = contract_body(&cluster, &ports).await;
    cluster.fail_on_err(r)
}

async fn contract_body(cluster: &Cluster, ports: &[u16]) -> Result<()> {
    // Right after start: the whole contract, client counters at zero.
    for node in 1..=3u64 {
        let m = scrape(ports[node as usize - 1]).await?;
        check_contract(&m, node)?;
    }

    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    for node in 1..=3u64 {
        let port = ports[node as usize - 1];
        // Status and the gauges are read at slightly different times; the idle cluster
        // settles (e.g. a follower's gauges follow its metrics channel).
        cluster
            .wait_until(
                Duration::from_secs(10),
                &format!("node {node}'s gauges to match its status"),
                || async move {
                    let status = cluster.status(node).await?;
                    let m = scrape(port).await?;
                    gauges_match(&m, &status).map(|()| true)
                },
            )
            .await?;
        let m = scrape(port).await?;
        ensure!(
            m.value("concord_raft_leader_changes_total", &[])? >= 1.0,
            "node {node}"
        );
        if node == leader {
            for peer in (1..=3u64).filter(|&p| p != leader) {
                let lag = m.value(
                    "concord_raft_replication_lag",
                    &[("peer", &peer.to_string())],
                )?;
                ensure!(lag == 0.0, "leader's lag for caught-up peer {peer}: {lag}");
            }
        }
        let (code, body) = get(port, "/healthz").await?;
        ensure!(
            code == 200 && body == "ok\n",
            "node {node} /healthz: {code} {body:?}"
        );
        let (code, body) = get(port, "/readyz").await?;
        ensure!(
            code == 200 && body == "ready\n",
            "node {node} /readyz: {code} {body:?}"
        );
        let (code, _) = get(port, "/nope").await?;
        ensure!(code == 404, "node {node} /nope: {code}");
    }

    // The leader alone: it keeps its role but no quorum acknowledges it any more.
    for node in (1..=3u64).filter(|&n| n != leader) {
        cluster.kill(node).await?;
    }
    let port = ports[leader as usize - 1];
    let last = std::sync::Mutex::new((0, String::new()));
    let last_ref = &last;
    common::wait_until(
        Duration::from_secs(15),
        "/readyz 503 on the leader without quorum",
        || async move {
            let r = get(port, "/readyz").await?;
            let unready = r.0 == 503;
            *last_ref.lock().unwrap_or_else(|p| p.into_inner()) = r;
            Ok(unready)
        },
    )
    .await?;
    let reason = last.lock().unwrap_or_else(|p| p.into_inner()).1.clone();
    ensure!(
        reason.ends_with('\n') && reason.trim().lines().count() == 1 && reason.trim().len() > 5,
        "/readyz 503 reason is not one line: {reason:?}"
    );
    eprintln!(
        "leader {leader} without quorum: /readyz 503 {:?}",
        reason.trim()
    );
    let (code, _) = get(port, "/healthz").await?;
    ensure!(
        code == 200,
        "/healthz of a live node without quorum: {code}"
    );
    Ok(())
}

/// Proves that request counters move by exactly what the test did, on the node that
/// answered the client only: puts, gets of missing keys, a put without a token and a
/// malformed put sent to a follower count there (ok, not_found, unauthorized with an auth
/// failure, bad_request), not on the leader the follower forwarded them to; gets sent to the
/// leader count there. Every node applies the puts (apply histogram, revision gauge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_counters_move_on_the_answering_node_only() -> Result<()> {
    let ports = free_ports(3)?;
    let opts = with_metrics(ClusterOptions::default(), &ports)
        .env("CONCORD_AUTH__ENABLED", "true")
        .env("CONCORD_AUTH__ADMIN_TOKEN", ADMIN)
        .admin_token(ADMIN);
    let cluster = Cluster::start_with(3, opts).await?;
    let r = counters_body(&cluster, &ports).await;
    cluster.fail_on_err(r)
}

async fn counters_body(cluster: &Cluster, ports: &[u16]) -> Result<()> {
    const K: u64 = 7;
    const J: u64 = 4;
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let follower = (1..=3u64).find(|&n| n != leader).context("no follower")?;
    let (fport, lport) = (ports[follower as usize - 1], ports[leader as usize - 1]);
    let (f0, l0) = (scrape(fport).await?, scrape(lport).await?);

    let admin = Some(bearer(ADMIN));
    for i in 0..K {
        let r = send(
            cluster,
            follower,
            "kv.put",
            admin.clone(),
            json!({"key": format!("m{i}"), "value": i}),
        )
        .await?;
        ensure!(r["ok"] == json!(true), "put {i}: {r}");
    }
    for i in 0..J {
        let r = send(
            cluster,
            follower,
            "kv.get",
            admin.clone(),
            json!({"key": format!("missing{i}")}),
        )
        .await?;
        ensure!(
            r["error"]["code"] == json!("not_found"),
            "get of a missing key: {r}"
        );
    }
    let r = send(
        cluster,
        follower,
        "kv.put",
        None,
        json!({"key": "x", "value": 1}),
    )
    .await?;
    ensure!(
        r["error"]["code"] == json!("unauthorized"),
        "put without a token: {r}"
    );
    let subject = cluster.subject(&format!("node.{follower}.kv.put"));
    let r = cluster
        .request_raw(
            &subject,
            admin.clone(),
            Bytes::from_static(b"not json"),
            Duration::from_secs(10),
        )
        .await?;
    ensure!(
        r["error"]["code"] == json!("bad_request"),
        "malformed put: {r}"
    );
    for i in 0..2 {
        let r = send(
            cluster,
            leader,
            "kv.get",
            admin.clone(),
            json!({"key": format!("m{i}")}),
        )
        .await?;
        ensure!(r["ok"] == json!(true), "get m{i}: {r}");
    }

    let (f1, l1) = (scrape(fport).await?, scrape(lport).await?);
    let moved = |on_follower: bool, name: &str, labels: Labels| -> Result<f64> {
        let (a, b) = if on_follower { (&f0, &f1) } else { (&l0, &l1) };
        Ok(b.value(name, labels)? - a.value(name, labels)?)
    };
    let (req, auth) = ("concord_requests_total", "concord_auth_failures_total");
    let put_count = "concord_request_duration_seconds_count";
    let checks: [(bool, &str, Labels, f64); 10] = [
        (true, req, &[("op", "put"), ("result", "ok")], K as f64),
        (
            true,
            req,
            &[("op", "get"), ("result", "not_found")],
            J as f64,
        ),
        (true, req, &[("op", "put"), ("result", "unauthorized")], 1.0),
        (true, req, &[("op", "put"), ("result", "bad_request")], 1.0),
        (true, auth, &[("op", "put")], 1.0),
        (true, put_count, &[("op", "put")], (K + 2) as f64),
        (false, req, &[("op", "put"), ("result", "ok")], 0.0),
        (false, req, &[("op", "get"), ("result", "not_found")], 0.0),
        (false, req, &[("op", "get"), ("result", "ok")], 2.0),
        (false, auth, &[("op", "put")], 0.0),
    ];
    for (on_follower, name, labels, want) in checks {
        let got = moved(on_follower, name, labels)?;
        let who = if on_follower { "follower" } else { "leader" };
        ensure!(
            got == want,
            "{who}: {name}{labels:?} moved by {got}, expected {want}"
        );
    }

    // Every node applied the K puts.
    let revision = cluster.status(leader).await?["revision"]
        .as_u64()
        .context("no revision")?;
    for node in 1..=3u64 {
        let port = ports[node as usize - 1];
        cluster
            .wait_until(
                Duration::from_secs(10),
                &format!("node {node}'s revision gauge"),
                || async move {
                    Ok(scrape(port).await?.value("concord_revision", &[])? == revision as f64)
                },
            )
            .await?;
        let m = scrape(port).await?;
        ensure!(
            m.value("concord_storage_keys", &[])? == K as f64,
            "node {node} storage keys"
        );
        ensure!(
            m.value("concord_apply_duration_seconds_count", &[])? >= 1.0,
            "node {node}"
        );
    }
    Ok(())
}

/// Under concurrent writes the leader skips commit notices (the append that follows carries
/// the commit index) to each follower, and every follower still applies every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_commit_notices_still_reach_every_follower() -> Result<()> {
    let ports = free_ports(3)?;
    let cluster = Cluster::start_with(3, with_metrics(ClusterOptions::default(), &ports)).await?;
    let r = skipped_notices_body(&cluster, &ports).await;
    cluster.fail_on_err(r)
}

async fn skipped_notices_body(cluster: &Cluster, ports: &[u16]) -> Result<()> {
    const WRITERS: u64 = 16;
    const PUTS_EACH: u64 = 25;
    const MAX_BURSTS: u64 = 40;
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let followers: Vec<String> = (1..=3u64)
        .filter(|&n| n != leader)
        .map(|n| n.to_string())
        .collect();
    let lport = ports[leader as usize - 1];
    let skipped = |m: &Scrape, peer: &str| {
        m.value(
            "concord_raft_commit_notices_skipped_total",
            &[("peer", peer)],
        )
    };

    // Bursts of concurrent puts until each follower has had a notice skipped.
    let mut bursts = 0;
    loop {
        let writers = (0..WRITERS).map(|w| async move {
            for i in 0..PUTS_EACH {
                let body = json!({"key": format!("w{w}-{i}"), "value": bursts});
                let r = send(cluster, leader, "kv.put", None, body).await?;
                ensure!(r["ok"] == json!(true), "put w{w}-{i}: {r}");
            }
            Ok(())
        });
        futures::future::try_join_all(writers).await?;
        bursts += 1;
        let m = scrape(lport).await?;
        let counts = followers
            .iter()
            .map(|peer| skipped(&m, peer))
            .collect::<Result<Vec<f64>>>()?;
        if counts.iter().all(|&c| c > 0.0) {
            break;
        }
        ensure!(
            bursts < MAX_BURSTS,
            "after {bursts} bursts of {WRITERS} concurrent writers, notices skipped per follower: {counts:?}"
        );
    }

    // Every follower learns every commit: its revision reaches the leader's.
    for peer in &followers {
        applies_leaders_revision(cluster, ports, leader, peer.parse()?).await?;
    }
    Ok(())
}

/// The leader sends its entries to the followers before its own fsync completes, and a
/// follower's `Success` to such an early append answers openraft's append of the same
/// entries, which is then not sent. A killed follower gets none early until it has caught
/// up after its restart, then gets them again, and holds every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_appends_answer_replication_and_resume_after_a_restart() -> Result<()> {
    let ports = free_ports(3)?;
    let cluster = Cluster::start_with(3, with_metrics(ClusterOptions::default(), &ports)).await?;
    let r = early_appends_body(&cluster, &ports).await;
    cluster.fail_on_err(r)
}

async fn early_appends_body(cluster: &Cluster, ports: &[u16]) -> Result<()> {
    const MAX_PUTS: u64 = 300;
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let lport = ports[leader as usize - 1];
    let followers: Vec<u64> = (1..=3u64).filter(|&n| n != leader).collect();
    let followers = &followers;
    let answered = |m: &Scrape, peer: u64| {
        m.value(
            "concord_raft_appends_answered_early_total",
            &[("peer", &peer.to_string())],
        )
    };
    // One put at a time until every follower's count has grown by `by` from `from`.
    let puts_until = |from: Vec<f64>, by: f64, tag: &'static str| async move {
        for i in 0..MAX_PUTS {
            let body = json!({"key": format!("{tag}-{i}"), "value": i});
            let r = send(cluster, leader, "kv.put", None, body).await?;
            ensure!(r["ok"] == json!(true), "put {tag}-{i}: {r}");
            let m = scrape(lport).await?;
            let now = followers
                .iter()
                .map(|&p| answered(&m, p))
                .collect::<Result<Vec<f64>>>()?;
            if now.iter().zip(&from).all(|(n, f)| *n >= f + by) {
                return Ok(now);
            }
        }
        bail!("after {MAX_PUTS} puts ({tag}), appends answered early grew from {from:?} by less than {by}")
    };

    let counts = puts_until(vec![0.0; followers.len()], 10.0, "a").await?;

    // The quorum stays: writes go on while one follower is down.
    let down = followers[0];
    cluster.kill(down).await?;
    for i in 0..20 {
        let r = send(
            cluster,
            leader,
            "kv.put",
            None,
            json!({"key": format!("b-{i}"), "value": i}),
        )
        .await?;
        ensure!(
            r["ok"] == json!(true),
            "put b-{i} with node {down} down: {r}"
        );
    }
    cluster.restart(down).await?;
    puts_until(counts, 10.0, "c").await?;

    applies_leaders_revision(cluster, ports, leader, down).await?;
    let r = send(
        cluster,
        down,
        "kv.get",
        None,
        json!({"key": "b-19", "consistency": "stale"}),
    )
    .await?;
    ensure!(
        r["ok"] == json!(true) && r["value"] == json!(19),
        "b-19 on node {down}: {r}"
    );
    Ok(())
}

// ----- helpers ---------------------------------------------------------------------------

/// Waits (10 s at most) until `node`'s `concord_revision` reaches the leader's revision now.
async fn applies_leaders_revision(
    cluster: &Cluster,
    ports: &[u16],
    leader: u64,
    node: u64,
) -> Result<()> {
    let revision = cluster.status(leader).await?["revision"]
        .as_u64()
        .context("no revision")?;
    let port = ports[node as usize - 1];
    cluster
        .wait_until(
            Duration::from_secs(10),
            &format!("node {node} applies revision {revision}"),
            || async move {
                Ok(scrape(port).await?.value("concord_revision", &[])? >= revision as f64)
            },
        )
        .await
}

/// Ports free right now (bound to port 0, read back, released).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("binding a free port")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn with_metrics(mut opts: ClusterOptions, ports: &[u16]) -> ClusterOptions {
    for (i, port) in ports.iter().enumerate() {
        opts = opts.node_env(
            i as u64 + 1,
            "CONCORD_METRICS__LISTEN",
            format!("127.0.0.1:{port}"),
        );
    }
    opts
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Authorization", format!("Bearer {token}").as_str());
    h
}

/// A request on node `node`'s own subject, with optional headers.
async fn send(
    cluster: &Cluster,
    node: u64,
    suffix: &str,
    headers: Option<HeaderMap>,
    body: Value,
) -> Result<Value> {
    let subject = cluster.subject(&format!("node.{node}.{suffix}"));
    cluster
        .request_raw(&subject, headers, to_bytes(&body), Duration::from_secs(10))
        .await
}

/// `GET path` on 127.0.0.1:port: status code and body.
async fn get(port: u16, path: &str) -> Result<(u16, String)> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .with_context(|| format!("GET {path} on port {port}: no answer"))?
        .with_context(|| format!("GET {path} on port {port}"))?;
    let text = String::from_utf8(buf).context("response is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no end of the response head")?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status code in {head:?}"))?;
    Ok((code, body.to_string()))
}

/// Label pairs of one series.
type Labels<'a> = &'a [(&'a str, &'a str)];
/// The series of one name: (labels, value).
type Series = Vec<(BTreeMap<String, String>, f64)>;

/// One scrape: series name → its series.
struct Scrape(BTreeMap<String, Series>);

async fn scrape(port: u16) -> Result<Scrape> {
    let (code, body) = get(port, "/metrics").await?;
    ensure!(code == 200, "/metrics on port {port}: {code}");
    parse(&body)
}

fn parse(text: &str) -> Result<Scrape> {
    let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("line {line:?}"))?;
        let value: f64 = value
            .parse()
            .with_context(|| format!("value in {line:?}"))?;
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .with_context(|| format!("labels in {line:?}"))?;
                let mut labels = BTreeMap::new();
                for pair in inner.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once('=')
                        .with_context(|| format!("label in {line:?}"))?;
                    labels.insert(k.to_string(), v.trim_matches('"').to_string());
                }
                (name, labels)
            }
        };
        out.entry(name.to_string())
            .or_default()
            .push((labels, value));
    }
    Ok(Scrape(out))
}

impl Scrape {
    /// The value of the series with exactly these labels.
    fn value(&self, name: &str, labels: Labels) -> Result<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .get(name)
            .and_then(|all| all.iter().find(|(l, _)| *l == want))
            .map(|(_, v)| *v)
            .with_context(|| format!("no series {name}{labels:?}"))
    }
}

/// Every series of the metric contract; the counters of client requests are zero.
fn check_contract(m: &Scrape, node: u64) -> Result<()> {
    let ctx = |what: &str| format!("node {node}: {what}");
    ensure!(
        m.value(
            "concord_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        )? == 1.0,
        ctx("build_info")
    );
    for op in OPS {
        for result in RESULTS {
            let v = m.value("concord_requests_total", &[("op", op), ("result", result)])?;
            // The fixture's own status polls have been counted already.
            if op != "status" {
                ensure!(
                    v == 0.0,
                    ctx(&format!("requests_total{{{op},{result}}} = {v} at start"))
                );
            }
        }
        m.value("concord_request_duration_seconds_count", &[("op", op)])?;
        m.value(
            "concord_request_duration_seconds_bucket",
            &[("op", op), ("le", "0.0001")],
        )?;
        m.value(
            "concord_request_duration_seconds_bucket",
            &[("op", op), ("le", "10")],
        )?;
        ensure!(
            m.value("concord_auth_failures_total", &[("op", op)])? == 0.0,
            ctx("auth_failures")
        );
    }
    for name in [
        "concord_raft_term",
        "concord_raft_leader_id",
        "concord_raft_commit_index",
        "concord_raft_applied_index",
        "concord_raft_last_log_index",
        "concord_raft_leader_changes_total",
        "concord_raft_voters",
        "concord_raft_learners",
        "concord_apply_duration_seconds_count",
        "concord_storage_keys",
        "concord_storage_bytes",
        "concord_storage_data_bytes",
        "concord_storage_max_bytes",
        "concord_storage_fsync",
        "concord_revision",
        "concord_nats_reconnects_total",
    ] {
        m.value(name, &[])?;
    }
    let states: f64 = ["leader", "follower", "candidate", "learner", "shutdown"]
        .iter()
        .map(|s| m.value("concord_raft_state", &[("state", s)]))
        .sum::<Result<f64>>()?;
    ensure!(states == 1.0, ctx(&format!("raft_state sums to {states}")));
    for peer in (1..=3u64).filter(|&p| p != node).map(|p| p.to_string()) {
        m.value("concord_raft_replication_lag", &[("peer", &peer)])?;
        m.value(
            "concord_raft_commit_notices_skipped_total",
            &[("peer", &peer)],
        )?;
        m.value(
            "concord_raft_appends_answered_early_total",
            &[("peer", &peer)],
        )?;
        for result in ["accepted", "refused"] {
            m.value(
                "concord_raft_early_appends_total",
                &[("peer", &peer), ("result", result)],
            )?;
        }
        for rpc in ["append", "vote", "snapshot"] {
            m.value(
                "concord_raft_rpc_duration_seconds_count",
                &[("rpc", rpc), ("peer", &peer)],
            )?;
            for kind in [
                "unreachable",
                "timeout",
                "remote",
                "network",
                "payload_too_large",
            ] {
                m.value(
                    "concord_raft_rpc_errors_total",
                    &[("rpc", rpc), ("peer", &peer), ("kind", kind)],
                )?;
            }
        }
    }
    for reason in ["unsigned", "forged"] {
        for direction in ["request", "reply"] {
            let v = m.value(
                "concord_raft_rpc_rejected_total",
                &[("reason", reason), ("direction", direction)],
            )?;
            ensure!(v == 0.0, ctx("rpc_rejected"));
        }
    }
    for kind in ["created", "installed"] {
        ensure!(
            m.value("concord_snapshots_total", &[("kind", kind)])? == 0.0,
            ctx("snapshots_total")
        );
        m.value("concord_snapshot_size_bytes", &[("kind", kind)])?;
        m.value("concord_snapshot_duration_seconds_count", &[("kind", kind)])?;
    }
    ensure!(
        m.value("concord_nats_connected", &[])? == 1.0,
        ctx("nats_connected")
    );
    m.value("concord_telemetry_events_total", &[("result", "published")])?;
    ensure!(
        m.value("concord_telemetry_events_total", &[("result", "dropped")])? == 0.0,
        ctx("dropped")
    );
    Ok(())
}

/// The gauges say what `admin.status` says.
fn gauges_match(m: &Scrape, s: &Value) -> Result<()> {
    let num = |v: &Value| v.as_u64().unwrap_or(0) as f64;
    let pairs = [
        ("concord_raft_term", num(&s["term"])),
        ("concord_raft_leader_id", num(&s["leader"])),
        ("concord_raft_commit_index", num(&s["commit_index"])),
        ("concord_raft_applied_index", num(&s["last_applied"])),
        ("concord_raft_last_log_index", num(&s["last_log_index"])),
        (
            "concord_raft_voters",
            s["members"]["voters"].as_array().map_or(0, Vec::len) as f64,
        ),
        (
            "concord_raft_learners",
            s["members"]["learners"].as_array().map_or(0, Vec::len) as f64,
        ),
        ("concord_storage_keys", num(&s["storage"]["keys"])),
        (
            "concord_storage_data_bytes",
            num(&s["storage"]["data_bytes"]),
        ),
        ("concord_storage_max_bytes", num(&s["storage"]["max_bytes"])),
        (
            "concord_storage_fsync",
            f64::from(u8::from(s["storage"]["fsync"] == json!(true))),
        ),
        ("concord_revision", num(&s["revision"])),
    ];
    for (name, want) in pairs {
        let got = m.value(name, &[])?;
        if got != want {
            bail!("{name} = {got}, status says {want}: {s}");
        }
    }
    let role = s["role"].as_str().context("status without role")?;
    let v = m.value("concord_raft_state", &[("state", role)])?;
    ensure!(v == 1.0, "concord_raft_state{{state={role}}} = {v}");
    ensure!(
        m.value("concord_storage_bytes", &[])? > 0.0,
        "storage bytes"
    );
    Ok(())
}
