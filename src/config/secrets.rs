//! Secrets in the configuration: read inline or from a file, and masked wherever the
//! configuration is shown (the startup log, `--check-config`). Never logs a secret.

use std::path::Path;

use super::validate::MIN_SECRET_CHARS;
use super::{Config, Error};

impl Config {
    /// The cluster secret, from `cluster.secret` or `cluster.secret_file`.
    pub fn cluster_secret(&self) -> Result<Option<String>, Error> {
        read_secret(
            "cluster.secret_file",
            self.cluster.secret.as_deref(),
            self.cluster.secret_file.as_deref(),
        )
    }

    /// The bootstrap admin credential, from `auth.admin_token` or `auth.admin_token_file`.
    pub fn admin_token(&self) -> Result<Option<String>, Error> {
        read_secret(
            "auth.admin_token_file",
            self.auth.admin_token.as_deref(),
            self.auth.admin_token_file.as_deref(),
        )
    }

    /// The effective configuration as TOML, secrets masked, for the startup log.
    pub fn redacted(&self) -> String {
        let mut c = self.clone();
        let mask = |s: &mut Option<String>| {
            if s.is_some() {
                *s = Some("***".into());
            }
        };
        mask(&mut c.nats.password);
        mask(&mut c.nats.token);
        mask(&mut c.nats.nkey_seed);
        mask(&mut c.cluster.secret);
        mask(&mut c.auth.admin_token);
        mask(&mut c.client.token);
        // A NATS URL may carry `user:password@` or `token@` itself.
        c.nats.url = c.nats.url.iter().map(|u| redact_url(u)).collect();
        serde_json::to_string(&c).unwrap_or_default()
    }
}

/// `url` with the user info of its authority (`user:password@`, `token@`) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
        None => url.to_string(),
    }
}

/// A secret given inline or in a file; the file's trailing newline is not part of it.
fn read_secret(
    file_field: &'static str,
    inline: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>, Error> {
    if let Some(s) = inline {
        return Ok(Some(s.trim().to_string()));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| Error::Field {
        field: file_field,
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    let secret = text.trim().to_string();
    if secret.chars().count() < MIN_SECRET_CHARS {
        return Err(Error::Field {
            field: file_field,
            reason: format!(
                "{} holds fewer than {MIN_SECRET_CHARS} characters",
                path.display()
            ),
        });
    }
    Ok(Some(secret))
}
