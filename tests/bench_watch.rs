//! `concord bench --watchers N` against a real 3-node cluster (issue #24): the watch
//! fan-out run creates its watches over the raw protocol, counts every acknowledged put's
//! event at every watcher, and cancels its watches at the end. After a run of N puts with W
//! watchers, W x N deliveries must be reported, none missing, no `seq` gap, and every watch
//! ended `cancelled`; this fails if events were lost, counted twice, or matched to the wrong
//! put. Functional only: the timings come from `just bench-compare`, not from here.

mod common;

use anyhow::{ensure, Context, Result};
use common::Cluster;
use serde_json::{json, Value};

const WATCHERS: u64 = 3;
const PUTS: u64 = 120;

/// Runs `concord bench --json --watchers WATCHERS --ops PUTS` against the cluster.
async fn bench(c: &Cluster) -> Result<Value> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .env("CONCORD_NATS__URL", c.nats_url())
        .env("CONCORD_NATS__SUBJECT_PREFIX", c.prefix())
        .args(["--json", "--timeout-ms", "10000", "bench", "--clients", "4"])
        .args(["--keys", "50", "--mix", "put=100"])
        .args(["--watchers", &WATCHERS.to_string(), "--watch-conns", "2"])
        .args(["--ops", &PUTS.to_string(), "--duration", "120s"])
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_watch_reports_every_delivery() -> Result<()> {
    let cluster = Cluster::start_format_2(3, Default::default()).await?;
    let r = body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn body(c: &Cluster) -> Result<()> {
    let s = bench(c).await?;
    ensure!(s["ops"] == PUTS && s["errors"] == json!({}), "puts: {s}");
    let w = &s["watch"];
    ensure!(w["watchers"] == WATCHERS, "watchers in place: {w}");
    let by_node: u64 = w["by_node"]
        .as_object()
        .context("watches by node")?
        .values()
        .filter_map(Value::as_u64)
        .sum();
    ensure!(by_node == WATCHERS, "every watch has a node: {w}");
    ensure!(w["puts_acked"] == PUTS, "every put acknowledged: {w}");
    ensure!(
        w["deliveries"] == PUTS * WATCHERS && w["missing"] == 0,
        "every put reaches every watcher once: {w}"
    );
    ensure!(w["incomplete_puts"] == 0 && w["gaps"] == 0, "{w}");
    ensure!(w["unmatched"] == 0, "no event without its put: {w}");
    ensure!(
        w["ends"] == json!({"cancelled": WATCHERS}),
        "every watch cancelled at the end: {w}"
    );
    ensure!(
        w["delivery_us"]["p50"].is_u64() && w["all_watchers_us"]["p99"].is_u64(),
        "distributions reported: {w}"
    );
    Ok(())
}
