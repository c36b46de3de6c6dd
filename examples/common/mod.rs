//! Shared by the recipe examples (docs/recipes.md): the connection to the cluster and the
//! check that makes an example fail loudly when what it shows did not hold.
//!
//! The NATS URL comes from the first argument, else `CONCORD_NATS__URL` (the variable the
//! `concord` command reads), else `nats://127.0.0.1:4222`; the subject prefix from
//! `CONCORD_NATS__SUBJECT_PREFIX` (default `concord`); a token from `CONCORD_TOKEN`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use concord::config::NatsConfig;
use concord::Client;

/// Connects to the cluster named by the argument or the environment.
pub async fn connect() -> Result<Client> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("CONCORD_NATS__URL").ok())
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let mut nats = NatsConfig {
        url: url.split(',').map(str::to_string).collect(),
        ..NatsConfig::default()
    };
    if let Ok(prefix) = std::env::var("CONCORD_NATS__SUBJECT_PREFIX") {
        nats.subject_prefix = prefix;
    }
    let client = Client::connect(&nats, Duration::from_secs(10))
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(client.with_token(std::env::var("CONCORD_TOKEN").ok()))
}

/// A fresh namespace for this run's keys, so that the example can run again on the same
/// cluster: `recipes/<name>/<random>/`.
pub fn namespace(name: &str) -> String {
    format!("recipes/{name}/{}/", uuid::Uuid::new_v4().simple())
}

/// Fails the example (exit status 1) when `holds` is false.
pub fn check(holds: bool, what: impl std::fmt::Display) -> Result<()> {
    if !holds {
        bail!("did not hold: {what}");
    }
    Ok(())
}

/// Applies the events of a watch to `state` (a put sets the key, a delete or an expiry
/// removes it) until the stream has seen every revision up to `revision`, or fails after
/// 30 s. Returns the events' one-line summaries (`put key=value rev=N`).
#[allow(dead_code)] // only the watch recipes use it
pub async fn follow_until(
    stream: &mut concord::client::WatchStream,
    state: &mut std::collections::BTreeMap<String, serde_json::Value>,
    revision: u64,
) -> Result<Vec<String>> {
    use concord::client::EventType;
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while stream.next_revision() <= revision {
        if tokio::time::Instant::now() >= deadline {
            bail!("the watch did not reach revision {revision} within 30 s");
        }
        // A progress notice may be what completes the revision, and it yields no event:
        // look at `next_revision` again now and then.
        let next = tokio::select! {
            next = stream.next() => next,
            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
        };
        let e = match next {
            Some(e) => e.context("the watch ended")?,
            None => bail!("the watch ended"),
        };
        match (e.kind, e.value) {
            (EventType::Put, Some(v)) => {
                seen.push(format!("put {}={v} rev={}", e.key, e.revision));
                state.insert(e.key, v);
            }
            (kind, _) => {
                seen.push(format!("{kind} {} rev={}", e.key, e.revision));
                state.remove(&e.key);
            }
        }
    }
    Ok(seen)
}

/// Applies the events of a watch to `state` (as [`follow_until`] does) until `holds(state)`
/// is true, or fails after 30 s. Returns the events' one-line summaries.
#[allow(dead_code)] // only the lease recipes use it
pub async fn follow_while_not(
    stream: &mut concord::client::WatchStream,
    state: &mut std::collections::BTreeMap<String, serde_json::Value>,
    holds: impl Fn(&std::collections::BTreeMap<String, serde_json::Value>) -> bool,
) -> Result<Vec<String>> {
    use concord::client::EventType;
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !holds(state) {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = tokio::time::sleep_until(deadline) => bail!("the awaited change did not come within 30 s"),
        };
        let e = match next {
            Some(e) => e.context("the watch ended")?,
            None => bail!("the watch ended"),
        };
        match (e.kind, e.value) {
            (EventType::Put, Some(v)) => {
                seen.push(format!("put {}={v} rev={}", e.key, e.revision));
                state.insert(e.key, v);
            }
            (kind, _) => {
                seen.push(format!("{kind} {} rev={}", e.key, e.revision));
                state.remove(&e.key);
            }
        }
    }
    Ok(seen)
}
