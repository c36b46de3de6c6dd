//! Counters, deletes by prefix and transactions through `concord::Client` and the `concord`
//! CLI (issue #23), against real clusters (real `nats-server`, real `concord serve`
//! processes): `incr` counts within its bounds and answers typed conflicts with the current
//! value, `delete_prefix` follows `more` over several calls, a txn swaps two keys at one
//! revision or runs its failure branch, and the CLI's `incr`, `delete --prefix` and `txn`.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use common::{Cluster, ClusterOptions};
use concord::client::{Client, ClientError, Compare, Incr, Txn, TxnOp, TxnResult};
use serde_json::{json, Value};

/// The client's deadline per request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys a delete by prefix may delete per call in the prefix test's cluster.
const MAX_DELETE_KEYS: u64 = 2;

fn client(cluster: &Cluster) -> Client {
    Client::from_nats(cluster.client(), cluster.prefix(), CLIENT_TIMEOUT)
}

/// A conflict's reason, current value and revision, or an error naming what came instead.
fn conflict<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, ClientError>,
) -> Result<(String, Option<Value>, Option<u64>)> {
    match r {
        Err(ClientError::Conflict {
            reason,
            value,
            revision,
            ..
        }) => Ok((reason, value.map(|v| *v), revision)),
        other => Err(anyhow!("{what}: expected a conflict, got {other:?}")),
    }
}

/// Proves `incr` on a 3-node cluster: a missing key counts as 0; a result above `max` or
/// below `min`, or an overflow, is a `bound` conflict with the current value and revision,
/// and writes nothing; a string is a `not_integer` conflict with the string; `by: 0` writes
/// nothing and answers the key's own revision; 4 tasks incrementing at once lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incr_counts_within_bounds_and_refuses_what_is_not_an_integer() -> Result<()> {
    let cluster = Cluster::start_format_2(3, ClusterOptions::default()).await?;
    let r = incr_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn incr_body(cluster: &Cluster) -> Result<()> {
    let client = client(cluster);
    let one = client.incr("n", 1).await.context("incr of an absent key")?;
    ensure!(one.value == 1, "an absent key counts as 0: {one:?}");
    let five = client.incr("n", 4).await.context("incr by 4")?;
    ensure!(
        five.value == 5 && five.revision > one.revision,
        "{five:?} after {one:?}"
    );

    let over = client.incr_with("n", Incr::by(1).max(5)).await;
    let (reason, value, revision) = conflict("incr above max", over)?;
    ensure!(
        reason == "bound" && value == Some(json!(5)) && revision == Some(five.revision),
        "above max: {reason} {value:?} {revision:?}"
    );
    let under = client.incr_with("n", Incr::by(-6).min(0)).await;
    ensure!(conflict("incr below min", under)?.0 == "bound");
    let overflow = client.incr("n", i64::MAX).await;
    ensure!(conflict("incr past i64::MAX", overflow)?.0 == "bound");
    let kv = client.get_kv("n").await?.context("n")?;
    ensure!(
        kv.value == json!(5) && kv.revision == five.revision,
        "conflicts must write nothing: {kv:?}"
    );
    let same = client.incr("n", 0).await.context("incr by 0")?;
    ensure!(
        same.value == 5 && same.revision == five.revision,
        "by 0 writes nothing: {same:?}"
    );
    let down = client.incr_with("n", Incr::by(-5).min(0)).await?;
    ensure!(down.value == 0, "down to the bound itself: {down:?}");

    let rs = client.put("s", &json!("abc")).await?;
    let (reason, value, revision) = conflict("incr of a string", client.incr("s", 1).await)?;
    ensure!(
        reason == "not_integer" && value == Some(json!("abc")) && revision == Some(rs),
        "not an integer: {reason} {value:?} {revision:?}"
    );

    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                client.incr("hits", 1).await?;
            }
            Ok::<_, ClientError>(())
        }));
    }
    for t in tasks {
        t.await.context("an incr task")??;
    }
    let hits = client.get_kv("hits").await?.context("hits")?;
    ensure!(
        hits.value == json!(40) && hits.version == 40,
        "40 increments: {hits:?}"
    );
    Ok(())
}

/// Proves deletes by prefix with `limits.max_delete_keys` = 2 on a 3-node cluster: one call
/// deletes 2 of 5 keys at one revision and says `more`; `delete_prefix_all` deletes the
/// other 3 over two calls; the keys beside the prefix stay; the empty prefix is refused
/// without `all`, and `delete_every_key` deletes what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_prefix_follows_more_over_several_calls() -> Result<()> {
    let opts = ClusterOptions::default().env("CONCORD_LIMITS__MAX_DELETE_KEYS", MAX_DELETE_KEYS);
    let cluster = Cluster::start_format_2(3, opts).await?;
    let r = prefix_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn prefix_body(cluster: &Cluster) -> Result<()> {
    let client = client(cluster);
    for i in 0..5 {
        client.put(&format!("p/{i}"), &json!(i)).await?;
    }
    let beside = client.put("q", &json!("stays")).await?;
    let first = client.delete_prefix("p/").await.context("delete_prefix")?;
    ensure!(
        first.count == MAX_DELETE_KEYS && first.more && first.revision > beside,
        "the first call: {first:?}"
    );
    let rest = client.delete_prefix_all("p/").await.context("the rest")?;
    ensure!(
        rest.count == 3 && !rest.more && rest.revision > first.revision,
        "the rest: {rest:?}"
    );
    ensure!(
        client.scan_all("p/").await?.is_empty(),
        "keys remain under p/"
    );
    let none = client.delete_prefix("p/").await?;
    ensure!(
        none.count == 0 && !none.more && none.revision >= rest.revision,
        "nothing left: {none:?}"
    );
    match client.delete_prefix("").await {
        Err(e) if e.code() == concord::ErrorKind::BadRequest => {}
        other => return Err(anyhow!("the empty prefix without all: {other:?}")),
    }
    ensure!(client.get_kv("q").await?.is_some(), "q was deleted with p/");
    let all = client.delete_every_key().await.context("every key")?;
    ensure!(all.count >= 1, "delete_every_key: {all:?}");
    ensure!(client.scan_all("").await?.is_empty(), "keys remain");
    Ok(())
}

/// Proves a txn on a 3-node cluster: a compare-and-swap of two keys (compares on both
/// revisions) swaps their values at one revision and returns the results of its ops; the
/// same txn again (stale revisions) runs its failure branch and writes nothing; compares
/// on a missing key see revision 0 and not existing; an incr op on a string makes the whole
/// txn a conflict naming the key, with nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_swaps_two_keys_at_one_revision_or_runs_its_failure_branch() -> Result<()> {
    let cluster = Cluster::start_format_2(3, ClusterOptions::default()).await?;
    let r = txn_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn txn_body(cluster: &Cluster) -> Result<()> {
    let client = client(cluster);
    let ra = client.put("a", &json!("A")).await?;
    let rb = client.put("b", &json!("B")).await?;
    let swap = Txn::new()
        .when(Compare::revision("a").eq(ra))
        .and(Compare::revision("b").eq(rb))
        .and(Compare::exists("missing").is(false))
        .and(Compare::version("missing").eq(0))
        .then(TxnOp::put("a", "B"))
        .then(TxnOp::put("b", "A"))
        .then(TxnOp::get("a"))
        .otherwise(TxnOp::get("a"))
        .otherwise(TxnOp::get("b"));
    let done = client.txn(&swap).await.context("the swap")?;
    let r = done.revision.context("a txn that wrote has a revision")?;
    ensure!(done.succeeded && r > rb, "the swap: {done:?}");
    match done.results.as_slice() {
        [TxnResult::Put { revision: p1 }, TxnResult::Put { revision: p2 }, TxnResult::Get(Some(kv))]
            if *p1 == r && *p2 == r && kv.value == json!("B") && kv.revision == r => {}
        other => return Err(anyhow!("the swap's results: {other:?}")),
    }
    let (a, b) = (client.get_kv("a").await?, client.get_kv("b").await?);
    let (a, b) = (a.context("a")?, b.context("b")?);
    ensure!(
        (a.value.clone(), b.value.clone(), a.revision, b.revision)
            == (json!("B"), json!("A"), r, r),
        "after the swap: {a:?} {b:?}"
    );

    let again = client.txn(&swap).await.context("the stale swap")?;
    ensure!(
        !again.succeeded && again.revision.is_none() && again.store_revision >= Some(r),
        "the stale swap: {again:?}"
    );
    match again.results.as_slice() {
        [TxnResult::Get(Some(a)), TxnResult::Get(Some(b))]
            if a.value == json!("B") && b.value == json!("A") => {}
        other => return Err(anyhow!("the failure branch's results: {other:?}")),
    }

    let rs = client.put("s", &json!("text")).await?;
    let bad = Txn::new()
        .then(TxnOp::put("c", 1))
        .then(TxnOp::incr("s", 1));
    match client.txn(&bad).await {
        Err(ClientError::Conflict {
            reason,
            key,
            value,
            revision,
            ..
        }) if reason == "not_integer"
            && key.as_deref() == Some("s")
            && value.as_deref() == Some(&json!("text"))
            && revision == Some(rs) => {}
        other => return Err(anyhow!("incr op on a string: {other:?}")),
    }
    ensure!(
        client.get_kv("c").await?.is_none(),
        "a txn that conflicted wrote c"
    );
    Ok(())
}

/// Runs the `concord` CLI against the cluster with `stdin` as its input.
fn cli_with_stdin(cluster: &Cluster, args: &[&str], stdin: &str) -> Result<(Option<i32>, String)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_concord"));
    cmd.args(["--timeout-ms", "10000"]).args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CONCORD_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("CONCORD_NATS__URL", cluster.nats_url())
        .env("CONCORD_NATS__SUBJECT_PREFIX", cluster.prefix())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("running concord")?;
    child
        .stdin
        .take()
        .context("the CLI's stdin")?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    Ok((
        out.status.code(),
        format!("{}{stderr}", String::from_utf8_lossy(&out.stdout)),
    ))
}

/// Proves the CLI: `incr` prints the new value, `--max` past the quota exits 3 and `--json`
/// shows the `bound` error with the value; `delete --prefix` (3 keys, 2 per call) prints
/// its progress and the count, and refuses an empty prefix without `--all` (exit 2);
/// `txn -` reads the body from stdin and prints one line per result, `--json` the raw
/// reply, a failed compare the failure branch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_incr_delete_prefix_and_txn() -> Result<()> {
    let opts = ClusterOptions::default().env("CONCORD_LIMITS__MAX_DELETE_KEYS", MAX_DELETE_KEYS);
    let cluster = Cluster::start_format_2(1, opts).await?;
    let r = cli_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn cli_body(cluster: &Cluster) -> Result<()> {
    let incr = cluster.run_cli(&["incr", "hits", "--by", "3"]).await?;
    ensure!(
        incr.code == Some(0) && incr.stdout.trim() == "3",
        "incr: {incr:?}"
    );
    let neg = cluster
        .run_cli(&["incr", "hits", "--by", "-1", "--min", "0"])
        .await?;
    ensure!(
        neg.code == Some(0) && neg.stdout.trim() == "2",
        "incr --by -1: {neg:?}"
    );
    let over = cluster
        .run_cli(&["--json", "incr", "hits", "--max", "2"])
        .await?;
    let err = &over.json()?["error"];
    ensure!(
        over.code == Some(3)
            && err["reason"] == json!("bound")
            && err["value"] == json!(2)
            && over.stderr.contains("key 'hits' is 2"),
        "incr over the max: {over:?}"
    );

    for i in 0..3 {
        let put = cluster.run_cli(&["put", &format!("c/{i}"), "1"]).await?;
        ensure!(put.code == Some(0), "put: {put:?}");
    }
    let del = cluster.run_cli(&["delete", "--prefix", "c/"]).await?;
    ensure!(
        del.code == Some(0)
            && del.stdout.trim() == "3"
            && del.stderr.contains("deleted 2 keys under 'c/' so far"),
        "delete --prefix over two calls, with progress: {del:?}"
    );
    let empty = cluster.run_cli(&["delete", "--prefix", ""]).await?;
    ensure!(
        empty.code == Some(2) && empty.stderr.contains("--all"),
        "delete --prefix '': {empty:?}"
    );

    let body = json!({
        "compare": [{"key": "hits", "target": "value", "op": "==", "value": 2}],
        "success": [{"put": {"key": "t", "value": "x"}}, {"incr": {"key": "hits", "by": 5}}],
        "failure": [{"get": {"key": "hits"}}],
    })
    .to_string();
    let (code, out) = cli_with_stdin(cluster, &["txn", "-"], &body)?;
    ensure!(
        code == Some(0)
            && out.contains("succeeded")
            && out.contains("put 't': revision")
            && out.contains("incr 'hits': 7"),
        "txn from stdin: {code:?} {out}"
    );
    let (code, out) = cli_with_stdin(cluster, &["--json", "txn"], &body)?;
    let reply: Value = serde_json::from_str(out.lines().next().unwrap_or_default())
        .with_context(|| format!("txn --json: {out}"))?;
    ensure!(
        code == Some(0)
            && reply["succeeded"] == json!(false)
            && reply["results"][0]["get"]["value"] == json!(7),
        "txn --json with a failed compare: {code:?} {out}"
    );
    Ok(())
}
