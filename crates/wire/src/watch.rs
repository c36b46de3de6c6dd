//! The watch protocol's JSON shapes (DESIGN.md "Watch"): the create request and reply on
//! `P.watch.create` / `P.node.<id>.watch.create`, the messages published to the watcher's
//! `deliver` subject (events, progress notices, the end), and the cancel request.
//!
//! Serde types only, no IO. A field that may carry JSON `null` as a value (`value`,
//! `prev_value`: a key may hold `null`) tells "absent" (`None`) from "null"
//! (`Some(Value::Null)`).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The default `window` of a watch: unacknowledged messages the node may have in flight.
pub const DEFAULT_WINDOW: u32 = 64;
/// The largest `window` a create may ask for.
pub const MAX_WINDOW: u32 = 1024;
/// The default `watch.progress_ms`, for a reply that does not say.
pub const DEFAULT_PROGRESS_MS: u64 = 1000;

/// What an event says happened to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Put,
    Delete,
    /// The key's lease expired.
    Expire,
}

impl EventType {
    pub const ALL: [EventType; 3] = [EventType::Put, EventType::Delete, EventType::Expire];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Put => "put",
            EventType::Delete => "delete",
            EventType::Expire => "expire",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `P.watch.create`: exactly one of `key` and `prefix` (`""` watches every key).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CreateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The first revision to deliver; absent or 0: the node's store revision + 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_revision: Option<u64>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub prev_value: bool,
    /// Absent: every type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<EventType>>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub keys_only: bool,
    /// A plain subject (no wildcards, not under the cluster's prefix, not `$…`) the watcher
    /// subscribed to before sending the create.
    pub deliver: String,
    /// 1..=[`MAX_WINDOW`]; absent: [`DEFAULT_WINDOW`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The `ok` reply to a create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateReply {
    pub watch_id: String,
    /// The node that serves the watch: where to send the cancel.
    pub node: u64,
    pub store_revision: u64,
    #[serde(default)]
    pub compact_revision: u64,
    /// The node's `watch.progress_ms`: it sends a progress notice at least this often while
    /// the watch is idle.
    #[serde(default = "default_progress_ms")]
    pub progress_ms: u64,
}

fn default_progress_ms() -> u64 {
    DEFAULT_PROGRESS_MS
}

/// One change of one key at one revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub key: String,
    /// The value written (a put without `keys_only`); `Some(Null)` when it is JSON `null`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<Value>,
    /// The deleting revision for a delete or an expiry.
    pub revision: u64,
    /// 0 for a delete or an expiry, as are `version` and `lease`.
    #[serde(default)]
    pub create_revision: u64,
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub lease: u64,
    /// The key's value before this revision (asked with `prev_value`); `None` when it had
    /// none.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub prev_value: Option<Value>,
}

/// A field that is present is `Some`, also when it holds `null` (serde's default for an
/// `Option` would make that `None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A message of a watch carrying events, or none (a progress notice). Published with a reply
/// subject: the watcher acknowledges it by replying any body there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub watch_id: String,
    /// 1 for a watch's first message, +1 per message.
    pub seq: u64,
    pub events: Vec<Event>,
    /// The highest revision the message covers: every revision up to it has been delivered,
    /// except a fragment's own.
    pub store_revision: u64,
    /// More events of this message's (last) revision follow in the next message.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fragment: bool,
}

/// The last message of a watch, published without a reply subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    pub code: String,
    #[serde(default)]
    pub message: String,
    /// The first revision not acknowledged: where to resume.
    pub resume_revision: u64,
    /// Where the change log starts (`compacted` ends, when the node says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact_revision: Option<u64>,
}

/// The end codes of DESIGN.md "Watch".
pub mod end_code {
    pub const SLOW_CONSUMER: &str = "slow_consumer";
    pub const COMPACTED: &str = "compacted";
    pub const NO_LEADER: &str = "no_leader";
    pub const NODE_STOPPING: &str = "node_stopping";
    pub const CANCELLED: &str = "cancelled";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const CLUSTER_NOT_READY: &str = "cluster_not_ready";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndMessage {
    pub watch_id: String,
    pub end: End,
}

/// Whatever arrives on `deliver`: tells an end from a message by its `end` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Delivery {
    End(EndMessage),
    Message(Message),
}

/// `P.node.<id>.watch.cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    pub watch_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_parse_as_messages_progress_and_ends() {
        let m: Delivery = serde_json::from_str(
            r#"{"watch_id":"w","seq":2,"store_revision":9,"fragment":true,"events":[
                {"type":"put","key":"a","value":null,"revision":9,"create_revision":3,
                 "version":2,"lease":0,"prev_value":{"x":1}},
                {"type":"delete","key":"b","revision":9,"create_revision":0,"version":0,"lease":0}]}"#,
        )
        .expect("a message");
        let Delivery::Message(m) = m else {
            panic!("not a message: {m:?}")
        };
        assert!(m.fragment && m.seq == 2 && m.store_revision == 9);
        // `null` is a value the key held; an absent field is no value.
        assert_eq!(m.events[0].value, Some(Value::Null));
        assert_eq!(m.events[0].prev_value, Some(serde_json::json!({"x": 1})));
        assert_eq!(m.events[1].kind, EventType::Delete);
        assert_eq!(m.events[1].value, None);
        let progress: Delivery =
            serde_json::from_str(r#"{"watch_id":"w","seq":3,"events":[],"store_revision":12}"#)
                .expect("a progress notice");
        assert!(matches!(progress, Delivery::Message(p) if p.events.is_empty() && !p.fragment));
        let end: Delivery = serde_json::from_str(
            r#"{"watch_id":"w","end":{"code":"slow_consumer","message":"m","resume_revision":10}}"#,
        )
        .expect("an end");
        assert!(
            matches!(end, Delivery::End(e) if e.end.code == end_code::SLOW_CONSUMER && e.end.resume_revision == 10)
        );
        assert!(serde_json::from_str::<Delivery>(r#"{"watch_id":"w"}"#).is_err());
    }

    #[test]
    fn a_create_request_sends_only_what_it_sets() {
        let r = CreateRequest {
            prefix: Some(String::new()),
            deliver: "_INBOX.x".into(),
            types: Some(vec![EventType::Put]),
            ..CreateRequest::default()
        };
        let v = serde_json::to_value(&r).expect("serializes");
        assert_eq!(
            v,
            serde_json::json!({"prefix": "", "deliver": "_INBOX.x", "types": ["put"]})
        );
        let reply: CreateReply = serde_json::from_str(
            r#"{"ok":true,"watch_id":"w","node":2,"store_revision":5,"compact_revision":0}"#,
        )
        .expect("a reply");
        assert_eq!(reply.progress_ms, DEFAULT_PROGRESS_MS);
    }
}
