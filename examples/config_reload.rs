//! Recipe: reload a configuration when it changes (docs/recipes.md, "Configuration
//! reload").
//!
//! A service keeps its configuration under one prefix. At start it lists the prefix and
//! watches it from the list's revision (`Client::list_watch`), so that no change made
//! between the list and the watch is missed or applied twice; then it applies each change
//! as it comes. Here an operator changes one setting, adds one and removes one while the
//! service runs, and the service's copy must end equal to the store.
//!
//! Run: `cargo run --example config_reload -- nats://127.0.0.1:4222`

mod common;

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let prefix = format!("{}config/", common::namespace("config_reload"));
    let key = |k: &str| format!("{prefix}{k}");
    client.put(&key("log_level"), &json!("info")).await?;
    client.put(&key("max_conns"), &json!(100)).await?;
    client.put(&key("legacy_mode"), &json!(true)).await?;

    // The service starts: list, then watch from the list.
    let (items, revision, mut changes) = client.list_watch(&prefix).await?;
    let mut config: BTreeMap<String, Value> = items.into_iter().map(|i| (i.key, i.value)).collect();
    println!("loaded {} settings at revision {revision}", config.len());

    // An operator changes the configuration while the service runs.
    client.put(&key("log_level"), &json!("debug")).await?;
    client.put(&key("timeout_ms"), &json!(2500)).await?;
    let (_, last) = client.delete(&key("legacy_mode")).await?;

    for line in common::follow_until(&mut changes, &mut config, last).await? {
        println!("reloaded: {line}");
    }
    common::check(
        config.get(&key("log_level")) == Some(&json!("debug")),
        "the service reloaded log_level = debug",
    )?;
    let store: BTreeMap<String, Value> = client
        .scan_all(&prefix)
        .await?
        .into_iter()
        .map(|i| (i.key, i.value))
        .collect();
    common::check(
        config == store,
        "the service's configuration equals the store's",
    )?;
    println!("log_level = debug, timeout_ms added, legacy_mode removed");
    println!("the service's configuration equals the store's");
    Ok(())
}
