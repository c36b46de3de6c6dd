//! `concord scan`: follows pages until the limit or the end of the prefix.

use serde_json::{json, Value};

use super::{display_value, out, Global};
use concord::client::{Client, ClientError, ReadConsistency};

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
