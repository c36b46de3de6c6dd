//! Node configuration: built-in defaults < `concord.toml` (or `--config PATH`) < `CONCORD_*`
//! environment < command-line flags, loaded by figment in [`load`] and checked once by
//! [`Config::validate`]. Read at startup, before the node opens its store or connects.
//!
//! - `schema`: the sections as serde structs, their defaults and accessors;
//! - `validate`: the checks, each naming its field;
//! - `load`: the figment layers and the unknown-variable warnings;
//! - `sources`: where each setting came from (`--check-config`);
//! - `secrets`: secrets read inline or from files, and masked for display.
//!
//! A leaf of the crate: it imports only [`crate::limits`], so every layer may read it.

mod load;
mod schema;
mod secrets;
mod sources;
#[cfg(test)]
mod tests;
mod validate;

use std::path::PathBuf;

pub use load::{known_keys, load, load_with_sources, Flag};
pub use schema::{
    AuthConfig, ClientConfig, ClusterConfig, Config, HistoryConfig, LeaseConfig, LimitsConfig,
    MetricsConfig, NatsConfig, NodeConfig, RaftConfig, Sampling, StorageConfig, TelemetryConfig,
    WatchConfig,
};
pub use secrets::redact_url;
pub use sources::{settings_json, settings_text, Setting};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("invalid setting `{field}`: {reason}")]
    Field { field: &'static str, reason: String },
}
