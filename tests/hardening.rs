//! Issue #20, hardening: each test publishes what an attacker could (through a raw
//! `async_nats` client, never `concord::Client`) against a real node and checks the node
//! stays in control. Every wait is bounded by a deadline; a node that would hang fails the
//! test instead of stalling it.

mod common;

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};
use async_nats::HeaderMap;
use common::{error_code, to_bytes, wait_until, Cluster, ClusterOptions};
use serde_json::{json, Value};

const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// `limits.max_timeout_ms` of the node in `requested_timeout_is_clamped_to_the_max`.
const MAX_TIMEOUT_MS: u64 = 1000;
/// An hour: what an attacker asks for.
const HOUR_MS: u64 = 3_600_000;

/// A stale get that waits for a revision that will never come: it parks until its deadline.
fn parked_get(timeout_ms: Option<u64>) -> Value {
    let mut body = json!({
        "key": "never",
        "consistency": "stale",
        "min_revision": u64::MAX,
    });
    if let Some(ms) = timeout_ms {
        body["timeout_ms"] = json!(ms);
    }
    body
}

/// Waits until the node answers on the cluster subjects: it subscribes to them only after it
/// knows it leads, so a request sent as soon as the status says leader may find no responder.
async fn wait_serving(c: &Cluster) -> Result<()> {
    wait_until(
        Duration::from_secs(15),
        "the cluster subjects to answer",
        || async {
            let v = c
                .request_timeout("kv.get", json!({"key": "probe"}), Duration::from_secs(2))
                .await?;
            Ok(error_code(&v) == Some("not_found"))
        },
    )
    .await
}

/// Issue #20 item 1: a stale get for revision u64::MAX asking for an hour (in the body, and
/// in the `Concord-Timeout-Ms` header) is answered at `limits.max_timeout_ms`, not after an
/// hour: the clamp frees its in-flight slot. Before the clamp the node held it for the hour
/// and this test's 10 s client deadline expired with no reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_timeout_is_clamped_to_the_max() -> Result<()> {
    let c = Cluster::start_with(
        1,
        ClusterOptions::default()
            .env("CONCORD_LIMITS__DEFAULT_TIMEOUT_MS", 500)
            .env("CONCORD_LIMITS__MAX_TIMEOUT_MS", MAX_TIMEOUT_MS),
    )
    .await?;
    c.wait_for_leader(LEADER_TIMEOUT).await?;
    wait_serving(&c).await?;
    let client_wait = Duration::from_secs(10);
    let subject = c.subject("kv.get");
    let timeout_header = |ms: u64| {
        let mut h = HeaderMap::new();
        h.insert("Concord-Timeout-Ms", ms.to_string().as_str());
        Some(h)
    };
    for (how, headers, body) in [
        ("body timeout_ms", None, parked_get(Some(HOUR_MS))),
        ("header", timeout_header(HOUR_MS), parked_get(None)),
        (
            "header u64::MAX",
            timeout_header(u64::MAX),
            parked_get(None),
        ),
    ] {
        let started = Instant::now();
        let reply = c
            .request_raw(&subject, headers, to_bytes(&body), client_wait)
            .await
            .map_err(|e| anyhow!("{how}: no reply within {client_wait:?}: {e}"))?;
        let took = started.elapsed();
        ensure!(
            matches!(error_code(&reply), Some("timeout" | "cluster_not_ready")),
            "{how}: a parked get must end at its deadline: {reply}"
        );
        ensure!(
            took < Duration::from_millis(MAX_TIMEOUT_MS) + Duration::from_secs(2),
            "{how}: answered after {took:?}, max_timeout_ms is {MAX_TIMEOUT_MS}"
        );
        ensure!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("{MAX_TIMEOUT_MS} ms"))),
            "{how}: the reply names the clamped timeout: {reply}"
        );
    }
    Ok(())
}

/// Issue #20 item 1: with every key-space slot (`limits.max_in_flight` = 16) held by parked
/// stale gets, so that key-space requests answer `busy`, `admin.status` (node and cluster
/// subject) still answers ok: admin requests draw on a pool of their own. Before that
/// pool, the operator got `busy` too and could not even revoke the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_answers_while_kv_slots_are_full() -> Result<()> {
    const SLOTS: usize = 16;
    let c = Cluster::start_with(
        1,
        ClusterOptions::default().env("CONCORD_LIMITS__MAX_IN_FLIGHT", SLOTS),
    )
    .await?;
    let id = c.wait_for_leader(LEADER_TIMEOUT).await?;
    wait_serving(&c).await?;
    let nats = c.client();
    let subject = c.subject("kv.get");
    // Parked for the default max (60 s); the test ends long before, and the node with it.
    let mut parked = Vec::new();
    for _ in 0..SLOTS {
        let (nats, subject) = (nats.clone(), subject.clone());
        parked.push(tokio::spawn(async move {
            let req = async_nats::Request::new()
                .payload(to_bytes(&parked_get(Some(HOUR_MS))))
                .timeout(Some(Duration::from_secs(90)));
            nats.send_request(subject, req).await
        }));
    }
    // The slots are full once a request answers `busy`. The probe is itself a parked get: a
    // probe that raced the others to a free slot keeps it (its client gives up, the node
    // does not), so the slots fill up whatever the order of arrival.
    wait_until(
        Duration::from_secs(15),
        "kv requests to answer busy",
        || async {
            let v = c
                .request_timeout(
                    "kv.get",
                    parked_get(Some(HOUR_MS)),
                    Duration::from_millis(300),
                )
                .await?;
            Ok(error_code(&v) == Some("busy"))
        },
    )
    .await?;
    for subject in [
        c.subject(&format!("node.{id}.admin.status")),
        c.subject("admin.status"),
    ] {
        let v = c
            .request_raw(
                &subject,
                c.admin_headers(),
                to_bytes(&json!({})),
                Duration::from_secs(5),
            )
            .await?;
        ensure!(
            v["ok"] == json!(true),
            "{subject} while the kv slots are full: {v}"
        );
    }
    // Still full: the admin requests did not free or borrow a key-space slot.
    let v = c
        .request_timeout("kv.get", json!({"key": "probe"}), Duration::from_secs(5))
        .await?;
    ensure!(
        error_code(&v) == Some("busy"),
        "kv slots should still be full: {v}"
    );
    for p in parked {
        p.abort();
    }
    Ok(())
}

/// `storage.fsync = false` is announced (issue #20, item 8): a warning in the node's log at
/// start, `storage.fsync: false` in `admin.status`, and `concord_storage_fsync` 0, so an
/// operator cannot run without durability unknowingly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_off_is_announced() -> Result<()> {
    let c = Cluster::start_with(
        1,
        ClusterOptions::default().env("CONCORD_STORAGE__FSYNC", "false"),
    )
    .await?;
    let id = c.wait_for_leader(LEADER_TIMEOUT).await?;
    let r = async {
        let s = c.status(id).await?;
        ensure!(
            s["storage"]["fsync"] == json!(false),
            "admin.status should say storage.fsync false: {s}"
        );
        let log = c.log(id);
        ensure!(
            log.contains("storage.fsync = false") && log.contains("WARN"),
            "the node's log should warn that fsync is off:\n{log}"
        );
        Ok(())
    }
    .await;
    c.fail_on_err(r)
}
