//! Issue #20, item 6, over the real wire: no reply is too big to publish. Each test starts
//! its own `nats-server` with a small `max_payload` (a config file), so that what a client
//! can make a node say crosses it:
//!
//! - an error never echoes unbounded input: a 500 KB unknown field name (and a 500 KB string
//!   where a number or an option belongs) gets a short `bad_request`, not silence;
//! - a scan page is cut by its encoded bytes: keys whose JSON escapes double their size make
//!   a page the store's estimate would let past the max payload;
//! - `token.list` pages: 3,000 tokens come back across pages, each under the max payload, none
//!   missing or repeated, through raw requests, `concord::Client` and `concord token list`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use bytes::Bytes;
use common::{to_bytes, Cluster, ClusterOptions};
use futures::StreamExt;
use serde_json::{json, Value};

const ADMIN: &str = "bootstrap-admin-credential-0123456789";
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest reply an error may be: a bounded excerpt and serde's own words.
const SHORT_REPLY_BYTES: usize = 1024;

/// A `nats-server` with `max_payload` set, on 127.0.0.1 and an ephemeral port. Killed on drop.
struct SmallNats {
    server: concord_harness::nats_server::NatsServer,
}

impl SmallNats {
    async fn start(dir: &Path, max_payload: usize) -> Result<SmallNats> {
        let binary = common::nats_server_binary()?;
        let config = format!("max_payload: {max_payload}\n");
        let server =
            concord_harness::nats_server::NatsServer::start_with_config(&binary, dir, &config)
                .await
                .with_context(|| format!("nats-server with config:\n{config}"))?;
        Ok(SmallNats { server })
    }
}

impl Drop for SmallNats {
    fn drop(&mut self) {
        let _ = self.server.child.kill();
        let _ = self.server.child.wait();
    }
}

/// One node with auth on, on `nats`, with a value limit that fits its max payload.
async fn one_node(nats: &SmallNats, max_value_bytes: usize) -> Result<Cluster> {
    let opts = ClusterOptions::default()
        .nats_url(nats.server.url())
        .env("CONCORD_AUTH__ENABLED", "true")
        .env("CONCORD_AUTH__ADMIN_TOKEN", ADMIN)
        .env("CONCORD_LIMITS__MAX_VALUE_BYTES", max_value_bytes)
        .admin_token(ADMIN);
    let cluster = Cluster::start_with(1, opts).await?;
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    Ok(cluster)
}

fn admin_headers() -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Authorization", format!("Bearer {ADMIN}").as_str());
    h
}

/// A request on `<prefix>.<suffix>` as the admin; the raw reply, to measure it.
async fn raw(cluster: &Cluster, suffix: &str, body: Bytes) -> Result<async_nats::Message> {
    cluster
        .request_message(
            &cluster.subject(suffix),
            Some(admin_headers()),
            body,
            REQUEST_TIMEOUT,
        )
        .await
}

fn parse(msg: &async_nats::Message) -> Result<Value> {
    serde_json::from_slice(&msg.payload).map_err(|e| anyhow!("reply is not JSON: {e}"))
}

/// Requests that quote 500 KB of the client's input in their error, on a NATS server whose
/// max payload holds the request but not an echo of it, each get a short `bad_request`. Before
/// the fix the node built a reply NATS refused, and the client timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_input_in_an_error_gets_a_short_bad_request() -> Result<()> {
    let _lock = common::exclusive().await?;
    let tmp = tempfile::tempdir()?;
    let huge = "x".repeat(500 * 1024);
    // The requests below (no headers: they fail before any credential is looked at) carry
    // `huge` and at most 29 bytes more; a reply quoting it whole needs over 90 more.
    let nats = SmallNats::start(tmp.path(), huge.len() + 64).await?;
    let cluster = one_node(&nats, 64 * 1024).await?;
    let r = huge_input_body(&cluster, &huge).await;
    cluster.fail_on_err(r)
}

async fn huge_input_body(cluster: &Cluster, huge: &str) -> Result<()> {
    let cases = [
        ("kv.get", format!(r#"{{"key":"a","{huge}":1}}"#)),
        (
            "kv.get",
            format!(r#"{{"key":"a","min_revision":"{huge}"}}"#),
        ),
        ("kv.scan", format!(r#"{{"consistency":"{huge}"}}"#)),
        ("admin.status", format!(r#"{{"{huge}":true}}"#)),
        ("admin.token.list", format!(r#"{{"{huge}":true}}"#)),
        ("admin.token.create", format!(r#"{{"role":"{huge}"}}"#)),
    ];
    for (suffix, body) in cases {
        let msg = cluster
            .request_message(
                &cluster.subject(suffix),
                None,
                Bytes::from(body),
                REQUEST_TIMEOUT,
            )
            .await
            .with_context(|| format!("{suffix} with 500 KB of input: no reply"))?;
        let reply = parse(&msg)?;
        ensure!(
            reply["error"]["code"] == json!("bad_request"),
            "{suffix}: expected bad_request, got {}",
            common::error_code(&reply).unwrap_or("ok")
        );
        ensure!(
            msg.payload.len() <= SHORT_REPLY_BYTES,
            "{suffix}: the error is {} bytes: {:.300}",
            msg.payload.len(),
            reply
        );
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains("cut") && message.contains("xxxx"),
            "{suffix}: the message should quote a marked excerpt: {message}"
        );
    }
    Ok(())
}

/// Keys of 1,000 `"` characters count 1 KB each in the store's page estimate but take 2 KB
/// each in the reply (JSON escapes each quote), so the estimated page was twice the max
/// payload and the scan went unanswered. The page is now cut by encoded bytes: every page is
/// under the max payload, and paging returns every key once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_pages_are_cut_by_encoded_bytes() -> Result<()> {
    let _lock = common::exclusive().await?;
    let tmp = tempfile::tempdir()?;
    let max_payload = 256 * 1024;
    let nats = SmallNats::start(tmp.path(), max_payload).await?;
    let cluster = one_node(&nats, 64 * 1024).await?;
    let r = scan_pages_body(&cluster, max_payload).await;
    cluster.fail_on_err(r)
}

async fn scan_pages_body(cluster: &Cluster, max_payload: usize) -> Result<()> {
    const KEYS: usize = 240;
    let quotes = "\"".repeat(1000);
    let keys: Vec<String> = (0..KEYS).map(|i| format!("q{i:04}{quotes}")).collect();
    let puts = futures::stream::iter(keys.iter().cloned())
        .map(|key| async move {
            let body = to_bytes(&json!({"key": key, "value": 1}));
            let reply = parse(&raw(cluster, "kv.put", body).await?)?;
            ensure!(reply["ok"] == json!(true), "put: {reply}");
            Ok(())
        })
        .buffer_unordered(16)
        .collect::<Vec<Result<()>>>()
        .await;
    puts.into_iter().collect::<Result<Vec<()>>>()?;

    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    // Bounded: every page holds at least one key.
    for _ in 0..KEYS + 1 {
        let mut body = json!({"prefix": "q"});
        if let Some(a) = &after {
            body["after"] = a.clone().into();
        }
        let msg = raw(cluster, "kv.scan", to_bytes(&body))
            .await
            .context("scan page: no reply")?;
        ensure!(
            msg.payload.len() <= max_payload,
            "a scan page of {} bytes, over the max payload {max_payload}",
            msg.payload.len()
        );
        let page = parse(&msg)?;
        let items = page["items"]
            .as_array()
            .ok_or_else(|| anyhow!("scan reply without items: {:.300}", page))?;
        ensure!(!items.is_empty(), "an empty page that says more");
        for it in items {
            seen.push(it["key"].as_str().unwrap_or_default().to_string());
        }
        after = seen.last().cloned();
        if page["more"] != json!(true) {
            break;
        }
    }
    ensure!(
        seen == keys,
        "paging returned {} keys of {KEYS}",
        seen.len()
    );
    Ok(())
}

/// 3,000 tokens on a NATS server with a 64 KB max payload: `token.list` used to answer with
/// all of them in one reply of about 400 KB, which NATS refused (no reply). Now it pages:
/// raw pages are under the max payload and cut by bytes before the count limit, and paging
/// by `after` returns every id once; `concord::Client::token_list` and `concord token list
/// --json` return all of them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_list_pages_through_thousands_of_tokens() -> Result<()> {
    let _lock = common::exclusive().await?;
    let tmp = tempfile::tempdir()?;
    let max_payload = 64 * 1024;
    let nats = SmallNats::start(tmp.path(), max_payload).await?;
    let cluster = one_node(&nats, 32 * 1024).await?;
    let r = token_list_body(&cluster, max_payload).await;
    cluster.fail_on_err(r)
}

async fn token_list_body(cluster: &Cluster, max_payload: usize) -> Result<()> {
    const TOKENS: usize = 3000;
    let create = futures::stream::iter(0..TOKENS)
        .map(|i| async move {
            let body = to_bytes(&json!({"role": "read", "name": format!("bulk-{i}")}));
            let reply = parse(&raw(cluster, "admin.token.create", body).await?)?;
            reply["id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("create: {reply}"))
        })
        .buffer_unordered(64)
        .collect::<Vec<Result<String>>>();
    let created = tokio::time::timeout(Duration::from_secs(180), create)
        .await
        .context("creating 3,000 tokens took over 180 s")?;
    let created: BTreeSet<String> = created.into_iter().collect::<Result<_>>()?;
    ensure!(created.len() == TOKENS, "{} distinct ids", created.len());

    let (mut ids, mut after, mut pages) = (Vec::<String>::new(), None::<String>, 0);
    for _ in 0..TOKENS + 1 {
        let mut body = json!({});
        if let Some(a) = &after {
            body["after"] = a.clone().into();
        }
        let msg = raw(cluster, "admin.token.list", to_bytes(&body))
            .await
            .context("token.list page: no reply")?;
        ensure!(
            msg.payload.len() <= max_payload,
            "a token.list page of {} bytes, over the max payload {max_payload}",
            msg.payload.len()
        );
        let page = parse(&msg)?;
        let tokens = page["tokens"]
            .as_array()
            .ok_or_else(|| anyhow!("token.list reply: {:.300}", page))?;
        ensure!(!tokens.is_empty(), "an empty page that says more");
        ids.extend(
            tokens
                .iter()
                .map(|t| t["id"].as_str().unwrap_or_default().to_string()),
        );
        after = ids.last().cloned();
        pages += 1;
        if page["more"] != json!(true) {
            break;
        }
    }
    let distinct: BTreeSet<String> = ids.iter().cloned().collect();
    ensure!(
        distinct.len() == ids.len(),
        "{} ids listed twice",
        ids.len() - distinct.len()
    );
    ensure!(
        distinct == created,
        "listed {} of {TOKENS} tokens",
        distinct.len()
    );
    ensure!(
        pages > TOKENS / 1000,
        "{pages} pages: the byte bound should cut before 1,000 tokens"
    );

    let client = concord::Client::from_nats(cluster.client(), cluster.prefix(), REQUEST_TIMEOUT)
        .with_token(Some(ADMIN.to_string()));
    let all = client.token_list().await?;
    ensure!(all.len() == TOKENS, "Client::token_list: {}", all.len());

    let run = cluster.run_cli(&["--json", "token", "list"]).await?;
    ensure!(run.code == Some(0), "concord token list: {run:?}");
    let v: Value = serde_json::from_str(run.stdout.trim()).context("--json output")?;
    let listed = v["tokens"].as_array().map(Vec::len).unwrap_or(0);
    ensure!(
        listed == TOKENS && v["more"] == json!(false),
        "concord token list --json listed {listed}"
    );
    Ok(())
}
