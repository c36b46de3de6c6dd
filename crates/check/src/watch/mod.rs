//! The watch workload (`--workload watch`): writers put unique values under a prefix while
//! watchers follow the prefix's change log through every fault, and a checker proves that
//! each watcher saw exactly the change log, every revision once and in order.
//!
//! - **Writers** put `"<writer>-<n>"` (unique per run) into one of a few keys under
//!   [`PREFIX`], each put with a `request_id` and retried through `timeout`, `busy` and
//!   `cluster_not_ready` within its deadline ([`crate::retry`]); each put is recorded with its
//!   outcome ([`PutRecord`]: acknowledged at a revision, failed for certain, or unknown).
//! - **Watchers**, one per node, follow the prefix from the run's start revision over the raw
//!   wire protocol (`P.node.<id>.watch.create`): every message acknowledged, a resume from
//!   `resume_revision` after an end, or after 3 × `progress_ms` of silence from the last
//!   revision fully seen + 1; creates retried with backoff while the node is down or
//!   refuses. Every message received is recorded, per stream ([`WatcherLog`]).
//! - **The truth**: after the faults heal, a fresh watch from the start revision on a
//!   healthy node, read until it reaches the store revision a final scan gave.
//!
//! [`client`] performs and records; [`check`] judges. Nothing here links the node library.

pub mod check;
pub mod client;
pub mod follow;
#[cfg(test)]
mod follow_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::history::Attempts;

/// The keys the writers put into, and the watchers follow, start with this.
pub const PREFIX: &str = "watch/";

/// How a put ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PutOutcome {
    /// Acknowledged, at `revision`.
    Ok,
    /// Certainly not applied: every attempt was refused.
    Failed,
    /// May have applied: no attempt was acknowledged and one may have taken effect.
    Unknown,
}

/// One put as its writer invoked it and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutRecord {
    pub writer: u64,
    pub key: String,
    /// The JSON string written, unique per run.
    pub value: String,
    pub outcome: PutOutcome,
    /// The acknowledged revision (with [`PutOutcome::Ok`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Nanoseconds since the workload started, at the invoke and at the completion.
    pub invoked: u64,
    pub completed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Attempts>,
}

/// One message of a watch as the watcher received it (`events` as delivered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub seq: u64,
    pub events: Vec<Value>,
    pub store_revision: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fragment: bool,
}

/// How a stream ended, as the watcher saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum StreamEnd {
    /// The node's end message.
    End {
        code: String,
        resume_revision: u64,
        message: String,
    },
    /// 3 × `progress_ms` without a message: the node may be dead.
    Silence,
    /// A message whose `seq` was not the next one (one was lost): the stream cannot be
    /// trusted past it.
    SeqGap { expected: u64, got: u64 },
    /// A message the watcher could not read as the contract's.
    Malformed { text: String },
    /// The watcher stopped following (the run is over).
    Stopped,
}

/// One watch: created on `node` from `start_revision`, its messages, how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    pub watch_id: String,
    pub node: u64,
    pub start_revision: u64,
    /// Nanoseconds since the workload started, when the create was answered.
    pub created: u64,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<StreamEnd>,
}

/// Everything one watcher recorded: its streams in order, and the creates refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WatcherLog {
    pub name: String,
    /// The node it prefers (it moves on only when that node cannot serve it).
    pub home: u64,
    pub start_revision: u64,
    pub streams: Vec<Stream>,
    /// Creates refused or unanswered, by error code (`no_reply` for none).
    pub refused: BTreeMap<String, u64>,
}

/// What the watch workload recorded, written as `watch-history.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchHistory {
    /// The first revision every watcher (and the truth) starts from.
    pub start_revision: u64,
    /// The store revision after the workload, by the final scan (`None`: no final scan).
    pub final_revision: Option<u64>,
    pub puts: Vec<PutRecord>,
    pub watchers: Vec<WatcherLog>,
    /// The fresh watch after the faults healed (`None`: no node could serve it).
    pub truth: Option<WatcherLog>,
}

/// An event's revision (0 when it has none: a malformed event, which the checker names).
pub fn revision_of(event: &Value) -> u64 {
    event["revision"].as_u64().unwrap_or(0)
}
