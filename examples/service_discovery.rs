//! Recipe: service discovery (docs/recipes.md, "Service discovery").
//!
//! Each instance of a service registers under `services/<name>/<instance>` with its
//! address, and deregisters by deleting its key when it stops. A client lists the prefix
//! and watches it (`Client::list_watch`), so its view of the live instances follows every
//! registration and deregistration in order. An instance that dies without deregistering
//! stays listed until leases land (then it registers with a lease and its key vanishes when
//! the lease expires); until then, pair the registration with a health check.
//!
//! Run: `cargo run --example service_discovery -- nats://127.0.0.1:4222`

mod common;

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let prefix = format!("{}services/api/", common::namespace("service_discovery"));
    let instance = |n: u32| format!("{prefix}api-{n}");
    client
        .put(&instance(1), &json!({"addr": "10.0.0.1:8080"}))
        .await?;

    // A client of the service starts following it.
    let (items, _, mut stream) = client.list_watch(&prefix).await?;
    let mut view: BTreeMap<String, Value> = items.into_iter().map(|i| (i.key, i.value)).collect();
    println!("{} instance(s) at start", view.len());

    // Two more instances start; the first one stops and deregisters.
    client
        .put(&instance(2), &json!({"addr": "10.0.0.2:8080"}))
        .await?;
    client
        .put(&instance(3), &json!({"addr": "10.0.0.3:8080"}))
        .await?;
    let (_, last) = client.delete(&instance(1)).await?;

    for line in common::follow_until(&mut stream, &mut view, last).await? {
        println!("{line}");
    }
    let addrs: Vec<String> = view
        .values()
        .map(|v| v["addr"].as_str().unwrap_or("?").to_string())
        .collect();
    println!("live instances: {}", addrs.join(", "));
    common::check(
        addrs == ["10.0.0.2:8080", "10.0.0.3:8080"],
        "the client's view holds exactly the registered instances",
    )?;
    println!("the view follows every registration and deregistration");
    Ok(())
}
