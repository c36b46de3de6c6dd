//! Recipe: service discovery (docs/recipes.md, "Service discovery").
//!
//! Each instance of a service registers under `services/<name>/<instance>` with its address,
//! attached to a lease that it keeps alive (`Client::lease`: a renewal every ttl/3 in the
//! background). A client lists the prefix and watches it (`Client::list_watch`), so its view
//! of the live instances follows every registration and every end: an instance that stops
//! revokes its lease (its key is deleted at once, a `delete` event); an instance that dies
//! stops renewing, and its key is deleted when the lease expires (an `expire` event), with
//! no one cleaning up after it.
//!
//! Run: `cargo run --example service_discovery -- nats://127.0.0.1:4222`

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use concord::client::{Lease, PutOptions};
use concord::Client;
use serde_json::{json, Value};

/// A short ttl, so that the example sees an expiry within seconds.
const TTL: Duration = Duration::from_secs(2);

/// An instance registers: a lease of its own, kept alive, and its key attached to it.
async fn register(client: &Client, key: &str, addr: &str) -> Result<Lease> {
    let lease = client.lease(TTL).await?;
    let opts = PutOptions::new().lease(lease.id());
    client.put_with(key, &json!({"addr": addr}), &opts).await?;
    Ok(lease)
}

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let prefix = format!("{}services/api/", common::namespace("service_discovery"));
    let instance = |n: u32| format!("{prefix}api-{n}");
    let api1 = register(&client, &instance(1), "10.0.0.1:8080").await?;

    // A client of the service starts following it.
    let (items, _, mut stream) = client.list_watch(&prefix).await?;
    let mut view: BTreeMap<String, Value> = items.into_iter().map(|i| (i.key, i.value)).collect();
    println!("{} instance(s) at start", view.len());

    // Two more instances start.
    let api2 = register(&client, &instance(2), "10.0.0.2:8080").await?;
    let _api3 = register(&client, &instance(3), "10.0.0.3:8080").await?;
    let n = common::follow_while_not(&mut stream, &mut view, |v| v.len() == 3).await?;
    println!("3 instances registered ({} events)", n.len());

    // The first one stops cleanly: it revokes its lease, and its key goes at once.
    let revoked = api1.revoke().await?;
    common::check(
        revoked.count == 1,
        "the revoke deleted the one key of api-1",
    )?;
    let key1 = instance(1);
    for line in common::follow_while_not(&mut stream, &mut view, |v| !v.contains_key(&key1)).await?
    {
        println!("{line}");
    }
    println!("api-1 deregistered by revoking its lease");

    // The second one dies: nothing renews its lease, which expires within its ttl (plus the
    // cluster's bounded lateness); watchers see an `expire` event.
    let died_at = tokio::time::Instant::now();
    drop(api2);
    let key2 = instance(2);
    let lines =
        common::follow_while_not(&mut stream, &mut view, |v| !v.contains_key(&key2)).await?;
    for line in &lines {
        println!("{line}");
    }
    common::check(
        lines
            .iter()
            .any(|l| l.starts_with("expire ") && l.contains("api-2")),
        "the dead instance's key went by expiry",
    )?;
    common::check(
        died_at.elapsed() >= Duration::from_millis(1000),
        "the lease did not end long before its ttl",
    )?;
    println!("api-2 expired after its keepalives stopped");

    let addrs: Vec<String> = view
        .values()
        .map(|v| v["addr"].as_str().unwrap_or("?").to_string())
        .collect();
    println!("live instances: {}", addrs.join(", "));
    common::check(
        addrs == ["10.0.0.3:8080"],
        "the client's view holds exactly the live instances",
    )?;
    println!("the view follows every registration, deregistration and expiry");
    Ok(())
}
