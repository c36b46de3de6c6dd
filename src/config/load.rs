//! Loading: the figment of every layer (defaults < `concord.toml` or `--config PATH` <
//! `CONCORD_*` environment < command-line flags), extracted into a [`Config`] and checked once.
//! Runs at startup only, before anything else reads the configuration.

use std::collections::BTreeSet;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

use super::sources::{settings, Setting};
use super::{Config, Error};

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
pub(super) const ENV_SOURCE: &str = "env";

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
pub(super) fn visit_keys(
    prefix: &str,
    v: &serde_json::Value,
    f: &mut impl FnMut(&str, &serde_json::Value),
) {
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
