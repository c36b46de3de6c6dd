//! Telemetry events as the hot path hands them over (small, owned, not yet serialized) and
//! their JSON on `P.telemetry.<path>`:
//!
//! `{"event":["concord","api","put"],"measurements":{..},"metadata":{..},"node":1,"time":".."}`
//!
//! The JSON is written by hand into one buffer: no `serde_json::Value` per event, and only
//! keys (client data) go through the escaping serializer.

use std::io::Write;
use std::time::SystemTime;

use crate::error::ErrorKind;
use crate::subjects::KvOp;

/// What a node reports, and when.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One client request on the key space, answered by this node.
    Api {
        op: KvOp,
        duration_us: u64,
        error: Option<ErrorKind>,
        /// The key (the prefix for a scan), only with `telemetry.include_keys`.
        key: Option<String>,
    },
    /// One command applied to the state machine (a group-commit entry holds many).
    Apply {
        operation: &'static str,
        index: u64,
        duration_us: u64,
        key: Option<String>,
        /// For a write with a request id: `new` (applied), `replayed` (answered from the
        /// idempotency table, nothing applied) or `conflict` (the id was used with another
        /// command).
        request_id: Option<&'static str>,
        /// For a conditional write (`if_revision`): `held` (applied) or `failed` (answered
        /// `conflict`, nothing applied).
        condition: Option<&'static str>,
    },
    /// This node's Raft role or term changed.
    StateChange {
        status: &'static str,
        term: u64,
        leader: Option<u64>,
    },
    SnapshotCreated {
        size_bytes: u64,
        index: Option<u64>,
        duration_us: u64,
    },
    SnapshotInstalled {
        size_bytes: u64,
        index: Option<u64>,
        duration_us: u64,
    },
    /// Periodic summary of this node's view of the cluster.
    ClusterStatus {
        storage_keys: u64,
        storage_bytes: u64,
        leader: Option<u64>,
        term: u64,
        commit_index: Option<u64>,
        applied_index: Option<u64>,
    },
    /// The node's NATS connection went down or came back.
    NatsConnection { connected: bool },
    /// A watch was created on this node (`watches`: how many it serves now).
    WatchCreated { watches: u64 },
    /// A watch this node served ended with `code`.
    WatchEnded {
        code: &'static str,
        messages: u64,
        events: u64,
    },
    /// The change log was compacted through `revision`; this node removed `removed_bytes`.
    HistoryCompacted { revision: u64, removed_bytes: u64 },
    /// The leader ended lease `id` by expiry: `keys` keys went at `revision`.
    LeaseExpired { id: u64, keys: u64, revision: u64 },
}

/// Every event path, in the order of [`Event::path_index`].
pub const PATHS: [&str; 24] = [
    "api.put",
    "api.get",
    "api.delete",
    "api.scan",
    "operation.apply",
    "state.change",
    "snapshot.created",
    "snapshot.installed",
    "cluster.status",
    "nats.connection",
    "api.incr",
    "api.txn",
    "watch.created",
    "watch.ended",
    "history.compacted",
    "api.touch",
    "api.lease_grant",
    "api.lease_keepalive",
    "api.lease_revoke",
    "api.lease_get",
    "api.lease_list",
    "api.lock_acquire",
    "api.lock_release",
    "lease.expired",
];

impl Event {
    /// Index of this event's path in [`PATHS`].
    pub fn path_index(&self) -> usize {
        match self {
            Event::Api { op, .. } => match op {
                KvOp::Put => 0,
                KvOp::Get => 1,
                KvOp::Delete => 2,
                KvOp::Scan => 3,
                KvOp::Incr => 10,
                KvOp::Txn => 11,
                KvOp::Touch => 15,
                KvOp::LeaseGrant => 16,
                KvOp::LeaseKeepalive => 17,
                KvOp::LeaseRevoke => 18,
                KvOp::LeaseGet => 19,
                KvOp::LeaseList => 20,
                KvOp::LockAcquire => 21,
                KvOp::LockRelease => 22,
            },
            Event::Apply { .. } => 4,
            Event::StateChange { .. } => 5,
            Event::SnapshotCreated { .. } => 6,
            Event::SnapshotInstalled { .. } => 7,
            Event::ClusterStatus { .. } => 8,
            Event::NatsConnection { .. } => 9,
            Event::WatchCreated { .. } => 12,
            Event::WatchEnded { .. } => 13,
            Event::HistoryCompacted { .. } => 14,
            Event::LeaseExpired { .. } => 23,
        }
    }

    pub fn path(&self) -> &'static str {
        PATHS[self.path_index()]
    }

    /// Appends the event's JSON to `out`.
    pub fn write_json(&self, node: u64, time: SystemTime, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"event":["concord""#);
        for part in self.path().split('.') {
            out.extend_from_slice(br#",""#);
            out.extend_from_slice(part.as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(br#"],"measurements":{"#);
        self.write_measurements(out);
        out.extend_from_slice(br#"},"metadata":{"#);
        self.write_metadata(node, out);
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            r#"}},"node":{node},"time":"{}"}}"#,
            humantime::format_rfc3339_micros(time)
        );
    }

    /// The numbers of the event: its `measurements` object's fields.
    fn write_measurements(&self, out: &mut Vec<u8>) {
        let mut m = Fields::new(out);
        match self {
            Event::Api { duration_us, .. } | Event::Apply { duration_us, .. } => {
                m.num("duration_us", *duration_us)
            }
            Event::SnapshotCreated {
                size_bytes,
                duration_us,
                ..
            }
            | Event::SnapshotInstalled {
                size_bytes,
                duration_us,
                ..
            } => {
                m.num("size_bytes", *size_bytes);
                m.num("duration_us", *duration_us);
            }
            Event::ClusterStatus {
                storage_keys,
                storage_bytes,
                ..
            } => {
                m.num("storage_keys", *storage_keys);
                m.num("storage_bytes", *storage_bytes);
            }
            Event::WatchCreated { watches } => m.num("watches", *watches),
            Event::WatchEnded {
                messages, events, ..
            } => {
                m.num("messages", *messages);
                m.num("events", *events);
            }
            Event::HistoryCompacted { removed_bytes, .. } => m.num("removed_bytes", *removed_bytes),
            Event::LeaseExpired { keys, .. } => m.num("keys", *keys),
            Event::StateChange { .. } | Event::NatsConnection { .. } => {}
        }
    }

    /// What the event is about: its `metadata` object's fields.
    fn write_metadata(&self, node: u64, out: &mut Vec<u8>) {
        let mut m = Fields::new(out);
        match self {
            Event::Api { error, key, .. } => {
                match error {
                    None => m.str("result", "ok"),
                    Some(code) => {
                        m.str("result", "error");
                        m.str("error", code.as_str());
                    }
                }
                if let Some(k) = key {
                    m.escaped("key", k);
                }
            }
            Event::Apply {
                operation,
                index,
                key,
                request_id,
                condition,
                ..
            } => {
                m.str("operation", operation);
                m.num("index", *index);
                if let Some(k) = key {
                    m.escaped("key", k);
                }
                if let Some(r) = request_id {
                    m.str("request_id", r);
                }
                if let Some(c) = condition {
                    m.str("condition", c);
                }
            }
            Event::StateChange {
                status,
                term,
                leader,
            } => {
                m.str("status", status);
                m.num("node", node);
                m.num("term", *term);
                m.opt("leader", *leader);
            }
            Event::SnapshotCreated { index, .. } | Event::SnapshotInstalled { index, .. } => {
                m.opt("index", *index)
            }
            Event::ClusterStatus {
                leader,
                term,
                commit_index,
                applied_index,
                ..
            } => {
                m.opt("leader", *leader);
                m.num("term", *term);
                m.opt("commit_index", *commit_index);
                m.opt("applied_index", *applied_index);
            }
            Event::WatchCreated { .. } => {}
            Event::WatchEnded { code, .. } => m.str("code", code),
            Event::HistoryCompacted { revision, .. } => m.num("revision", *revision),
            Event::LeaseExpired { id, revision, .. } => {
                m.num("lease", *id);
                m.num("revision", *revision);
            }
            Event::NatsConnection { connected } => {
                m.str(
                    "status",
                    if *connected {
                        "connected"
                    } else {
                        "disconnected"
                    },
                );
            }
        }
    }
}

/// Writes `"name":value` pairs of one JSON object, commas between them.
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Fields<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Fields { out, first: true }
    }

    fn name(&mut self, name: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn num(&mut self, name: &str, v: u64) {
        self.name(name);
        let _ = write!(self.out, "{v}");
    }

    fn opt(&mut self, name: &str, v: Option<u64>) {
        match v {
            Some(v) => self.num(name, v),
            None => {
                self.name(name);
                self.out.extend_from_slice(b"null");
            }
        }
    }

    /// A fixed string of ours: no character in it needs escaping.
    fn str(&mut self, name: &str, v: &str) {
        debug_assert!(!v.contains(['"', '\\']) && v.chars().all(|c| !c.is_control()));
        self.name(name);
        self.out.push(b'"');
        self.out.extend_from_slice(v.as_bytes());
        self.out.push(b'"');
    }

    /// A string from a client: escaped by serde_json.
    fn escaped(&mut self, name: &str, v: &str) {
        self.name(name);
        if serde_json::to_writer(&mut *self.out, v).is_err() {
            self.out.extend_from_slice(b"null");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::time::{Duration, UNIX_EPOCH};

    fn render(e: &Event) -> Value {
        let mut out = Vec::new();
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        e.write_json(3, t, &mut out);
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn api_event_has_the_design_shape() {
        let v = render(&Event::Api {
            op: KvOp::Put,
            duration_us: 420,
            error: None,
            key: None,
        });
        assert_eq!(
            v,
            json!({"event":["concord","api","put"],"measurements":{"duration_us":420},
                   "metadata":{"result":"ok"},"node":3,"time":"2023-11-14T22:13:20.123456Z"})
        );
        let v = render(&Event::Api {
            op: KvOp::Get,
            duration_us: 7,
            error: Some(ErrorKind::NotFound),
            key: Some("we\"ird\n".into()),
        });
        assert_eq!(
            v["metadata"],
            json!({"result":"error","error":"not_found","key":"we\"ird\n"})
        );
    }

    #[test]
    fn every_event_is_valid_json_on_its_path() {
        let events = [
            Event::Apply {
                operation: "put",
                index: 9,
                duration_us: 3,
                key: Some("k".into()),
                request_id: Some("replayed"),
                condition: Some("failed"),
            },
            Event::StateChange {
                status: "leader",
                term: 4,
                leader: Some(3),
            },
            Event::SnapshotCreated {
                size_bytes: 10,
                index: Some(5),
                duration_us: 1,
            },
            Event::SnapshotInstalled {
                size_bytes: 10,
                index: None,
                duration_us: 1,
            },
            Event::ClusterStatus {
                storage_keys: 1,
                storage_bytes: 2,
                leader: None,
                term: 3,
                commit_index: Some(4),
                applied_index: Some(4),
            },
            Event::NatsConnection { connected: true },
            Event::WatchCreated { watches: 2 },
            Event::WatchEnded {
                code: "cancelled",
                messages: 3,
                events: 4,
            },
            Event::HistoryCompacted {
                revision: 9,
                removed_bytes: 100,
            },
        ];
        for e in &events {
            let v = render(e);
            let path: Vec<&str> = e.path().split('.').collect();
            assert_eq!(v["event"][0], "concord");
            assert_eq!(v["event"][1], path[0]);
            assert_eq!(v["event"][2], path[1]);
            assert_eq!(v["node"], 3);
        }
        assert_eq!(
            render(&events[1])["metadata"],
            json!({"status":"leader","node":3,"term":4,"leader":3})
        );
        assert_eq!(
            render(&events[0])["metadata"],
            json!({"operation":"put","index":9,"key":"k","request_id":"replayed","condition":"failed"})
        );
    }
}
