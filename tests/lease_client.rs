//! Leases and locks through `concord::Client` and the `concord` CLI (issue #25), against
//! real 3-node clusters (real `nats-server`, real `concord serve` processes): a `Lease`
//! handle keeps its lease alive past several ttls and reports the loss after a revoke from
//! outside; lock guards give growing fences across holders and stale fences are refused;
//! `concord lock` passes the fence to CMD, and stops CMD and exits non-zero when its lease
//! is revoked from outside.

mod common;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use common::{wait_until, Cluster, ClusterOptions};
use concord::client::{Client, ClientError, LockOptions, LossReason, PutOptions};
use serde_json::json;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(30);

fn client(cluster: &Cluster) -> Client {
    Client::from_nats(cluster.client(), cluster.prefix(), CLIENT_TIMEOUT)
}

/// Proves the `Lease` handle: a 1 s lease kept alive for 4 s (renewed every ttl/3, its key
/// still there, no loss); a revoke from another client is reported as `not_found` within
/// the ttl; a dropped handle lets its lease expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_handle_keeps_its_lease_and_reports_the_loss() -> Result<()> {
    let cluster = Cluster::start_format_2(3, ClusterOptions::default()).await?;
    let r = lease_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn lease_body(cluster: &Cluster) -> Result<()> {
    let c = client(cluster);
    let ttl = Duration::from_secs(1);
    let lease = c.lease(ttl).await?;
    c.put_with("held", &json!(1), &PutOptions::new().lease(lease.id()))
        .await?;
    // Time is what is tested here: the lease must outlive 4 of its ttls.
    tokio::time::sleep(ttl * 4).await;
    let s = lease.state();
    ensure!(s.loss.is_none(), "the kept lease was lost: {s:?}");
    ensure!(s.renewals >= 6, "only {} renewals in 4 ttls", s.renewals);
    let info = c.lease_get(lease.id(), true).await?;
    ensure!(
        info.keys == Some(vec!["held".to_string()]),
        "lease keys: {info:?}"
    );
    ensure!(c.get_kv("held").await?.map(|kv| kv.lease) == Some(lease.id()));

    // Revoked from outside: the handle reports `not_found` within about a ttl.
    let revoked = c.lease_revoke(lease.id()).await?;
    ensure!(revoked.count == 1, "revoke: {revoked:?}");
    let loss = tokio::time::timeout(WAIT, lease.lost())
        .await
        .context("no loss reported after the revoke")?;
    ensure!(loss.reason == LossReason::NotFound, "loss: {loss:?}");
    ensure!(c.get("held").await?.is_none(), "the key outlived its lease");

    // A dropped handle stops renewing: its lease expires.
    let dropped = c.lease(ttl).await?;
    let id = dropped.id();
    drop(dropped);
    let cc = &c;
    wait_until(WAIT, "the dropped lease expires", || async move {
        match cc.lease_get(id, false).await {
            Err(e) if e.is_not_found() => Ok(true),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(false),
        }
    })
    .await?;
    let all = c.lease_list().await?;
    ensure!(all.iter().all(|l| l.id != id), "list: {all:?}");
    Ok(())
}

/// Proves lock guards: a second try finds the lock held (with the holder's fence); a waiter
/// is granted when the holder releases, with a greater fence; the old fence is refused on a
/// put, the new one accepted; releasing with a stale fence is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_guards_give_growing_fences_across_holders() -> Result<()> {
    let cluster = Cluster::start_format_2(3, ClusterOptions::default()).await?;
    let r = lock_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn lock_body(cluster: &Cluster) -> Result<()> {
    let c = client(cluster);
    let once = LockOptions {
        ttl: Duration::from_secs(3),
        wait: Duration::ZERO,
    };
    let first = c.lock("job", once).await?;
    match c.lock("job", once).await {
        Err(ClientError::LockHeld { fence, .. }) => {
            ensure!(fence == first.fence, "held by {fence}, not {}", first.fence)
        }
        Err(e) => return Err(anyhow!("second try: {e}")),
        Ok(g) => return Err(anyhow!("the lock was granted twice: {}", g.fence)),
    }
    let waits = LockOptions {
        wait: Duration::from_secs(20),
        ..once
    };
    let (wc, old) = (c.clone(), first.fence_token());
    let waiter = tokio::spawn(async move { wc.lock("job", waits).await });
    let cc = &c;
    wait_until(WAIT, "the waiter's claim is in line", || async move {
        Ok(cc.scan_all("_lock/job/").await?.len() == 2)
    })
    .await?;
    first.release().await?;
    let second = tokio::time::timeout(WAIT, waiter).await???;
    ensure!(
        second.fence > old.token,
        "fences {} then {}",
        old.token,
        second.fence
    );
    match c
        .put_with(
            "out",
            &json!("stale"),
            &PutOptions::new().fence(old.clone()),
        )
        .await
    {
        Err(ClientError::Fence { current, .. }) => ensure!(current == second.fence),
        other => return Err(anyhow!("a stale fence was not refused: {other:?}")),
    }
    c.put_with(
        "out",
        &json!("fresh"),
        &PutOptions::new().fence(second.fence_token()),
    )
    .await?;
    ensure!(c.get("out").await?.map(|v| v.value) == Some(json!("fresh")));
    match c.lock_release("job", old.token).await {
        Err(ClientError::Fence { current, .. }) => ensure!(current == second.fence),
        other => return Err(anyhow!("a stale release was not refused: {other:?}")),
    }
    second.release().await?;
    ensure!(c.scan_all("_lock/job/").await?.is_empty(), "claims left");
    Ok(())
}

/// Proves the CLI: `lock -- sh -c 'echo $CONCORD_LOCK_FENCE'` prints the fence and releases
/// the lock; `lock` exits non-zero and stops CMD when its lease is revoked from outside; and
/// the lease commands (`grant`, `get --keys`, `keepalive --once`, `list`, `revoke`),
/// `put --lease`, `put --ttl` and `touch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lock_runs_cmd_under_the_fence_and_stops_it_when_lost() -> Result<()> {
    let cluster = Cluster::start_format_2(3, ClusterOptions::default()).await?;
    let r = cli_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn cli_body(cluster: &Cluster) -> Result<()> {
    let c = client(cluster);
    let run = cluster
        .run_cli(&["lock", "cli", "--", "sh", "-c", "echo $CONCORD_LOCK_FENCE"])
        .await?;
    let fence: u64 = run
        .stdout
        .trim()
        .parse()
        .with_context(|| format!("{run:?}"))?;
    ensure!(run.code == Some(0) && fence > 0, "lock: {run:?}");
    ensure!(c.scan_all("_lock/cli/").await?.is_empty(), "not released");
    let status = cluster
        .run_cli(&["lock", "cli", "--", "sh", "-c", "exit 7"])
        .await?;
    ensure!(status.code == Some(7), "CMD's status: {status:?}");

    lost_lock(cluster, &c).await?;
    lease_commands(cluster, &c).await
}

/// `concord lock` whose lease is revoked from outside: CMD is stopped, the exit is non-zero.
async fn lost_lock(cluster: &Cluster, c: &Client) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 60", pid_file.display());
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord"));
    cmd.args([
        "--timeout-ms",
        "10000",
        "lock",
        "lost",
        "--ttl",
        "5s",
        "--grace",
        "2s",
    ])
    .args(["--", "sh", "-c", &script]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CONCORD_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("CONCORD_NATS__URL", cluster.nats_url())
        .env("CONCORD_NATS__SUBJECT_PREFIX", cluster.prefix())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().context("running concord lock")?;
    let pf = &pid_file;
    wait_until(WAIT, "CMD runs", || async move { Ok(pf.exists()) }).await?;
    let claims = c.scan_all("_lock/lost/").await?;
    let lease = claims.first().map(|i| i.lease).context("no claim")?;
    c.lease_revoke(lease).await?;
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .context("concord lock did not exit after its lease was revoked")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1) && stderr.contains("lost"),
        "exit {:?}, stderr: {stderr}",
        out.status
    );
    let pid = std::fs::read_to_string(&pid_file)?.trim().to_string();
    let alive = std::process::Command::new("kill")
        .args(["-0", &pid])
        .stderr(Stdio::null())
        .status()?
        .success();
    ensure!(!alive, "CMD (pid {pid}) still runs; stderr: {stderr}");
    Ok(())
}

async fn lease_commands(cluster: &Cluster, c: &Client) -> Result<()> {
    let grant = cluster.run_cli(&["lease", "grant", "--ttl", "30s"]).await?;
    let id: u64 = grant
        .stdout
        .trim()
        .parse()
        .with_context(|| format!("{grant:?}"))?;
    let ids = id.to_string();
    let put = cluster
        .run_cli(&["put", "sess/a", "1", "--lease", &ids])
        .await?;
    ensure!(put.code == Some(0), "put --lease: {put:?}");
    let get = cluster
        .run_cli(&["--json", "lease", "get", &ids, "--keys"])
        .await?;
    let v = get.json()?;
    ensure!(
        v["keys"] == json!(["sess/a"]) && v["ttl_ms"] == json!(30_000),
        "lease get: {get:?}"
    );
    let ka = cluster
        .run_cli(&["lease", "keepalive", &ids, "--once"])
        .await?;
    ensure!(
        ka.code == Some(0) && ka.stdout.contains("renewed"),
        "{ka:?}"
    );
    let list = cluster.run_cli(&["--json", "lease", "list"]).await?;
    let listed = list.json()?["leases"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(listed.iter().any(|l| l["id"] == json!(id)), "{list:?}");
    let ttl = cluster
        .run_cli(&["--json", "put", "tmp", "x", "--ttl", "20s"])
        .await?;
    let own = ttl.json()?["lease"].as_u64().unwrap_or(0);
    ensure!(own != 0, "put --ttl: {ttl:?}");
    let touch = cluster
        .run_cli(&["--json", "touch", "tmp", "--ttl", "40s"])
        .await?;
    ensure!(
        touch.json()?["ttl_ms"] == json!(40_000) && touch.json()?["lease"] == json!(own),
        "touch: {touch:?}"
    );
    let revoke = cluster.run_cli(&["lease", "revoke", &ids]).await?;
    ensure!(revoke.code == Some(0), "revoke: {revoke:?}");
    ensure!(c.get("sess/a").await?.is_none(), "key outlived the revoke");
    let gone = cluster.run_cli(&["lease", "get", &ids]).await?;
    ensure!(gone.code == Some(1), "get of a revoked lease: {gone:?}");
    Ok(())
}
