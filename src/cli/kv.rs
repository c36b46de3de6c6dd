//! `concord put`, `delete` and `scan`: writes carry a `request_id` (the caller's or a new
//! one) that `--json` shows; scan follows pages until the limit or the end of the prefix.

use clap::Args;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{display_value, emit, out, Global};
use concord::client::{Client, ClientError, ReadConsistency};
use concord::ErrorKind;

/// `--request-id`, shared by the write commands.
#[derive(Debug, Args)]
pub struct RequestIdArg {
    /// The write's request id, a UUID (default: a new random one; `--json` shows it). The
    /// same command run again with the id it used (e.g. after `timeout`, when the write
    /// may or may not have applied) applies at most once: within the cluster's
    /// `idempotency.window` (default 5 min) a repeat gets the first reply. Give each id to
    /// one command only: the same id with another key or value gets `conflict`.
    #[arg(long, value_name = "UUID")]
    request_id: Option<Uuid>,
}

impl RequestIdArg {
    /// The id to send: the caller's, or a new UUID v4.
    pub fn get(&self) -> Uuid {
        self.request_id.unwrap_or_else(Uuid::new_v4)
    }
}

/// `concord put`: the exit code.
pub async fn put(client: &Client, global: &Global, key: &str, value: &Value, id: Uuid) -> i32 {
    match client.put_with_id(key, value, id).await {
        Ok(rev) => out(
            global,
            json!({"ok": true, "revision": rev, "request_id": id}),
            || format!("OK (revision {rev})"),
        ),
        Err(e) => report_write(global, &e, id),
    }
}

/// `concord delete`: the exit code.
pub async fn delete(client: &Client, global: &Global, key: &str, id: Uuid) -> i32 {
    match client.delete_with_id(key, id).await {
        Ok((deleted, rev)) => out(
            global,
            json!({"ok": true, "deleted": deleted, "revision": rev, "request_id": id}),
            || {
                if deleted {
                    format!("deleted (revision {rev})")
                } else {
                    format!("not found, nothing deleted (revision {rev})")
                }
            },
        ),
        Err(e) => report_write(global, &e, id),
    }
}

/// Like `super::report`, with the write's id, and after `timeout` how to retry it safely.
fn report_write(global: &Global, e: &ClientError, id: Uuid) -> i32 {
    let code = e.code();
    let message = e.message();
    if global.json {
        let v = json!({"ok": false, "error": e.to_json(), "request_id": id});
        emit(&v.to_string());
    }
    eprintln!("error: {code}: {message}");
    if code == ErrorKind::Timeout {
        eprintln!(
            "the write may or may not have applied; to retry it safely, run the same command \
             with --request-id {id}"
        );
    }
    1
}

pub async fn scan(
    client: &Client,
    global: &Global,
    prefix: String,
    limit: Option<usize>,
    after: Option<String>,
) -> Result<i32, ClientError> {
    let mut items = Vec::new();
    let mut after = after;
    loop {
        let want = limit.map(|l| l.saturating_sub(items.len()).min(1000));
        let page = client
            .scan(
                &prefix,
                want,
                after.as_deref(),
                ReadConsistency::Linearizable,
            )
            .await?;
        after = page.items.last().map(|i| i.key.clone());
        items.extend(page.items);
        let full = limit.is_some_and(|l| items.len() >= l);
        if !page.more || full || after.is_none() {
            let more = page.more;
            let json_items: Vec<Value> = items
                .iter()
                .map(|i| json!({"key": i.key, "value": i.value, "revision": i.revision}))
                .collect();
            return Ok(out(
                global,
                json!({"ok": true, "items": json_items, "more": more && full}),
                || {
                    items
                        .iter()
                        .map(|i| format!("{}\t{}", i.key, display_value(&i.value)))
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            ));
        }
    }
}
