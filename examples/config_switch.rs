//! Recipe: switch a configuration of several keys at once (docs/recipes.md,
//! "Configuration" and "Feature flags").
//!
//! A deployment's configuration is three keys under one prefix. An operator reads the
//! `version` key and switches all three in one txn, on condition that `version` has not
//! changed since it read it: the three keys take one revision, so no reader ever sees half
//! a switch. A second operator who prepared a switch from the same (now stale) read gets
//! `succeeded: false` and the current version from the failure branch; nothing of its
//! switch is written.
//!
//! Run: `cargo run --example config_switch -- nats://127.0.0.1:4222`

mod common;

use anyhow::{Context, Result};
use concord::client::{Compare, ReadConsistency, Txn, TxnOp, TxnResult};
use serde_json::{json, Value};

/// The txn that switches to `color` if `version` is still at `read_revision`.
fn switch(prefix: &str, read_revision: u64, version: i64, color: &str) -> Txn {
    let key = |k: &str| format!("{prefix}{k}");
    Txn::new()
        .when(Compare::revision(key("version")).eq(read_revision))
        .then(TxnOp::put(key("version"), version))
        .then(TxnOp::put(key("color"), color))
        .then(TxnOp::put(
            key("endpoint"),
            format!("https://{color}.internal"),
        ))
        .otherwise(TxnOp::get(key("version")))
}

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let prefix = format!("{}cfg/", common::namespace("config_switch"));
    let first =
        switch(&prefix, 0, 1, "blue").and(Compare::exists(format!("{prefix}color")).is(false));
    let created = client.txn(&first).await?;
    common::check(created.succeeded, "the first configuration was created")?;

    let read = client
        .get_kv(&format!("{prefix}version"))
        .await?
        .context("version")?;
    let (a, b) = (
        switch(&prefix, read.revision, 2, "green"),
        switch(&prefix, read.revision, 2, "red"),
    );
    let won = client.txn(&a).await?;
    let rev = won.revision.context("a switch that wrote has a revision")?;
    println!(
        "switch to green: succeeded = {}, every key at revision {rev}",
        won.succeeded
    );
    common::check(won.succeeded, "the first switch must hold")?;
    common::check(
        won.results
            .iter()
            .all(|r| *r == TxnResult::Put { revision: rev }),
        format!("results {:?}", won.results),
    )?;

    let lost = client.txn(&b).await?;
    let current = match lost.results.first() {
        Some(TxnResult::Get(Some(kv))) => kv.value.clone(),
        other => Value::String(format!("{other:?}")),
    };
    println!(
        "switch to red from the same read: succeeded = {}, version is already {current}",
        lost.succeeded
    );
    common::check(
        !lost.succeeded && current == json!(2),
        "the stale switch must fail",
    )?;

    let page = client
        .scan(&prefix, None, None, ReadConsistency::Linearizable)
        .await?;
    for item in &page.items {
        println!(
            "  {} = {} (revision {})",
            item.key, item.value, item.revision
        );
    }
    common::check(
        page.items.len() == 3 && page.items.iter().all(|i| i.revision == rev),
        "all three keys carry the switch's revision",
    )?;
    let color = page
        .items
        .iter()
        .find(|i| i.key.ends_with("color"))
        .map(|i| &i.value);
    common::check(
        color == Some(&json!("green")),
        format!("color is {color:?}"),
    )?;
    println!("one switch, one revision: green everywhere");
    Ok(())
}
