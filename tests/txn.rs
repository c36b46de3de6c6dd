//! Counters, deletes by prefix and transactions over the wire (issue #23): `P.kv.incr` with
//! bounds, `P.kv.delete` with `prefix` in pages of `limits.max_delete_keys`, and `P.kv.txn`
//! with every compare target and op, its refusals and its limits, against a real 3-node
//! cluster (real `nats-server`, real `concord serve` processes).

mod common;

use anyhow::{ensure, Context, Result};
use common::{Cluster, ClusterOptions};
use serde_json::{json, Value};

/// `limits.max_delete_keys` of the test cluster: small, so pages are easy to see.
const DELETE_PAGE: u64 = 3;

/// A fresh cluster at log format 2, deleting at most [`DELETE_PAGE`] keys per call.
async fn cluster() -> Result<Cluster> {
    let opts = ClusterOptions {
        env: vec![(
            "CONCORD_LIMITS__MAX_DELETE_KEYS".into(),
            DELETE_PAGE.to_string(),
        )],
        ..ClusterOptions::default()
    };
    Cluster::start_format_2(3, opts).await
}

fn ok(reply: &Value) -> Result<&Value> {
    ensure!(reply["ok"] == true, "not ok: {reply}");
    Ok(reply)
}

fn revision(reply: &Value) -> Result<u64> {
    ok(reply)?["revision"].as_u64().context("no revision")
}

/// The error code of a refused request, and that its message says `needle`.
fn refused(reply: &Value, code: &str, needle: &str) -> Result<()> {
    let e = &reply["error"];
    ensure!(
        reply["ok"] == false
            && e["code"] == code
            && e["message"].as_str().is_some_and(|m| m.contains(needle)),
        "expected {code} saying {needle:?}: {reply}"
    );
    Ok(())
}

fn conflict(reply: &Value, reason: &str, revision: u64, value: Value) -> Result<()> {
    let e = &reply["error"];
    ensure!(
        reply["ok"] == false
            && e["code"] == "conflict"
            && e["reason"] == reason
            && e["revision"].as_u64() == Some(revision)
            && e["value"] == value,
        "expected conflict {reason} at revision {revision} with value {value}: {reply}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incr_counts_within_bounds() -> Result<()> {
    let cluster = cluster().await?;
    let r = incr_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn incr_body(c: &Cluster) -> Result<()> {
    let incr = |body: Value| c.request("kv.incr", body);
    let get = |key: &str| c.request("kv.get", json!({ "key": key }));
    // A missing key counts as 0; each step is a write of its own.
    let r1 = ok(&incr(json!({"key": "n"})).await?)?.clone();
    ensure!(r1["value"] == 1, "first incr: {r1}");
    let r2 = incr(json!({"key": "n", "by": 5})).await?;
    ensure!(r2["value"] == 6 && revision(&r2)? > revision(&r1)?, "{r2}");
    let at = revision(&r2)?;
    let got = get("n").await?;
    ensure!(got["value"] == 6 && got["version"] == 2, "get: {got}");

    // Out of bounds: a conflict with the current value, and nothing written.
    let below = incr(json!({"key": "n", "by": -10, "min": 0})).await?;
    conflict(&below, "bound", at, json!(6))?;
    let above = incr(json!({"key": "n", "by": 1, "max": 6})).await?;
    conflict(&above, "bound", at, json!(6))?;
    let absent = incr(json!({"key": "fresh", "by": 5, "max": 4})).await?;
    conflict(&absent, "bound", 0, json!(0))?;
    refused(&get("fresh").await?, "not_found", "")?;
    let within = incr(json!({"key": "n", "by": -6, "min": 0, "max": 6})).await?;
    ensure!(within["value"] == 0, "{within}");
    let at = revision(&within)?;

    // by 0 on a key that exists writes nothing: the key's own revision.
    let same = incr(json!({"key": "n", "by": 0})).await?;
    ensure!(same["value"] == 0 && revision(&same)? == at, "{same}");
    ensure!(get("n").await?["version"] == 3, "by 0 counted a version");

    // Not an integer, or an overflow.
    let rs = revision(
        &c.request("kv.put", json!({"key": "s", "value": "text"}))
            .await?,
    )?;
    conflict(
        &incr(json!({"key": "s"})).await?,
        "not_integer",
        rs,
        json!("text"),
    )?;
    let rf = revision(
        &c.request("kv.put", json!({"key": "f", "value": 1.5}))
            .await?,
    )?;
    conflict(
        &incr(json!({"key": "f"})).await?,
        "not_integer",
        rf,
        json!(1.5),
    )?;
    let big = json!({"key": "big", "value": i64::MAX});
    let rb = revision(&c.request("kv.put", big).await?)?;
    conflict(
        &incr(json!({"key": "big"})).await?,
        "bound",
        rb,
        json!(i64::MAX),
    )?;

    // Refused before proposing.
    let ttl = incr(json!({"key": "n", "ttl_ms": 0})).await?;
    refused(&ttl, "bad_request", "ttl_ms")?;
    refused(
        &incr(json!({"key": "n", "min": 5, "max": 1})).await?,
        "bad_request",
        "min",
    )?;
    refused(
        &incr(json!({"key": "", "by": 1})).await?,
        "invalid_key",
        "empty",
    )?;
    refused(
        &incr(json!({"key": "n", "by": 1.5})).await?,
        "bad_request",
        "",
    )?;

    // Exactly once: the same id is answered from the table, not applied again.
    let id = "6f7c5bb0-8c43-4df3-9a52-5a0c6f36c0de";
    let first = incr(json!({"key": "once", "by": 7, "request_id": id})).await?;
    let again = incr(json!({"key": "once", "by": 7, "request_id": id})).await?;
    ensure!(first == again && first["value"] == 7, "{first} vs {again}");
    let other = incr(json!({"key": "once", "by": 8, "request_id": id})).await?;
    ensure!(other["error"]["reason"] == "request_id", "{other}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_by_prefix_in_pages_at_one_revision() -> Result<()> {
    let cluster = cluster().await?;
    let r = prefix_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn prefix_body(c: &Cluster) -> Result<()> {
    let del = |body: Value| c.request("kv.delete", body);
    for key in ["a/1", "a/2", "a/3", "a/4", "a/5", "ab", "b/1"] {
        revision(&c.request("kv.put", json!({"key": key, "value": 1})).await?)?;
    }
    // Deleted through the state machine's newest writes as well as what is in fjall.
    revision(&c.request("kv.delete", json!({"key": "a/2"})).await?)?;

    let first = ok(&del(json!({"prefix": "a/"})).await?)?.clone();
    ensure!(
        first["deleted"] == true && first["count"] == DELETE_PAGE && first["more"] == true,
        "first page: {first}"
    );
    let at = revision(&first)?;
    let second = ok(&del(json!({"prefix": "a/"})).await?)?.clone();
    ensure!(
        second["count"] == 1 && second["more"] == false && revision(&second)? == at + 1,
        "second page: {second}"
    );
    let none = ok(&del(json!({"prefix": "a/"})).await?)?.clone();
    ensure!(
        none["deleted"] == false && none["count"] == 0 && revision(&none)? == at + 1,
        "nothing left: {none}"
    );
    // Only the keys under the prefix went.
    let scan = c.request("kv.scan", json!({})).await?;
    let keys: Vec<&str> = scan["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|i| i["key"].as_str())
        .collect();
    ensure!(keys == ["ab", "b/1"], "left: {keys:?}");

    // Refusals.
    refused(&del(json!({"prefix": ""})).await?, "bad_request", "all")?;
    refused(
        &del(json!({"prefix": "a", "all": true})).await?,
        "bad_request",
        "all",
    )?;
    refused(
        &del(json!({"key": "a", "prefix": "a"})).await?,
        "bad_request",
        "both",
    )?;
    let cas = del(json!({"prefix": "a", "if_revision": 3})).await?;
    refused(&cas, "bad_request", "if_revision")?;
    refused(
        &del(json!({"prefix": "\u{0}"})).await?,
        "invalid_key",
        "control",
    )?;
    refused(&del(json!({})).await?, "bad_request", "key")?;

    // Everything, with `all`.
    let all = ok(&del(json!({"prefix": "", "all": true})).await?)?.clone();
    ensure!(all["count"] == 2 && all["more"] == false, "all: {all}");
    let scan = c.request("kv.scan", json!({})).await?;
    ensure!(scan["items"] == json!([]), "after all: {scan}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compares_and_ops() -> Result<()> {
    let cluster = cluster().await?;
    let r = txn_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn txn_body(c: &Cluster) -> Result<()> {
    let txn = |body: Value| c.request("kv.txn", body);
    let rx = revision(&c.request("kv.put", json!({"key": "x", "value": 1})).await?)?;
    revision(
        &c.request("kv.put", json!({"key": "y", "value": "a"}))
            .await?,
    )?;
    for key in ["p/1", "p/2"] {
        revision(&c.request("kv.put", json!({"key": key, "value": 0})).await?)?;
    }
    let cmp = |key: &str, target: &str, op: &str, value: Value| json!({"key": key, "target": target, "op": op, "value": value});
    let r = txn(json!({
        "compare": [
            cmp("x", "revision", "==", json!(rx)),
            cmp("x", "create_revision", "==", json!(rx)),
            cmp("x", "version", ">=", json!(1)),
            cmp("x", "lease", "==", json!(0)),
            cmp("y", "value", "==", json!("a")),
            cmp("z", "exists", "==", json!(false)),
        ],
        "success": [
            {"put": {"key": "x", "value": 2}},
            {"delete": {"key": "y"}},
            {"incr": {"key": "n", "by": 3}},
            {"get": {"key": "x"}},
            {"get": {"key": "y"}},
            {"delete_prefix": {"prefix": "p/"}},
            {"delete": {"key": "never"}},
        ],
        "failure": [{"get": {"key": "x"}}],
    }))
    .await?;
    let at = revision(&r)?;
    ensure!(
        r["succeeded"] == true && r.get("store_revision").is_none(),
        "{r}"
    );
    let want = json!([
        {"put": {"revision": at}},
        {"delete": {"deleted": true}},
        {"incr": {"value": 3}},
        {"get": {"found": true, "value": 2, "revision": at, "create_revision": rx,
                 "version": 2, "lease": 0}},
        {"get": {"found": false}},
        {"delete_prefix": {"deleted": true, "count": 2, "more": false}},
        {"delete": {"deleted": false}},
    ]);
    ensure!(r["results"] == want, "results: {}", r["results"]);
    // One revision for the whole branch.
    let n = c.request("kv.get", json!({"key": "n"})).await?;
    ensure!(n["revision"].as_u64() == Some(at) && n["value"] == 3, "{n}");
    let next = revision(
        &c.request("kv.put", json!({"key": "after", "value": 0}))
            .await?,
    )?;
    ensure!(
        next == at + 1,
        "the txn took more than one revision: next is {next}"
    );

    // A compare that fails runs the failure branch; no write, so store_revision.
    let r = txn(json!({
        "compare": [cmp("x", "version", "==", json!(1))],
        "success": [{"put": {"key": "x", "value": 9}}],
        "failure": [{"get": {"key": "x"}}],
    }))
    .await?;
    ensure!(
        r["succeeded"] == false
            && r.get("revision").is_none()
            && r["store_revision"].as_u64() >= Some(next)
            && r["results"][0]["get"]["value"] == 2,
        "failure branch: {r}"
    );
    missing_and_ordering(c, cmp).await?;
    Ok(())
}

/// A missing key compares as zeroes, null and not existing; ordering holds only between
/// numbers or strings.
async fn missing_and_ordering(
    c: &Cluster,
    cmp: impl Fn(&str, &str, &str, Value) -> Value,
) -> Result<()> {
    let holds = |compare: Vec<Value>| async move {
        let r = c.request("kv.txn", json!({"compare": compare})).await?;
        ok(&r)?;
        anyhow::Ok(r["succeeded"] == true)
    };
    for target in ["revision", "create_revision", "version", "lease"] {
        ensure!(
            holds(vec![cmp("nope", target, "==", json!(0))]).await?,
            "{target}"
        );
    }
    ensure!(holds(vec![cmp("nope", "value", "==", Value::Null)]).await?);
    ensure!(holds(vec![cmp("nope", "exists", "!=", json!(true))]).await?);
    ensure!(holds(vec![cmp("x", "value", ">", json!(1.5))]).await?);
    ensure!(holds(vec![cmp("x", "value", "==", json!(2.0))]).await?);
    ensure!(!holds(vec![cmp("nope", "value", "<", json!(5))]).await?);
    ensure!(!holds(vec![cmp("x", "value", "<", json!("3"))]).await?);
    ensure!(holds(vec![cmp("x", "exists", "==", json!(true))]).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_refusals_and_limits() -> Result<()> {
    let cluster = cluster().await?;
    let r = limits_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn limits_body(c: &Cluster) -> Result<()> {
    let txn = |body: Value| c.request("kv.txn", body);
    let put = |k: &str| json!({"put": {"key": k, "value": 1}});
    // An incr on a value that is not an integer fails the whole txn: the put before it
    // is not written either.
    let rs = revision(
        &c.request("kv.put", json!({"key": "s", "value": "t"}))
            .await?,
    )?;
    let r = txn(json!({"success": [put("w"), {"incr": {"key": "s"}}]})).await?;
    conflict(&r, "not_integer", rs, json!("t"))?;
    ensure!(r["error"]["key"] == "s", "names the key: {r}");
    refused(
        &c.request("kv.get", json!({"key": "w"})).await?,
        "not_found",
        "",
    )?;

    let many: Vec<Value> = (0..129).map(|i| put(&format!("k{i}"))).collect();
    refused(
        &txn(json!({"success": many})).await?,
        "bad_request",
        "max_txn_ops",
    )?;
    let cmp = json!({"key": "k", "target": "version", "op": "==", "value": 0});
    let compares: Vec<Value> = (0..65).map(|_| cmp.clone()).collect();
    refused(
        &txn(json!({"compare": compares})).await?,
        "bad_request",
        "64",
    )?;
    let twice = json!({"success": [put("k"), {"delete": {"key": "k"}}]});
    refused(&txn(twice).await?, "bad_request", "twice")?;
    let under = json!({"failure": [put("d/1"), {"delete_prefix": {"prefix": "d/"}}]});
    refused(&txn(under).await?, "bad_request", "prefix")?;
    let bad_cmp = |target: &str, op: &str, value: Value| json!({"compare": [{"key": "k", "target": target, "op": op, "value": value}]});
    refused(
        &txn(bad_cmp("exists", "<", json!(true))).await?,
        "bad_request",
        "==",
    )?;
    refused(
        &txn(bad_cmp("revision", "==", json!("3"))).await?,
        "bad_request",
        "integer",
    )?;
    refused(
        &txn(bad_cmp("revision", "~", json!(3))).await?,
        "bad_request",
        "",
    )?;
    refused(
        &txn(bad_cmp("size", "==", json!(3))).await?,
        "bad_request",
        "",
    )?;
    // A txn put attaches to a lease by `lease`; a lease of its own (`ttl_ms`) is refused.
    let ttl = json!({"success": [{"put": {"key": "k", "value": 1, "ttl_ms": 5}}]});
    refused(&txn(ttl).await?, "bad_request", "lease.grant")?;
    refused(
        &txn(json!({"success": [{"cas": {"key": "k"}}]})).await?,
        "bad_request",
        "",
    )?;
    refused(
        &txn(json!({"success": [put("")]})).await?,
        "invalid_key",
        "empty",
    )?;

    // Reads past the reply limit: value_too_large, and the branch's write is not made.
    let big = "v".repeat(250_000);
    for i in 0..4 {
        let body = json!({"key": format!("big{i}"), "value": big});
        revision(&c.request("kv.put", body).await?)?;
    }
    let mut ops: Vec<Value> = (0..4)
        .map(|i| json!({"get": {"key": format!("big{i}")}}))
        .collect();
    ops.push(put("marker"));
    refused(
        &txn(json!({"success": ops})).await?,
        "value_too_large",
        "reply",
    )?;
    refused(
        &c.request("kv.get", json!({"key": "marker"})).await?,
        "not_found",
        "",
    )?;

    // Exactly once, like every write.
    let id = "0c8d0c0e-2f55-4a4b-8c53-34d2a1d9e0aa";
    let body = json!({"success": [{"incr": {"key": "t"}}], "request_id": id});
    let first = txn(body.clone()).await?;
    let again = txn(body).await?;
    ensure!(
        first == again && first["results"][0]["incr"]["value"] == 1,
        "{again}"
    );
    Ok(())
}
