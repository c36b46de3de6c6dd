//! The `concord` and `echo` targets: a JSON request-reply on the contract subjects
//! `P.kv.put|get|delete` (or, for `echo`, on a private subject answered at once by a
//! responder in this process: the NATS round-trip floor).

use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;

use super::{Driver, Op, OpResult};
use concord_wire::subjects::{KvOp, Subjects};

#[derive(Clone)]
pub struct ConcordHandle {
    nats: async_nats::Client,
    put: Subject,
    get: Subject,
    delete: Subject,
    /// Bytes in a put's value (its JSON string, quotes included).
    value_size: usize,
    stale: bool,
    timeout: Duration,
    headers: Option<async_nats::HeaderMap>,
    /// Every put and delete carries a fresh `request_id`.
    ids: bool,
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
            value_size,
            stale,
            timeout,
            headers: None,
            ids: false,
        }
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

/// The JSON body of `op` on key number `key`: a put's value is `value_size` bytes (its JSON
/// string, quotes included) of fresh letters; with `ids`, a put or delete carries a new
/// `request_id`.
fn body(op: Op, key: u64, value_size: usize, stale: bool, ids: bool) -> Vec<u8> {
    let key = format!("bench:{key}");
    let id = if ids && op != Op::Get {
        format!(r#","request_id":"{}""#, uuid::Uuid::new_v4())
    } else {
        String::new()
    };
    match op {
        Op::Put => {
            // The alphabet needs no escaping in a JSON string.
            let mut body = format!(r#"{{"key":"{key}"{id},"value":""#).into_bytes();
            body.extend(super::fresh_value(value_size.saturating_sub(2)));
            body.extend_from_slice(br#""}"#);
            body
        }
        Op::Get => {
            let c = if stale { "stale" } else { "linearizable" };
            format!(r#"{{"key":"{key}","consistency":"{c}"}}"#).into_bytes()
        }
        Op::Delete => format!(r#"{{"key":"{key}"{id}}}"#).into_bytes(),
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
        };
        let mut req = async_nats::Request::new()
            .payload(body)
            .timeout(Some(self.timeout));
        if let Some(h) = &self.headers {
            req = req.headers(h.clone());
        }
        match self.nats.send_request(subject.clone(), req).await {
            Ok(reply) => {
                if reply.payload.starts_with(br#"{"ok":true"#) {
                    return Ok(());
                }
                let v: serde_json::Value =
                    serde_json::from_slice(&reply.payload).unwrap_or_default();
                let code = v["error"]["code"].as_str().unwrap_or("unreadable");
                // A get of a key not yet written is a served read, not a failure.
                if code == "not_found" {
                    Ok(())
                } else {
                    Err(code.to_string())
                }
            }
            Err(e) => Err(format!("nats_{:?}", e.kind())),
        }
    }
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
        for op in [Op::Put, Op::Get, Op::Delete] {
            assert!(parse(op, false).get("request_id").is_none());
        }
    }
}
