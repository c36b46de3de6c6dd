//! `concord bench --leases` and `--lock-handoff` against a real 3-node cluster (issue 25),
//! for a second or two each. Functional only (the timings come from `just bench-compare`):
//! the lease run must grant every lease, renew them with no `not_found` and no error, report
//! both put phases and revoke every lease; the hand-off run must hand the lock over between
//! its clients with every fenced put accepted and no two holders at once.

mod common;

use anyhow::{ensure, Context, Result};
use common::Cluster;
use serde_json::{json, Value};

const LEASES: u64 = 200;

/// Runs `concord bench --json ARGS` against the cluster.
async fn bench(c: &Cluster, args: &[&str]) -> Result<Value> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .env("CONCORD_NATS__URL", c.nats_url())
        .env("CONCORD_NATS__SUBJECT_PREFIX", c.prefix())
        .args(["--json", "--timeout-ms", "5000", "bench"])
        .args(args)
        .output()
        .await
        .context("running concord bench")?;
    ensure!(
        out.status.success(),
        "concord bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("the bench summary is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_leases_and_lock_handoff_report_sane_figures() -> Result<()> {
    let cluster = Cluster::start_format_2(3, Default::default()).await?;
    let r = async {
        leases(&cluster).await?;
        lock_handoff(&cluster).await
    }
    .await;
    cluster.fail_on_err(r)
}

async fn leases(c: &Cluster) -> Result<()> {
    let n = LEASES.to_string();
    let s = bench(
        c,
        &[
            "--clients",
            "4",
            "--keys",
            "50",
            "--duration",
            "2s",
            "--leases",
            &n,
            "--keepalive-every",
            "500ms",
            "--lease-ttl",
            "10s",
        ],
    )
    .await?;
    ensure!(
        s["ops"].as_u64() > Some(0) && s["errors"] == json!({}),
        "puts: {s}"
    );
    let l = &s["leases"];
    ensure!(
        l["granted"] == LEASES && l.get("grant_errors").is_none(),
        "grants: {l}"
    );
    let base = &l["puts_without_leases"];
    ensure!(
        base["ops"].as_u64() > Some(0) && base["errors"] == json!({}),
        "baseline: {l}"
    );
    ensure!(l["puts_kept"].as_f64() > Some(0.0), "puts kept: {l}");
    ensure!(l["keepalives_asked_per_sec"] == 400.0, "asked: {l}");
    let ok = l["keepalives_ok"].as_u64().context("keepalives_ok")?;
    // 2 s at 400/s asked: the schedule sends about 800; most must have been answered.
    ensure!(
        ok >= 200 && ok <= l["keepalives_sent"].as_u64().unwrap_or(0),
        "keepalives: {l}"
    );
    ensure!(
        l["keepalives_per_sec"].as_f64() > Some(100.0),
        "achieved: {l}"
    );
    ensure!(
        l["not_found"] == 0 && l["leases_lost"] == 0,
        "a lease lost: {l}"
    );
    ensure!(l.get("keepalive_errors").is_none(), "keepalive errors: {l}");
    let lat = &l["keepalive_latency_us"];
    ensure!(
        lat["p50"].as_u64() > Some(0) && lat["p99"].as_u64() >= lat["p50"].as_u64(),
        "latency: {l}"
    );
    ensure!(l["revoked"] == LEASES, "every lease revoked: {l}");
    Ok(())
}

async fn lock_handoff(c: &Cluster) -> Result<()> {
    let s = bench(c, &["--clients", "2", "--duration", "2s", "--lock-handoff"]).await?;
    ensure!(
        s["errors"] == json!({}),
        "every acquire, fenced put, release served: {s}"
    );
    let l = &s["lock"];
    let handoffs = l["handoffs"].as_u64().context("handoffs")?;
    ensure!(handoffs >= 10 && s["ops"] == handoffs, "hand-offs: {s}");
    ensure!(l["cycles"].as_u64() >= Some(handoffs), "cycles: {l}");
    ensure!(l["overlaps"] == 0, "two holders at once: {l}");
    ensure!(
        s["latency_us"]["p50"].as_u64() > Some(0) && l["handoffs_per_sec"].as_f64() > Some(0.0),
        "hand-off figures: {s}"
    );
    for step in ["acquire_us", "fenced_put_us", "release_us"] {
        ensure!(l[step]["p50"].as_u64() > Some(0), "{step}: {l}");
    }
    Ok(())
}
