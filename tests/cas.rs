//! Compare-and-swap over the wire (issue #23): key metadata on `get` and `scan`
//! (`create_revision`, `version`, `lease`, and the reply's `store_revision`), and
//! `if_revision` on `put` and `delete`, decided at apply in log order, against a real 3-node
//! cluster (real `nats-server`, real `concord serve` processes).

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::Cluster;
use serde_json::{json, Value};

/// A fresh cluster that writes log format 2 (conditions travel only in it).
async fn cas_cluster() -> Result<Cluster> {
    Cluster::start_format_2(3, Default::default()).await
}

fn revision(reply: &Value) -> Result<u64> {
    ensure!(reply["ok"] == true, "not ok: {reply}");
    reply["revision"].as_u64().context("no revision")
}

/// The conflict a failed `if_revision` answers: reason `revision` and the key's revision.
fn assert_conflict(reply: &Value, current: u64) -> Result<()> {
    let e = &reply["error"];
    ensure!(
        reply["ok"] == false
            && e["code"] == "conflict"
            && e["reason"] == "revision"
            && e["revision"].as_u64() == Some(current)
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("if_revision")),
        "expected conflict (revision {current}): {reply}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_revision_writes_and_key_metadata() -> Result<()> {
    let cluster = cas_cluster().await?;
    let r = metadata_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn metadata_body(c: &Cluster) -> Result<()> {
    let put = |body: Value| c.request("kv.put", body);
    // Create only if absent.
    let r1 = revision(&put(json!({"key": "cfg", "value": {"v": 1}, "if_revision": 0})).await?)?;
    assert_conflict(
        &put(json!({"key": "cfg", "value": {"v": 9}, "if_revision": 0})).await?,
        r1,
    )?;
    let got = c.request("kv.get", json!({"key": "cfg"})).await?;
    ensure!(
        got["value"] == json!({"v": 1})
            && got["revision"].as_u64() == Some(r1)
            && got["create_revision"].as_u64() == Some(r1)
            && got["version"] == 1
            && got["lease"] == 0
            && got["store_revision"].as_u64() >= Some(r1),
        "get after create: {got}"
    );

    // Swap from the revision read; a stale one changes nothing.
    let r2 = revision(&put(json!({"key": "cfg", "value": {"v": 2}, "if_revision": r1})).await?)?;
    let stale = put(json!({"key": "cfg", "value": {"v": 3}, "if_revision": r1})).await?;
    assert_conflict(&stale, r2)?;
    // The conflict carries the value it found, so a retry needs no read.
    ensure!(stale["error"]["value"] == json!({"v": 2}), "{stale}");
    let got = c.request("kv.get", json!({"key": "cfg"})).await?;
    ensure!(
        got["value"] == json!({"v": 2})
            && got["revision"].as_u64() == Some(r2)
            && got["create_revision"].as_u64() == Some(r1)
            && got["version"] == 2,
        "get after swap: {got}"
    );

    // Conditional deletes.
    assert_conflict(
        &c.request("kv.delete", json!({"key": "cfg", "if_revision": r1}))
            .await?,
        r2,
    )?;
    let del = c
        .request("kv.delete", json!({"key": "cfg", "if_revision": r2}))
        .await?;
    ensure!(del["ok"] == true && del["deleted"] == true, "delete: {del}");
    let r3 = revision(&del)?;
    let gone = c.request("kv.get", json!({"key": "cfg"})).await?;
    ensure!(
        gone["error"]["code"] == "not_found"
            && gone["error"]["store_revision"].as_u64() >= Some(r3),
        "get after delete: {gone}"
    );
    // Absent: `if_revision: 0` holds, any other does not.
    let del = c
        .request("kv.delete", json!({"key": "cfg", "if_revision": 0}))
        .await?;
    ensure!(del["ok"] == true && del["deleted"] == false, "{del}");
    let absent = put(json!({"key": "cfg", "value": 1, "if_revision": r2})).await?;
    assert_conflict(&absent, 0)?;
    ensure!(absent["error"].get("value").is_none(), "{absent}");
    // A large value is not repeated in the conflict: only its revision.
    let big = json!({"key": "big", "value": "x".repeat(5000)});
    let rb = revision(&put(big).await?)?;
    let r = put(json!({"key": "big", "value": 1, "if_revision": rb + 100})).await?;
    assert_conflict(&r, rb)?;
    ensure!(r["error"].get("value").is_none(), "{r}");

    // Re-created: a new create revision, the version starts again.
    let r4 = revision(&put(json!({"key": "cfg", "value": 4})).await?)?;
    let r5 = revision(&put(json!({"key": "cfg/b", "value": 5})).await?)?;
    let page = c.request("kv.scan", json!({"prefix": "cfg"})).await?;
    let items = page["items"].as_array().context("items")?;
    ensure!(
        items.len() == 2
            && items[0]["create_revision"].as_u64() == Some(r4)
            && items[0]["version"] == 1
            && items[1]["revision"].as_u64() == Some(r5)
            && items.iter().all(|i| i["lease"] == 0)
            && page["store_revision"].as_u64() >= Some(r5),
        "scan: {page}"
    );

    // A retried conditional write gets its stored reply, not a conflict with itself.
    let id = uuid::Uuid::new_v4().to_string();
    let body = json!({"key": "cfg", "value": 6, "if_revision": r4, "request_id": id});
    let first = revision(&put(body.clone()).await?)?;
    let again = put(body).await?;
    ensure!(
        revision(&again)? == first,
        "a retry of an applied CAS answered {again}"
    );

    // Bad conditions are refused as bad input.
    for bad in [json!(-1), json!("3"), json!(1.5)] {
        let r = put(json!({"key": "cfg", "value": 1, "if_revision": bad})).await?;
        ensure!(
            r["error"]["code"] == "bad_request",
            "if_revision {bad}: {r}"
        );
    }
    Ok(())
}

/// Read-modify-write from 8 tasks at once on one counter, each update a get and a put with
/// the revision it read, retried on `conflict`: no update is lost, so the counter ends at
/// the number of updates and its version counts each of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_swaps_lose_no_update() -> Result<()> {
    let cluster = cas_cluster().await?;
    let r = counter_body(&cluster).await;
    cluster.fail_on_err(r)
}

const TASKS: u64 = 8;
const UPDATES: u64 = 20;

async fn counter_body(c: &Cluster) -> Result<()> {
    revision(&c.request("kv.put", json!({"key": "n", "value": 0})).await?)?;
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let nats = c.client();
        let subject = |op: &str| format!("{}.kv.{op}", c.prefix());
        let (get, put) = (subject("get"), subject("put"));
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..UPDATES {
                let mut tries = 0;
                loop {
                    tries += 1;
                    ensure!(tries <= 500, "an update did not land in 500 tries");
                    let got = request(&nats, &get, json!({"key": "n"})).await?;
                    let (n, rev) = (got["value"].as_u64(), got["revision"].as_u64());
                    let (Some(n), Some(rev)) = (n, rev) else {
                        anyhow::bail!("get: {got}");
                    };
                    let body = json!({"key": "n", "value": n + 1, "if_revision": rev});
                    let r = request(&nats, &put, body).await?;
                    if r["ok"] == true {
                        break;
                    }
                    ensure!(r["error"]["reason"] == "revision", "put: {r}");
                    conflicts += 1;
                }
            }
            Ok(conflicts)
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await??;
    }
    let got = c.request("kv.get", json!({"key": "n"})).await?;
    ensure!(
        got["value"].as_u64() == Some(TASKS * UPDATES)
            && got["version"].as_u64() == Some(TASKS * UPDATES + 1),
        "after {} updates ({conflicts} conflicts on the way): {got}",
        TASKS * UPDATES
    );
    eprintln!("{} updates, {conflicts} conflicts retried", TASKS * UPDATES);
    Ok(())
}

async fn request(nats: &async_nats::Client, subject: &str, body: Value) -> Result<Value> {
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        nats.request(subject.to_string(), body.to_string().into()),
    )
    .await
    .context("no reply in 10 s")??;
    Ok(serde_json::from_slice(&reply.payload)?)
}
