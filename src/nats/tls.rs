//! TLS of the NATS connection. The PEM files named by `nats.tls_*` are checked here, before
//! connecting, so that a missing or wrong file is named in the error instead of surfacing as
//! a failed handshake. async-nats builds the rustls config itself from the same paths (with
//! the `ring` provider it enables: nothing here may pull in another rustls provider).
//!
//! Never puts key material in an error: PEM parse errors are reduced to a short phrase.

use std::path::Path;

use async_nats::rustls::pki_types::pem::{self, PemObject};
use async_nats::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use async_nats::ConnectOptions;

use super::Error;
use crate::config::NatsConfig;

/// Adds the TLS settings; returns whether TLS is required by them (or by a `tls://` URL).
/// A CA file or a client certificate implies TLS: they are useless without it, and a
/// connection that silently stays plaintext would defeat them.
pub(super) async fn apply(
    mut opts: ConnectOptions,
    cfg: &NatsConfig,
) -> Result<(ConnectOptions, bool), Error> {
    if let Some(ca) = &cfg.tls_ca_file {
        certificates("nats.tls_ca_file", ca).await?;
        opts = opts.add_root_certificates(ca.clone());
    }
    match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => {
            certificates("nats.tls_cert_file", cert).await?;
            private_key(key).await?;
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::Setting {
                setting: "nats.tls_cert_file",
                reason: "a client certificate needs both nats.tls_cert_file and \
                         nats.tls_key_file"
                    .into(),
            })
        }
        (None, None) => {}
    }
    let required = cfg.tls_required
        || cfg.tls_ca_file.is_some()
        || cfg.tls_cert_file.is_some()
        || cfg.url.iter().any(|u| u.trim_start().starts_with("tls://"));
    if required {
        opts = opts.require_tls(true);
    }
    Ok((opts, required))
}

/// The TLS error inside a failed connect, if any: rustls' own errors arrive wrapped in
/// `io::Error`s (handshake, or an alert such as "certificate required" read afterwards).
pub(super) fn failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<async_nats::rustls::Error>() {
            return Some(r.to_string());
        }
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<async_nats::rustls::Error>());
        if let Some(r) = inner {
            return Some(r.to_string());
        }
        next = err.source();
    }
    None
}

/// At least one PEM certificate in `path`.
async fn certificates(setting: &'static str, path: &Path) -> Result<(), Error> {
    let bytes = read(setting, path).await?;
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        cert.map_err(|e| file(setting, path, problem(&e, "certificate")))?;
        found += 1;
    }
    if found == 0 {
        return Err(file(setting, path, "holds no PEM certificate".into()));
    }
    Ok(())
}

/// A PEM private key (PKCS#8, PKCS#1 or SEC1) in `path`.
async fn private_key(path: &Path) -> Result<(), Error> {
    const SETTING: &str = "nats.tls_key_file";
    let bytes = read(SETTING, path).await?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map(drop)
        .map_err(|e| file(SETTING, path, problem(&e, "private key")))
}

async fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    tokio::fs::read(path)
        .await
        .map_err(|e| file(setting, path, e.to_string()))
}

/// A parse error in words, without the bytes it quotes (they may be key material).
fn problem(e: &pem::Error, what: &str) -> String {
    match e {
        pem::Error::NoItemsFound => format!("holds no PEM {what}"),
        pem::Error::Io(e) => e.to_string(),
        _ => format!("holds a malformed PEM {what}"),
    }
}

fn file(setting: &'static str, path: &Path, reason: String) -> Error {
    Error::File {
        setting,
        path: path.display().to_string(),
        reason,
    }
}
