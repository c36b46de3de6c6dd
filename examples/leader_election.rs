//! Recipe: locks and leader election (docs/recipes.md, "Locks and leader election").
//!
//! Candidates take one lock (`Client::lock`, waiting in the cluster's FIFO line); the holder
//! leads. Its `fence` grows with every holder, and everything the leader writes carries it
//! (`PutOptions::fence`): a former leader that still believes it leads (paused past its
//! lease, partitioned) is refused with a `fence` conflict, so two leaders never interleave
//! their writes. Anyone follows the election by watching the claims under `_lock/<name>/`:
//! the holder is the claim with the lowest create revision.
//!
//! Run: `cargo run --example leader_election -- nats://127.0.0.1:4222`

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use concord::client::{ClientError, LockOptions, PutOptions};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let ns = common::namespace("leader_election");
    let name = format!("election-{}", uuid::Uuid::new_v4().simple());
    let claims = format!("_lock/{name}/");
    let leader_key = format!("{ns}leader");

    // An observer follows the candidates' claims.
    let (items, _, mut stream) = client.list_watch(&claims).await?;
    let mut line: BTreeMap<String, Value> = items.into_iter().map(|i| (i.key, i.value)).collect();

    let opts = LockOptions {
        ttl: Duration::from_secs(5),
        wait: Duration::from_secs(20),
    };
    let a = client.lock(&name, opts).await?;
    client
        .put_with(
            &leader_key,
            &json!("a"),
            &PutOptions::new().fence(a.fence_token()),
        )
        .await?;
    println!("candidate a leads with fence {}", a.fence);

    // b waits in line for the lock.
    let (b_client, b_name) = (client.clone(), name.clone());
    let b = tokio::spawn(async move { b_client.lock(&b_name, opts).await });
    common::follow_while_not(&mut stream, &mut line, |l| l.len() == 2).await?;
    println!("the observer sees 2 claims: a holds, b waits");

    // a steps down; b is granted at once, with a greater fence.
    let a_fence = a.fence_token();
    a.release().await?;
    let b = b.await??;
    common::check(b.fence > a_fence.token, "the fence grows with the holder")?;
    client
        .put_with(
            &leader_key,
            &json!("b"),
            &PutOptions::new().fence(b.fence_token()),
        )
        .await?;
    println!(
        "candidate b leads with fence {} > {}",
        b.fence, a_fence.token
    );
    common::follow_while_not(&mut stream, &mut line, |l| l.len() == 1).await?;
    println!("the observer sees the hand-off: 1 claim left");

    // a, stale, still believes it leads: its fenced write is refused, nothing written.
    match client
        .put_with(&leader_key, &json!("a"), &PutOptions::new().fence(a_fence))
        .await
    {
        Err(ClientError::Fence { current, .. }) => {
            common::check(current == b.fence, "the refusal names b's fence")?;
            println!("a's write with the old fence was refused (current fence {current})");
        }
        other => common::check(false, format!("a stale fence was not refused: {other:?}"))?,
    }
    let leader = client.get(&leader_key).await?.map(|v| v.value);
    common::check(leader == Some(json!("b")), "the leader key is b's")?;
    b.release().await?;
    println!("one leader at a time, fences increasing");
    Ok(())
}
