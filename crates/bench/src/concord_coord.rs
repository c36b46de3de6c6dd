//! The `concord` target's leases and locks (issue 25): JSON request-reply on
//! `P.lease.grant|keepalive|revoke`, `P.lock.acquire|release` and a fenced `P.kv.put`.
//!
//! An acquire carries `ttl_ms` (the claim's own lease, whose countdown starts at the grant:
//! a hold of a few milliseconds needs no keepalive) and no `wait_ms`, so the leader waits
//! up to the request's deadline less its margin and then answers `conflict` (`lock_wait`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use serde_json::Value;

use crate::lease_bench::{Leases, Renewal};
use crate::lock_bench::{Locker, WAIT_ENDED};
use crate::OpResult;
use concord_wire::subjects::{KvOp, Subjects};

/// A connection to the cluster's contract subjects, shared by the lease and lock clients.
#[derive(Clone)]
pub(crate) struct Coord {
    nats: async_nats::Client,
    subjects: Arc<Subjects>,
    headers: Option<async_nats::HeaderMap>,
    timeout: Duration,
}

impl Coord {
    pub(crate) fn new(
        nats: async_nats::Client,
        prefix: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> Coord {
        let headers = token.map(|t| {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Authorization", format!("Bearer {t}").as_str());
            h
        });
        Coord {
            nats,
            subjects: Arc::new(Subjects::new(prefix, "-")),
            headers,
            timeout,
        }
    }

    /// One request on `op`'s subject: the reply when it is `{"ok":true,...}`, else the
    /// error's code (`nats_<kind>` when NATS failed, `unreadable` for no JSON).
    async fn call(&self, op: KvOp, body: Value) -> Result<Value, String> {
        let mut req = async_nats::Request::new()
            .payload(Bytes::from(body.to_string()))
            .timeout(Some(self.timeout));
        if let Some(h) = &self.headers {
            req = req.headers(h.clone());
        }
        let subject = Subject::from(self.subjects.kv(op));
        let reply = match self.nats.send_request(subject, req).await {
            Ok(m) => m.payload,
            Err(e) => return Err(format!("nats_{:?}", e.kind())),
        };
        let v: Value = serde_json::from_slice(&reply).map_err(|_| "unreadable".to_string())?;
        if v["ok"] == true {
            return Ok(v);
        }
        Err(error_code(&v))
    }
}

/// `code`, or `conflict_<reason>` for a conflict (`conflict_lock_wait`, `conflict_fence`).
fn error_code(reply: &Value) -> String {
    let e = &reply["error"];
    match (e["code"].as_str(), e["reason"].as_str()) {
        (Some("conflict"), Some(reason)) => format!("conflict_{reason}"),
        (Some(code), _) => code.to_string(),
        (None, _) => "unreadable".into(),
    }
}

impl Leases for Coord {
    async fn grant(&self, ttl: Duration) -> Result<i64, String> {
        let ttl_ms = ttl.as_millis() as u64;
        let v = self
            .call(KvOp::LeaseGrant, serde_json::json!({ "ttl_ms": ttl_ms }))
            .await?;
        v["id"].as_i64().ok_or_else(|| "grant_without_id".into())
    }

    async fn keepalive(&self, id: i64) -> Renewal {
        match self
            .call(KvOp::LeaseKeepalive, serde_json::json!({ "id": id }))
            .await
        {
            Ok(v) if v["id"] == id => Renewal::Renewed,
            Ok(_) => Renewal::Failed("keepalive_reply_of_another_id".into()),
            Err(code) if code == "not_found" => Renewal::Lost,
            Err(code) => Renewal::Failed(code),
        }
    }

    async fn revoke(&self, id: i64) -> Result<(), String> {
        self.call(KvOp::LeaseRevoke, serde_json::json!({ "id": id }))
            .await
            .map(drop)
    }
}

/// One contending client of `P.lock.*`.
pub(crate) struct ConcordLocker {
    pub(crate) coord: Coord,
    pub(crate) name: String,
    pub(crate) ttl_ms: u64,
    pub(crate) value_size: usize,
}

impl ConcordLocker {
    /// The key the holders write under the lock.
    fn key(&self) -> String {
        format!("bench:lock:{}", self.name)
    }
}

impl Locker for ConcordLocker {
    /// The grant's fence.
    type Hold = u64;

    async fn acquire(&mut self) -> Result<u64, String> {
        let body = serde_json::json!({ "name": self.name, "ttl_ms": self.ttl_ms });
        match self.coord.call(KvOp::LockAcquire, body).await {
            Ok(v) => v["fence"]
                .as_u64()
                .ok_or_else(|| "grant_without_fence".into()),
            Err(code) if code == "conflict_lock_wait" => Err(WAIT_ENDED.into()),
            Err(code) => Err(code),
        }
    }

    async fn fenced_put(&mut self, fence: &u64) -> OpResult {
        let value = String::from_utf8_lossy(&crate::fresh_value(self.value_size)).into_owned();
        let body = serde_json::json!({
            "key": self.key(),
            "value": value,
            "fence": { "lock": self.name, "token": fence },
        });
        self.coord.call(KvOp::Put, body).await.map(drop)
    }

    async fn release(&mut self, fence: u64) -> OpResult {
        let body = serde_json::json!({ "name": self.name, "fence": fence });
        self.coord.call(KvOp::LockRelease, body).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_are_named_by_their_reason() {
        let wait = serde_json::json!({"ok":false,"error":{"code":"conflict","reason":"lock_wait"}});
        assert_eq!(error_code(&wait), "conflict_lock_wait");
        let nf = serde_json::json!({"ok":false,"error":{"code":"not_found","message":"x"}});
        assert_eq!(error_code(&nf), "not_found");
        assert_eq!(error_code(&Value::Null), "unreadable");
    }
}
