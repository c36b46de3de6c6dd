//! Connecting to NATS, the same way for nodes and for the CLI: the credentials (user and
//! password, token, creds file or NKey) and the TLS settings ([`tls`]) of [`NatsConfig`].
//!
//! The first connection is one pass over the configured servers within `connect_timeout`, so
//! a refused credential or a failed TLS handshake comes back at once as an [`Error`] that
//! names the settings to check. Secrets (password, token, seed) never reach a log line or an
//! error message; user names, file paths and NKey public keys may.

mod tls;

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event};

use crate::config::NatsConfig;
use crate::observe::{NatsLink, Observer};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to NATS at {urls}: {reason}")]
    Connect { urls: String, reason: String },
    /// The server answered `-ERR 'Authorization Violation'`.
    #[error(
        "NATS at {urls} refused the connection: authorization violation (sent {credentials}; \
         check nats.user/nats.password, nats.token, nats.creds_file or nats.nkey_seed[_file])"
    )]
    Unauthorized { urls: String, credentials: String },
    #[error(
        "TLS with NATS at {urls} failed: {reason} (check nats.tls_ca_file, nats.tls_cert_file \
         and nats.tls_key_file against the server's certificate and its client verification)"
    )]
    Tls { urls: String, reason: String },
    /// A file named by a setting is missing, unreadable or holds the wrong thing.
    #[error("cannot use {setting} {path}: {reason}")]
    File {
        setting: &'static str,
        path: String,
        reason: String,
    },
    #[error("invalid setting `{setting}`: {reason}")]
    Setting {
        setting: &'static str,
        reason: String,
    },
}

/// Connects with the configured credentials and TLS. Later disconnects are retried forever
/// by async-nats (subscriptions come back); the first connection must succeed within
/// `connect_timeout` so a wrong URL, credential or certificate fails fast with a clear message.
pub async fn connect(
    cfg: &NatsConfig,
    name: &str,
    connect_timeout: Duration,
) -> Result<Client, Error> {
    connect_observed(cfg, name, connect_timeout, None).await
}

/// [`connect`], reporting the connection going down and coming back to `observer` (a
/// node's `concord_nats_connected` and `concord_nats_reconnects_total`) as `link`. A node
/// calls it twice, with the same settings: one connection for clients, one for Raft.
pub async fn connect_observed(
    cfg: &NatsConfig,
    name: &str,
    connect_timeout: Duration,
    observer: Option<(Arc<Observer>, NatsLink)>,
) -> Result<Client, Error> {
    let opts = ConnectOptions::new()
        .name(name)
        .connection_timeout(connect_timeout)
        .event_callback(move |event| {
            let observer = observer.clone();
            async move {
                match event {
                    Event::Disconnected => {
                        tracing::warn!(link = ?observer.as_ref().map(|o| o.1), "NATS connection lost; reconnecting");
                        if let Some((o, link)) = &observer {
                            o.nats_connection(*link, false);
                        }
                    }
                    Event::Connected => {
                        tracing::info!(link = ?observer.as_ref().map(|o| o.1), "NATS connected");
                        if let Some((o, link)) = &observer {
                            o.nats_connection(*link, true);
                        }
                    }
                    Event::SlowConsumer(sid) => {
                        tracing::warn!(sid, "NATS slow consumer: messages dropped")
                    }
                    other => tracing::info!(event = %other, "NATS event"),
                }
            }
        });
    let (opts, credentials) = with_credentials(opts, cfg).await?;
    let (opts, tls) = tls::apply(opts, cfg).await?;
    let urls = cfg
        .url
        .iter()
        .map(|u| crate::config::redact_url(u))
        .collect::<Vec<_>>()
        .join(",");
    tracing::info!(%urls, credentials = %credentials, tls, "connecting to NATS");
    let attempt = opts.connect(cfg.url.clone());
    match tokio::time::timeout(connect_timeout + Duration::from_millis(500), attempt).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(describe(e, urls, credentials, tls)),
        Err(_) => Err(Error::Connect {
            urls,
            reason: format!("no answer within {} ms", connect_timeout.as_millis()),
        }),
    }
}

/// Adds the configured credentials; returns them described for messages (never the secret).
async fn with_credentials(
    mut opts: ConnectOptions,
    cfg: &NatsConfig,
) -> Result<(ConnectOptions, String), Error> {
    let mut sent = Vec::new();
    match (&cfg.user, &cfg.password) {
        (Some(user), Some(pass)) => {
            opts = opts.user_and_password(user.clone(), pass.clone());
            sent.push(format!("user '{user}' with nats.password"));
        }
        (Some(_), None) => return Err(setting("nats.password", "nats.user is set without it")),
        (None, Some(_)) => return Err(setting("nats.user", "nats.password is set without it")),
        (None, None) => {}
    }
    if let Some(token) = &cfg.token {
        opts = opts.token(token.clone());
        sent.push("nats.token".into());
    }
    if let Some(path) = &cfg.creds_file {
        opts = opts.credentials_file(path).await.map_err(|e| Error::File {
            setting: "nats.creds_file",
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        sent.push(format!("nats.creds_file {}", path.display()));
    }
    if let Some((seed, from)) = nkey_seed(cfg).await? {
        // Checked here because async-nats drops a bad seed with only a log line and then
        // connects without it, which the server answers with a bare authorization violation.
        let key = nkeys::KeyPair::from_seed(&seed)
            .map_err(|e| setting(from, &format!("not a valid NKey seed: {e}")))?;
        if key.key_pair_type() != nkeys::KeyPairType::User {
            return Err(setting(
                from,
                "holds no user seed (a user seed starts with SU)",
            ));
        }
        sent.push(format!("NKey {} from {from}", key.public_key()));
        opts = opts.nkey(seed);
    }
    let sent = if sent.is_empty() {
        "no credentials".to_string()
    } else {
        sent.join(" + ")
    };
    Ok((opts, sent))
}

/// The NKey seed and the setting it came from: `nats.nkey_seed`, or the trimmed contents of
/// `nats.nkey_seed_file`.
async fn nkey_seed(cfg: &NatsConfig) -> Result<Option<(String, &'static str)>, Error> {
    match (&cfg.nkey_seed, &cfg.nkey_seed_file) {
        (Some(_), Some(_)) => Err(setting(
            "nats.nkey_seed",
            "set either nats.nkey_seed or nats.nkey_seed_file, not both",
        )),
        (Some(seed), None) => Ok(Some((seed.trim().to_string(), "nats.nkey_seed"))),
        (None, Some(path)) => {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| Error::File {
                    setting: "nats.nkey_seed_file",
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            Ok(Some((text.trim().to_string(), "nats.nkey_seed_file")))
        }
        (None, None) => Ok(None),
    }
}

/// Turns async-nats' connect error into ours: authorization and TLS failures get their own
/// variants, since the fix for each is in a different setting.
fn describe(e: async_nats::ConnectError, urls: String, credentials: String, tls: bool) -> Error {
    match e.kind() {
        ConnectErrorKind::AuthorizationViolation => Error::Unauthorized { urls, credentials },
        ConnectErrorKind::Tls => Error::Tls {
            urls,
            reason: e.to_string(),
        },
        _ => match tls::failure(&e) {
            Some(reason) => Error::Tls { urls, reason },
            // A server that rejects the client certificate may just close the connection.
            None if tls => Error::Connect {
                urls,
                reason: format!("{e} (over TLS: check nats.tls_cert_file and nats.tls_key_file)"),
            },
            None => Error::Connect {
                urls,
                reason: e.to_string(),
            },
        },
    }
}

fn setting(setting: &'static str, reason: &str) -> Error {
    Error::Setting {
        setting,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error `connect` gives for `cfg` before it ever reaches a server.
    async fn refused(cfg: NatsConfig) -> Error {
        let cfg = NatsConfig {
            url: vec!["nats://127.0.0.1:1".into()],
            ..cfg
        };
        match connect(&cfg, "test", Duration::from_millis(200)).await {
            Ok(_) => panic!("connected with {cfg:?}"),
            Err(e) => e,
        }
    }

    #[tokio::test]
    async fn credential_settings_are_checked_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.nk");
        let e = refused(NatsConfig {
            nkey_seed_file: Some(missing.clone()),
            ..NatsConfig::default()
        })
        .await
        .to_string();
        assert!(e.contains("nats.nkey_seed_file"), "{e}");
        assert!(e.contains(&missing.display().to_string()), "{e}");

        let bad_seed = "SUNOTAREALSEEDATALL";
        let e = refused(NatsConfig {
            nkey_seed: Some(bad_seed.into()),
            ..NatsConfig::default()
        })
        .await
        .to_string();
        assert!(e.contains("nats.nkey_seed") && e.contains("not a valid NKey seed"));
        assert!(!e.contains(bad_seed), "the seed leaked: {e}");

        let account = nkeys::KeyPair::new_account().seed().unwrap();
        let e = refused(NatsConfig {
            nkey_seed: Some(account.clone()),
            ..NatsConfig::default()
        })
        .await
        .to_string();
        assert!(
            e.contains("holds no user seed") && !e.contains(&account),
            "{e}"
        );

        let e = refused(NatsConfig {
            user: Some("alice".into()),
            ..NatsConfig::default()
        })
        .await;
        assert!(
            matches!(
                e,
                Error::Setting {
                    setting: "nats.password",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn tls_files_are_checked_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("ca.pem");
        let e = refused(NatsConfig {
            tls_ca_file: Some(missing.clone()),
            ..NatsConfig::default()
        })
        .await
        .to_string();
        assert!(e.contains("nats.tls_ca_file") && e.contains(&missing.display().to_string()));

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not PEM at all\n").unwrap();
        let e = refused(NatsConfig {
            tls_ca_file: Some(junk.clone()),
            ..NatsConfig::default()
        })
        .await
        .to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_file = dir.path().join("cert.pem");
        std::fs::write(&cert_file, cert.pem()).unwrap();
        let e = refused(NatsConfig {
            tls_cert_file: Some(cert_file.clone()),
            tls_key_file: Some(junk),
            ..NatsConfig::default()
        })
        .await
        .to_string();
        assert!(e.contains("nats.tls_key_file") && e.contains("holds no PEM private key"));

        let e = refused(NatsConfig {
            tls_cert_file: Some(cert_file),
            ..NatsConfig::default()
        })
        .await;
        assert!(matches!(e, Error::Setting { .. }), "{e}");
    }
}
