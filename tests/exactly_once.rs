//! Exactly-once writes on real clusters (DESIGN.md "Exactly-once writes"): a write that
//! carries a `request_id` applies once however often it is sent, on any node, across a
//! leader's `kill -9`, restarts, a snapshot install, and a backup restored into a new
//! cluster; the same id with another command is `conflict` (`request_id`); and after
//! `idempotency.window_ms` of cluster time the id is forgotten, so a copy applies again.
//!
//! Revisions prove "once": every applied put takes a new revision, so a retry answered with
//! the first revision, while the key still holds it and a later put takes the next one,
//! applied nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use common::{to_bytes, wait_until, Cluster, ClusterOptions};
use serde_json::{json, Value};

const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A put of `value` to `key` with request id `id` (raw JSON text, so the test controls its
/// spelling); the reply.
async fn put_raw(c: &Cluster, subject: &str, body: String) -> Result<Value> {
    c.request_raw(
        &c.subject(subject),
        None,
        body.into_bytes().into(),
        REQUEST_TIMEOUT,
    )
    .await
}

async fn put_id(c: &Cluster, key: &str, value: &Value, id: &str) -> Result<Value> {
    let body = json!({"key": key, "value": value, "request_id": id, "timeout_ms": 5000});
    c.request_raw(&c.subject("kv.put"), None, to_bytes(&body), REQUEST_TIMEOUT)
        .await
}

/// A put that must be acknowledged; its revision.
async fn put_ok(c: &Cluster, key: &str, value: &Value, id: Option<&str>) -> Result<u64> {
    let mut body = json!({"key": key, "value": value, "timeout_ms": 5000});
    if let Some(id) = id {
        body["request_id"] = json!(id);
    }
    let reply = c
        .request_raw(&c.subject("kv.put"), None, to_bytes(&body), REQUEST_TIMEOUT)
        .await?;
    ensure!(reply["ok"] == json!(true), "put {key}: {reply}");
    reply["revision"]
        .as_u64()
        .ok_or_else(|| anyhow!("put {key}: no revision in {reply}"))
}

/// A linearizable get: (value, revision).
async fn get(c: &Cluster, key: &str) -> Result<(Value, u64)> {
    let reply = c.request("kv.get", json!({"key": key})).await?;
    ensure!(reply["ok"] == json!(true), "get {key}: {reply}");
    Ok((
        reply["value"].clone(),
        reply["revision"].as_u64().unwrap_or(0),
    ))
}

/// The same put again, retried until a leader answers it (a retry after `timeout` or
/// `cluster_not_ready` is exactly what request ids make safe); its revision.
async fn retry_put(c: &Cluster, key: &str, value: &Value, id: &str) -> Result<u64> {
    let mut last = Value::Null;
    for _ in 0..60 {
        match put_id(c, key, value, id).await {
            Ok(reply) if reply["ok"] == json!(true) => {
                return reply["revision"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("no revision in {reply}"));
            }
            Ok(reply) => last = reply,
            Err(e) => last = json!(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(anyhow!(
        "put {key} with id {id} never acknowledged; last: {last}"
    ))
}

/// Every node's `admin.status` with the state-machine digest.
async fn digests(c: &Cluster) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for id in c.live_ids() {
        let v = c
            .node_request(id, "admin.status", json!({"digest": true}))
            .await?;
        ensure!(v["ok"] == json!(true), "status of node {id}: {v}");
        out.push(v);
    }
    Ok(out)
}

/// Waits until every live node has applied the same index with the same digest (the digest
/// covers the idempotency table, which lives in the key space).
async fn wait_same_state(c: &Cluster) -> Result<Vec<Value>> {
    let deadline = std::time::Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let d = digests(c).await?;
        let same = d.windows(2).all(|w| {
            w[0]["digest"] == w[1]["digest"] && w[0]["last_applied"] == w[1]["last_applied"]
        });
        if same {
            return Ok(d);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "nodes did not converge within {CONVERGE_TIMEOUT:?}: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A retried put applies once: through the re-serialized body, a leader kill -9, restarts
/// and a snapshot install; another command under the same id is `conflict`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_applies_once_through_kills_restarts_and_installs() -> Result<()> {
    // Small snapshots and no log kept behind them: a node left behind catches up by install.
    let opts = ClusterOptions::default()
        .env("CONCORD_RAFT__SNAPSHOT_EVERY", 200)
        .env("CONCORD_RAFT__MAX_IN_SNAPSHOT_LOG_TO_KEEP", 0);
    let c = Cluster::start_with(3, opts).await?;
    let r = async {
        c.wait_stable(LEADER_TIMEOUT).await?;
        let id = "6f1c8f0e-4a8b-4d7e-9a52-1f0c2b3d4e5f";
        let value = json!({"color": "blue", "n": 1});
        let first = put_ok(&c, "eo:k", &value, Some(id)).await?;

        // The same command spelled differently, with another timeout: the stored reply.
        let respelled = format!(
            r#"{{ "key" : "eo:k", "timeout_ms": 700, "value" : {{ "color" : "blue" , "n" : 1 }}, "request_id": "{id}" }}"#
        );
        let again = put_raw(&c, "kv.put", respelled).await?;
        ensure!(
            again == json!({"ok": true, "revision": first}),
            "retry of the same put: {again} (first applied at {first})"
        );

        // Another command under the same id: refused, nothing written.
        let other = put_id(&c, "eo:k", &json!("red"), id).await?;
        ensure!(
            other["ok"] == json!(false)
                && other["error"]["code"] == json!("conflict")
                && other["error"]["reason"] == json!("request_id"),
            "the same id with another value: {other}"
        );
        let body = json!({"key": "eo:k", "request_id": id});
        let del = c.request("kv.delete", body).await?;
        ensure!(
            del["error"]["reason"] == json!("request_id"),
            "a delete under a put's id: {del}"
        );
        ensure!(get(&c, "eo:k").await? == (value.clone(), first), "eo:k changed");
        let next = put_ok(&c, "eo:other", &json!(1), None).await?;
        ensure!(next == first + 1, "the retries took revisions: next put at {next}, first at {first}");

        // The leader dies with kill -9: the new leader knows the id.
        let leader = c.wait_for_leader(LEADER_TIMEOUT).await?;
        c.kill(leader).await?;
        let after_kill = retry_put(&c, "eo:k", &value, id).await?;
        ensure!(after_kill == first, "after the leader's kill: revision {after_kill}, first {first}");
        c.restart(leader).await?;

        // Every node restarted: the table comes back from disk and the log.
        for n in c.ids() {
            c.kill(n).await?;
        }
        for n in c.ids() {
            c.restart(n).await?;
        }
        c.wait_stable(LEADER_TIMEOUT).await?;
        let after_restart = retry_put(&c, "eo:k", &value, id).await?;
        ensure!(after_restart == first, "after restarts: revision {after_restart}, first {first}");

        // A follower left behind until only a snapshot brings it back gets the table too.
        let leader = c.wait_for_leader(LEADER_TIMEOUT).await?;
        let behind = c.a_follower(leader)?;
        let second_id = "0b7e1f52-9d3c-4a61-8f20-5e6d7c8b9a01";
        let second = put_ok(&c, "eo:second", &json!(2), Some(second_id)).await?;
        c.restart_behind_snapshot(behind).await?;
        let states = wait_same_state(&c).await?;
        let entries: Vec<&Value> = states.iter().map(|s| &s["idempotency"]["entries"]).collect();
        ensure!(
            entries.windows(2).all(|w| w[0] == w[1]) && entries[0].as_u64() >= Some(2),
            "idempotency entries per node after the install: {entries:?}"
        );
        let installed = states
            .iter()
            .find(|s| s["node"] == json!(behind))
            .context("the installed node's status")?;
        ensure!(
            installed["snapshot_index"].as_u64() > Some(0),
            "node {behind} did not install a snapshot: {installed}"
        );
        // With the old leader gone (the installed node may lead now), the ids are known.
        c.kill(leader).await?;
        let new_leader = c.wait_for_leader(LEADER_TIMEOUT).await?;
        ensure!(new_leader != leader, "node {leader} still leads");
        ensure!(retry_put(&c, "eo:k", &value, id).await? == first, "eo:k applied again");
        ensure!(
            retry_put(&c, "eo:second", &json!(2), second_id).await? == second,
            "eo:second applied again"
        );
        c.restart(leader).await?;
        Ok(())
    }
    .await;
    c.fail_on_err(r)
}

/// The table travels in a backup into a new cluster, and an id is forgotten once
/// `idempotency.window_ms` of cluster time has passed: then the same put applies again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_survives_backup_and_restore_and_expires() -> Result<()> {
    const WINDOW_MS: u64 = 8_000;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("eo.backup");
    let opts = ClusterOptions::default().env("CONCORD_IDEMPOTENCY__WINDOW_MS", WINDOW_MS);
    let id = "3a2b1c0d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
    let value = json!("v1");
    let (first, applied_at) = {
        let c = Cluster::start_with(3, opts.clone()).await?;
        let r = async {
            let leader = c.wait_stable(LEADER_TIMEOUT).await?;
            // The leader proposes its configured window; every node applies it.
            wait_until(
                CONVERGE_TIMEOUT,
                "the window applied on every node",
                || async {
                    let d = digests(&c).await?;
                    Ok(d.iter()
                        .all(|s| s["idempotency"]["window_ms"] == json!(WINDOW_MS)))
                },
            )
            .await?;
            let first = put_ok(&c, "eo:b", &value, Some(id)).await?;
            let applied_at = c.status(leader).await?["applied_cluster_time_ms"]
                .as_u64()
                .unwrap_or(0);
            let f = file.display().to_string();
            let run = c.run_cli(&["--json", "backup", "--out", &f]).await?;
            ensure!(run.code == Some(0), "backup: {} {}", run.stdout, run.stderr);
            Ok((first, applied_at))
        }
        .await;
        c.fail_on_err(r)?
    };
    ensure!(applied_at > 0, "no cluster time applied with the put");

    let c = Cluster::start_with(3, opts.start_nodes(false)).await?;
    let r = async {
        for n in c.ids() {
            restore_into(&c, &file, &c.data_dir(n)).await?;
        }
        for n in c.ids() {
            c.start_node(n).await?;
        }
        let leader = c.wait_stable(LEADER_TIMEOUT).await?;
        ensure!(
            retry_put(&c, "eo:b", &value, id).await? == first,
            "the restored cluster applied the put again"
        );
        // Cluster time resumes from the backup's: wait past the record's expiry.
        wait_until(
            Duration::from_secs(30),
            "cluster time past the window",
            || async {
                let now = c.status(leader).await?["cluster_time_ms"]
                    .as_u64()
                    .unwrap_or(0);
                Ok(now > applied_at + WINDOW_MS + 500)
            },
        )
        .await?;
        let again = retry_put(&c, "eo:b", &value, id).await?;
        ensure!(
            again > first,
            "after the window the put must apply again: {again} vs {first}"
        );
        // And the new application is remembered in turn.
        ensure!(
            retry_put(&c, "eo:b", &value, id).await? == again,
            "applied a third time"
        );
        Ok(())
    }
    .await;
    c.fail_on_err(r)
}

async fn restore_into(c: &Cluster, file: &Path, dir: &Path) -> Result<()> {
    let (f, d) = (file.display().to_string(), dir.display().to_string());
    let run = c
        .run_cli(&[
            "--json",
            "restore",
            &f,
            "--data-dir",
            &d,
            "--members",
            "1,2,3",
        ])
        .await?;
    ensure!(
        run.code == Some(0),
        "restore into {d}: {} {}",
        run.stdout,
        run.stderr
    );
    Ok(())
}
