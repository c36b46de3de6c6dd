//! The operation history a workload records, one JSON line per event, as Jepsen does:
//! `{"process", "type": "invoke"|"ok"|"fail"|"info", "f": "read"|"write"|"delete", "key",
//! "value", "time"}`.
//!
//! A completion (`ok`, `fail`, `info`) follows its process's `invoke`. `fail` means the
//! operation certainly did not take effect; `info` means the outcome is unknown (timeout,
//! lost connection, `internal`), after which the process is retired.
//!
//! One invoke and one completion stand for one logical operation, however many attempts it
//! took: a retrying client resends the same request (a write with the same `request_id`)
//! until one attempt succeeds, one is refused outright, or its deadline passes. Its window,
//! from the invoke to the completion, spans every attempt, so an operation that took effect
//! once, during any attempt, took effect inside it. A completion of a write carries what
//! the exactly-once check needs in `attempt` ([`Attempts`]).

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
/// A compare-and-swap is a write with `if_revision` (invoke and completion): it applies only
/// if the key's revision is that one (0: the key is absent); one that answered `conflict`
/// completes `fail` with [`Attempts::conflict`] set.
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
    /// On a completion: how the operation's attempts went (absent in older histories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Attempts>,
    /// A write's condition (compare-and-swap): the revision the key must have, 0 = absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_revision: Option<u64>,
}

/// How the attempts of one logical operation went, recorded on its completion.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempts {
    /// Requests sent (1 without retries).
    pub sent: u32,
    /// Of those, how many ended with an unknown outcome (timeout, no answer), each of which
    /// may have taken effect.
    pub unknown: u32,
    /// The write's `request_id`, the same on every attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The revision of the acknowledging reply (put, or delete); of a read, the key's
    /// revision it returned (absent for a key not found); of a `conflict`, the key's current
    /// revision the reply reported (0: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The write's condition did not hold (`conflict`, reason `revision`): nothing was
    /// written. Only on a `fail` of a compare-and-swap.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub conflict: bool,
    /// A delete's `deleted` from the acknowledging reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
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
