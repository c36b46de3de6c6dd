//! Issue #20 item 7, over the real wire: work a client can ask for must not starve the Raft
//! core. 64 raw NATS clients run `admin.status {"digest": true}` and full scans of a
//! keyspace of a few thousand values of a few KB against a 3-node cluster for a bounded
//! time; the leader and the term stay where they were on every node, and a put sent
//! meanwhile succeeds within a deadline.
//!
//! What keeps it so: the digest and backups run behind the heavy pool's permit on threads of
//! their own (not tokio's blocking pool, where the log fsync runs), scan pages run on a scan
//! pool within a byte budget, and client replies over 4 KiB go out on a second NATS
//! connection, so heartbeats never queue behind large scan replies.
//!
//! On a 2-core machine the tree before these changes passes too (also with 12,000 keys, run
//! against its binary through `CONCORD_TEST_BIN`): this is a regression guard, not a proof.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Result};
use bytes::Bytes;
use common::{error_code, to_bytes, Cluster};
use serde::Deserialize;
use serde_json::{json, Value};

const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const KEYS: usize = 2500;
const VALUE_BYTES: usize = 4096;
/// Puts in flight while loading the keyspace.
const LOAD_CONCURRENCY: usize = 32;
const CLIENTS: usize = 64;
/// How long the 64 clients run.
const LOAD_TIME: Duration = Duration::from_secs(15);
/// What a put sent during the load may take, at most.
const PUT_DEADLINE: Duration = Duration::from_secs(5);
/// The deadline every load request names, and the client's own (a little longer).
const LOAD_REQUEST_MS: u64 = 5000;
const LOAD_CLIENT_TIMEOUT: Duration = Duration::from_secs(8);
/// Connections the load clients share (16 clients each).
const LOAD_CONNECTIONS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_and_full_scans_do_not_move_the_leader() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let r = starvation_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn starvation_body(cluster: &Cluster) -> Result<()> {
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    load_keyspace(cluster).await?;
    let before = cluster.status(leader).await?;
    let term = before["term"]
        .as_u64()
        .ok_or_else(|| anyhow!("status without term: {before}"))?;

    let counts = Arc::new(Counts::default());
    let end = Instant::now() + LOAD_TIME;
    let mut clients = tokio::task::JoinSet::new();
    let mut connections = Vec::new();
    for _ in 0..LOAD_CONNECTIONS {
        connections.push(cluster.connect().await?);
    }
    let ids = cluster.ids();
    for i in 0..CLIENTS {
        let nats = connections[i % LOAD_CONNECTIONS].clone();
        let counts = counts.clone();
        let digest_subject = cluster.subject(&format!("node.{}.admin.status", ids[i % ids.len()]));
        let scan_subject = cluster.subject("kv.scan");
        clients.spawn(async move {
            while Instant::now() < end {
                if i % 2 == 0 {
                    digest(&nats, &digest_subject, &counts).await;
                } else {
                    full_scan(&nats, &scan_subject, end, &counts).await;
                }
            }
        });
    }
    let watched = watch_during_load(cluster, leader, term, end).await;
    // Every client stops at `end` plus one request's client timeout at most.
    while clients.join_next().await.is_some() {}
    watched?;
    let after = (
        counts.digests.load(Ordering::Relaxed),
        counts.pages.load(Ordering::Relaxed),
        counts.busy.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    eprintln!("load: (digests, scan pages, busy, other failures) = {after:?}");
    ensure!(
        after.0 > 0 && after.1 > 0,
        "the load did not run: {after:?}"
    );
    same_leader_everywhere(cluster, leader, term).await
}

#[derive(Default)]
struct Counts {
    digests: AtomicU64,
    pages: AtomicU64,
    busy: AtomicU64,
    failed: AtomicU64,
}

/// Puts `KEYS` values of `VALUE_BYTES` under `big/`, `LOAD_CONCURRENCY` at a time.
async fn load_keyspace(cluster: &Cluster) -> Result<()> {
    use futures::StreamExt;
    let value = "v".repeat(VALUE_BYTES);
    let puts = futures::stream::iter(0..KEYS)
        .map(|i| {
            let body = json!({"key": format!("big/{i:05}"), "value": value});
            async move { cluster.request("kv.put", body).await }
        })
        .buffer_unordered(LOAD_CONCURRENCY);
    let replies: Vec<Result<Value>> = puts.collect().await;
    for r in replies {
        let r = r?;
        ensure!(r["ok"] == json!(true), "loading put failed: {r}");
    }
    Ok(())
}

async fn request(nats: &async_nats::Client, subject: &str, body: Value) -> Option<Bytes> {
    let asked = nats.request(subject.to_string(), to_bytes(&body));
    match tokio::time::timeout(LOAD_CLIENT_TIMEOUT, asked).await {
        Ok(Ok(msg)) => Some(msg.payload),
        _ => None,
    }
}

fn tally(counts: &Counts, reply: &Option<Bytes>) -> Option<Value> {
    let v: Value = match reply.as_ref().map(|b| serde_json::from_slice(b)) {
        Some(Ok(v)) => v,
        _ => {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    match error_code(&v) {
        None => Some(v),
        Some("busy") => {
            counts.busy.fetch_add(1, Ordering::Relaxed);
            None
        }
        Some(_) => {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

async fn digest(nats: &async_nats::Client, subject: &str, counts: &Counts) {
    let body = json!({"digest": true, "timeout_ms": LOAD_REQUEST_MS});
    let reply = request(nats, subject, body).await;
    if tally(counts, &reply).is_some() {
        counts.digests.fetch_add(1, Ordering::Relaxed);
    }
}

/// A scan page, read only as far as needed to ask for the next one.
#[derive(Deserialize)]
struct Page {
    items: Vec<PageItem>,
    #[serde(default)]
    more: bool,
}

#[derive(Deserialize)]
struct PageItem {
    key: String,
}

/// Scans all of `big/`, page after page, until the end or `end`.
async fn full_scan(nats: &async_nats::Client, subject: &str, end: Instant, counts: &Counts) {
    let mut after: Option<String> = None;
    while Instant::now() < end {
        let mut body = json!({"prefix": "big/", "timeout_ms": LOAD_REQUEST_MS});
        if let Some(a) = &after {
            body["after"] = json!(a);
        }
        let reply = request(nats, subject, body).await;
        if tally(counts, &reply).is_none() {
            return;
        }
        let page: Page = match reply.as_ref().map(|b| serde_json::from_slice(b)) {
            Some(Ok(p)) => p,
            _ => return,
        };
        counts.pages.fetch_add(1, Ordering::Relaxed);
        match page.items.last() {
            Some(last) if page.more => after = Some(last.key.clone()),
            _ => return,
        }
    }
}

/// Until `end`: a put every second must succeed within [`PUT_DEADLINE`], and no node may
/// report another term or leader. A status that does not answer in time is not a failure
/// by itself (the final check catches any election: terms only grow).
async fn watch_during_load(cluster: &Cluster, leader: u64, term: u64, end: Instant) -> Result<()> {
    let mut n = 0u64;
    while Instant::now() < end {
        let started = Instant::now();
        let body = json!({"key": format!("probe/{n}"), "value": n});
        let put = cluster.request_timeout("kv.put", body, PUT_DEADLINE).await;
        match put {
            Ok(r) if r["ok"] == json!(true) => {}
            Ok(r) => bail!(
                "put {n} during the load failed after {:?}: {r}",
                started.elapsed()
            ),
            Err(e) => bail!("put {n} during the load got no reply within {PUT_DEADLINE:?}: {e}"),
        }
        for id in cluster.ids() {
            let subject = format!("node.{id}.admin.status");
            let asked = cluster.request_timeout(&subject, json!({}), Duration::from_secs(2));
            if let Ok(s) = asked.await {
                check_view(id, &s, leader, term)?;
            }
        }
        n += 1;
        let next = started + Duration::from_secs(1);
        tokio::time::sleep_until(next.min(end).into()).await;
    }
    Ok(())
}

fn check_view(id: u64, status: &Value, leader: u64, term: u64) -> Result<()> {
    if status["ok"] != json!(true) {
        return Ok(());
    }
    let (seen_leader, seen_term) = (status["leader"].as_u64(), status["term"].as_u64());
    ensure!(
        seen_leader == Some(leader) && seen_term == Some(term),
        "node {id} reports leader {seen_leader:?} in term {seen_term:?}; before the load: leader {leader} in term {term}"
    );
    Ok(())
}

/// After the load every node still follows `leader` in `term`.
async fn same_leader_everywhere(cluster: &Cluster, leader: u64, term: u64) -> Result<()> {
    for id in cluster.ids() {
        let s = cluster.status(id).await?;
        check_view(id, &s, leader, term)?;
    }
    Ok(())
}
