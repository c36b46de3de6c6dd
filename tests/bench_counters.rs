//! `concord bench`'s counter ops against a real 3-node cluster (issue #23): the `cas` loop
//! (linearizable get, put with `if_revision`, a fresh get after each conflict) and `incr`
//! lose no update and count none twice. After a run of N successful ops the counters add up
//! to exactly N, which fails if a refused write were counted as applied, or an applied one
//! retried. Functional only: figures come from `just bench-compare`, not from here.

mod common;

use anyhow::{ensure, Context, Result};
use common::Cluster;
use serde_json::{json, Value};

/// Counter keys the runs share: few, so the 8 clients contend.
const KEYS: u64 = 3;

/// Runs `concord bench --json --mix <mix> --ops <ops>` against the cluster; its summary.
async fn bench(c: &Cluster, mix: &str, ops: u64) -> Result<Value> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .env("CONCORD_NATS__URL", c.nats_url())
        .env("CONCORD_NATS__SUBJECT_PREFIX", c.prefix())
        .args(["--json", "--timeout-ms", "10000", "bench", "--clients", "8"])
        .args(["--keys", &KEYS.to_string(), "--mix", mix])
        .args(["--ops", &ops.to_string(), "--duration", "120s"])
        .output()
        .await
        .context("running concord bench")?;
    ensure!(
        out.status.success(),
        "concord bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("the bench summary is JSON")
}

/// The sum of the counters `bench:ctr:0..KEYS` (a missing one is 0).
async fn counter_sum(c: &Cluster) -> Result<i64> {
    let mut sum = 0;
    for k in 0..KEYS {
        let r = c
            .request("kv.get", json!({"key": format!("bench:ctr:{k}")}))
            .await?;
        if r["ok"] == true {
            sum += r["value"].as_i64().context("a counter is an integer")?;
        } else {
            ensure!(r["error"]["code"] == "not_found", "get: {r}");
        }
    }
    Ok(sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_counters_lose_no_update() -> Result<()> {
    let cluster = Cluster::start_format_2(3, Default::default()).await?;
    let r = body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn body(c: &Cluster) -> Result<()> {
    let cas = bench(c, "cas=100", 150).await?;
    ensure!(
        cas["ops"] == 150 && cas["errors"] == json!({}),
        "cas run: {cas}"
    );
    let conflicts = cas.get("conflicts").and_then(Value::as_u64).unwrap_or(0);
    ensure!(
        counter_sum(c).await? == 150,
        "150 successful cas updates ({conflicts} conflicts) must add 150"
    );

    let incr = bench(c, "incr=100", 90).await?;
    ensure!(
        incr["ops"] == 90 && incr["errors"] == json!({}),
        "incr run: {incr}"
    );
    ensure!(
        incr.get("conflicts").is_none(),
        "incr has no conflicts: {incr}"
    );
    ensure!(counter_sum(c).await? == 240, "90 incrs more must add 240");
    Ok(())
}
