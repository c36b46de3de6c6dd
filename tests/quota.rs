//! The storage quota (`storage.max_bytes`) on a real 3-node cluster: puts fill the live data
//! size up to the limit, then answer `no_space` while gets, scans and deletes keep working;
//! deletes give the space back at once. Every node reports the same exact size, after a
//! restart (it is persisted) and after catching up by a snapshot install (it is recounted).
//! And a data directory marked with a future format version is refused at start.

mod common;

use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Result};
use common::{error_code, Cluster, ClusterOptions};
use serde_json::{json, Value};

const MAX_BYTES: u64 = 64 * 1024;
/// JSON text of each filler value: a string of this many characters plus its quotes.
const VALUE_CHARS: usize = 1000;
/// Far more puts than fit under the quota: the loop must end by `no_space` well before.
const MAX_PUTS: usize = 200;
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(90);

/// What one key counts for: key bytes + stored value (8-byte revision + JSON text).
fn entry_bytes(key: &str, value: &Value) -> u64 {
    (key.len() + 8 + value.to_string().len()) as u64
}

fn filler(i: usize) -> Value {
    let c = char::from(b'a' + (i % 26) as u8);
    Value::String(c.to_string().repeat(VALUE_CHARS))
}

async fn data_bytes(cluster: &Cluster, id: u64) -> Result<u64> {
    cluster.status(id).await?["storage"]["data_bytes"]
        .as_u64()
        .ok_or_else(|| anyhow!("node {id}: no storage.data_bytes in status"))
}

/// The live data size as a client can count it: every key and value from a full scan.
async fn scanned_bytes(cluster: &Cluster) -> Result<(u64, usize)> {
    let reply = cluster
        .request("kv.scan", json!({"prefix": "", "limit": 10000}))
        .await?;
    ensure!(
        reply["ok"] == json!(true) && reply["more"] == json!(false),
        "{reply}"
    );
    let items = reply["items"].as_array().cloned().unwrap_or_default();
    let mut sum = 0;
    for it in &items {
        let key = it["key"].as_str().ok_or_else(|| anyhow!("no key: {it}"))?;
        sum += entry_bytes(key, &it["value"]);
    }
    Ok((sum, items.len()))
}

/// Waits until every live node has applied what the leader has and reports `expected`.
async fn wait_all_report(cluster: &Cluster, expected: u64) -> Result<()> {
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let applied = cluster.status(leader).await?["last_applied"]
        .as_u64()
        .unwrap_or(0);
    cluster.wait_all_applied(applied, CATCH_UP_TIMEOUT).await?;
    let mut seen = Vec::new();
    for id in cluster.live_ids() {
        seen.push((id, data_bytes(cluster, id).await?));
    }
    ensure!(
        seen.iter().all(|(_, b)| *b == expected),
        "storage.data_bytes per node {seen:?}, expected {expected} on each"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_refuses_puts_when_full_and_deletes_free_space() -> Result<()> {
    let opts = ClusterOptions::default()
        .env("CONCORD_STORAGE__MAX_BYTES", MAX_BYTES)
        .env("CONCORD_LIMITS__MAX_VALUE_BYTES", 4096)
        .env("CONCORD_RAFT__SNAPSHOT_EVERY", 100)
        .env("CONCORD_RAFT__MAX_IN_SNAPSHOT_LOG_TO_KEEP", 10)
        // The change log counts in the quota too: kept short here, so that what this test
        // counts is the live data (the change log's share is tested in tests/watch.rs).
        .env("CONCORD_HISTORY__RETAIN_MS", 300)
        .env("CONCORD_HISTORY__CHECK_MS", 100);
    let cluster = Cluster::start_format_2(3, opts).await?;
    let r = quota_scenario(&cluster).await;
    cluster.fail_on_err(r)
}

async fn quota_scenario(cluster: &Cluster) -> Result<()> {
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let status = cluster.status(leader).await?;
    ensure!(
        status["storage"]["max_bytes"] == json!(MAX_BYTES),
        "admin.status does not show the quota: {}",
        status["storage"]
    );

    // Fill until the first `no_space`. Puts go one at a time, so nothing is in flight
    // when the leader checks: the size never passes the limit.
    let mut stored: Vec<(String, Value)> = Vec::new();
    let mut refusal = None;
    for i in 0..MAX_PUTS {
        let (key, value) = (format!("q-{i:04}"), filler(i));
        let reply = cluster
            .request("kv.put", json!({"key": key, "value": value}))
            .await?;
        match error_code(&reply) {
            None if reply["ok"] == json!(true) => stored.push((key, value)),
            Some("no_space") => {
                refusal = Some(reply);
                break;
            }
            _ => bail!("put {key}: {reply}"),
        }
    }
    let Some(refusal) = refusal else {
        bail!("{MAX_PUTS} puts of ~{VALUE_CHARS} bytes never hit a quota of {MAX_BYTES}");
    };
    let used: u64 = stored.iter().map(|(k, v)| entry_bytes(k, v)).sum();
    eprintln!(
        "{} puts accepted ({used} bytes), then: {refusal}",
        stored.len()
    );
    let message = refusal["error"]["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains(&MAX_BYTES.to_string())
            && message.contains(&used.to_string())
            && message.contains("deletes still work"),
        "the no_space message should name the size ({used}), the limit ({MAX_BYTES}) and say \
         that deletes still work: {message}"
    );
    ensure!(used <= MAX_BYTES, "{used} bytes stored, over the quota");
    ensure!(
        used + entry_bytes("q-0000", &filler(0)) > MAX_BYTES,
        "refused although another value fits: {used} of {MAX_BYTES}"
    );
    // Every node counts exactly what the client stored.
    wait_all_report(cluster, used).await?;

    // Full: reads, scans and deletes work; a put that does not grow the data too.
    let (key0, value0) = &stored[0];
    let got = cluster.request("kv.get", json!({"key": key0})).await?;
    ensure!(got["value"] == *value0, "get {key0} while full: {got}");
    let (scanned, n) = scanned_bytes(cluster).await?;
    ensure!(
        (scanned, n) == (used, stored.len()),
        "scan while full: {n} keys, {scanned} bytes; stored {} keys, {used} bytes",
        stored.len()
    );
    let same_size = filler(7);
    let reply = cluster
        .request("kv.put", json!({"key": key0, "value": same_size}))
        .await?;
    ensure!(
        reply["ok"] == json!(true),
        "overwrite with a value of the same size while full: {reply}"
    );
    let reply = cluster
        .request("kv.put", json!({"key": "new-key", "value": filler(1)}))
        .await?;
    ensure!(
        error_code(&reply) == Some("no_space"),
        "a new key while full: {reply}"
    );

    let freed: Vec<(String, Value)> = stored.drain(..10).collect();
    for (key, _) in &freed {
        let reply = cluster.request("kv.delete", json!({"key": key})).await?;
        ensure!(
            reply["ok"] == json!(true) && reply["deleted"] == json!(true),
            "delete {key} while full: {reply}"
        );
    }
    let freed_bytes: u64 = freed.iter().map(|(k, _)| entry_bytes(k, &same_size)).sum();
    // `freed[0]` was overwritten with `same_size`, the same length as every filler.
    let after_delete = used - freed_bytes;
    wait_all_report(cluster, after_delete).await?;

    // The deleted values stay in the change log (it counts in the quota) until compaction
    // gives them up: compacted by hand here, space is back.
    let r = cluster
        .request("admin.compact", json!({"revision": u64::MAX}))
        .await?;
    ensure!(r["ok"] == json!(true), "compact: {r}");
    for id in cluster.ids() {
        concord_harness::cluster::wait_until(
            Duration::from_secs(20),
            "the change log given up on every node",
            || async move {
                let s = cluster.status(id).await?;
                Ok(s["history"]["bytes"].as_u64().is_some_and(|b| b <= 4096))
            },
        )
        .await?;
    }
    // Writes succeed again.
    for i in 0..5 {
        let (key, value) = (format!("again-{i}"), filler(i));
        let reply = cluster
            .request("kv.put", json!({"key": key, "value": value}))
            .await?;
        ensure!(
            reply["ok"] == json!(true),
            "put {key} after deletes: {reply}"
        );
        stored.push((key, value));
    }
    let now: u64 = stored.iter().map(|(k, v)| entry_bytes(k, v)).sum();
    wait_all_report(cluster, now).await?;

    // Persisted: a follower restarted after kill -9 reports the same figure.
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let follower = cluster.a_follower(leader)?;
    cluster.kill(follower).await?;
    cluster.restart(follower).await?;
    wait_all_report(cluster, now).await?;

    // Room for the fill below: its writes add to the change log, which counts in the
    // quota until compaction (after 300 ms here) gives it up.
    let half = stored.len() / 2;
    for (key, _) in stored.drain(..half) {
        let reply = cluster.request("kv.delete", json!({"key": key})).await?;
        ensure!(reply["ok"] == json!(true), "delete {key}: {reply}");
    }

    // Recounted on snapshot install: a follower left behind until the leader has purged
    // its log catches up by snapshot and reports the same figure as the rest.
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let lagging = cluster.a_follower(leader)?;
    let purged = cluster.restart_behind_snapshot(lagging).await?;
    // The fill overwrote its keys many times: from the cluster's format switch on, such a
    // key holds a full record (its create revision, version and lease: 25 bytes more than
    // the plain one a scan's sum assumes). So the nodes must agree with the leader, whose
    // figure is the scanned sum plus 25 bytes for some of the keys.
    let (scanned, keys) = scanned_bytes(cluster).await?;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let expected = data_bytes(cluster, leader).await?;
    let extra = expected.saturating_sub(scanned);
    ensure!(
        expected >= scanned && extra % 25 == 0 && extra <= 25 * keys as u64,
        "the leader counts {expected} bytes, the scan {scanned} for {keys} keys"
    );
    wait_all_report(cluster, expected).await?;
    let snapshot_index = cluster.status(lagging).await?["snapshot_index"]
        .as_u64()
        .unwrap_or(0);
    ensure!(
        snapshot_index >= purged,
        "node {lagging} caught up without a snapshot at or past the purge point {purged} \
         (its snapshot index: {snapshot_index})"
    );
    Ok(())
}

/// A data directory whose format version is newer than this build's: `concord serve`
/// exits non-zero and names the version it found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_format_data_dir_is_refused_at_start() -> Result<()> {
    use concord::store::migrations::CURRENT_FORMAT;
    let cluster = Cluster::start_with(1, ClusterOptions::default().start_nodes(false)).await?;
    let future = CURRENT_FORMAT + 7;
    {
        let store = concord::store::Store::open(&cluster.data_dir(1), 8, true)?;
        store.meta.insert(
            concord::store::keys::META_FORMAT_VERSION,
            future.to_be_bytes(),
        )?;
        store.db.persist(fjall::PersistMode::SyncAll)?;
    }
    let status = cluster
        .run_node_until_exit(1, Duration::from_secs(30))
        .await?;
    let log = cluster.log(1);
    ensure!(!status.success(), "the node exited 0:\n{log}");
    ensure!(
        log.contains(&format!("format version {future}"))
            && log.contains(&format!("knows up to {CURRENT_FORMAT}")),
        "the node's output does not name the version found ({future}) and the one it knows \
         ({CURRENT_FORMAT}):\n{log}"
    );
    Ok(())
}
