//! Compare-and-swap for [`Client`]: reads with key metadata ([`KeyValue`]), writes with
//! `if_revision` (`put_if`, `delete_if`), and [`Client::update`], the optimistic
//! read-modify-write loop.
//!
//! The condition is decided by the cluster when the write applies, in log order; this module
//! only sends it. A `conflict` comes back as [`ClientError::Conflict`] with the key's current
//! revision. The transport never retries it ([`super::retry`]); only `update` does, by reading
//! again, and a bounded number of times.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{retry, revision, Client, ClientError, ReadConsistency, Retry};
use crate::error::ErrorKind;
use crate::subjects::KvOp;

/// How many times [`Client::update`] tries (reads, computes, writes) before it gives up and
/// returns the last conflict.
pub const UPDATE_ATTEMPTS: u32 = 64;

/// A key's value and metadata, as `get` returns them. A cluster that predates key metadata
/// sends only `value` and `revision`; the other fields are then 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyValue {
    pub value: Value,
    /// The revision of the write that last set the key: what `if_revision` compares with.
    pub revision: u64,
    /// The revision of the write that created the key since it last did not exist.
    #[serde(default)]
    pub create_revision: u64,
    /// 1 at creation, +1 per write; a re-created key starts again at 1.
    #[serde(default)]
    pub version: u64,
    /// The key's lease; 0 = none.
    #[serde(default)]
    pub lease: u64,
    /// The revision the store stood at when the key was read (not the key's own).
    #[serde(default)]
    pub store_revision: u64,
}

/// A `put` body: `if_revision` only when there is a condition (`Some(0)`: only if absent).
pub(crate) fn put_body(
    key: &str,
    value: &Value,
    if_revision: Option<u64>,
    request_id: Uuid,
) -> Value {
    let mut body = serde_json::json!({"key": key, "value": value, "request_id": request_id});
    if let Some(n) = if_revision {
        body["if_revision"] = n.into();
    }
    body
}

/// A `delete` body, like [`put_body`].
pub(crate) fn delete_body(key: &str, if_revision: Option<u64>, request_id: Uuid) -> Value {
    let mut body = serde_json::json!({"key": key, "request_id": request_id});
    if let Some(n) = if_revision {
        body["if_revision"] = n.into();
    }
    body
}

/// A `delete` reply: whether the key existed, and the revision.
pub(crate) fn delete_reply(r: &Value) -> Result<(bool, u64), ClientError> {
    let deleted = r.get("deleted").and_then(Value::as_bool).unwrap_or(false);
    Ok((deleted, revision(r)?))
}

/// A `get` reply (`ok`), with the metadata it carries.
pub(crate) fn key_value(reply: Value) -> Result<KeyValue, ClientError> {
    serde_json::from_value(reply).map_err(|e| ClientError::Decode(format!("get reply: {e}")))
}

impl Client {
    /// `get` with the key's metadata: `None` when the key does not exist.
    pub async fn get_kv(&self, key: &str) -> Result<Option<KeyValue>, ClientError> {
        self.get_kv_with(key, ReadConsistency::Linearizable, None)
            .await
    }

    /// [`Client::get_kv`] with a consistency and, for a stale read, the revision the
    /// answering node must have applied first.
    pub async fn get_kv_with(
        &self,
        key: &str,
        consistency: ReadConsistency,
        min_revision: Option<u64>,
    ) -> Result<Option<KeyValue>, ClientError> {
        match self.get_kv_reply(key, consistency, min_revision).await {
            Ok(kv) => Ok(Some(kv)),
            Err(ClientError::Server(e)) if e.code == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// [`Client::get_kv_with`] with an absent key as the cluster's `not_found` error, which
    /// carries the `store_revision` the read saw (the CLI prints it with `--json`).
    pub async fn get_kv_reply(
        &self,
        key: &str,
        consistency: ReadConsistency,
        min_revision: Option<u64>,
    ) -> Result<KeyValue, ClientError> {
        let mut body = serde_json::json!({"key": key});
        if consistency == ReadConsistency::Stale {
            body["consistency"] = "stale".into();
        }
        if let Some(min) = min_revision {
            body["min_revision"] = min.into();
        }
        let retry = match consistency {
            ReadConsistency::Linearizable => Retry::Idempotent,
            ReadConsistency::Stale => Retry::Refused,
        };
        let v = self.send(self.subjects.kv(KvOp::Get), &body, retry).await?;
        key_value(v)
    }

    /// Puts `value` at `key` only if the key's revision is `if_revision` when the write
    /// applies (0: only if the key does not exist). Returns the new revision; a condition
    /// that does not hold is [`ClientError::Conflict`] with the current revision, and nothing
    /// is written. Sent with a fresh `request_id` and retried like [`Client::put`].
    pub async fn put_if(
        &self,
        key: &str,
        value: &Value,
        if_revision: u64,
    ) -> Result<u64, ClientError> {
        self.put_if_with_id(key, value, if_revision, Uuid::new_v4())
            .await
    }

    /// [`Client::put_if`] with the caller's `request_id` (see [`Client::put_with_id`]).
    pub async fn put_if_with_id(
        &self,
        key: &str,
        value: &Value,
        if_revision: u64,
        request_id: Uuid,
    ) -> Result<u64, ClientError> {
        let body = put_body(key, value, Some(if_revision), request_id);
        let r = self
            .send(self.subjects.kv(KvOp::Put), &body, Retry::Idempotent)
            .await?;
        revision(&r)
    }

    /// Deletes `key` only if its revision is `if_revision` when the delete applies (0: only
    /// if it does not exist, which deletes nothing and answers `deleted: false`). Returns
    /// whether the key existed and the revision, like [`Client::delete`]; a condition that
    /// does not hold is [`ClientError::Conflict`].
    pub async fn delete_if(&self, key: &str, if_revision: u64) -> Result<(bool, u64), ClientError> {
        self.delete_if_with_id(key, if_revision, Uuid::new_v4())
            .await
    }

    /// [`Client::delete_if`] with the caller's `request_id`.
    pub async fn delete_if_with_id(
        &self,
        key: &str,
        if_revision: u64,
        request_id: Uuid,
    ) -> Result<(bool, u64), ClientError> {
        let body = delete_body(key, Some(if_revision), request_id);
        let r = self
            .send(self.subjects.kv(KvOp::Delete), &body, Retry::Idempotent)
            .await?;
        delete_reply(&r)
    }

    /// Read-modify-write without lost updates: reads `key`, computes its new value with `f`
    /// (given the current value, `None` when the key is absent), and puts it with
    /// `if_revision` set to the revision it read. When another write got there first
    /// (`conflict`, reason `revision`) it pauses briefly ([`retry::conflict_pause`]) and
    /// starts again from the value and revision the conflict reports (a fresh read when the
    /// conflict carries no value: one over 4 KiB), up to [`UPDATE_ATTEMPTS`] times. Returns the revision
    /// of the put that applied. `f` may run more than once: keep it free of side effects.
    ///
    /// ```no_run
    /// # async fn counter(client: &concord::Client) -> Result<(), concord::client::ClientError> {
    /// let rev = client
    ///     .update("visits", |v| (v.and_then(|v| v.as_i64()).unwrap_or(0) + 1).into())
    ///     .await?;
    /// # let _ = rev; Ok(()) }
    /// ```
    pub async fn update<F>(&self, key: &str, f: F) -> Result<u64, ClientError>
    where
        F: FnMut(Option<&Value>) -> Value,
    {
        self.update_with(key, UPDATE_ATTEMPTS, f).await
    }

    /// [`Client::update`] with the number of attempts (at least 1).
    pub async fn update_with<F>(
        &self,
        key: &str,
        attempts: u32,
        mut f: F,
    ) -> Result<u64, ClientError>
    where
        F: FnMut(Option<&Value>) -> Value,
    {
        let mut conflicts = 0u32;
        // What the last conflict found (`None`: read the key).
        let mut seen: Option<(Option<Value>, u64)> = None;
        loop {
            let (value, rev) = match seen.take() {
                Some(seen) => seen,
                None => match self.get_kv(key).await? {
                    Some(kv) => (Some(kv.value), kv.revision),
                    None => (None, 0),
                },
            };
            let new = f(value.as_ref());
            match self.put_if(key, &new, rev).await {
                Ok(r) => return Ok(r),
                Err(e) if e.conflict_revision().is_some() => {
                    conflicts = conflicts.saturating_add(1);
                    if conflicts >= attempts {
                        return Err(e);
                    }
                    seen = conflict_state(&e);
                    let pause = retry::conflict_pause(conflicts, retry::spread());
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The key as a `revision` conflict found it in the log (a linearizable read): its value
/// (`None`: absent) and revision; `None` when the conflict does not carry the value (one of
/// more than 4 KiB), so the caller reads the key.
fn conflict_state(e: &ClientError) -> Option<(Option<Value>, u64)> {
    let revision = e.conflict_revision()?;
    match e.conflict_value() {
        Some(v) => Some((Some(v.clone()), revision)),
        None if revision == 0 => Some((None, 0)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode_reply;
    use super::*;
    use serde_json::json;

    #[test]
    fn write_bodies_carry_if_revision_only_when_given() {
        let id = Uuid::new_v4();
        let plain = put_body("k", &json!({"a": 1}), None, id);
        assert_eq!(
            plain,
            json!({"key": "k", "value": {"a": 1}, "request_id": id.to_string()})
        );
        let absent = put_body("k", &json!(1), Some(0), id);
        assert_eq!(
            absent["if_revision"],
            json!(0),
            "0 must be sent, not dropped"
        );
        assert_eq!(
            put_body("k", &json!(1), Some(42), id)["if_revision"],
            json!(42)
        );
        assert_eq!(
            delete_body("k", None, id),
            json!({"key": "k", "request_id": id.to_string()})
        );
        let del = delete_body("k", Some(9), id);
        assert_eq!(del["if_revision"], json!(9));
        assert_eq!(del["request_id"], json!(id.to_string()));
    }

    #[test]
    fn get_replies_decode_with_their_metadata() {
        let reply = decode_reply(
            br#"{"ok":true,"value":{"n":3},"revision":12,"create_revision":4,"version":3,
                 "lease":0,"store_revision":20}"#,
        )
        .expect("an ok reply");
        let kv = key_value(reply).expect("a key value");
        assert_eq!(
            kv,
            KeyValue {
                value: json!({"n": 3}),
                revision: 12,
                create_revision: 4,
                version: 3,
                lease: 0,
                store_revision: 20,
            }
        );
        // A cluster without key metadata: the metadata reads as 0.
        let old = key_value(json!({"ok": true, "value": "v", "revision": 5})).expect("old reply");
        assert_eq!((old.revision, old.version, old.store_revision), (5, 0, 0));
        assert!(matches!(
            key_value(json!({"ok": true, "value": "v"})),
            Err(ClientError::Decode(m)) if m.contains("revision")
        ));
        assert!(key_value(json!({"ok": true, "value": 1, "revision": -1})).is_err());
    }

    #[test]
    fn scan_pages_decode_with_metadata_and_store_revision() {
        let page: crate::client::ScanPage = serde_json::from_value(json!({
            "ok": true, "more": false, "store_revision": 30,
            "items": [{"key": "a", "value": 1, "revision": 7, "create_revision": 2,
                       "version": 4, "lease": 0}]
        }))
        .expect("a page");
        assert_eq!(page.store_revision, 30);
        let a = &page.items[0];
        assert_eq!((a.revision, a.create_revision, a.version), (7, 2, 4));
    }

    #[test]
    fn a_revision_conflict_decodes_to_a_typed_error_with_the_current_revision() {
        let e = decode_reply(
            br#"{"ok":false,"error":{"code":"conflict","reason":"revision","revision":17,
                 "message":"key 'k' is at revision 17, not 5"}}"#,
        )
        .expect_err("a conflict");
        assert_eq!(e.conflict_revision(), Some(17));
        assert_eq!(e.code(), ErrorKind::Conflict);
        assert_eq!(e.message(), "key 'k' is at revision 17, not 5");
        assert_eq!(
            e.to_json(),
            json!({"code": "conflict", "reason": "revision", "revision": 17,
                   "message": "key 'k' is at revision 17, not 5"})
        );
        // Absent key: revision 0, sent or not.
        let absent = decode_reply(
            br#"{"ok":false,"error":{"code":"conflict","reason":"revision","message":"m"}}"#,
        )
        .expect_err("a conflict");
        assert_eq!(absent.conflict_revision(), Some(0));
        // Another reason is a conflict too, but not one `update` retries.
        let reused = decode_reply(
            br#"{"ok":false,"error":{"code":"conflict","reason":"request_id","message":"m"}}"#,
        )
        .expect_err("a conflict");
        assert_eq!(reused.code(), ErrorKind::Conflict);
        assert_eq!(reused.conflict_revision(), None);
        assert_eq!(reused.to_json()["reason"], json!("request_id"));
        assert!(reused.to_json().get("revision").is_none());
    }

    #[test]
    fn delete_replies_say_whether_the_key_existed() {
        let r = json!({"ok": true, "deleted": true, "revision": 8});
        assert_eq!(delete_reply(&r).ok(), Some((true, 8)));
        let r = json!({"ok": true, "deleted": false, "revision": 8});
        assert_eq!(delete_reply(&r).ok(), Some((false, 8)));
        assert!(delete_reply(&json!({"ok": true, "deleted": true})).is_err());
    }
}
