//! Recipe: create a key once, whoever else tries (docs/recipes.md, "Service discovery").
//!
//! Two instances race to register as the primary of a service with `put_if(key, value, 0)`
//! ("only if absent"). Exactly one creates the key; the other gets a conflict carrying the
//! revision of the winner's write, and the key holds the winner's value.
//!
//! Run: `cargo run --example unique_create -- nats://127.0.0.1:4222`

mod common;

use anyhow::{Context, Result};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let key = format!("{}primary", common::namespace("unique_create"));
    let contenders = ["instance-a", "instance-b"];
    let tries = contenders.map(|name| {
        let (client, key) = (client.clone(), key.clone());
        tokio::spawn(async move {
            let value = json!({"instance": name, "addr": format!("{name}:8080")});
            (name, client.put_if(&key, &value, 0).await)
        })
    });
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for t in tries {
        let (name, r) = t.await.context("a contender task")?;
        match r {
            Ok(rev) => {
                println!("{name}: created {key} at revision {rev}");
                winners.push((name, rev));
            }
            Err(e) if e.conflict_revision().is_some() => {
                let rev = e.conflict_revision().unwrap_or(0);
                println!("{name}: already taken (revision {rev}), nothing written");
                losers.push(rev);
            }
            Err(e) => return Err(e).context(name),
        }
    }
    common::check(
        winners.len() == 1,
        format!("{} contenders created the key", winners.len()),
    )?;
    let (winner, rev) = winners[0];
    common::check(
        losers == [rev],
        format!("the loser saw {losers:?}, not revision {rev}"),
    )?;
    let kv = client.get_kv(&key).await?.context("the key is gone")?;
    common::check(
        kv.value["instance"] == json!(winner) && kv.version == 1,
        format!("the key holds {} at version {}", kv.value, kv.version),
    )?;
    println!("exactly one primary: {winner}");
    Ok(())
}
