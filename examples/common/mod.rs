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
