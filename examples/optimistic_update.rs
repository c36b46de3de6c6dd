//! Recipe: read-modify-write without lost updates (docs/recipes.md, "Configuration").
//!
//! Four writers each add 10 visits to one JSON document through `Client::update`: read the
//! key, compute the new document, put it with `if_revision` = the revision read, and start
//! again from a fresh read when another writer got there first. The document ends with
//! exactly 40 visits and version 41 (the creation plus one write per update).
//!
//! Run: `cargo run --example optimistic_update -- nats://127.0.0.1:4222`

mod common;

use anyhow::{Context, Result};
use serde_json::{json, Value};

const WRITERS: usize = 4;
const UPDATES_EACH: i64 = 10;

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let key = format!("{}profile", common::namespace("optimistic_update"));
    client.put(&key, &json!({"visits": 0, "by": {}})).await?;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (client, key) = (client.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let writer = format!("writer-{w}");
            for _ in 0..UPDATES_EACH {
                // Runs again on every conflict: no side effects in here.
                client
                    .update(&key, |doc| {
                        let mut doc = doc.cloned().unwrap_or_else(|| json!({"visits": 0}));
                        let visits = doc["visits"].as_i64().unwrap_or(0);
                        doc["visits"] = json!(visits + 1);
                        let mine = doc["by"][&writer].as_i64().unwrap_or(0);
                        doc["by"][&writer] = json!(mine + 1);
                        doc
                    })
                    .await?;
            }
            Ok::<_, concord::client::ClientError>(())
        }));
    }
    for t in tasks {
        t.await.context("a writer task")??;
    }
    let kv = client.get_kv(&key).await?.context("the document is gone")?;
    let total = WRITERS as i64 * UPDATES_EACH;
    println!(
        "{WRITERS} writers x {UPDATES_EACH} updates of {key}: visits = {}, version {}",
        kv.value["visits"], kv.version
    );
    common::check(
        kv.value["visits"] == json!(total),
        format!("visits is {}, not {total}", kv.value["visits"]),
    )?;
    common::check(
        kv.version == total as u64 + 1,
        format!("version {}, not {}", kv.version, total + 1),
    )?;
    let by = kv.value["by"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_i64).sum::<i64>());
    common::check(
        by == Some(total),
        format!("per-writer counts add up to {by:?}"),
    )?;
    println!("no update lost");
    Ok(())
}
