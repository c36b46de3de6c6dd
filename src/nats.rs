//! Connecting to NATS, the same way for nodes and for the CLI.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};

use crate::config::NatsConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to NATS at {urls}: {reason}")]
    Connect { urls: String, reason: String },
    #[error("cannot read NATS credentials file {path}: {reason}")]
    Creds { path: String, reason: String },
}

/// Connects with the configured credentials. Later disconnects are retried forever by
/// async-nats (subscriptions come back); the first connection must succeed within
/// `connect_timeout` so a wrong URL fails fast with a clear message.
pub async fn connect(
    cfg: &NatsConfig,
    name: &str,
    connect_timeout: Duration,
) -> Result<Client, Error> {
    let mut opts = ConnectOptions::new()
        .name(name)
        .connection_timeout(connect_timeout)
        .event_callback(|event| async move {
            match event {
                Event::Disconnected => tracing::warn!("NATS connection lost; reconnecting"),
                Event::Connected => tracing::info!("NATS connected"),
                Event::SlowConsumer(sid) => {
                    tracing::warn!(sid, "NATS slow consumer: messages dropped")
                }
                other => tracing::info!(event = %other, "NATS event"),
            }
        });
    if let (Some(user), Some(pass)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(user.clone(), pass.clone());
    }
    if let Some(token) = &cfg.token {
        opts = opts.token(token.clone());
    }
    if let Some(path) = &cfg.creds_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| Error::Creds {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
    }
    let urls = cfg.url.join(",");
    let attempt = opts.connect(cfg.url.clone());
    match tokio::time::timeout(connect_timeout + Duration::from_millis(500), attempt).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(Error::Connect {
            urls,
            reason: e.to_string(),
        }),
        Err(_) => Err(Error::Connect {
            urls,
            reason: format!("no answer within {} ms", connect_timeout.as_millis()),
        }),
    }
}
