//! Node configuration: built-in defaults < `concord.toml` (or `--config PATH`) < `CONCORD_*`
//! environment < command-line flags, loaded by figment in [`load`] and checked once by
//! [`Config::validate`].

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};

use crate::observe::sample::Sampling;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("invalid setting `{field}`: {reason}")]
    Field { field: &'static str, reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where this node keeps its fjall database and snapshots.
    pub data_dir: PathBuf,
    pub node: NodeConfig,
    pub cluster: ClusterConfig,
    pub nats: NatsConfig,
    pub raft: RaftConfig,
    pub limits: LimitsConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub telemetry: TelemetryConfig,
    pub metrics: MetricsConfig,
    /// Settings of the `concord` client commands (ignored by `serve`).
    pub client: ClientConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub id: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Names the Raft subjects; clusters sharing a NATS system need distinct prefixes.
    pub name: String,
    /// The voters of a new cluster; the lowest id bootstraps it.
    #[serde(deserialize_with = "ids_from_list_or_csv")]
    pub initial_members: Vec<u64>,
    /// This node joins a running cluster (`concord cluster add`): it never bootstraps one,
    /// and votes only once a leader has reached it.
    pub join: bool,
    /// Shared secret: every Raft RPC, RPC reply and forwarded client request carries an
    /// HMAC-SHA256 under it, and unsigned or forged ones are dropped. Same on every node.
    pub secret: Option<String>,
    /// The secret read from a file instead (trailing newline ignored).
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// One or more server URLs (a list, or a comma-separated string).
    #[serde(deserialize_with = "strings_from_list_or_csv")]
    pub url: Vec<String>,
    pub subject_prefix: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub creds_file: Option<PathBuf>,
    /// NKey seed (`SU...`) for NKey authentication.
    pub nkey_seed: Option<String>,
    /// File holding the NKey seed.
    pub nkey_seed_file: Option<PathBuf>,
    /// Refuse a connection that is not TLS.
    pub tls_required: bool,
    /// PEM CA bundle that signs the server's certificate (implies TLS).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for servers that verify clients.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require a token on every request.
    pub enabled: bool,
    /// Bootstrap admin credential, accepted by this node as an admin token.
    pub admin_token: Option<String>,
    /// The admin credential read from a file instead (trailing newline ignored).
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Publish events on `P.telemetry.>` at all (metrics are kept either way). Default on.
    pub enabled: bool,
    /// Per-request events `api.{put,get,delete,scan}`: `all`, `sampled:R` (0 < R <= 1) or
    /// `off`. Default `all`.
    pub api_events: String,
    /// Per-command events `operation.apply` (one per write on every node): `all`,
    /// `sampled:R` or `off`. Default `off`: they multiply the event volume by the number of
    /// nodes; turn them on to follow replication write by write.
    pub apply_events: String,
    /// Put keys into api and apply events (they may be sensitive). Default off.
    pub include_keys: bool,
    /// Period of the `cluster.status` event, at least 100. Default 10 s.
    pub status_interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` of the HTTP listener serving `/metrics`, `/healthz` and `/readyz`;
    /// unset: no listener.
    pub listen: Option<String>,
}

/// Shortest accepted `telemetry.status_interval_ms`.
const MIN_STATUS_INTERVAL_MS: u64 = 100;

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

    pub fn status_interval(&self) -> Duration {
        Duration::from_millis(self.status_interval_ms)
    }
}

impl MetricsConfig {
    fn validate(&self) -> Result<(), Error> {
        match &self.listen {
            Some(addr) if addr.trim().parse::<SocketAddr>().is_err() => Err(Error::Field {
                field: "metrics.listen",
                reason: format!(
                    "'{addr}' is not host:port with a numeric IP (e.g. 127.0.0.1:9464 or 0.0.0.0:9464)"
                ),
            }),
            _ => Ok(()),
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            api_events: "all".into(),
            apply_events: "off".into(),
            include_keys: false,
            status_interval_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Token the client commands send (`--token` and `CONCORD_TOKEN` take precedence).
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot so slow followers can catch up without one.
    pub max_in_snapshot_log_to_keep: u64,
    pub install_snapshot_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest encoded value accepted by `put`; stays below the NATS max payload.
    pub max_value_bytes: usize,
    /// Requests a node works on at once before answering `busy`.
    pub max_in_flight: usize,
    /// Deadline of a request that names none.
    pub default_timeout_ms: u64,
    /// Largest `limit` a scan may ask for.
    pub max_scan_limit: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// fsync the log before acknowledging. Off only for benchmarks of its cost.
    pub fsync: bool,
    pub cache_size_mib: u64,
    /// Quota on the live data size (key + stored value bytes of live keys): past it, puts
    /// answer `no_space`. 0: no quota.
    pub max_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            node: NodeConfig { id: 1 },
            cluster: ClusterConfig::default(),
            nats: NatsConfig::default(),
            raft: RaftConfig::default(),
            limits: LimitsConfig::default(),
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
            telemetry: TelemetryConfig::default(),
            metrics: MetricsConfig::default(),
            client: ClientConfig::default(),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { id: 1 }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            name: "concord".into(),
            initial_members: vec![1],
            join: false,
            secret: None,
            secret_file: None,
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: vec!["nats://127.0.0.1:4222".into()],
            subject_prefix: "concord".into(),
            user: None,
            password: None,
            token: None,
            creds_file: None,
            nkey_seed: None,
            nkey_seed_file: None,
            tls_required: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_interval_ms: 150,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            snapshot_every: 10_000,
            max_in_snapshot_log_to_keep: 1000,
            install_snapshot_timeout_ms: 10_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_value_bytes: 256 * 1024,
            max_in_flight: 10_000,
            default_timeout_ms: 3000,
            max_scan_limit: 10_000,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            fsync: true,
            cache_size_mib: 32,
            max_bytes: 8 * 1024 * 1024 * 1024,
        }
    }
}

impl RaftConfig {
    pub fn election_timeout_min(&self) -> Duration {
        Duration::from_millis(self.election_timeout_min_ms)
    }

    pub fn election_timeout_max(&self) -> Duration {
        Duration::from_millis(self.election_timeout_max_ms)
    }
}

impl LimitsConfig {
    pub fn default_timeout(&self) -> Duration {
        Duration::from_millis(self.default_timeout_ms)
    }
}

impl Config {
    /// Checks every setting once; the error names the field.
    pub fn validate(&self) -> Result<(), Error> {
        let field = |field: &'static str, reason: &str| Error::Field {
            field,
            reason: reason.to_string(),
        };
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
        if self.limits.max_value_bytes == 0 {
            return Err(field("limits.max_value_bytes", "must be positive"));
        }
        if self.limits.max_in_flight == 0 {
            return Err(field("limits.max_in_flight", "must be positive"));
        }
        if self.limits.default_timeout_ms < 10 {
            return Err(field("limits.default_timeout_ms", "must be at least 10"));
        }
        if self.limits.max_scan_limit == 0 {
            return Err(field("limits.max_scan_limit", "must be positive"));
        }
        // The largest put must fit in an empty store, or the quota could refuse every write.
        let largest_entry = (self.limits.max_value_bytes + crate::api::validate::MAX_KEY_BYTES)
            as u64
            + crate::store::keys::VALUE_HEADER_BYTES as u64;
        if self.storage.max_bytes != 0 && self.storage.max_bytes < largest_entry {
            return Err(Error::Field {
                field: "storage.max_bytes",
                reason: format!(
                    "must be 0 (no quota) or at least {largest_entry} (limits.max_value_bytes + the largest key + 8), so that one largest value fits"
                ),
            });
        }
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
        self.telemetry.validate()?;
        self.metrics.validate()
    }

    /// The `metrics.listen` address, when set (checked by [`Config::validate`]).
    pub fn metrics_listen(&self) -> Option<SocketAddr> {
        self.metrics
            .listen
            .as_deref()
            .and_then(|a| a.trim().parse().ok())
    }

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

    pub fn initial_members(&self) -> BTreeSet<u64> {
        self.cluster.initial_members.iter().copied().collect()
    }

    /// The lowest initial member bootstraps a new cluster.
    pub fn is_bootstrapper(&self) -> bool {
        self.initial_members().first() == Some(&self.node.id)
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

/// Shortest accepted shared secret or admin credential.
const MIN_SECRET_CHARS: usize = 16;

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

fn is_subject_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A command-line flag that sets one setting, applied over every other layer.
#[derive(Debug, Clone)]
pub struct Flag {
    /// The dotted key it sets, e.g. `node.id`.
    pub key: &'static str,
    /// The flag as typed, e.g. `--node-id`; named as the setting's source.
    pub flag: &'static str,
    pub value: figment::value::Value,
}

/// Loads the layered configuration. `flags` are the command-line flags, applied last.
/// Unknown `CONCORD_*` variables are returned as warnings: the CLI's own variables share
/// the prefix.
pub fn load(file: Option<&Path>, flags: &[Flag]) -> Result<(Config, Vec<String>), Error> {
    let (figment, warnings) = layers(file, flags)?;
    let config: Config = figment.extract().map_err(|e| Error::Invalid(describe(e)))?;
    config.validate()?;
    Ok((config, warnings))
}

/// Like [`load`], and also where each setting's value came from, for `--check-config`.
pub fn load_with_sources(
    file: Option<&Path>,
    flags: &[Flag],
) -> Result<(Config, Vec<String>, Vec<Setting>), Error> {
    let (figment, warnings) = layers(file, flags)?;
    let config: Config = figment.extract().map_err(|e| Error::Invalid(describe(e)))?;
    config.validate()?;
    let settings = settings(&config, &figment);
    Ok((config, warnings, settings))
}

/// The figment of every layer: defaults < file < `CONCORD_*` env < flags.
fn layers(file: Option<&Path>, flags: &[Flag]) -> Result<(Figment, Vec<String>), Error> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    match file {
        Some(path) => {
            if !path.is_file() {
                return Err(Error::File {
                    path: path.to_path_buf(),
                    reason: "cannot read it (missing or not a file)".into(),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        None => {
            let default = Path::new("concord.toml");
            if default.is_file() {
                figment = figment.merge(Toml::file_exact(default));
            }
        }
    }
    let known = known_keys();
    let mut warnings = Vec::new();
    for (name, _) in std::env::vars() {
        if let Some(rest) = name.strip_prefix("CONCORD_") {
            let key = rest.to_ascii_lowercase().replace("__", ".");
            if !known.contains(&key) && !CLI_ENV.contains(&name.as_str()) {
                warnings.push(format!("ignoring unknown environment variable {name}"));
            }
        }
    }
    let env = Env::prefixed("CONCORD_")
        .split("__")
        .filter(move |k| known.contains(&k.as_str().to_ascii_lowercase().replace("__", ".")));
    figment = figment.merge(Labeled {
        inner: env,
        name: None,
        source: ENV_SOURCE.into(),
    });
    for f in flags {
        figment = figment.merge(Labeled {
            inner: Serialized::default(f.key, f.value.clone()),
            name: Some(format!("flag {}", f.flag)),
            source: format!("flag {}", f.flag),
        });
    }
    Ok((figment, warnings))
}

/// Source label of the environment layer; each setting names its own variable.
const ENV_SOURCE: &str = "env";

/// A provider with its metadata's source (and optionally name) replaced, so that
/// [`settings`] can tell the layers apart.
struct Labeled<P> {
    inner: P,
    name: Option<String>,
    source: String,
}

impl<P: figment::Provider> figment::Provider for Labeled<P> {
    fn metadata(&self) -> figment::Metadata {
        let mut md = self.inner.metadata();
        if let Some(n) = &self.name {
            md.name = n.clone().into();
        }
        md.source = Some(figment::Source::Custom(self.source.clone()));
        md
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        self.inner.data()
    }

    fn profile(&self) -> Option<figment::Profile> {
        self.inner.profile()
    }
}

/// One setting of the effective configuration (secrets masked) and where it came from:
/// `default`, the config file's path, `env CONCORD_...` or `flag --...`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setting {
    pub key: String,
    pub value: serde_json::Value,
    pub source: String,
}

/// Every leaf setting of `config`, masked as [`Config::redacted`], with its source.
fn settings(config: &Config, figment: &Figment) -> Vec<Setting> {
    let masked: serde_json::Value =
        serde_json::from_str(&config.redacted()).unwrap_or(serde_json::Value::Null);
    let mut leaves = Vec::new();
    visit_keys("", &masked, &mut |key, value| {
        if !value.is_object() {
            leaves.push((key.to_string(), value.clone()));
        }
    });
    leaves
        .into_iter()
        .map(|(key, value)| {
            let source = source_of(figment, &key);
            Setting { key, value, source }
        })
        .collect()
}

fn source_of(figment: &Figment, key: &str) -> String {
    let Some(md) = figment.find_metadata(key) else {
        return "default".into();
    };
    match &md.source {
        Some(figment::Source::File(path)) => path.display().to_string(),
        Some(figment::Source::Custom(s)) if s == ENV_SOURCE => {
            format!(
                "env CONCORD_{}",
                key.to_ascii_uppercase().replace('.', "__")
            )
        }
        Some(figment::Source::Custom(s)) => s.clone(),
        _ => "default".into(),
    }
}

/// `--check-config` text: one `key = value   (source)` line per setting, sources aligned.
pub fn settings_text(settings: &[Setting]) -> String {
    let shown: Vec<(String, &str)> = settings
        .iter()
        .map(|s| {
            let value = match &s.value {
                serde_json::Value::Null => "unset".to_string(),
                v => v.to_string(),
            };
            (format!("{} = {value}", s.key), s.source.as_str())
        })
        .collect();
    // Aligned up to a point: one long list must not push every source off the screen.
    let width = shown
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0)
        .min(56);
    shown
        .iter()
        .map(|(line, source)| format!("{line:<width$}   ({source})"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `--check-config --json`: `{"key": {"value": ..., "source": "..."}}`.
pub fn settings_json(settings: &[Setting]) -> serde_json::Value {
    serde_json::Value::Object(
        settings
            .iter()
            .map(|s| {
                (
                    s.key.clone(),
                    serde_json::json!({"value": s.value, "source": s.source}),
                )
            })
            .collect(),
    )
}

/// Environment variables read by the CLI, not by a node.
const CLI_ENV: &[&str] = &["CONCORD_TOKEN", "CONCORD_TIMEOUT_MS", "CONCORD_JSON"];

/// Every dotted key of the configuration (`nats.url`, `data_dir`, ...).
pub fn known_keys() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(v) = serde_json::to_value(Config::default()) {
        visit_keys("", &v, &mut |key, _| {
            out.insert(key.to_string());
        });
    }
    out
}

/// Calls `f` with the dotted path of every key under `v` (sections and leaves).
fn visit_keys(prefix: &str, v: &serde_json::Value, f: &mut impl FnMut(&str, &serde_json::Value)) {
    if let serde_json::Value::Object(map) = v {
        for (k, v) in map {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            f(&key, v);
            visit_keys(&key, v, f);
        }
    }
}

/// figment errors name the key path and the source; keep both in one line.
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            let mut s = if path.is_empty() {
                e.kind.to_string()
            } else {
                format!("setting `{path}`: {}", e.kind)
            };
            if !source.is_empty() {
                s.push_str(&format!(" (from {source})"));
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ListOrString<T> {
    List(Vec<T>),
    One(T),
    Csv(String),
}

fn ids_from_list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    match ListOrString::<u64>::deserialize(d)? {
        ListOrString::List(v) => Ok(v),
        ListOrString::One(v) => Ok(vec![v]),
        ListOrString::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<u64>().map_err(|_| {
                    serde::de::Error::custom(format!("'{s}' is not a node id (a positive integer)"))
                })
            })
            .collect(),
    }
}

fn strings_from_list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match ListOrString::<String>::deserialize(d)? {
        ListOrString::List(v) => Ok(v),
        ListOrString::One(s) | ListOrString::Csv(s) => Ok(s
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_single_node() {
        let c = Config::default();
        c.validate().expect("defaults validate");
        assert!(c.is_bootstrapper());
        assert_eq!(c.nats.url, vec!["nats://127.0.0.1:4222".to_string()]);
    }

    #[test]
    fn validate_names_the_field() {
        let mut c = Config::default();
        c.raft.election_timeout_min_ms = 100;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("raft.election_timeout_min_ms"), "{err}");
    }

    #[test]
    fn storage_quota_is_off_or_fits_one_largest_value() {
        let mut c = Config::default();
        assert_eq!(c.storage.max_bytes, 8 << 30);
        c.storage.max_bytes = 0;
        c.validate().expect("0 means no quota");
        c.storage.max_bytes = c.limits.max_value_bytes as u64;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("storage.max_bytes"), "{err}");
        c.storage.max_bytes = c.limits.max_value_bytes as u64 + 1024 + 8;
        c.validate().expect("one largest value fits");
    }

    #[test]
    fn telemetry_and_metrics_settings_are_checked() {
        let check = |f: &dyn Fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate().err().map(|e| e.to_string())
        };
        assert_eq!(
            check(&|c| c.telemetry.api_events = "sampled:0.1".into()),
            None
        );
        assert_eq!(check(&|c| c.telemetry.apply_events = "off".into()), None);
        assert_eq!(
            check(&|c| c.metrics.listen = Some("127.0.0.1:9464".into())),
            None
        );
        assert_eq!(check(&|c| c.metrics.listen = Some("[::1]:0".into())), None);
        for (f, name) in [
            (
                &(|c: &mut Config| c.telemetry.api_events = "sampled:2".into())
                    as &dyn Fn(&mut Config),
                "telemetry.api_events",
            ),
            (
                &|c: &mut Config| c.telemetry.apply_events = "most".into(),
                "telemetry.apply_events",
            ),
            (
                &|c: &mut Config| c.telemetry.status_interval_ms = 99,
                "telemetry.status_interval_ms",
            ),
            (
                &|c: &mut Config| c.metrics.listen = Some("localhost".into()),
                "metrics.listen",
            ),
            (
                &|c: &mut Config| c.metrics.listen = Some("1.2.3.4:99999".into()),
                "metrics.listen",
            ),
        ] {
            let err = check(f).expect("refused");
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn redacted_masks_secrets_and_url_credentials() {
        let mut c = Config::default();
        c.nats.url = vec![
            "nats://alice:url-pass@n1:4222".into(),
            "tls://url-token@n2:4222/x@y".into(),
            "n3:4222".into(),
        ];
        c.nats.password = Some("the-password".into());
        c.nats.nkey_seed = Some("SUSEED".into());
        let text = c.redacted();
        for secret in ["url-pass", "url-token", "alice", "the-password", "SUSEED"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("nats://***@n1:4222"), "{text}");
        assert!(text.contains("tls://***@n2:4222/x@y"), "{text}");
        assert!(text.contains("\"n3:4222\""), "{text}");
    }

    #[test]
    fn members_parse_from_csv_or_list() {
        let j: ClusterConfig =
            serde_json::from_str(r#"{"name":"a","initial_members":"1, 2,3"}"#).unwrap();
        assert_eq!(j.initial_members, vec![1, 2, 3]);
        let j: ClusterConfig =
            serde_json::from_str(r#"{"name":"a","initial_members":[4,5]}"#).unwrap();
        assert_eq!(j.initial_members, vec![4, 5]);
        assert!(serde_json::from_str::<ClusterConfig>(r#"{"initial_members":"1,x"}"#).is_err());
    }
}
