//! Issue #20 hardening of the read path, over the real wire: a read parked on `min_revision`
//! checks its token again when it wakes (item 3), a value nested past the depth limit is
//! refused before it is stored (item 5), and a scan without `limit` keeps to a lower
//! `limits.max_scan_limit` (item 8).

mod common;

use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use bytes::Bytes;
use common::{error_code, to_bytes, Cluster, ClusterOptions};
use concord::limits::MAX_VALUE_DEPTH;
use serde_json::{json, Value};

const ADMIN: &str = "bootstrap-admin-credential-0123456789";
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A request on `<prefix>.<suffix>` with `Authorization: Bearer <token>` if one is given.
async fn call(cluster: &Cluster, suffix: &str, body: Bytes, token: Option<&str>) -> Result<Value> {
    let headers = token.map(|t| {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Authorization", format!("Bearer {t}").as_str());
        h
    });
    cluster
        .request_raw(&cluster.subject(suffix), headers, body, REQUEST_TIMEOUT)
        .await
}

async fn ok(cluster: &Cluster, suffix: &str, body: Value, token: Option<&str>) -> Result<Value> {
    let reply = call(cluster, suffix, to_bytes(&body), token).await?;
    ensure!(
        reply["ok"] == json!(true),
        "{suffix} {body}: expected ok, got {reply}"
    );
    Ok(reply)
}

fn revision(reply: &Value) -> Result<u64> {
    reply["revision"]
        .as_u64()
        .ok_or_else(|| anyhow!("reply without revision: {reply}"))
}

/// A stale get parked on a `min_revision` this node has not applied yet, with a `read` token
/// that is revoked while it waits, answers `unauthorized` when the revision arrives: the
/// token is checked again after the wait, not only before it (issue #20, item 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_parked_before_a_revoke_is_refused_after_it() -> Result<()> {
    let opts = ClusterOptions::default()
        .env("CONCORD_AUTH__ENABLED", "true")
        .env("CONCORD_AUTH__ADMIN_TOKEN", ADMIN)
        .admin_token(ADMIN);
    let cluster = Cluster::start_with(1, opts).await?;
    let r = parked_read_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn parked_read_body(cluster: &Cluster) -> Result<()> {
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    let created = ok(
        cluster,
        "admin.token.create",
        json!({"role": "read"}),
        Some(ADMIN),
    )
    .await?;
    let (token, id) = match (created["token"].as_str(), created["id"].as_str()) {
        (Some(t), Some(i)) => (t.to_string(), i.to_string()),
        _ => return Err(anyhow!("create reply: {created}")),
    };
    let put = ok(
        cluster,
        "kv.put",
        json!({"key": "secret", "value": "before"}),
        Some(ADMIN),
    )
    .await?;
    let next = revision(&put)? + 1;
    // The token works now.
    ok(
        cluster,
        "kv.get",
        json!({"key": "secret", "consistency": "stale"}),
        Some(&token),
    )
    .await?;

    let parked = call(
        cluster,
        "kv.get",
        to_bytes(&json!({
            "key": "secret",
            "consistency": "stale",
            "min_revision": next,
            "timeout_ms": 8000,
        })),
        Some(&token),
    );
    let revoke_then_write = async {
        // The get must be parked before the revoke: give it time to arrive. A get that
        // arrived late would be refused at its first check and prove nothing, so the
        // revoke reply below is checked to come before the parked get's reply.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = ok(
            cluster,
            "admin.token.revoke",
            json!({ "id": id }),
            Some(ADMIN),
        )
        .await?;
        ensure!(r["revoked"] == json!(true), "revoke reply: {r}");
        // Whatever the revoke did to the revision, this put takes it past `next`. A parked
        // get can wake only once it applies, so never before it is sent.
        let put_sent_at = std::time::Instant::now();
        ok(
            cluster,
            "kv.put",
            json!({"key": "secret", "value": "after"}),
            Some(ADMIN),
        )
        .await?;
        Ok::<_, anyhow::Error>(put_sent_at)
    };
    let (reply, put_sent_at) = tokio::join!(
        async {
            let r = parked.await;
            (r, std::time::Instant::now())
        },
        revoke_then_write
    );
    let (reply, answered_at) = (reply.0?, reply.1);
    let put_sent_at = put_sent_at?;
    ensure!(
        error_code(&reply) == Some("unauthorized"),
        "a read parked before the revoke answered after it: {reply}"
    );
    // The answer came after the put that woke it was sent, so it was parked all along (a
    // get that arrived after the revoke would have been refused at once, before the put).
    ensure!(
        answered_at >= put_sent_at,
        "the get was answered before the put that would wake it was sent: {reply}"
    );
    Ok(())
}

/// `[[...{"s":"[[{\""}...]]`, `depth` arrays and objects deep, with a string holding
/// brackets and a quote at the bottom so the depth count must skip strings.
fn nested(depth: usize) -> String {
    format!(
        "{}{{\"s\":\"[[{{\\\"\"}}{}",
        "[".repeat(depth - 1),
        "]".repeat(depth - 1)
    )
}

/// A put of a value nested one level past `MAX_VALUE_DEPTH` is refused with `bad_request`
/// naming the limit and stores nothing; a value exactly at the limit is stored and reads
/// back through get and scan (issue #20, item 5: a value too deep for serde_json's own
/// parser made every read that touched it fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_nested_past_the_limit_are_refused() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let r = nesting_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn nesting_body(cluster: &Cluster) -> Result<()> {
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    let put = |key: &str, depth: usize| {
        Bytes::from(format!("{{\"key\":\"{key}\",\"value\":{}}}", nested(depth)))
    };
    let too_deep = call(
        cluster,
        "kv.put",
        put("deep/over", MAX_VALUE_DEPTH + 1),
        None,
    )
    .await?;
    ensure!(
        error_code(&too_deep) == Some("bad_request"),
        "depth {}: {too_deep}",
        MAX_VALUE_DEPTH + 1
    );
    let message = too_deep["error"]["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains(&MAX_VALUE_DEPTH.to_string()),
        "the refusal names no limit: {too_deep}"
    );
    let absent = call(
        cluster,
        "kv.get",
        to_bytes(&json!({"key": "deep/over"})),
        None,
    )
    .await?;
    ensure!(
        error_code(&absent) == Some("not_found"),
        "a refused put stored something: {absent}"
    );

    let at_limit = call(cluster, "kv.put", put("deep/at", MAX_VALUE_DEPTH), None).await?;
    ensure!(
        at_limit["ok"] == json!(true),
        "depth at the limit: {at_limit}"
    );
    let expected: Value = serde_json::from_str(&nested(MAX_VALUE_DEPTH))?;
    let got = ok(cluster, "kv.get", json!({"key": "deep/at"}), None).await?;
    ensure!(got["value"] == expected, "get: {got}");
    let scanned = ok(cluster, "kv.scan", json!({"prefix": "deep/"}), None).await?;
    ensure!(
        scanned["items"]
            == json!([{"key": "deep/at", "value": expected, "revision": revision(&at_limit)?,
                "create_revision": revision(&at_limit)?, "version": 1, "lease": 0}]),
        "scan: {scanned}"
    );
    Ok(())
}

/// With `limits.max_scan_limit` = 5, a scan that names no `limit` returns at most 5 items a
/// page and says there is more; paging with `after` still reaches every key (issue #20,
/// item 8: the default page of 1000 ignored a lower configured maximum).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_without_limit_keeps_to_max_scan_limit() -> Result<()> {
    let opts = ClusterOptions::default().env("CONCORD_LIMITS__MAX_SCAN_LIMIT", 5);
    let cluster = Cluster::start_with(1, opts).await?;
    let r = scan_limit_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn scan_limit_body(cluster: &Cluster) -> Result<()> {
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    for i in 0..10 {
        ok(
            cluster,
            "kv.put",
            json!({"key": format!("s/{i:02}"), "value": i}),
            None,
        )
        .await?;
    }
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let mut body = json!({"prefix": "s/"});
        if let Some(a) = &after {
            body["after"] = json!(a);
        }
        let page = ok(cluster, "kv.scan", body, None).await?;
        let items = page["items"]
            .as_array()
            .ok_or_else(|| anyhow!("scan reply: {page}"))?;
        ensure!(items.len() <= 5, "a page of {} items: {page}", items.len());
        for it in items {
            keys.push(it["key"].as_str().unwrap_or_default().to_string());
        }
        after = keys.last().cloned();
        if page["more"] != json!(true) {
            break;
        }
    }
    let want: Vec<String> = (0..10).map(|i| format!("s/{i:02}")).collect();
    ensure!(keys == want, "paged scan returned {keys:?}");
    Ok(())
}
