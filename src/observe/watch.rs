//! Metrics and telemetry of watches and the change log: how many watches this node serves,
//! what it sends them, why they end, and what compaction leaves.

use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics::{Counter, Gauge};

use super::{Event, Observer};

pub const WATCHES: &str = "concord_watches";
pub const WATCH_MESSAGES: &str = "concord_watch_messages_total";
pub const WATCH_EVENTS: &str = "concord_watch_events_total";
pub const WATCH_ENDS: &str = "concord_watch_ends_total";
pub const HISTORY_BYTES: &str = "concord_history_bytes";
pub const COMPACT_REVISION: &str = "concord_compact_revision";

/// The end codes of DESIGN.md "Watch", and `cluster_not_ready` (an install skipped
/// revisions); the label is bounded by this list.
pub const END_CODES: [&str; 7] = [
    "slow_consumer",
    "compacted",
    "no_leader",
    "node_stopping",
    "cancelled",
    "unauthorized",
    "cluster_not_ready",
];

pub struct WatchMetrics {
    pub watches: Gauge,
    /// Messages with events, and progress notices.
    pub messages: [Counter; 2],
    pub events: Counter,
    ends: [Counter; END_CODES.len()],
    pub history_bytes: Gauge,
    pub compact_revision: Gauge,
}

impl WatchMetrics {
    pub fn register() -> WatchMetrics {
        describe_gauge!(WATCHES, "Watches this node serves now.");
        describe_counter!(
            WATCH_MESSAGES,
            "Watch messages this node sent, by kind: events, or a progress notice."
        );
        describe_counter!(WATCH_EVENTS, "Events this node delivered to watches.");
        describe_counter!(WATCH_ENDS, "Watches this node ended, by end code.");
        describe_gauge!(
            HISTORY_BYTES,
            "Bytes of the change log on this node's disk."
        );
        describe_gauge!(
            COMPACT_REVISION,
            "The change log's compact revision, as applied on this node."
        );
        WatchMetrics {
            watches: gauge!(WATCHES),
            messages: ["events", "progress"].map(|k| counter!(WATCH_MESSAGES, "kind" => k)),
            events: counter!(WATCH_EVENTS),
            ends: END_CODES.map(|c| counter!(WATCH_ENDS, "code" => c)),
            history_bytes: gauge!(HISTORY_BYTES),
            compact_revision: gauge!(COMPACT_REVISION),
        }
    }
}

impl Observer {
    pub fn watch_created(&self, watches: usize) {
        self.watch.watches.set(watches as f64);
        self.emit(Event::WatchCreated {
            watches: watches as u64,
        });
    }

    /// A watch ended with `code`, after `messages` messages and `events` events.
    pub fn watch_ended(&self, code: &'static str, watches: usize, messages: u64, events: u64) {
        self.watch.watches.set(watches as f64);
        if let Some(i) = END_CODES.iter().position(|c| *c == code) {
            self.watch.ends[i].increment(1);
        }
        self.emit(Event::WatchEnded {
            code,
            messages,
            events,
        });
    }

    /// A message sent to a watch: `events` events, or a progress notice when 0.
    pub fn watch_sent(&self, events: usize) {
        self.watch.messages[usize::from(events == 0)].increment(1);
        self.watch.events.increment(events as u64);
    }

    /// The change log's figures after a compaction removed `removed_bytes` on this node.
    pub fn history_compacted(&self, revision: u64, history_bytes: u64, removed_bytes: u64) {
        self.watch.compact_revision.set(revision as f64);
        self.watch.history_bytes.set(history_bytes as f64);
        self.emit(Event::HistoryCompacted {
            revision,
            removed_bytes,
        });
    }

    pub fn history_figures(&self, compact_revision: u64, history_bytes: u64) {
        self.watch.compact_revision.set(compact_revision as f64);
        self.watch.history_bytes.set(history_bytes as f64);
    }
}
