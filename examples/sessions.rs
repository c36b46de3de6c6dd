//! Recipe: sessions (docs/recipes.md, "Sessions").
//!
//! A session is a lease: its keys (`sessions/<id>/user`, `sessions/<id>/cart`) are attached
//! to it and live as long as the session's owner keeps it alive (`Client::lease`). A logout
//! revokes the lease: every key of the session is deleted at one revision. A client that
//! goes away stops renewing: the lease expires and its keys go with it.
//!
//! Run: `cargo run --example sessions -- nats://127.0.0.1:4222`

mod common;

use std::time::Duration;

use anyhow::{bail, Result};
use concord::client::{Lease, PutOptions};
use concord::Client;
use serde_json::json;

const TTL: Duration = Duration::from_secs(2);

/// Opens a session: a lease kept alive, and the session's keys attached to it.
async fn open(client: &Client, prefix: &str, user: &str) -> Result<(Lease, Vec<String>)> {
    let lease = client.lease(TTL).await?;
    let opts = PutOptions::new().lease(lease.id());
    let keys = vec![format!("{prefix}user"), format!("{prefix}cart")];
    client.put_with(&keys[0], &json!(user), &opts).await?;
    client.put_with(&keys[1], &json!([]), &opts).await?;
    Ok((lease, keys))
}

async fn present(client: &Client, keys: &[String]) -> Result<usize> {
    let mut n = 0;
    for k in keys {
        if client.get(k).await?.is_some() {
            n += 1;
        }
    }
    Ok(n)
}

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let ns = common::namespace("sessions");
    let (alice, alice_keys) = open(&client, &format!("{ns}sessions/a/"), "alice").await?;
    let (bob, bob_keys) = open(&client, &format!("{ns}sessions/b/"), "bob").await?;

    // Kept alive, a session outlives its ttl many times over.
    tokio::time::sleep(TTL * 3).await;
    common::check(
        present(&client, &alice_keys).await? == 2 && present(&client, &bob_keys).await? == 2,
        "both sessions' keys are there after 3 ttls",
    )?;
    common::check(alice.loss().is_none(), "alice's lease is alive")?;
    println!("sessions live past 3 ttls while kept alive");

    // Alice logs out: her lease is revoked, her keys go at one revision.
    let revoked = alice.revoke().await?;
    common::check(revoked.count == 2, "the revoke deleted both keys")?;
    common::check(
        present(&client, &alice_keys).await? == 0,
        "alice's keys are gone",
    )?;
    println!(
        "logout: {} keys deleted at revision {}",
        revoked.count, revoked.revision
    );

    // Bob's client goes away: no more renewals, the lease expires, the keys go.
    let bob_id = bob.id();
    drop(bob);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.lease_get(bob_id, false).await {
            Err(e) if e.is_not_found() => break,
            Err(e) => return Err(e.into()),
            Ok(_) if tokio::time::Instant::now() > deadline => {
                bail!("bob's lease did not expire within 30 s")
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    common::check(
        present(&client, &bob_keys).await? == 0,
        "bob's keys are gone",
    )?;
    println!("expired session: its keys are gone");
    println!("sessions end with their lease");
    Ok(())
}
