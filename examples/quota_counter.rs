//! Recipe: a counter with a quota (docs/recipes.md, "Rate-limit counters").
//!
//! Eight requests, made at once, each take one unit of a quota of 5 with
//! `incr_with(key, Incr::by(1).max(5))`: one write per request, no read before it, and the
//! bound is decided by the cluster in log order. Exactly 5 are allowed; the other 3 get a
//! `bound` conflict carrying the current value (5) and write nothing. Releasing a unit is
//! `Incr::by(-1).min(0)`.
//!
//! Run: `cargo run --example quota_counter -- nats://127.0.0.1:4222`

mod common;

use anyhow::{Context, Result};
use concord::client::Incr;
use serde_json::json;

const QUOTA: i64 = 5;
const REQUESTS: usize = 8;

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let key = format!("{}quota", common::namespace("quota_counter"));
    let requests: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let (client, key) = (client.clone(), key.clone());
            tokio::spawn(async move { client.incr_with(&key, Incr::by(1).max(QUOTA)).await })
        })
        .collect();
    let (mut allowed, mut refused) = (Vec::new(), 0);
    for r in requests {
        match r.await.context("a request task")? {
            Ok(c) => allowed.push(c.value),
            Err(e) if e.conflict_reason() == Some("bound") => {
                common::check(
                    e.conflict_value() == Some(&json!(QUOTA)),
                    format!("a refusal carries {:?}, not {QUOTA}", e.conflict_value()),
                )?;
                refused += 1;
            }
            Err(e) => return Err(e).context("incr"),
        }
    }
    allowed.sort_unstable();
    println!(
        "{REQUESTS} requests against a quota of {QUOTA}: {} allowed (as units {allowed:?}), \
         {refused} refused",
        allowed.len()
    );
    common::check(
        allowed == (1..=QUOTA).collect::<Vec<_>>(),
        format!("allowed units {allowed:?}"),
    )?;
    common::check(
        refused == REQUESTS - QUOTA as usize,
        format!("{refused} refused"),
    )?;
    let released = client.incr_with(&key, Incr::by(-1).min(0)).await?;
    println!("released one unit: {} in use", released.value);
    common::check(
        released.value == QUOTA - 1,
        format!("{} in use", released.value),
    )?;
    let kv = client.get_kv(&key).await?.context("the counter is gone")?;
    common::check(
        kv.value == json!(QUOTA - 1),
        format!("the counter holds {}", kv.value),
    )?;
    println!("the quota held");
    Ok(())
}
