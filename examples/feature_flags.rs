//! Recipe: feature flags that take effect without a restart (docs/recipes.md, "Feature
//! flags").
//!
//! Each flag is a key under `flags/` holding `true` or `false`. Every instance of the
//! application lists the flags and watches the prefix (`Client::list_watch`), and reads a
//! flag from its local copy: no request per check, and a change reaches every instance in
//! revision order. Two instances here see the same flips in the same order, and an absent
//! flag counts as off.
//!
//! Run: `cargo run --example feature_flags -- nats://127.0.0.1:4222`

mod common;

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{json, Value};

/// A flag is on only when its key holds `true`.
fn enabled(flags: &BTreeMap<String, Value>, key: &str) -> bool {
    flags.get(key) == Some(&json!(true))
}

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let prefix = format!("{}flags/", common::namespace("feature_flags"));
    let checkout = format!("{prefix}new_checkout");
    let search = format!("{prefix}beta_search");
    client.put(&checkout, &json!(false)).await?;
    client.put(&search, &json!(true)).await?;

    // Two instances of the application, each with its own copy of the flags.
    let mut instances = Vec::new();
    for _ in 0..2 {
        let (items, _, stream) = client.list_watch(&prefix).await?;
        let flags: BTreeMap<String, Value> = items.into_iter().map(|i| (i.key, i.value)).collect();
        instances.push((flags, stream));
    }
    common::check(
        instances
            .iter()
            .all(|(f, _)| !enabled(f, &checkout) && enabled(f, &search)),
        "both instances start with new_checkout off and beta_search on",
    )?;

    // An operator turns new_checkout on and retires beta_search.
    client.put(&checkout, &json!(true)).await?;
    let (_, last) = client.delete(&search).await?;

    let mut histories = Vec::new();
    for (flags, stream) in &mut instances {
        histories.push(common::follow_until(stream, flags, last).await?);
    }
    for (i, (flags, _)) in instances.iter().enumerate() {
        println!(
            "instance {i}: new_checkout {}, beta_search {}",
            if enabled(flags, &checkout) {
                "on"
            } else {
                "off"
            },
            if enabled(flags, &search) {
                "on"
            } else {
                "off (removed)"
            },
        );
    }
    common::check(
        instances
            .iter()
            .all(|(f, _)| enabled(f, &checkout) && !enabled(f, &search)),
        "both instances see new_checkout on and beta_search off",
    )?;
    common::check(
        histories.windows(2).all(|w| w[0] == w[1]) && histories[0].len() == 2,
        "both instances saw the same two changes in the same order",
    )?;
    println!("every instance saw the same flips in the same order");
    Ok(())
}
