//! Compare-and-swap through `concord::Client` and the `concord` CLI (issue #23), against real
//! clusters (real `nats-server`, real `concord serve` processes): `put_if` and `delete_if`
//! hold or answer a typed conflict with the key's current revision and write nothing, `get`
//! and `scan` return key metadata, `Client::update` loses no update under contention, and the
//! CLI's `--if-revision`, `get --json` and conflict exit status.

mod common;

use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use common::Cluster;
use concord::client::{Client, ClientError, KeyValue};
use serde_json::{json, Value};

/// Deadline for the first election of a fresh cluster.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The client's deadline per request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent writers of the contended counter, and the updates each makes.
const WRITERS: u64 = 8;
const UPDATES_EACH: u64 = 25;

/// A conflict's current revision, or an error naming what came instead.
fn conflict_of<T: std::fmt::Debug>(what: &str, r: Result<T, ClientError>) -> Result<u64> {
    match r {
        Err(e) => e
            .conflict_revision()
            .ok_or_else(|| anyhow!("{what}: expected a revision conflict, got {e:?}")),
        Ok(v) => Err(anyhow!(
            "{what}: expected a revision conflict, it applied: {v:?}"
        )),
    }
}

async fn read(client: &Client, key: &str) -> Result<Option<KeyValue>> {
    client
        .get_kv(key)
        .await
        .map_err(|e| anyhow!("get_kv {key}: {e}"))
}

/// Proves `put_if` and `delete_if` on a 3-node cluster: `if_revision` 0 creates a key once
/// (the second is a conflict carrying the revision of the first), the right revision
/// writes and a stale one conflicts with the current revision while the value stays;
/// deletes hold or conflict the same way, 0 on an absent key holds and deletes nothing,
/// and a condition on an absent key conflicts with revision 0. `get` and `scan` carry
/// `create_revision`, `version` and `lease`, and `store_revision`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_hold_or_conflict_with_the_current_revision() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let r = conditional_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn conditional_body(cluster: &Cluster) -> Result<()> {
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    let client = Client::from_nats(cluster.client(), cluster.prefix(), CLIENT_TIMEOUT);
    let r1 = client
        .put_if("a", &json!("v1"), 0)
        .await
        .map_err(|e| anyhow!("put_if a if_revision 0 on an absent key: {e}"))?;
    let cur = conflict_of(
        "the second put_if 0",
        client.put_if("a", &json!("x"), 0).await,
    )?;
    ensure!(cur == r1, "the conflict says revision {cur}, a is at {r1}");
    let kv = read(&client, "a").await?.context("a after its creation")?;
    ensure!(
        kv.value == json!("v1")
            && (kv.revision, kv.create_revision, kv.version, kv.lease) == (r1, r1, 1, 0)
            && kv.store_revision >= r1,
        "a after one put at {r1}: {kv:?}"
    );

    let r2 = client
        .put_if("a", &json!("v2"), r1)
        .await
        .map_err(|e| anyhow!("put_if a with its revision {r1}: {e}"))?;
    ensure!(
        r2 > r1,
        "the second write got revision {r2}, not above {r1}"
    );
    let stale = client.put_if("a", &json!("x"), r1).await;
    let cur = conflict_of("put_if with the stale revision", stale)?;
    ensure!(
        cur == r2,
        "the stale put's conflict says {cur}, a is at {r2}"
    );
    let kv = read(&client, "a").await?.context("a after the stale put")?;
    ensure!(
        kv.value == json!("v2") && (kv.revision, kv.create_revision, kv.version) == (r2, r1, 2),
        "a after a conflict must be the write at {r2}, created at {r1}, version 2: {kv:?}"
    );

    let cur = conflict_of("delete_if stale", client.delete_if("a", r1).await)?;
    ensure!(
        cur == r2,
        "the stale delete's conflict says {cur}, a is at {r2}"
    );
    ensure!(
        read(&client, "a").await?.is_some(),
        "a stale delete_if deleted a"
    );
    let (deleted, r3) = client
        .delete_if("a", r2)
        .await
        .map_err(|e| anyhow!("delete_if a with its revision {r2}: {e}"))?;
    ensure!(deleted && r3 > r2, "delete_if a: deleted {deleted} at {r3}");
    ensure!(read(&client, "a").await?.is_none(), "a is still there");
    let (deleted, _) = client
        .delete_if("a", 0)
        .await
        .map_err(|e| anyhow!("delete_if 0 of an absent key must hold: {e}"))?;
    ensure!(!deleted, "delete_if 0 of an absent key said it deleted");
    let cur = conflict_of(
        "delete_if of an absent key",
        client.delete_if("a", r3).await,
    )?;
    ensure!(
        cur == 0,
        "an absent key's conflict says revision {cur}, not 0"
    );
    let cur = conflict_of(
        "put_if on an absent key",
        client.put_if("b", &json!(1), 5).await,
    )?;
    ensure!(
        cur == 0,
        "an absent key's conflict says revision {cur}, not 0"
    );
    ensure!(
        read(&client, "b").await?.is_none(),
        "a put_if that conflicted wrote b"
    );

    // Re-created: version starts again at 1, create_revision is the new write.
    let r4 = client
        .put_if("a", &json!("again"), 0)
        .await
        .map_err(|e| anyhow!("re-create a: {e}"))?;
    let kv = read(&client, "a").await?.context("a re-created")?;
    ensure!(
        (kv.revision, kv.create_revision, kv.version) == (r4, r4, 1),
        "re-created a at {r4}: {kv:?}"
    );
    let page = client
        .scan(
            "a",
            None,
            None,
            concord::client::ReadConsistency::Linearizable,
        )
        .await
        .map_err(|e| anyhow!("scan a: {e}"))?;
    let item = page.items.first().context("scan of a is empty")?;
    ensure!(
        (
            item.revision,
            item.create_revision,
            item.version,
            item.lease
        ) == (r4, r4, 1, 0)
            && page.store_revision >= r4,
        "scan item {item:?}, store_revision {}",
        page.store_revision
    );
    Ok(())
}

/// Proves `Client::update` loses no update: 8 tasks each increment one counter 25 times
/// by read, compute, `if_revision` put, retrying on conflict, through every node of a
/// 3-node cluster at once; the counter ends at exactly 200, with version 200, and every
/// update got its own revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_lose_nothing() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let r = updates_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn updates_body(cluster: &Cluster) -> Result<()> {
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    let client = Client::from_nats(cluster.client(), cluster.prefix(), CLIENT_TIMEOUT);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..UPDATES_EACH {
                let incr = |v: Option<&Value>| json!(v.and_then(Value::as_u64).unwrap_or(0) + 1);
                let rev = client
                    .update("counter", incr)
                    .await
                    .map_err(|e| anyhow!("writer {w}, update {i}: {e}"))?;
                revisions.push(rev);
            }
            Ok::<_, anyhow::Error>(revisions)
        }));
    }
    let mut revisions = Vec::new();
    for t in tasks {
        revisions.extend(t.await.context("an update task")??);
    }
    let total = WRITERS * UPDATES_EACH;
    let kv = read(&client, "counter").await?.context("the counter")?;
    ensure!(
        kv.value == json!(total),
        "the counter is {}, not {total}: updates were lost",
        kv.value
    );
    ensure!(
        kv.version == total,
        "the counter's version is {}",
        kv.version
    );
    revisions.sort_unstable();
    revisions.dedup();
    ensure!(
        revisions.len() as u64 == total && revisions.last() == Some(&kv.revision),
        "{} distinct revisions for {total} updates, last {:?}, the counter at {}",
        revisions.len(),
        revisions.last(),
        kv.revision
    );
    Ok(())
}

/// Proves the CLI: `put --if-revision 0` creates, a second one exits 3 naming the current
/// revision (and `--json` prints the error with `reason` and `revision`); `get --json`
/// prints the value with its metadata and plain `get` keeps the value alone on stdout;
/// `put --if-revision` with the right revision writes, `delete --if-revision` with a stale
/// one exits 3 and deletes nothing, with the right one deletes; `get --json` of the deleted
/// key prints the `not_found` error with the `store_revision` the read saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_if_revision_and_metadata() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let r = cli_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn cli_body(cluster: &Cluster) -> Result<()> {
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    let put = cluster
        .run_cli(&["--json", "put", "c", "1", "--if-revision", "0"])
        .await?;
    ensure!(put.code == Some(0), "put --if-revision 0: {put:?}");
    let r1 = put.json()?["revision"].as_u64().context("put's revision")?;

    let again = cluster
        .run_cli(&["put", "c", "2", "--if-revision", "0"])
        .await?;
    ensure!(
        again.code == Some(3)
            && again.stderr.contains("conflict")
            && again.stderr.contains(&format!("revision {r1}")),
        "the second put --if-revision 0 must exit 3 naming revision {r1}: {again:?}"
    );
    let again = cluster
        .run_cli(&["--json", "put", "c", "2", "--if-revision", "0"])
        .await?;
    let err = &again.json()?["error"];
    ensure!(
        again.code == Some(3)
            && err["code"] == json!("conflict")
            && err["reason"] == json!("revision")
            && err["revision"] == json!(r1),
        "put --json conflict: {again:?}"
    );

    let get = cluster.run_cli(&["--json", "get", "c"]).await?;
    let v = get.json()?;
    ensure!(
        get.code == Some(0)
            && v["ok"] == json!(true)
            && v["value"] == json!(1)
            && v["revision"] == json!(r1)
            && v["create_revision"] == json!(r1)
            && v["version"] == json!(1)
            && v["lease"] == json!(0)
            && v["store_revision"].as_u64().is_some_and(|s| s >= r1),
        "get --json: {v}"
    );
    let plain = cluster.run_cli(&["get", "c"]).await?;
    ensure!(
        plain.code == Some(0) && plain.stdout.trim() == "1" && plain.stderr.contains("version 1"),
        "get: the value on stdout, metadata on stderr: {plain:?}"
    );

    let put = cluster
        .run_cli(&["--json", "put", "c", "2", "--if-revision", &r1.to_string()])
        .await?;
    ensure!(
        put.code == Some(0),
        "put with the current revision: {put:?}"
    );
    let r2 = put.json()?["revision"].as_u64().context("put's revision")?;
    let del = cluster
        .run_cli(&["delete", "c", "--if-revision", &r1.to_string()])
        .await?;
    ensure!(
        del.code == Some(3) && del.stderr.contains(&format!("revision {r2}")),
        "delete with a stale revision: {del:?}"
    );
    let del = cluster
        .run_cli(&["--json", "delete", "c", "--if-revision", &r2.to_string()])
        .await?;
    ensure!(
        del.code == Some(0) && del.json()?["deleted"] == json!(true),
        "delete with the current revision: {del:?}"
    );
    let gone = cluster.run_cli(&["--json", "get", "c"]).await?;
    let err = &gone.json()?["error"];
    ensure!(
        gone.code == Some(1)
            && err["code"] == json!("not_found")
            && err["store_revision"].as_u64().is_some_and(|s| s > r2),
        "get --json of c after its delete: the not_found error with store_revision: {gone:?}"
    );
    Ok(())
}
