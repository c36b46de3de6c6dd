//! The operation history a workload records, one JSON line per event, as Jepsen does:
//! `{"process", "type": "invoke"|"ok"|"fail"|"info", "f": "read"|"write"|"delete", "key",
//! "value", "time"}`.
//!
//! A completion (`ok`, `fail`, `info`) follows its process's `invoke`. `fail` means the
//! operation certainly did not take effect; `info` means the outcome is unknown (timeout,
//! lost connection, `internal`), after which the process is retired.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Func {
    Read,
    Write,
    Delete,
}

/// One history event.
///
/// `value`: for a write, the value written (invoke and completion); for a read, `null` at
/// invoke and the value read at `ok` (`null` when the key was absent); for a delete, `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub f: Func,
    pub key: String,
    pub value: Value,
    /// Nanoseconds since the workload started.
    pub time: u64,
}

pub type History = Vec<Event>;

/// Reads a JSON-lines history.
pub fn parse(text: &str) -> Result<History, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

pub fn to_lines(history: &[Event]) -> String {
    let mut out = String::new();
    for e in history {
        out.push_str(&serde_json::to_string(e).unwrap_or_default());
        out.push('\n');
    }
    out
}
