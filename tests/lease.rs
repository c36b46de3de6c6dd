//! Leases and TTL over the wire (issue #25, DESIGN.md "Leases and TTL"): every lease subject
//! and refusal, keys attached by `lease` and by `ttl_ms`, `touch`, `incr`'s creation ttl,
//! revoke deleting every key at one revision, and expiry through the log (with `expire`
//! watch events), against a real 3-node cluster.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::{error_code, wait_until, Cluster, ClusterOptions};
use futures::StreamExt;
use serde_json::{json, Value};

async fn cluster() -> Result<Cluster> {
    Cluster::start_format_2(3, ClusterOptions::default()).await
}

fn ok(reply: &Value) -> Result<()> {
    ensure!(reply["ok"] == true, "expected ok, got {reply}");
    Ok(())
}

fn refused(reply: &Value, code: &str) -> Result<()> {
    ensure!(
        error_code(reply) == Some(code),
        "expected {code}, got {reply}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_granted_renewed_listed_and_revoked() -> Result<()> {
    let c = cluster().await?;
    let r = c
        .request("lease.grant", json!({"ttl_ms": 60_000, "id": 42}))
        .await?;
    ok(&r)?;
    ensure!(r["id"] == 42 && r["ttl_ms"] == 60_000, "{r}");
    refused(
        &c.request("lease.grant", json!({"ttl_ms": 60_000, "id": 42}))
            .await?,
        "conflict",
    )?;
    let taken = c
        .request("lease.grant", json!({"ttl_ms": 60_000, "id": 42}))
        .await?;
    ensure!(taken["error"]["reason"] == "lease_exists", "{taken}");
    let auto = c.request("lease.grant", json!({"ttl_ms": 30_000})).await?;
    ok(&auto)?;
    let auto_id = auto["id"].as_u64().context("an id")?;
    ensure!(auto_id >= 1 && auto_id != 42, "{auto}");
    for bad in [
        json!({"ttl_ms": 0}),
        json!({"ttl_ms": 1000, "id": 0}),
        json!({"ttl_ms": 1000, "id": 9_007_199_254_740_992u64}),
        json!({}),
        json!({"ttl_ms": 1000, "nope": 1}),
    ] {
        refused(&c.request("lease.grant", bad.clone()).await?, "bad_request")
            .with_context(|| format!("grant {bad}"))?;
    }

    // Keys attached by lease; the put reply names it, gets and scans carry it.
    let put = c
        .request("kv.put", json!({"key": "svc/a", "value": 1, "lease": 42}))
        .await?;
    ok(&put)?;
    ensure!(put["lease"] == 42, "{put}");
    ok(&c
        .request("kv.put", json!({"key": "svc/b", "value": 2, "lease": 42}))
        .await?)?;
    let got = c.request("kv.get", json!({"key": "svc/a"})).await?;
    ensure!(got["lease"] == 42, "{got}");
    refused(
        &c.request("kv.put", json!({"key": "svc/c", "value": 3, "lease": 999}))
            .await?,
        "not_found",
    )?;
    refused(
        &c.request(
            "kv.put",
            json!({"key": "svc/c", "value": 3, "lease": 42, "ttl_ms": 1000}),
        )
        .await?,
        "bad_request",
    )?;

    let ka = c.request("lease.keepalive", json!({"id": 42})).await?;
    ok(&ka)?;
    ensure!(ka["id"] == 42 && ka["ttl_ms"] == 60_000, "{ka}");
    let info = c
        .request("lease.get", json!({"id": 42, "keys": true}))
        .await?;
    ok(&info)?;
    let remaining = info["remaining_ms"].as_u64().context("remaining_ms")?;
    ensure!(remaining > 50_000 && remaining <= 60_000, "{info}");
    ensure!(info["keys"] == json!(["svc/a", "svc/b"]), "{info}");
    let list = c.request("lease.list", json!({})).await?;
    ok(&list)?;
    let ids: Vec<u64> = list["leases"]
        .as_array()
        .context("leases")?
        .iter()
        .filter_map(|l| l["id"].as_u64())
        .collect();
    ensure!(ids.contains(&42) && ids.contains(&auto_id), "{list}");
    let page = c
        .request("lease.list", json!({"limit": 1, "after": 0}))
        .await?;
    ensure!(
        page["more"] == true && page["leases"].as_array().map(Vec::len) == Some(1),
        "{page}"
    );

    // A put naming no lease detaches the key.
    ok(&c
        .request("kv.put", json!({"key": "svc/b", "value": 22}))
        .await?)?;
    let got = c.request("kv.get", json!({"key": "svc/b"})).await?;
    ensure!(got["lease"] == 0, "{got}");

    // Revoke: every attached key at one revision.
    ok(&c
        .request("kv.put", json!({"key": "svc/d", "value": 4, "lease": 42}))
        .await?)?;
    let revoked = c.request("lease.revoke", json!({"id": 42})).await?;
    ok(&revoked)?;
    ensure!(revoked["count"] == 2, "{revoked}");
    for key in ["svc/a", "svc/d"] {
        refused(
            &c.request("kv.get", json!({"key": key})).await?,
            "not_found",
        )?;
    }
    ok(&c.request("kv.get", json!({"key": "svc/b"})).await?)?;
    for op in ["lease.keepalive", "lease.revoke", "lease.get"] {
        refused(&c.request(op, json!({"id": 42})).await?, "not_found")
            .with_context(|| op.to_string())?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_with_their_lease_at_one_revision() -> Result<()> {
    let c = cluster().await?;
    // Watch the prefix from now on: the expiry shows as `expire` events.
    let client = c.connect().await?;
    let deliver = client.new_inbox();
    let mut sub = client.subscribe(deliver.clone()).await?;
    client.flush().await?;
    let created = c
        .request(
            "watch.create",
            json!({"prefix": "tmp/", "deliver": deliver}),
        )
        .await?;
    ok(&created)?;

    let granted = Instant::now();
    ok(&c
        .request("lease.grant", json!({"ttl_ms": 1500, "id": 7}))
        .await?)?;
    for key in ["tmp/a", "tmp/b", "tmp/c"] {
        ok(&c
            .request("kv.put", json!({"key": key, "value": key, "lease": 7}))
            .await?)?;
    }
    let mut expire_revisions = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while expire_revisions.len() < 3 {
        let msg = tokio::time::timeout_at(deadline.into(), sub.next())
            .await
            .context("no expire events in time")?
            .context("subscription closed")?;
        if let Some(reply) = msg.reply.clone() {
            client.publish(reply, "{}".into()).await?;
        }
        let body: Value = serde_json::from_slice(&msg.payload)?;
        for e in body["events"].as_array().into_iter().flatten() {
            if e["type"] == "expire" {
                expire_revisions.push(e["revision"].as_u64().context("revision")?);
            }
        }
    }
    let took = granted.elapsed();
    ensure!(
        took >= Duration::from_millis(1500),
        "the lease ended early: {took:?} after its grant was sent"
    );
    ensure!(
        expire_revisions.iter().all(|r| *r == expire_revisions[0]),
        "the keys expired at different revisions: {expire_revisions:?}"
    );
    refused(
        &c.request("lease.get", json!({"id": 7})).await?,
        "not_found",
    )?;
    refused(
        &c.request("kv.get", json!({"key": "tmp/a"})).await?,
        "not_found",
    )?;

    // A key's own lease (put ttl_ms), renewed by touch without a new revision.
    let put = c
        .request(
            "kv.put",
            json!({"key": "own/x", "value": 1, "ttl_ms": 1500}),
        )
        .await?;
    ok(&put)?;
    let own = put["lease"].as_u64().context("the own lease")?;
    let revision = put["revision"].as_u64().context("revision")?;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let t = c.request("kv.touch", json!({"key": "own/x"})).await?;
        ok(&t)?;
        ensure!(t["lease"] == own && t["key"] == "own/x", "{t}");
    }
    let got = c.request("kv.get", json!({"key": "own/x"})).await?;
    ensure!(
        got["revision"] == revision && got["version"] == 1,
        "touch made a new revision: {got}"
    );
    refused(
        &c.request("kv.touch", json!({"key": "nope"})).await?,
        "not_found",
    )?;
    ok(&c
        .request("kv.put", json!({"key": "plain", "value": 1}))
        .await?)?;
    refused(
        &c.request("kv.touch", json!({"key": "plain"})).await?,
        "not_found",
    )?;
    // Overwritten without a lease: the own lease ends with its last key.
    ok(&c
        .request("kv.put", json!({"key": "own/x", "value": 2}))
        .await?)?;
    refused(
        &c.request("lease.get", json!({"id": own})).await?,
        "not_found",
    )?;

    // incr's ttl_ms: a fixed window from the key's creation; later incrs keep its lease.
    let first = c
        .request(
            "kv.incr",
            json!({"key": "rate/u1", "ttl_ms": 1500, "max": 5}),
        )
        .await?;
    ok(&first)?;
    let second = c.request("kv.incr", json!({"key": "rate/u1"})).await?;
    ensure!(second["value"] == 2, "{second}");
    let got = c.request("kv.get", json!({"key": "rate/u1"})).await?;
    let window = got["lease"].as_u64().context("a lease")?;
    ensure!(window != 0, "incr with ttl_ms gave no lease: {got}");
    wait_until(Duration::from_secs(10), "the window to end", || async {
        let r = c.request("kv.get", json!({"key": "rate/u1"})).await?;
        Ok(error_code(&r) == Some("not_found"))
    })
    .await?;
    let next = c
        .request("kv.incr", json!({"key": "rate/u1", "ttl_ms": 1500}))
        .await?;
    ensure!(next["value"] == 1, "a new window starts at 1: {next}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_kept_alive_outlives_a_leader_kill_and_one_left_alone_ends() -> Result<()> {
    let c = cluster().await?;
    ok(&c
        .request("lease.grant", json!({"ttl_ms": 4000, "id": 1}))
        .await?)?;
    ok(&c
        .request("lease.grant", json!({"ttl_ms": 4000, "id": 2}))
        .await?)?;
    let sent = Instant::now();
    ok(&c.request("lease.keepalive", json!({"id": 2})).await?)?;
    let leader = c.wait_for_leader(Duration::from_secs(10)).await?;
    c.kill(leader).await?;
    // Lease 1 is kept alive through the election; lease 2 is left alone.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let r = c
            .request("lease.keepalive", json!({"id": 1, "timeout_ms": 3000}))
            .await?;
        ensure!(
            error_code(&r) != Some("not_found"),
            "a kept lease ended: {r}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ok(&c.request("lease.get", json!({"id": 1})).await?)?;
    wait_until(Duration::from_secs(15), "lease 2 to end", || async {
        let r = c.request("lease.get", json!({"id": 2})).await?;
        Ok(error_code(&r) == Some("not_found"))
    })
    .await?;
    ensure!(
        sent.elapsed() >= Duration::from_millis(4000),
        "lease 2 ended early"
    );
    Ok(())
}
