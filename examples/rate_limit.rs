//! Recipe: rate limiting with a fixed window (docs/recipes.md, "Rate-limit counters").
//!
//! Each request takes one unit with `incr_with(key, Incr::by(1).max(LIMIT).ttl(WINDOW))`:
//! the incr that creates the counter gives it a lease of its own of `WINDOW` (later incrs
//! neither renew nor change it), and `max` is the limit: a request past it is a `bound`
//! conflict and writes nothing. When the window's lease expires the counter is deleted and
//! the next request opens a new window. One write per request, decided at apply: no read,
//! no race between concurrent requests.
//!
//! Run: `cargo run --example rate_limit -- nats://127.0.0.1:4222`

mod common;

use std::time::Duration;

use anyhow::{bail, Result};
use concord::client::Incr;

const LIMIT: i64 = 5;
const WINDOW: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let key = format!("{}rate/alice", common::namespace("rate_limit"));
    let take = || Incr::by(1).max(LIMIT).ttl(WINDOW);

    // 8 requests at once in one window: exactly LIMIT get through.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (client, key, incr) = (client.clone(), key.clone(), take());
            tokio::spawn(async move { client.incr_with(&key, incr).await })
        })
        .collect();
    let (mut allowed, mut refused) = (0, 0);
    for t in tasks {
        match t.await? {
            Ok(_) => allowed += 1,
            Err(e) if e.conflict_reason() == Some("bound") => refused += 1,
            Err(e) => return Err(e.into()),
        }
    }
    println!("{allowed} allowed, {refused} refused in the window");
    common::check(
        allowed == LIMIT && refused == 3,
        "the limit held in the window",
    )?;
    let lease = client.get_kv(&key).await?.map_or(0, |kv| kv.lease);
    common::check(lease != 0, "the counter has a lease of its own")?;

    // The window ends: the counter's lease expires and the counter is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.get(&key).await?.is_some() {
        if tokio::time::Instant::now() > deadline {
            bail!("the window did not end within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("the window ended: the counter is gone");

    let c = client.incr_with(&key, take()).await?;
    common::check(c.value == 1, "a new window starts at 1")?;
    println!("a new window: request {} of {LIMIT}", c.value);
    println!("the limit held in every window");
    Ok(())
}
