//! Backup and restore on real clusters: `concord backup` under a write load, then
//! `concord restore` into fresh data dirs of a new cluster, which holds exactly the writes up
//! to the backup's revision (values, revisions, tokens), gets a new cluster id and goes on
//! from there; a restore into the bootstrapper alone fills the others by snapshot install;
//! damaged backups and used data dirs are refused with a clear message and nothing written.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use common::{to_bytes, Cluster, ClusterOptions};
use serde_json::{json, Value};

const ADMIN: &str = "backup-admin-credential-0123456789";
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CLI_TIMEOUT: Duration = Duration::from_secs(180);

fn auth_options() -> ClusterOptions {
    ClusterOptions::default()
        .env("CONCORD_AUTH__ENABLED", "true")
        .env("CONCORD_AUTH__ADMIN_TOKEN", ADMIN)
        .admin_token(ADMIN)
}

/// Fails the test on `Err` after marking the cluster failed (so its logs are printed).
fn fail_on_err<T>(cluster: &Cluster, r: Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            cluster.mark_failed();
            panic!("{e:#}");
        }
    }
}

struct CliRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `concord --json ARGS` against `cluster` (or with no NATS settings at all for the
/// offline `restore`), bounded by [`CLI_TIMEOUT`].
async fn cli(cluster: Option<&Cluster>, token: Option<&str>, args: &[&str]) -> Result<CliRun> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord"));
    cmd.arg("--json")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true);
    if let Some(c) = cluster {
        cmd.env("CONCORD_NATS__URL", c.nats_url())
            .env("CONCORD_NATS__SUBJECT_PREFIX", c.prefix());
    }
    if let Some(t) = token {
        cmd.env("CONCORD_TOKEN", t);
    }
    let out = tokio::time::timeout(CLI_TIMEOUT, cmd.output())
        .await
        .map_err(|_| anyhow!("concord {args:?} did not finish within {CLI_TIMEOUT:?}"))?
        .context("running concord")?;
    Ok(CliRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `concord backup --out FILE`; the header of the written file.
async fn backup(cluster: &Cluster, token: Option<&str>, file: &Path) -> Result<Value> {
    let file_arg = file.display().to_string();
    let run = cli(Some(cluster), token, &["backup", "--out", &file_arg]).await?;
    ensure!(
        run.code == Some(0),
        "backup failed ({:?}): {} {}",
        run.code,
        run.stdout,
        run.stderr
    );
    let v: Value = serde_json::from_str(run.stdout.trim())
        .with_context(|| format!("backup output is not JSON: {}", run.stdout))?;
    ensure!(v["ok"] == json!(true), "backup reply: {v}");
    ensure!(
        !Path::new(&format!("{file_arg}.part")).exists(),
        "FILE.part left behind"
    );
    let verified = concord::store::backup::verify(file)?;
    ensure!(
        v["revision"] == json!(verified.header.revision),
        "the CLI reports {v}, the file says {:?}",
        verified.header
    );
    Ok(serde_json::to_value(verified.header)?)
}

async fn restore(file: &Path, dir: &Path, members: &str) -> Result<CliRun> {
    let (f, d) = (file.display().to_string(), dir.display().to_string());
    cli(
        None,
        None,
        &["restore", &f, "--data-dir", &d, "--members", members],
    )
    .await
}

async fn restore_ok(file: &Path, dir: &Path, members: &str) -> Result<Value> {
    let run = restore(file, dir, members).await?;
    ensure!(
        run.code == Some(0),
        "restore into {dir:?} failed ({:?}): {} {}",
        run.code,
        run.stdout,
        run.stderr
    );
    Ok(serde_json::from_str(run.stdout.trim())?)
}

fn admin_headers() -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Authorization", format!("Bearer {ADMIN}").as_str());
    h
}

/// One put; `Some(revision)` when acknowledged.
async fn put(
    client: &async_nats::Client,
    subject: &str,
    headers: Option<async_nats::HeaderMap>,
    key: &str,
    value: &Value,
) -> Option<u64> {
    let mut req = async_nats::Request::new()
        .payload(to_bytes(&json!({"key": key, "value": value})))
        .timeout(Some(REQUEST_TIMEOUT));
    if let Some(h) = headers {
        req = req.headers(h);
    }
    let reply = client.send_request(subject.to_string(), req).await.ok()?;
    let v: Value = serde_json::from_slice(&reply.payload).ok()?;
    (v["ok"] == json!(true))
        .then(|| v["revision"].as_u64())
        .flatten()
}

/// Status of node `id` with the state digest.
async fn digest_status(cluster: &Cluster, id: u64, auth: bool) -> Result<Value> {
    let subject = cluster.subject(&format!("node.{id}.admin.status"));
    let headers = auth.then(admin_headers);
    let v = cluster
        .request_raw(
            &subject,
            headers,
            to_bytes(&json!({"digest": true})),
            REQUEST_TIMEOUT,
        )
        .await?;
    ensure!(v["ok"] == json!(true), "status of node {id}: {v}");
    Ok(v)
}

/// Waits until every node reports the same cluster id (not `old`), the same applied index
/// and the same digest; returns the new cluster id.
async fn wait_converged(cluster: &Cluster, old: &Value, auth: bool) -> Result<Value> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let mut last = String::from("nothing polled yet");
    loop {
        let mut views = Vec::new();
        for n in cluster.ids() {
            match digest_status(cluster, n, auth).await {
                Ok(s) => views.push((
                    s["cluster_id"].clone(),
                    s["last_applied"].clone(),
                    s["digest"].clone(),
                )),
                Err(e) => last = format!("{e:#}"),
            }
        }
        if views.len() == cluster.ids().len() {
            let id = views[0].0.clone();
            if !id.is_null() && &id != old && views.iter().all(|v| v == &views[0]) {
                return Ok(id);
            }
            last = format!("{views:?}");
        }
        if Instant::now() > deadline {
            cluster.mark_failed();
            bail!("the nodes did not agree on a new cluster id, applied index and digest within {CONVERGE_TIMEOUT:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the load wrote and got acknowledged: key → (value, revision).
type Acked = BTreeMap<String, (u64, u64)>;

/// `writers` tasks putting unique keys until `stop` (each bounded in count and time).
fn start_load(
    cluster: &Cluster,
    writers: usize,
    headers: Option<async_nats::HeaderMap>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Acked>> {
    (0..writers)
        .map(|w| {
            let client = cluster.client();
            let subject = cluster.subject("kv.put");
            let headers = headers.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut acked = Acked::new();
                for i in 0..5000u64 {
                    if stop.load(Ordering::Acquire) || Instant::now() > deadline {
                        break;
                    }
                    let key = format!("load-{w}-{i:05}");
                    let value = (w as u64) * 1_000_000 + i;
                    if let Some(rev) =
                        put(&client, &subject, headers.clone(), &key, &json!(value)).await
                    {
                        acked.insert(key, (value, rev));
                    }
                }
                acked
            })
        })
        .collect()
}

/// Every key of the cluster: key → (value, revision).
async fn all_keys(
    cluster: &Cluster,
    token: Option<&str>,
) -> Result<BTreeMap<String, (Value, u64)>> {
    let client =
        concord::client::Client::from_nats(cluster.client(), cluster.prefix(), REQUEST_TIMEOUT)
            .with_token(token.map(str::to_string));
    Ok(client
        .scan_all("")
        .await
        .map_err(|e| anyhow!("scan: {e}"))?
        .into_iter()
        .map(|i| (i.key, (i.value, i.revision)))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_restores_into_a_new_cluster() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("cluster.backup");

    // ----- the old cluster: a token, a load, a backup in the middle of it -----
    let cluster = Cluster::start_with(3, auth_options()).await.unwrap();
    let (old_id, reader, acked, header) = fail_on_err(
        &cluster,
        async {
            cluster.wait_for_leader(LEADER_TIMEOUT).await?;
            let made = cluster
                .request_raw(
                    &cluster.subject("admin.token.create"),
                    Some(admin_headers()),
                    to_bytes(&json!({"role": "read", "name": "before-backup"})),
                    REQUEST_TIMEOUT,
                )
                .await?;
            ensure!(made["ok"] == json!(true), "token create: {made}");
            let reader = made["token"].as_str().unwrap_or_default().to_string();
            let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
            let old_id = cluster.status(leader).await?["cluster_id"].clone();
            ensure!(!old_id.is_null(), "the old cluster has no id");

            let stop = Arc::new(AtomicBool::new(false));
            let load = start_load(&cluster, 3, Some(admin_headers()), stop.clone());
            let count = || async {
                let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
                Ok::<u64, anyhow::Error>(
                    cluster.status(leader).await?["revision"]
                        .as_u64()
                        .unwrap_or(0),
                )
            };
            cluster
                .wait_until(CONVERGE_TIMEOUT, "300 writes before the backup", || async {
                    Ok(count().await? >= 300)
                })
                .await?;
            let header = backup(&cluster, Some(ADMIN), &file).await?;
            let at_backup = header["revision"].as_u64().unwrap_or(0);
            // Writes keep coming after the backup's point.
            cluster
                .wait_until(CONVERGE_TIMEOUT, "200 writes after the backup", || async {
                    Ok(count().await? >= at_backup + 200)
                })
                .await?;
            stop.store(true, Ordering::Release);
            let mut acked = Acked::new();
            for l in load {
                acked.extend(l.await?);
            }
            Ok((old_id, reader, acked, header))
        }
        .await,
    );
    drop(cluster);

    let revision = header["revision"].as_u64().unwrap();
    let before: Vec<_> = acked.iter().filter(|(_, (_, r))| *r <= revision).collect();
    let after = acked.len() - before.len();
    assert!(
        before.len() >= 250 && after >= 100,
        "the load must straddle the backup: {} acknowledged writes at or before revision {revision}, {after} after",
        before.len()
    );
    assert_eq!(header["key_count"], json!(before.len()), "{header}");

    // ----- a new cluster on three fresh data dirs restored from the file -----
    let cluster = Cluster::start_with(3, auth_options().start_nodes(false))
        .await
        .unwrap();
    fail_on_err(&cluster, async {
        for id in cluster.ids() {
            let r = restore_ok(&file, &cluster.data_dir(id), "1,2,3").await?;
            ensure!(r["revision"] == json!(revision), "restore: {r}");
        }
        for id in cluster.ids() {
            cluster.start_node(id).await?;
        }
        cluster.wait_for_leader(LEADER_TIMEOUT).await?;
        let new_id = wait_converged(&cluster, &old_id, true).await?;
        ensure!(new_id != old_id, "the restored cluster kept the old id {old_id}");

        let keys = all_keys(&cluster, Some(ADMIN)).await?;
        ensure!(
            keys.len() == before.len(),
            "{} keys restored, {} acknowledged at or before revision {revision}",
            keys.len(),
            before.len()
        );
        for (key, (value, rev)) in &acked {
            match keys.get(key) {
                Some((v, r)) => ensure!(
                    *rev <= revision && v == &json!(value) && r == rev,
                    "{key}: restored {v} at {r}, acknowledged {value} at {rev} (backup at {revision})"
                ),
                None => ensure!(*rev > revision, "{key} (revision {rev} <= {revision}) is missing"),
            }
        }
        ensure!(keys.values().all(|(_, r)| *r <= revision), "a key is newer than the backup");

        // The token made before the backup works in the new cluster.
        let some_key = before.first().map(|(k, _)| k.as_str()).unwrap_or_default();
        let mut h = async_nats::HeaderMap::new();
        h.insert("Authorization", format!("Bearer {reader}").as_str());
        let got = cluster
            .request_raw(
                &cluster.subject("kv.get"),
                Some(h),
                to_bytes(&json!({"key": some_key})),
                REQUEST_TIMEOUT,
            )
            .await?;
        ensure!(got["ok"] == json!(true), "get with the restored token: {got}");

        // Revisions go on from the backup's.
        let client = cluster.client();
        let rev = put(&client, &cluster.subject("kv.put"), Some(admin_headers()), "after-restore", &json!(1))
            .await
            .ok_or_else(|| anyhow!("a put to the restored cluster failed"))?;
        ensure!(rev == revision + 1, "first new write got revision {rev}, backup at {revision}");
        wait_converged(&cluster, &old_id, true).await?;
        Ok(())
    }
    .await);
}

/// A cluster with `n` keys (no auth) and a backup of it in `file`; returns the backup header.
async fn backed_up_cluster(n: u64, file: &Path) -> Result<(Value, Value)> {
    let cluster = Cluster::start(3).await?;
    let r = async {
        let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
        let client = cluster.client();
        for i in 0..n {
            // 2 KB values: the file spans several chunks.
            let value = json!({"i": i, "pad": "x".repeat(2000)});
            put(
                &client,
                &cluster.subject("kv.put"),
                None,
                &format!("k-{i:04}"),
                &value,
            )
            .await
            .ok_or_else(|| anyhow!("put {i} failed"))?;
        }
        let id = cluster.status(leader).await?["cluster_id"].clone();
        Ok((backup(&cluster, None, file).await?, id))
    }
    .await;
    cluster.fail_on_err(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_into_the_bootstrapper_alone_fills_the_others_by_snapshot() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("b.backup");
    let (header, old_id) = backed_up_cluster(300, &file).await.unwrap();
    assert_eq!(header["key_count"], json!(300));
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(
        size > 2 * 256 * 1024,
        "the backup ({size} bytes) should span several chunks"
    );
    let revision = header["revision"].as_u64().unwrap();

    let cluster = Cluster::start_with(3, ClusterOptions::default().start_nodes(false))
        .await
        .unwrap();
    fail_on_err(
        &cluster,
        async {
            restore_ok(&file, &cluster.data_dir(1), "1,2,3").await?;
            for id in cluster.ids() {
                cluster.start_node(id).await?;
            }
            cluster.wait_for_leader(LEADER_TIMEOUT).await?;
            wait_converged(&cluster, &old_id, false).await?;
            for id in [2, 3] {
                let s = digest_status(&cluster, id, false).await?;
                ensure!(s["storage"]["keys"] == json!(300), "node {id}: {s}");
                ensure!(s["revision"] == json!(revision), "node {id}: {s}");
                ensure!(
                    cluster.log(id).contains("snapshot installed"),
                    "node {id} did not get the data by snapshot install"
                );
            }
            let keys = all_keys(&cluster, None).await?;
            ensure!(keys.len() == 300, "{} keys", keys.len());
            ensure!(
                keys["k-0123"].0 == json!({"i": 123, "pad": "x".repeat(2000)}),
                "{:?}",
                keys["k-0123"]
            );
            let rev = put(
                &cluster.client(),
                &cluster.subject("kv.put"),
                None,
                "next",
                &json!(1),
            )
            .await
            .ok_or_else(|| anyhow!("put after restore failed"))?;
            ensure!(
                rev == revision + 1,
                "revision {rev} after a backup at {revision}"
            );
            Ok(())
        }
        .await,
    );
}

/// Expects `restore` to fail with `needle` in its message and to leave `dir` as it was.
async fn refused(file: &Path, dir: &Path, needle: &str) -> Result<()> {
    let before: Vec<PathBuf> = list(dir);
    let run = restore(file, dir, "1,2,3").await?;
    ensure!(
        run.code == Some(1),
        "restore of {file:?} into {dir:?} did not fail: {}",
        run.stdout
    );
    ensure!(
        run.stderr.contains(needle),
        "restore of {file:?}: expected '{needle}' in: {}",
        run.stderr
    );
    let v: Value = serde_json::from_str(run.stdout.trim())
        .with_context(|| format!("--json output: {}", run.stdout))?;
    ensure!(
        v["ok"] == json!(false)
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle)),
        "{v}"
    );
    ensure!(list(dir) == before, "restore changed {dir:?}");
    Ok(())
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_backups_and_used_data_dirs_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let file = w.join("good.backup");
    backed_up_cluster(200, &file).await.unwrap();
    let good = std::fs::read(&file).unwrap();
    let body_at = {
        let first = good.iter().position(|&b| b == b'\n').unwrap();
        first + 1 + good[first + 1..].iter().position(|&b| b == b'\n').unwrap() + 1
    };
    let target = w.join("data");
    let r = async {
        let truncated = w.join("truncated.backup");
        std::fs::write(&truncated, &good[..good.len() - 1000])?;
        refused(&truncated, &target, "is truncated (expected").await?;

        let flipped = w.join("flipped.backup");
        let mut bytes = good.clone();
        bytes[body_at + (good.len() - body_at) / 2] ^= 0x20;
        std::fs::write(&flipped, &bytes)?;
        refused(&flipped, &target, "is corrupted: checksum mismatch").await?;

        let altered = w.join("altered.backup");
        let name = b"\"cluster_name\":\"concord-it\"";
        let at = good
            .windows(name.len())
            .position(|x| x == name)
            .ok_or_else(|| anyhow!("no cluster name in the header"))?;
        let mut bytes = good.clone();
        bytes[at + name.len() - 2] = b'X';
        std::fs::write(&altered, &bytes)?;
        refused(&altered, &target, "is corrupted: checksum mismatch").await?;

        let other = w.join("notes.txt");
        std::fs::write(&other, "just some text\nand more\n")?;
        refused(&other, &target, "is not a Concord backup").await?;
        ensure!(!target.exists(), "a refused restore created {target:?}");

        std::fs::create_dir_all(&target)?;
        std::fs::write(target.join("something"), "x")?;
        refused(&file, &target, "is not empty").await?;

        let used = w.join("used");
        restore_ok(&file, &used, "1,2,3").await?;
        refused(&file, &used, "holds a Concord store").await?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if let Err(e) = r {
        panic!("{e:#}");
    }
}
