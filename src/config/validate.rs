//! The checks of [`Config::validate`], run once after loading: each error names the field.
//! No IO here (secrets in files are read, and their length checked, in [`super::secrets`]).

use super::{Config, Error, MetricsConfig, Sampling, TelemetryConfig};

/// Shortest accepted `telemetry.status_interval_ms`.
const MIN_STATUS_INTERVAL_MS: u64 = 100;

/// Shortest accepted shared secret or admin credential.
pub(super) const MIN_SECRET_CHARS: usize = 16;

/// An error naming `field`.
fn field(field: &'static str, reason: &str) -> Error {
    Error::Field {
        field,
        reason: reason.to_string(),
    }
}

impl Config {
    /// Checks every setting once; the error names the field. Checked in this order, so the
    /// first wrong setting is the one reported.
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_identity()?;
        self.validate_nats()?;
        self.validate_raft()?;
        self.validate_limits()?;
        self.validate_idempotency()?;
        self.validate_watch()?;
        self.validate_credentials()?;
        self.telemetry.validate()?;
        self.metrics.validate()
    }

    /// The node id, the cluster name and its initial members.
    fn validate_identity(&self) -> Result<(), Error> {
        if self.node.id == 0 {
            return Err(field("node.id", "must be a positive integer"));
        }
        if self.cluster.name.is_empty() || !is_subject_token(&self.cluster.name) {
            return Err(field(
                "cluster.name",
                "must be non-empty and hold only letters, digits, '-' and '_'",
            ));
        }
        if self.cluster.initial_members.is_empty() {
            return Err(field(
                "cluster.initial_members",
                "must name at least one node id",
            ));
        }
        if self.cluster.initial_members.contains(&0) {
            return Err(field(
                "cluster.initial_members",
                "node ids must be positive",
            ));
        }
        Ok(())
    }

    /// The NATS servers and the subject prefix.
    fn validate_nats(&self) -> Result<(), Error> {
        if self.nats.url.is_empty() || self.nats.url.iter().any(|u| u.trim().is_empty()) {
            return Err(field("nats.url", "must name at least one server URL"));
        }
        let prefix_ok = !self.nats.subject_prefix.is_empty()
            && self.nats.subject_prefix.split('.').all(is_subject_token);
        if !prefix_ok {
            return Err(field(
                "nats.subject_prefix",
                "must be dot-separated tokens of letters, digits, '-' and '_'",
            ));
        }
        Ok(())
    }

    /// The change log and watches: every period and bound positive.
    fn validate_watch(&self) -> Result<(), Error> {
        let checks = [
            ("history.retain_ms", self.history.retain_ms),
            ("history.max_bytes", self.history.max_bytes),
            ("history.check_ms", self.history.check_ms),
            ("lease.check_ms", self.lease.check_ms),
            ("watch.progress_ms", self.watch.progress_ms),
            ("watch.ack_timeout_ms", self.watch.ack_timeout_ms),
            ("watch.max_watches", self.watch.max_watches as u64),
        ];
        match checks.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(field(name, "must be positive")),
            None => Ok(()),
        }
    }

    /// The idempotency table: a window and a limit that keep at least one id.
    fn validate_idempotency(&self) -> Result<(), Error> {
        let i = &self.idempotency;
        if i.window_ms == 0 {
            return Err(field("idempotency.window_ms", "must be positive"));
        }
        if i.max_entries == 0 {
            return Err(field("idempotency.max_entries", "must be positive"));
        }
        Ok(())
    }

    /// Raft timings and the snapshot interval.
    fn validate_raft(&self) -> Result<(), Error> {
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 {
            return Err(field("raft.heartbeat_interval_ms", "must be positive"));
        }
        if r.election_timeout_min_ms < 3 * r.heartbeat_interval_ms {
            return Err(field(
                "raft.election_timeout_min_ms",
                "must be at least 3x raft.heartbeat_interval_ms",
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(field(
                "raft.election_timeout_max_ms",
                "must be greater than raft.election_timeout_min_ms",
            ));
        }
        if r.snapshot_every == 0 {
            return Err(field("raft.snapshot_every", "must be positive"));
        }
        Ok(())
    }

    /// Request limits and the storage quota.
    fn validate_limits(&self) -> Result<(), Error> {
        if self.limits.max_value_bytes == 0 {
            return Err(field("limits.max_value_bytes", "must be positive"));
        }
        if self.limits.max_in_flight == 0 {
            return Err(field("limits.max_in_flight", "must be positive"));
        }
        if self.limits.default_timeout_ms < 10 {
            return Err(field("limits.default_timeout_ms", "must be at least 10"));
        }
        if self.limits.max_timeout_ms < self.limits.default_timeout_ms {
            return Err(field(
                "limits.max_timeout_ms",
                "must be at least limits.default_timeout_ms",
            ));
        }
        if self.limits.max_admin_in_flight == 0 {
            return Err(field("limits.max_admin_in_flight", "must be positive"));
        }
        if self.limits.max_txn_ops == 0 {
            return Err(field("limits.max_txn_ops", "must be positive"));
        }
        if self.limits.max_delete_keys == 0 {
            return Err(field("limits.max_delete_keys", "must be positive"));
        }
        if self.limits.max_scan_limit == 0 {
            return Err(field("limits.max_scan_limit", "must be positive"));
        }
        // The largest put must fit in an empty store, or the quota could refuse every write.
        let largest_entry = (self.limits.max_value_bytes + crate::limits::MAX_KEY_BYTES) as u64
            + crate::limits::VALUE_HEADER_BYTES as u64;
        if self.storage.max_bytes != 0 && self.storage.max_bytes < largest_entry {
            return Err(Error::Field {
                field: "storage.max_bytes",
                reason: format!(
                    "must be 0 (no quota) or at least {largest_entry} (limits.max_value_bytes + the largest key + 8), so that one largest value fits"
                ),
            });
        }
        Ok(())
    }

    /// The cluster secret, the admin credential and the NATS credentials: one source each.
    fn validate_credentials(&self) -> Result<(), Error> {
        if self.cluster.secret.is_some() && self.cluster.secret_file.is_some() {
            return Err(field(
                "cluster.secret",
                "set either cluster.secret or cluster.secret_file, not both",
            ));
        }
        if let Some(s) = &self.cluster.secret {
            if s.trim().chars().count() < MIN_SECRET_CHARS {
                return Err(field(
                    "cluster.secret",
                    "must be at least 16 characters (use e.g. `openssl rand -hex 32`)",
                ));
            }
        }
        if self.auth.admin_token.is_some() && self.auth.admin_token_file.is_some() {
            return Err(field(
                "auth.admin_token",
                "set either auth.admin_token or auth.admin_token_file, not both",
            ));
        }
        if let Some(t) = &self.auth.admin_token {
            if t.trim().chars().count() < MIN_SECRET_CHARS {
                return Err(field("auth.admin_token", "must be at least 16 characters"));
            }
        }
        if self.nats.nkey_seed.is_some() && self.nats.nkey_seed_file.is_some() {
            return Err(field(
                "nats.nkey_seed",
                "set either nats.nkey_seed or nats.nkey_seed_file, not both",
            ));
        }
        if self.nats.tls_cert_file.is_some() != self.nats.tls_key_file.is_some() {
            return Err(field(
                "nats.tls_cert_file",
                "a client certificate needs both nats.tls_cert_file and nats.tls_key_file",
            ));
        }
        Ok(())
    }
}

impl TelemetryConfig {
    fn validate(&self) -> Result<(), Error> {
        let field = |field: &'static str, reason: String| Error::Field { field, reason };
        Sampling::parse(&self.api_events).map_err(|r| field("telemetry.api_events", r))?;
        Sampling::parse(&self.apply_events).map_err(|r| field("telemetry.apply_events", r))?;
        if self.status_interval_ms < MIN_STATUS_INTERVAL_MS {
            return Err(field(
                "telemetry.status_interval_ms",
                format!("must be at least {MIN_STATUS_INTERVAL_MS}"),
            ));
        }
        Ok(())
    }
}

impl MetricsConfig {
    fn validate(&self) -> Result<(), Error> {
        match &self.listen {
            Some(addr) if addr.trim().parse::<std::net::SocketAddr>().is_err() => {
                Err(Error::Field {
                    field: "metrics.listen",
                    reason: format!(
                        "'{addr}' is not host:port with a numeric IP (e.g. 127.0.0.1:9464 or 0.0.0.0:9464)"
                    ),
                })
            }
            _ => Ok(()),
        }
    }
}

/// A NATS subject token: letters, digits, `-` and `_`.
fn is_subject_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
