//! Where each setting came from, for `concord serve --check-config`: the effective value
//! (secrets masked) beside `default`, the file's path, `env CONCORD_...` or `flag --...`.

use figment::Figment;
use serde::Serialize;

use super::load::{visit_keys, ENV_SOURCE};
use super::Config;

/// One setting of the effective configuration (secrets masked) and where it came from:
/// `default`, the config file's path, `env CONCORD_...` or `flag --...`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setting {
    pub key: String,
    pub value: serde_json::Value,
    pub source: String,
}

/// Every leaf setting of `config`, masked as [`Config::redacted`], with its source.
pub(super) fn settings(config: &Config, figment: &Figment) -> Vec<Setting> {
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
