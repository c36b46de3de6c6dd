//! The configuration's shape: every section as a serde struct, its built-in defaults, and
//! the accessors that read a setting in the unit the node uses (`Duration`, `SocketAddr`).
//! Only data here; [`super::validate`] checks it, [`super::load`] fills it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

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
    pub idempotency: IdempotencyConfig,
    pub history: HistoryConfig,
    pub lease: LeaseConfig,
    pub watch: WatchConfig,
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

/// How many of the per-operation events are kept, as `telemetry.api_events` and
/// `telemetry.apply_events` spell it: `all`, `sampled:R` (0 < R <= 1) or `off`. Parsed here,
/// where the setting is checked; `observe::sample` keeps the events it lets through.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    All,
    Sampled(f64),
    Off,
}

impl Sampling {
    /// Parses `all`, `off` or `sampled:R`; the error says what is accepted.
    pub fn parse(spec: &str) -> Result<Sampling, String> {
        let spec = spec.trim();
        match spec {
            "all" => return Ok(Sampling::All),
            "off" => return Ok(Sampling::Off),
            _ => {}
        }
        let bad = || format!("'{spec}' is not `all`, `off` or `sampled:R` with 0 < R <= 1");
        let rate = spec
            .strip_prefix("sampled:")
            .ok_or_else(bad)?
            .trim()
            .parse::<f64>()
            .map_err(|_| bad())?;
        // NaN fails both comparisons.
        if rate > 0.0 && rate <= 1.0 {
            Ok(Sampling::Sampled(rate))
        } else {
            Err(bad())
        }
    }
}

impl TelemetryConfig {
    pub fn status_interval(&self) -> Duration {
        Duration::from_millis(self.status_interval_ms)
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
    /// Longest deadline a request may name: a larger `timeout_ms` (field or header) is
    /// clamped to it, so a parked request cannot hold an in-flight slot for hours.
    pub max_timeout_ms: u64,
    /// Admin requests (`P.admin.*`, `P.node.<id>.admin.*`) a node works on at once: a pool of
    /// their own, so a flood of key-space requests cannot lock the operator out.
    pub max_admin_in_flight: usize,
    /// Largest `limit` a scan may ask for.
    pub max_scan_limit: usize,
    /// Most ops in one branch of a `P.kv.txn`.
    pub max_txn_ops: usize,
    /// Most keys one delete by prefix removes (the reply's `more` says to call again).
    pub max_delete_keys: u64,
}

/// The idempotency table (exactly-once writes). Replicated: the leader proposes its own
/// values when they differ from the cluster's, so every node judges alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// How long (cluster time) a request id is remembered after its write applied.
    pub window_ms: u64,
    /// Request ids remembered at most; past it the oldest are forgotten first.
    pub max_entries: u64,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        let d = crate::command::IdempotencySettings::default();
        IdempotencyConfig {
            window_ms: d.window_ms,
            max_entries: d.max_entries,
        }
    }
}

impl IdempotencyConfig {
    pub fn settings(&self) -> crate::command::IdempotencySettings {
        crate::command::IdempotencySettings {
            window_ms: self.window_ms,
            max_entries: self.max_entries,
        }
    }
}

/// The change log (DESIGN.md "Change log and compaction"): the leader proposes compaction
/// past what these keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// How long (cluster time) the change log keeps a revision's events.
    pub retain_ms: u64,
    /// Most bytes the change log keeps on a node; the oldest revisions go first.
    pub max_bytes: u64,
    /// How often the leader looks for revisions to compact.
    pub check_ms: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            retain_ms: 5 * 60 * 1000,
            max_bytes: 1 << 30,
            check_ms: 1000,
        }
    }
}

/// Leases (DESIGN.md "Leases and TTL").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseConfig {
    /// How often the leader looks for leases past their deadline (cluster time): a lease
    /// without keepalives ends at most this much after it is due, plus the commit.
    pub check_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig { check_ms: 100 }
    }
}

/// Watches served by this node (DESIGN.md "Watch").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// A watch with nothing to send sends a progress notice this often.
    pub progress_ms: u64,
    /// A watch whose oldest message stays unacknowledged this long is ended
    /// (`slow_consumer`).
    pub ack_timeout_ms: u64,
    /// Watches this node serves at once; past it, a create answers `busy`.
    pub max_watches: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            progress_ms: 1000,
            ack_timeout_ms: 10_000,
            max_watches: 10_000,
        }
    }
}

impl WatchConfig {
    pub fn progress(&self) -> Duration {
        Duration::from_millis(self.progress_ms)
    }

    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }
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
            idempotency: IdempotencyConfig::default(),
            history: HistoryConfig::default(),
            lease: LeaseConfig::default(),
            watch: WatchConfig::default(),
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
            // A new leader within 1 s of a crash on openraft 0.9 (lease = the max, plus one
            // timeout), and no spurious election in 10 minutes of 64-client puts
            // (RELIABILITY.md).
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 400,
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
            max_timeout_ms: 60_000,
            max_admin_in_flight: 64,
            max_scan_limit: 10_000,
            max_txn_ops: 128,
            max_delete_keys: 10_000,
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
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

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

    pub fn max_timeout(&self) -> Duration {
        Duration::from_millis(self.max_timeout_ms)
    }
}

impl Config {
    /// The `metrics.listen` address, when set (checked by [`Config::validate`]).
    pub fn metrics_listen(&self) -> Option<SocketAddr> {
        self.metrics
            .listen
            .as_deref()
            .and_then(|a| a.trim().parse().ok())
    }

    pub fn initial_members(&self) -> BTreeSet<u64> {
        self.cluster.initial_members.iter().copied().collect()
    }

    /// The lowest initial member bootstraps a new cluster.
    pub fn is_bootstrapper(&self) -> bool {
        self.initial_members().first() == Some(&self.node.id)
    }
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
