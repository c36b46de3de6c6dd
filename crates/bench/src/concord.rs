//! The `concord` and `echo` targets: a JSON request-reply on the contract subjects
//! `P.kv.put|get|delete|incr` (or, for `echo`, on a private subject answered at once by a
//! responder in this process: the NATS round-trip floor).
//!
//! `cas` is the optimistic update loop of docs/protocol.md: a linearizable `get` of the
//! counter (a missing key counts as 0 at revision 0), a `put` of the value + 1 with
//! `if_revision` = the revision read, and on `conflict` a fresh `get`. `incr` is one
//! `P.kv.incr` with `by` 1.
//!
//! In a watch run (`--watchers N`) each acknowledged put's revision goes to the fan-out
//! [`Tracker`] the moment its reply arrives.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;

use super::{key_name, Driver, Op, OpResult, MAX_CAS_ATTEMPTS};
use crate::fanout::Tracker;
use concord_wire::subjects::{KvOp, Subjects};

#[derive(Clone)]
pub struct ConcordHandle {
    nats: async_nats::Client,
    put: Subject,
    get: Subject,
    delete: Subject,
    incr: Subject,
    /// Bytes in a put's value (its JSON string, quotes included).
    value_size: usize,
    stale: bool,
    timeout: Duration,
    headers: Option<async_nats::HeaderMap>,
    /// Every write (put, delete, a `cas` put, incr) carries a fresh `request_id`.
    ids: bool,
    /// `cas` writes refused with `conflict` (this client's; each handle is one client's).
    conflicts: u64,
    /// A watch run: where acknowledged puts are recorded.
    tracker: Option<Arc<Tracker>>,
}

impl ConcordHandle {
    /// `echo`: every op goes to that subject instead of the cluster's.
    pub fn new(
        nats: async_nats::Client,
        prefix: &str,
        echo: Option<&str>,
        value_size: usize,
        stale: bool,
        timeout: Duration,
    ) -> ConcordHandle {
        let subjects = Subjects::new(prefix, "-");
        let subject = |op| Subject::from(echo.map_or_else(|| subjects.kv(op), str::to_string));
        ConcordHandle {
            nats,
            put: subject(KvOp::Put),
            get: subject(KvOp::Get),
            delete: subject(KvOp::Delete),
            incr: subject(KvOp::Incr),
            value_size,
            stale,
            timeout,
            headers: None,
            ids: false,
            conflicts: 0,
            tracker: None,
        }
    }

    pub(crate) fn with_tracker(mut self, tracker: Arc<Tracker>) -> ConcordHandle {
        self.tracker = Some(tracker);
        self
    }

    pub fn with_token(mut self, token: Option<&str>) -> ConcordHandle {
        self.headers = token.map(|t| {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Authorization", format!("Bearer {t}").as_str());
            h
        });
        self
    }

    /// Puts and deletes carry a `request_id`, a new UUID v4 each (as a client that gives
    /// every write an id sends them).
    pub fn with_ids(mut self, ids: bool) -> ConcordHandle {
        self.ids = ids;
        self
    }
}

/// `,"request_id":"<new UUID v4>"` with `ids`, else nothing.
fn request_id(ids: bool) -> String {
    if ids {
        format!(r#","request_id":"{}""#, uuid::Uuid::new_v4())
    } else {
        String::new()
    }
}

/// The JSON body of `op` on key number `key`: a put's value is `value_size` bytes (its JSON
/// string, quotes included) of fresh letters; with `ids`, a write carries a new
/// `request_id`. For `cas` it is the first read.
fn body(op: Op, key: u64, value_size: usize, stale: bool, ids: bool) -> Vec<u8> {
    let key = key_name(op, key);
    let id = request_id(ids && !matches!(op, Op::Get | Op::Cas));
    match op {
        Op::Put => {
            // The alphabet needs no escaping in a JSON string.
            let mut body = format!(r#"{{"key":"{key}"{id},"value":""#).into_bytes();
            body.extend(super::fresh_value(value_size.saturating_sub(2)));
            body.extend_from_slice(br#""}"#);
            body
        }
        // The read of a cas is always linearizable: a stale read would only add conflicts.
        Op::Get | Op::Cas => {
            let c = if stale && op == Op::Get {
                "stale"
            } else {
                "linearizable"
            };
            format!(r#"{{"key":"{key}","consistency":"{c}"}}"#).into_bytes()
        }
        Op::Delete => format!(r#"{{"key":"{key}"{id}}}"#).into_bytes(),
        Op::Incr => format!(r#"{{"key":"{key}","by":1{id}}}"#).into_bytes(),
    }
}

/// A `cas` write: `value` at `key` only if the key's revision is still `revision`.
fn cas_put(key: &str, value: i64, revision: u64, ids: bool) -> Vec<u8> {
    let id = request_id(ids);
    format!(r#"{{"key":"{key}","value":{value},"if_revision":{revision}{id}}}"#).into_bytes()
}

/// A counter's value and revision from a get's reply: a missing key is 0 at revision 0, a
/// value that is not an integer counts as 0 (the cas then overwrites it).
fn read_counter(reply: &serde_json::Value) -> Result<(i64, u64), String> {
    if reply["ok"] == true {
        let revision = reply["revision"]
            .as_u64()
            .ok_or_else(|| "no_revision".to_string())?;
        Ok((reply["value"].as_i64().unwrap_or(0), revision))
    } else {
        match reply["error"]["code"].as_str() {
            Some("not_found") => Ok((0, 0)),
            Some(code) => Err(code.to_string()),
            None => Err("unreadable".into()),
        }
    }
}

/// The code of a reply that is not `{"ok":true,...}`; a get's `not_found` is a served read.
fn failure(payload: &[u8]) -> OpResult {
    let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    match v["error"]["code"].as_str().unwrap_or("unreadable") {
        "not_found" => Ok(()),
        code => Err(code.to_string()),
    }
}

impl ConcordHandle {
    /// One request-reply on `subject`: the reply's payload, or the NATS failure's code.
    async fn call(&self, subject: &Subject, body: Bytes) -> Result<Bytes, String> {
        let mut req = async_nats::Request::new()
            .payload(body)
            .timeout(Some(self.timeout));
        if let Some(h) = &self.headers {
            req = req.headers(h.clone());
        }
        match self.nats.send_request(subject.clone(), req).await {
            Ok(reply) => Ok(reply.payload),
            Err(e) => Err(format!("nats_{:?}", e.kind())),
        }
    }

    /// The optimistic update loop: read, write + 1 if the revision held; a `conflict`
    /// carries the key's revision and value as the write found them in the log, so the
    /// next try needs no read of its own (one only if the conflict lacks the value). At
    /// most [`MAX_CAS_ATTEMPTS`] tries.
    async fn cas(&mut self, read: Bytes) -> OpResult {
        let key = serde_json::from_slice::<serde_json::Value>(&read)
            .ok()
            .and_then(|v| v["key"].as_str().map(str::to_string))
            .ok_or_else(|| "bad_cas_request".to_string())?;
        let mut seen = None;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (value, revision) = match seen.take() {
                Some(seen) => seen,
                None => {
                    let reply = self.call(&self.get, read.clone()).await?;
                    read_counter(&serde_json::from_slice(&reply).unwrap_or_default())?
                }
            };
            let put = cas_put(&key, value.wrapping_add(1), revision, self.ids);
            let reply = self.call(&self.put, put.into()).await?;
            if reply.starts_with(br#"{"ok":true"#) {
                return Ok(());
            }
            let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
            match reply["error"]["code"].as_str() {
                Some("conflict") => self.conflicts += 1,
                Some(code) => return Err(code.to_string()),
                None => return Err("unreadable".into()),
            }
            seen = conflict_counter(&reply["error"]);
        }
        Err("cas_gave_up".into())
    }
}

/// The counter a `revision` conflict found: its value and revision (an absent key is 0 at
/// revision 0); `None` when the conflict does not carry the value (a large one).
fn conflict_counter(error: &serde_json::Value) -> Option<(i64, u64)> {
    let revision = error["revision"].as_u64()?;
    match error.get("value") {
        Some(v) => Some((v.as_i64().unwrap_or(0), revision)),
        None if revision == 0 => Some((0, 0)),
        None => None,
    }
}

impl Driver for ConcordHandle {
    type Request = Bytes;

    fn prepare(&self, op: Op, key: u64) -> Bytes {
        body(op, key, self.value_size, self.stale, self.ids).into()
    }

    async fn execute(&mut self, op: Op, body: Bytes) -> OpResult {
        let subject = match op {
            Op::Put => &self.put,
            Op::Get => &self.get,
            Op::Delete => &self.delete,
            Op::Incr => &self.incr,
            Op::Cas => return self.cas(body).await,
        };
        let reply = self.call(subject, body).await?;
        if reply.starts_with(br#"{"ok":true"#) {
            if let (Op::Put, Some(t)) = (op, &self.tracker) {
                match reply_revision(&reply) {
                    Some(revision) => t.ack(revision),
                    None => return Err("put_reply_without_revision".into()),
                }
            }
            return Ok(());
        }
        failure(&reply)
    }

    fn conflicts(&self) -> u64 {
        self.conflicts
    }
}

/// The `revision` of a write's `{"ok":true,"revision":N,...}` reply.
fn reply_revision(reply: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Written {
        revision: u64,
    }
    serde_json::from_slice::<Written>(reply)
        .ok()
        .map(|w| w.revision)
}

/// Answers every request on `subject` with `{"ok":true}` at once: what a reply costs when
/// there is no work behind it.
pub async fn echo_responder(
    nats: async_nats::Client,
    subject: String,
) -> Result<tokio::task::JoinHandle<()>, async_nats::SubscribeError> {
    use futures::StreamExt;
    let mut sub = nats.subscribe(subject).await?;
    let _ = nats.flush().await;
    Ok(tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = nats
                    .publish(reply, br#"{"ok":true}"#.as_slice().into())
                    .await;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(op: Op, ids: bool) -> Value {
        serde_json::from_slice(&body(op, 7, 100, false, ids)).expect("a bench body is JSON")
    }

    #[test]
    fn with_ids_every_write_carries_a_new_request_id() {
        let put = parse(Op::Put, true);
        assert_eq!(put["key"], "bench:7");
        assert_eq!(put["value"].as_str().map(str::len), Some(98));
        let id = |v: &Value| {
            let s = v["request_id"].as_str().expect("a request_id string");
            uuid::Uuid::parse_str(s).expect("a UUID")
        };
        assert_eq!(id(&put).get_version_num(), 4);
        assert_ne!(
            id(&put),
            id(&parse(Op::Put, true)),
            "ids are fresh per request"
        );
        assert_eq!(id(&parse(Op::Delete, true)).get_version_num(), 4);
        assert!(parse(Op::Get, true).get("request_id").is_none());
        assert_eq!(id(&parse(Op::Incr, true)).get_version_num(), 4);
        // A cas starts with its read, which carries no id.
        assert!(parse(Op::Cas, true).get("request_id").is_none());
        for op in Op::ALL {
            assert!(parse(op, false).get("request_id").is_none());
        }
    }

    #[test]
    fn counter_bodies() {
        let incr = parse(Op::Incr, false);
        assert_eq!(incr["key"], "bench:ctr:7");
        assert_eq!(incr["by"], 1);
        let read = serde_json::from_slice::<Value>(&body(Op::Cas, 7, 100, true, false)).unwrap();
        assert_eq!(read["key"], "bench:ctr:7");
        assert_eq!(
            read["consistency"], "linearizable",
            "even with --consistency stale"
        );
        let put: Value = serde_json::from_slice(&cas_put("bench:ctr:7", 5, 42, true)).unwrap();
        assert_eq!(put["value"], 5);
        assert_eq!(put["if_revision"], 42);
        assert!(put["request_id"].is_string());
        let put: Value = serde_json::from_slice(&cas_put("k", -1, 0, false)).unwrap();
        assert_eq!(
            (put["value"].as_i64(), put["if_revision"].as_u64()),
            (Some(-1), Some(0))
        );
        assert!(put.get("request_id").is_none());
    }

    #[test]
    fn counters_read_from_get_replies() {
        let ok = serde_json::json!({"ok":true,"value":41,"revision":9,"store_revision":12});
        assert_eq!(read_counter(&ok), Ok((41, 9)));
        let text = serde_json::json!({"ok":true,"value":"x","revision":3});
        assert_eq!(read_counter(&text), Ok((0, 3)));
        let missing =
            serde_json::json!({"ok":false,"error":{"code":"not_found","store_revision":4}});
        assert_eq!(read_counter(&missing), Ok((0, 0)));
        let busy = serde_json::json!({"ok":false,"error":{"code":"busy"}});
        assert_eq!(read_counter(&busy), Err("busy".into()));
        let no_rev = serde_json::json!({"ok":true,"value":1});
        assert_eq!(read_counter(&no_rev), Err("no_revision".into()));
        assert_eq!(read_counter(&Value::Null), Err("unreadable".into()));
        assert_eq!(
            failure(br#"{"ok":false,"error":{"code":"conflict","reason":"revision"}}"#),
            Err("conflict".into())
        );
        assert_eq!(
            failure(br#"{"ok":false,"error":{"code":"not_found"}}"#),
            Ok(())
        );
        assert_eq!(failure(b"garbage"), Err("unreadable".into()));
    }

    #[test]
    fn a_put_reply_gives_its_revision() {
        assert_eq!(reply_revision(br#"{"ok":true,"revision":42}"#), Some(42));
        assert_eq!(reply_revision(br#"{"ok":true}"#), None);
        assert_eq!(reply_revision(b"{"), None);
    }
}
