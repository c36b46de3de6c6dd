//! Catching a write on its way from a follower to the leader: the tests that forge what the
//! follower receives back (a forged reply, a forged "no responders") need the reply subject
//! of the forwarded copy, and the leader paused so the genuine answer does not come first.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use futures::StreamExt;
use serde_json::Value;

use super::{to_bytes, Cluster};

/// What the client sees of its put.
pub type PutTask = tokio::task::JoinHandle<Result<async_nats::Message, async_nats::RequestError>>;

/// Pauses `leader`, sends `body` as a put to `follower`'s node subject (the client waits
/// `client_timeout`), and returns the put's task and the reply subject of the copy the
/// follower forwarded, as `spy` (subscribed to `node.<leader>.kv.put` before) saw it.
pub async fn put_forwarded_to_paused_leader(
    c: &Cluster,
    spy: &mut async_nats::Subscriber,
    leader: u64,
    follower: u64,
    body: Value,
    client_timeout: Duration,
) -> Result<(PutTask, async_nats::Subject)> {
    c.pause(leader).await?;
    let client = c.connect().await?;
    let put_subject = c.subject(&format!("node.{follower}.kv.put"));
    let put = tokio::spawn(async move {
        client
            .send_request(
                put_subject,
                async_nats::Request::new()
                    .payload(to_bytes(&body))
                    .timeout(Some(client_timeout)),
            )
            .await
    });
    let forwarded = tokio::time::timeout(Duration::from_secs(5), spy.next())
        .await
        .context("no forwarded put seen")?
        .ok_or_else(|| anyhow!("spy subscription closed"))?;
    let inbox = forwarded
        .reply
        .ok_or_else(|| anyhow!("forwarded put without a reply subject"))?;
    Ok((put, inbox))
}
