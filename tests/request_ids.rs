//! Writes that carry a `request_id`, as `concord::Client` and the CLI send them (issue #22),
//! against a real 3-node cluster (real `nats-server`, real `concord serve` processes): the
//! client re-sends a put whose first attempt got no answer from a leader that died, within
//! its deadline, and the put is acknowledged; the CLI sends the caller's id and shows it.

mod common;

use std::cell::Cell;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use common::Cluster;
use concord::client::Client;
use serde_json::json;
use uuid::Uuid;

/// Deadline for the first election of a fresh cluster, and for a new leader after a fault.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The client's deadline: attempts of max(1 s, 10 s / 3) leave room for three of them.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Proves that a put with a `request_id` rides through a `kill -9` of the leader: the leader
/// is frozen (SIGSTOP) before the put is sent, so the put's first attempt reaches it (on its
/// queue subscription, or forwarded by a follower that still follows it) and gets no answer;
/// the others elect a new leader and the frozen one is killed. Only a retry can be
/// acknowledged, and it must be, within the client's deadline; the key then reads back with
/// the acknowledged value and revision on the new leader, i.e. the put applied once.
///
/// When the cluster keeps ids (the idempotency table), this test is the place to add: the
/// same `put_with_id` again returns the same revision and the key's revision does not move;
/// the same id with another value gets `conflict` (`request_id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_request_id_is_retried_through_leader_kill() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let r = leader_kill_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn leader_kill_body(cluster: &Cluster) -> Result<()> {
    let old = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let client = Client::from_nats(cluster.client(), cluster.prefix(), CLIENT_TIMEOUT);
    let before = client
        .put("warm", &json!("up"))
        .await
        .map_err(|e| anyhow!("put before the fault failed: {e}"))?;
    cluster.wait_stable(LEADER_TIMEOUT).await?;

    cluster.pause(old).await?;
    let id = Uuid::new_v4();
    let sent = Instant::now();
    let put = tokio::spawn({
        let client = client.clone();
        async move { client.put_with_id("k", &json!("v1"), id).await }
    });

    // The frozen leader holds the first attempt; wait for the others to elect a new one.
    let new = Cell::new(None);
    let new_ref = &new;
    cluster
        .wait_until(
            LEADER_TIMEOUT,
            "a new leader among the two running nodes",
            || async move {
                match cluster.agreed_leader().await? {
                    Some(l) if l != old => {
                        new_ref.set(Some(l));
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            },
        )
        .await?;
    let new = new.get().ok_or_else(|| anyhow!("no new leader recorded"))?;
    cluster.kill(old).await?;
    eprintln!(
        "node {old} frozen then killed; node {new} leads {:?} after the put was sent",
        sent.elapsed()
    );

    let rev = put
        .await
        .context("the put task")?
        .map_err(|e| anyhow!("the put through the leader kill was not acknowledged: {e}"))?;
    eprintln!(
        "put k (request_id {id}) acknowledged at revision {rev}, {:?} after it was sent",
        sent.elapsed()
    );
    ensure!(rev > before, "k got revision {rev}, not above {before}");

    let got = client
        .get("k")
        .await
        .map_err(|e| anyhow!("get k after the kill: {e}"))?
        .ok_or_else(|| anyhow!("the acknowledged put of k is not readable"))?;
    ensure!(
        got.value == json!("v1") && got.revision == rev,
        "k reads back as {:?} at revision {}, acknowledged as \"v1\" at {rev}",
        got.value,
        got.revision
    );
    Ok(())
}

/// Proves the CLI's write commands send the caller's `--request-id` and show it in `--json`
/// output (a new id when none is given), and refuse an id that is not a UUID before sending
/// anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_writes_show_and_take_request_ids() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let r = cli_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn cli_body(cluster: &Cluster) -> Result<()> {
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    let id = Uuid::new_v4().to_string();
    let put = cluster
        .run_cli(&["--json", "put", "a", "1", "--request-id", &id])
        .await?;
    ensure!(put.code == Some(0), "put --request-id failed: {put:?}");
    let v = put.json()?;
    ensure!(
        v["ok"] == json!(true) && v["request_id"] == json!(id) && v["revision"].is_u64(),
        "put --json: {v}"
    );

    let del = cluster.run_cli(&["--json", "delete", "a"]).await?;
    ensure!(del.code == Some(0), "delete failed: {del:?}");
    let v = del.json()?;
    let fresh = v["request_id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| anyhow!("delete --json shows no request_id: {v}"))?;
    ensure!(
        fresh.get_version_num() == 4 && fresh.to_string() != id && v["deleted"] == json!(true),
        "delete --json: {v}"
    );

    let bad = cluster
        .run_cli(&["put", "a", "2", "--request-id", "not-a-uuid"])
        .await?;
    ensure!(
        bad.code == Some(2) && bad.stderr.contains("--request-id"),
        "an id that is not a UUID was not refused by the parser: {bad:?}"
    );
    let get = cluster.run_cli(&["--json", "get", "a"]).await?;
    ensure!(get.code != Some(0), "the refused put wrote a: {get:?}");
    Ok(())
}

/// Proves `Client::write`, the helper for writes this client has no method for, sends a
/// JSON object body with an id (its own or a new one) and gets the write's reply, and
/// refuses a body that is not an object before sending it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_write_sends_an_object_with_an_id() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let r = generic_write_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn generic_write_body(cluster: &Cluster) -> Result<()> {
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    let client = Client::from_nats(cluster.client(), cluster.prefix(), CLIENT_TIMEOUT);
    let put = cluster.subject("kv.put");
    let fresh = client
        .write(put.clone(), json!({"key": "w", "value": 1}))
        .await
        .map_err(|e| anyhow!("write without an id: {e}"))?;
    let own = client
        .write(
            put.clone(),
            json!({"key": "w", "value": 2, "request_id": Uuid::new_v4()}),
        )
        .await
        .map_err(|e| anyhow!("write with the caller's id: {e}"))?;
    let null = client
        .write(
            put.clone(),
            json!({"key": "w", "value": 3, "request_id": null}),
        )
        .await
        .map_err(|e| anyhow!("write with a null id: {e}"))?;
    let revs = [&fresh, &own, &null].map(|r| r["revision"].as_u64().unwrap_or(0));
    ensure!(
        revs[0] > 0 && revs[1] > revs[0] && revs[2] > revs[1],
        "write replies: {fresh}, {own}, {null}"
    );
    let got = client
        .get("w")
        .await
        .map_err(|e| anyhow!("get w: {e}"))?
        .ok_or_else(|| anyhow!("w was not written"))?;
    ensure!(got.value == json!(3), "w reads back as {:?}", got.value);

    let refused = client.write(put, json!(["not", "an", "object"])).await;
    ensure!(
        matches!(&refused, Err(e) if e.code() == concord::ErrorKind::BadRequest),
        "a non-object body: {refused:?}"
    );
    Ok(())
}
