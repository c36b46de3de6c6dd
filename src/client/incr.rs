//! Counters for [`Client`]: `P.kv.incr` adds to a key's integer atomically, within optional
//! bounds, in one write (no read before it, so no conflict between incrementers).
//!
//! The bounds are decided by the cluster when the write applies; this module only sends
//! them. Out of bounds or overflow is [`ClientError::Conflict`] with reason `bound` and the
//! current value, a value that is not an integer is reason `not_integer`: nothing is written
//! either way, and the client never retries either.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::put::{ttl_ms, Fence};
use super::{Client, ClientError, Retry};
use crate::subjects::KvOp;

/// What an `incr` adds and the range the result must stay in (inclusive; unbounded when
/// `None`); a ttl for a key the incr creates (a fixed window: the counter vanishes `ttl`
/// after its first incr), and a fence. `Incr::default()` adds 1 without bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incr {
    pub by: i64,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub ttl: Option<Duration>,
    pub fence: Option<Fence>,
}

impl Default for Incr {
    fn default() -> Self {
        Incr::by(1)
    }
}

impl Incr {
    /// Adds `by` (negative to decrement), without bounds.
    pub fn by(by: i64) -> Incr {
        Incr {
            by,
            min: None,
            max: None,
            ttl: None,
            fence: None,
        }
    }

    /// When this incr creates the key, it gets a lease of its own of `ttl` (a fixed
    /// rate-limit window; later incrs neither renew nor change it).
    pub fn ttl(mut self, ttl: Duration) -> Incr {
        self.ttl = Some(ttl);
        self
    }

    /// Applies only under `fence`.
    pub fn fence(mut self, fence: Fence) -> Incr {
        self.fence = Some(fence);
        self
    }

    /// The result must be at least `min`.
    pub fn min(mut self, min: i64) -> Incr {
        self.min = Some(min);
        self
    }

    /// The result must be at most `max`, e.g. a quota.
    pub fn max(mut self, max: i64) -> Incr {
        self.max = Some(max);
        self
    }
}

/// A counter after an `incr`: its value and the revision of the write (the key's own
/// revision when `by` was 0 and nothing was written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Counter {
    pub value: i64,
    pub revision: u64,
}

/// An `incr` body: `by` always, the bounds only when given.
pub(crate) fn incr_body(key: &str, incr: &Incr, request_id: Uuid) -> Value {
    let mut body = serde_json::json!({"key": key, "by": incr.by, "request_id": request_id});
    if let Some(min) = incr.min {
        body["min"] = min.into();
    }
    if let Some(max) = incr.max {
        body["max"] = max.into();
    }
    if let Some(ttl) = incr.ttl {
        body["ttl_ms"] = ttl_ms(ttl).into();
    }
    if let Some(f) = &incr.fence {
        body["fence"] = serde_json::json!({"lock": f.lock, "token": f.token});
    }
    body
}

/// An `incr` reply (`ok`).
pub(crate) fn counter(reply: Value) -> Result<Counter, ClientError> {
    serde_json::from_value(reply).map_err(|e| ClientError::Decode(format!("incr reply: {e}")))
}

impl Client {
    /// Adds `by` to the integer at `key` (a missing key counts as 0) and returns the new
    /// value with the write's revision. A value that is not an integer is
    /// [`ClientError::Conflict`] (`not_integer`), an i64 overflow is `bound`. Sent with a
    /// fresh `request_id` and retried like [`Client::put`]: it applies once.
    pub async fn incr(&self, key: &str, by: i64) -> Result<Counter, ClientError> {
        self.incr_with(key, Incr::by(by)).await
    }

    /// [`Client::incr`] with bounds: a result outside `[min, max]` is
    /// [`ClientError::Conflict`] with reason `bound` and the current value
    /// ([`ClientError::conflict_value`]); nothing is written.
    ///
    /// ```no_run
    /// # async fn quota(client: &concord::Client) -> Result<(), concord::client::ClientError> {
    /// use concord::client::Incr;
    /// match client.incr_with("quota:alice", Incr::by(1).max(100)).await {
    ///     Ok(c) => println!("request {} of 100", c.value),
    ///     Err(e) if e.conflict_reason() == Some("bound") => println!("over quota"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn incr_with(&self, key: &str, incr: Incr) -> Result<Counter, ClientError> {
        self.incr_with_id(key, incr, Uuid::new_v4()).await
    }

    /// [`Client::incr_with`] with the caller's `request_id` (see [`Client::put_with_id`]).
    pub async fn incr_with_id(
        &self,
        key: &str,
        incr: Incr,
        request_id: Uuid,
    ) -> Result<Counter, ClientError> {
        let body = incr_body(key, &incr, request_id);
        let r = self
            .send(self.subjects.kv(KvOp::Incr), &body, Retry::Idempotent)
            .await?;
        counter(r)
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode_reply;
    use super::*;
    use crate::error::ErrorKind;
    use serde_json::json;

    #[test]
    fn incr_bodies_carry_bounds_only_when_given() {
        let id = Uuid::new_v4();
        assert_eq!(
            incr_body("n", &Incr::default(), id),
            json!({"key": "n", "by": 1, "request_id": id.to_string()})
        );
        let b = incr_body("n", &Incr::by(-3).min(0).max(10), id);
        assert_eq!((b["by"].clone(), b["min"].clone()), (json!(-3), json!(0)));
        assert_eq!(b["max"], json!(10));
        let b = incr_body("n", &Incr::by(i64::MIN).max(i64::MAX), id);
        assert_eq!(b["by"], json!(i64::MIN));
        assert!(b.get("min").is_none() && b.get("ttl_ms").is_none());
        let window = Incr::by(1)
            .max(100)
            .ttl(Duration::from_secs(60))
            .fence(Fence::new("l", 3));
        let b = incr_body("n", &window, id);
        assert_eq!(b["ttl_ms"], json!(60_000));
        assert_eq!(b["fence"], json!({"lock": "l", "token": 3}));
    }

    #[test]
    fn incr_replies_decode_to_the_counter() {
        let r = decode_reply(br#"{"ok":true,"value":-4,"revision":9}"#).expect("ok");
        assert_eq!(
            counter(r).ok(),
            Some(Counter {
                value: -4,
                revision: 9
            })
        );
        assert!(counter(json!({"ok": true, "value": 1.5, "revision": 9})).is_err());
        assert!(counter(json!({"ok": true, "revision": 9})).is_err());
    }

    #[test]
    fn incr_conflicts_carry_the_reason_and_the_current_value() {
        let bound = decode_reply(
            br#"{"ok":false,"error":{"code":"conflict","reason":"bound","value":10,
                 "revision":7,"message":"10 + 1 is above max 10"}}"#,
        )
        .expect_err("a conflict");
        assert_eq!(bound.code(), ErrorKind::Conflict);
        assert_eq!(bound.conflict_reason(), Some("bound"));
        assert_eq!(bound.conflict_value(), Some(&json!(10)));
        assert_eq!(bound.conflict_revision(), None, "not a revision conflict");
        assert_eq!(bound.to_json()["value"], json!(10));
        let text = decode_reply(
            br#"{"ok":false,"error":{"code":"conflict","reason":"not_integer",
                 "value":{"a":"b"},"revision":3,"key":"n","message":"not an integer"}}"#,
        )
        .expect_err("a conflict");
        assert_eq!(text.conflict_value(), Some(&json!({"a": "b"})));
        assert_eq!(text.to_json()["key"], json!("n"));
        // A conflict whose current value is JSON null keeps it: the key holds null.
        let null = decode_reply(
            br#"{"ok":false,"error":{"code":"conflict","reason":"not_integer","value":null,
                 "revision":3,"message":"m"}}"#,
        )
        .expect_err("a conflict");
        assert_eq!(null.conflict_value(), Some(&Value::Null));
    }
}
