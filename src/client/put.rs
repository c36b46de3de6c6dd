//! Puts with options for [`Client`]: a lease to attach the key to, a ttl (a lease of the
//! key's own), `if_revision`, and a fence (DESIGN.md "Leases and TTL", "Locks and fencing");
//! fenced deletes; and `touch`, which renews a key's lease without a new revision.
//!
//! Every condition (revision, fence, the lease's existence) is decided by the cluster when
//! the write applies; this module only sends it. A fence that is not the lock holder's comes
//! back as [`ClientError::Fence`] with the current one, and nothing is written.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{cas, revision, Client, ClientError, Retry};
use crate::subjects::KvOp;

/// A fencing token: the write applies only if `token` is the current holder's fence of lock
/// `lock` (see [`super::LockGuard::fence_token`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub lock: String,
    pub token: u64,
}

impl Fence {
    pub fn new(lock: impl Into<String>, token: u64) -> Fence {
        Fence {
            lock: lock.into(),
            token,
        }
    }
}

/// How a put is made. `PutOptions::default()` is a plain put, which detaches the key from
/// any lease it had.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Only if the key's revision is N when the put applies (0: only if absent).
    pub if_revision: Option<u64>,
    /// Attach the key to this lease (`not_found` when it does not exist).
    pub lease: Option<u64>,
    /// Give the key a lease of its own with this ttl (not with `lease`).
    pub ttl: Option<Duration>,
    /// Apply only under this fence.
    pub fence: Option<Fence>,
}

impl PutOptions {
    pub fn new() -> PutOptions {
        PutOptions::default()
    }
    pub fn if_revision(mut self, n: u64) -> PutOptions {
        self.if_revision = Some(n);
        self
    }
    pub fn lease(mut self, id: u64) -> PutOptions {
        self.lease = Some(id);
        self
    }
    pub fn ttl(mut self, ttl: Duration) -> PutOptions {
        self.ttl = Some(ttl);
        self
    }
    pub fn fence(mut self, fence: Fence) -> PutOptions {
        self.fence = Some(fence);
        self
    }
}

/// A put's reply: its revision, and the key's lease when it has one (the put's `lease`, or
/// the key's own lease of a `ttl` put).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutReply {
    pub revision: u64,
    pub lease: Option<u64>,
}

/// Milliseconds of a ttl for the wire (a ttl below 1 ms is sent as 0: refused).
pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

/// A `put` body with its options.
pub(crate) fn put_body(key: &str, value: &Value, opts: &PutOptions, request_id: Uuid) -> Value {
    let mut body = cas::put_body(key, value, opts.if_revision, request_id);
    if let Some(id) = opts.lease {
        body["lease"] = id.into();
    }
    if let Some(ttl) = opts.ttl {
        body["ttl_ms"] = ttl_ms(ttl).into();
    }
    if let Some(f) = &opts.fence {
        body["fence"] = serde_json::json!({"lock": f.lock, "token": f.token});
    }
    body
}

/// Reply of `P.kv.touch`: the key's lease and its ttl now.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Touched {
    pub key: String,
    pub lease: u64,
    pub ttl_ms: u64,
}

impl Client {
    /// Puts `value` at `key` with `opts` and a fresh `request_id`, retried like
    /// [`Client::put`].
    ///
    /// ```no_run
    /// # async fn f(client: &concord::Client) -> Result<(), concord::client::ClientError> {
    /// use concord::client::PutOptions;
    /// use std::time::Duration;
    /// let r = client
    ///     .put_with("sessions/alice", &"token".into(), &PutOptions::new().ttl(Duration::from_secs(30)))
    ///     .await?;
    /// println!("the key's own lease: {:?}", r.lease);
    /// # Ok(()) }
    /// ```
    pub async fn put_with(
        &self,
        key: &str,
        value: &Value,
        opts: &PutOptions,
    ) -> Result<PutReply, ClientError> {
        self.put_with_opts_id(key, value, opts, Uuid::new_v4())
            .await
    }

    /// [`Client::put_with`] with the caller's `request_id` (see [`Client::put_with_id`]).
    pub async fn put_with_opts_id(
        &self,
        key: &str,
        value: &Value,
        opts: &PutOptions,
        request_id: Uuid,
    ) -> Result<PutReply, ClientError> {
        let body = put_body(key, value, opts, request_id);
        let r = self
            .send(self.subjects.kv(KvOp::Put), &body, Retry::Idempotent)
            .await?;
        Ok(PutReply {
            revision: revision(&r)?,
            lease: r.get("lease").and_then(Value::as_u64).filter(|l| *l != 0),
        })
    }

    /// Deletes `key` only under `fence` ([`ClientError::Fence`] otherwise, nothing deleted).
    /// Returns whether the key existed and the revision, like [`Client::delete`].
    pub async fn delete_fenced(
        &self,
        key: &str,
        fence: &Fence,
    ) -> Result<(bool, u64), ClientError> {
        self.delete_fenced_with_id(key, fence, Uuid::new_v4()).await
    }

    /// [`Client::delete_fenced`] with the caller's `request_id`.
    pub async fn delete_fenced_with_id(
        &self,
        key: &str,
        fence: &Fence,
        request_id: Uuid,
    ) -> Result<(bool, u64), ClientError> {
        let mut body = cas::delete_body(key, None, request_id);
        body["fence"] = serde_json::json!({"lock": fence.lock, "token": fence.token});
        let r = self
            .send(self.subjects.kv(KvOp::Delete), &body, Retry::Idempotent)
            .await?;
        cas::delete_reply(&r)
    }

    /// Renews the lease of `key` (its own or a shared one) without a new revision; `ttl`
    /// replaces the lease's ttl. `not_found` when the key is absent or has no lease. Sent
    /// without a `request_id` (a renewal done twice is a renewal) and retried like a read.
    pub async fn touch(&self, key: &str, ttl: Option<Duration>) -> Result<Touched, ClientError> {
        let mut body = serde_json::json!({"key": key});
        if let Some(ttl) = ttl {
            body["ttl_ms"] = ttl_ms(ttl).into();
        }
        let r = self
            .send(self.subjects.kv(KvOp::Touch), &body, Retry::Idempotent)
            .await?;
        serde_json::from_value(r).map_err(|e| ClientError::Decode(format!("touch reply: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn put_bodies_carry_only_the_options_given() {
        let id = Uuid::new_v4();
        let plain = put_body("k", &json!(1), &PutOptions::new(), id);
        assert_eq!(
            plain,
            json!({"key": "k", "value": 1, "request_id": id.to_string()})
        );
        let opts = PutOptions::new()
            .lease(7)
            .if_revision(0)
            .fence(Fence::new("job", 12));
        let b = put_body("k", &json!(1), &opts, id);
        assert_eq!(b["lease"], json!(7));
        assert_eq!(b["if_revision"], json!(0));
        assert_eq!(b["fence"], json!({"lock": "job", "token": 12}));
        assert!(b.get("ttl_ms").is_none());
        let ttl = put_body(
            "k",
            &json!(1),
            &PutOptions::new().ttl(Duration::from_secs(30)),
            id,
        );
        assert_eq!(ttl["ttl_ms"], json!(30_000));
        assert!(ttl.get("lease").is_none());
    }
}
