//! Locks and fencing over the wire (issue #25, DESIGN.md "Locks and fencing"): acquire and
//! release, `lock_held` and `lock_wait`, waiters granted in line order by the cluster (no
//! polling), fences that grow with every holder, fenced writes and stale fences, claims that
//! are readable but not writable, and a lock that ends with its lease, against a real
//! 3-node cluster.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{error_code, wait_until, Cluster, ClusterOptions};
use serde_json::{json, Value};

async fn cluster() -> Result<Cluster> {
    Cluster::start_format_2(3, ClusterOptions::default()).await
}

fn ok(reply: &Value) -> Result<()> {
    ensure!(reply["ok"] == true, "expected ok, got {reply}");
    Ok(())
}

fn conflict(reply: &Value, reason: &str) -> Result<()> {
    ensure!(
        error_code(reply) == Some("conflict") && reply["error"]["reason"] == reason,
        "expected conflict {reason}, got {reply}"
    );
    Ok(())
}

fn fence(reply: &Value) -> Result<u64> {
    reply["fence"].as_u64().context("a fence")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_get_growing_fences_and_waiters_are_served_in_line() -> Result<()> {
    let c = cluster().await?;
    let first = c
        .request("lock.acquire", json!({"name": "job", "ttl_ms": 30_000}))
        .await?;
    ok(&first)?;
    ensure!(first["name"] == "job", "{first}");
    let f1 = fence(&first)?;
    let held = c
        .request(
            "lock.acquire",
            json!({"name": "job", "ttl_ms": 30_000, "wait_ms": 0}),
        )
        .await?;
    conflict(&held, "lock_held")?;
    ensure!(
        held["error"]["fence"] == f1,
        "lock_held names the holder: {held}"
    );

    // The claim is a key: readable, not writable.
    let claims = c
        .request("kv.scan", json!({"prefix": "_lock/job/"}))
        .await?;
    ensure!(
        claims["items"].as_array().map(Vec::len) == Some(1),
        "{claims}"
    );
    ensure!(claims["items"][0]["create_revision"] == f1, "{claims}");
    let claim_key = claims["items"][0]["key"]
        .as_str()
        .context("key")?
        .to_string();
    for (subject, body) in [
        ("kv.put", json!({"key": claim_key, "value": 1})),
        ("kv.delete", json!({"key": claim_key})),
        ("kv.delete", json!({"prefix": "_lock/"})),
        ("kv.incr", json!({"key": "_lock/job/x"})),
    ] {
        let r = c.request(subject, body.clone()).await?;
        ensure!(
            error_code(&r) == Some("bad_request"),
            "{subject} {body}: {r}"
        );
    }
    // A delete of everything leaves the claims alone.
    ok(&c
        .request("kv.delete", json!({"prefix": "", "all": true}))
        .await?)?;
    ok(&c.request("kv.get", json!({"key": claim_key})).await?)?;

    // Fenced writes: the holder's fence passes, any other is refused with the current one.
    let w = c
        .request(
            "kv.put",
            json!({"key": "guarded", "value": 1, "fence": {"lock": "job", "token": f1}}),
        )
        .await?;
    ok(&w)?;
    let stale = c
        .request(
            "kv.put",
            json!({"key": "guarded", "value": 2, "fence": {"lock": "job", "token": f1 - 1}}),
        )
        .await?;
    conflict(&stale, "fence")?;
    ensure!(stale["error"]["fence"] == f1, "{stale}");

    // Two waiters line up behind the holder; releases hand the lock on in line order.
    let (client, subject) = (c.connect().await?, c.subject("lock.acquire"));
    let waiter = |n: u64| {
        let (client, subject) = (client.clone(), subject.clone());
        async move {
            let body =
                json!({"name": "job", "ttl_ms": 30_000, "wait_ms": 8000, "timeout_ms": 10_000});
            let reply = tokio::time::timeout(
                Duration::from_secs(12),
                client.request(subject, body.to_string().into()),
            )
            .await??;
            anyhow::Ok((n, serde_json::from_slice::<Value>(&reply.payload)?))
        }
    };
    let second = tokio::spawn(waiter(2));
    let c2 = &c;
    // Not a sleep-and-hope: the second claim is seen in line before the third is sent.
    wait_until(Duration::from_secs(5), "the second claim", || async {
        let r = c2
            .request("kv.scan", json!({"prefix": "_lock/job/"}))
            .await?;
        Ok(r["items"].as_array().map(Vec::len) == Some(2))
    })
    .await?;
    let third = tokio::spawn(waiter(3));
    wait_until(Duration::from_secs(5), "the third claim", || async {
        let r = c2
            .request("kv.scan", json!({"prefix": "_lock/job/"}))
            .await?;
        Ok(r["items"].as_array().map(Vec::len) == Some(3))
    })
    .await?;
    conflict(
        &c.request("lock.release", json!({"name": "job", "fence": f1 + 1000}))
            .await?,
        "fence",
    )?;
    ok(&c
        .request("lock.release", json!({"name": "job", "fence": f1}))
        .await?)?;
    let (_, got2) = second.await??;
    ok(&got2)?;
    let f2 = fence(&got2)?;
    ensure!(f2 > f1, "fences grow: {f1} then {f2}");
    // The old holder's fence is stale now.
    conflict(
        &c.request(
            "kv.put",
            json!({"key": "guarded", "value": 3, "fence": {"lock": "job", "token": f1}}),
        )
        .await?,
        "fence",
    )?;
    ok(&c
        .request("lock.release", json!({"name": "job", "fence": f2}))
        .await?)?;
    let (_, got3) = third.await??;
    ok(&got3)?;
    let f3 = fence(&got3)?;
    ensure!(f3 > f2, "fences grow: {f2} then {f3}");
    ok(&c
        .request("lock.release", json!({"name": "job", "fence": f3}))
        .await?)?;
    // Released: no claim left, and a fenced write with the last fence is refused.
    let left = c
        .request("kv.scan", json!({"prefix": "_lock/job/"}))
        .await?;
    ensure!(left["items"].as_array().map(Vec::len) == Some(0), "{left}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_ends_withdraws_and_a_lock_ends_with_its_lease() -> Result<()> {
    let c = cluster().await?;
    ok(&c
        .request("lease.grant", json!({"ttl_ms": 2000, "id": 5}))
        .await?)?;
    let holder = c
        .request("lock.acquire", json!({"name": "l", "lease": 5}))
        .await?;
    ok(&holder)?;
    ensure!(holder["lease"] == 5, "{holder}");
    let f = fence(&holder)?;
    // Re-acquiring with the same lease answers the same claim.
    let again = c
        .request("lock.acquire", json!({"name": "l", "lease": 5}))
        .await?;
    ensure!(fence(&again)? == f, "{again}");

    let waited = c
        .request(
            "lock.acquire",
            json!({"name": "l", "ttl_ms": 10_000, "wait_ms": 300}),
        )
        .await?;
    conflict(&waited, "lock_wait")?;
    let claims = c.request("kv.scan", json!({"prefix": "_lock/l/"})).await?;
    ensure!(
        claims["items"].as_array().map(Vec::len) == Some(1),
        "the withdrawn claim is gone: {claims}"
    );
    let too_long = c
        .request(
            "lock.acquire",
            json!({"name": "l", "ttl_ms": 10_000, "wait_ms": 5000, "timeout_ms": 2000}),
        )
        .await?;
    ensure!(error_code(&too_long) == Some("bad_request"), "{too_long}");

    // Nobody keeps lease 5 alive: the lock passes to a waiter when it ends.
    let next = c
        .request_timeout(
            "lock.acquire",
            json!({"name": "l", "ttl_ms": 10_000, "wait_ms": 8000, "timeout_ms": 10_000}),
            Duration::from_secs(12),
        )
        .await?;
    ok(&next)?;
    ensure!(fence(&next)? > f, "{next}");
    let lease = next["lease"].as_u64().context("lease")?;
    ensure!(lease != 5, "a ttl acquire has a lease of its own: {next}");
    // The grant started that lease's countdown: it is alive and counting.
    let info = c.request("lease.get", json!({"id": lease})).await?;
    ok(&info)?;
    ensure!(info["remaining_ms"].as_u64() <= Some(10_000), "{info}");
    // Releasing ends the claim's own lease with it.
    ok(&c
        .request("lock.release", json!({"name": "l", "fence": fence(&next)?}))
        .await?)?;
    let gone = c.request("lease.get", json!({"id": lease})).await?;
    ensure!(error_code(&gone) == Some("not_found"), "{gone}");
    Ok(())
}
