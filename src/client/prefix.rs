//! Deletes by prefix for [`Client`]: `P.kv.delete` with `"prefix"` deletes up to the
//! cluster's `limits.max_delete_keys` keys under it at one revision and says whether `more`
//! remain; [`Client::delete_prefix_all`] calls again until none do.
//!
//! Every call is a write of its own with a fresh `request_id` (a repeated id would get the
//! first call's stored reply, `more` included, forever). The empty prefix (every key) is sent
//! only by [`Client::delete_every_key`], with `"all": true`, so that an empty string that
//! reaches `delete_prefix` by mistake is refused by the cluster instead of deleting
//! everything.

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::{Client, ClientError, Retry};
use crate::subjects::KvOp;

/// How many calls [`Client::delete_prefix_all`] makes at most: with the default limit of
/// 10,000 keys per call, 10 million keys. A bound, so that a cluster that keeps saying
/// `more` cannot keep the client in the loop forever.
pub const MAX_PREFIX_CALLS: u32 = 1000;

/// What a delete by prefix did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct PrefixDeleted {
    /// How many keys were deleted (over every call, for the looping forms).
    pub count: u64,
    /// Whether keys under the prefix remain (only a single call says `true`).
    pub more: bool,
    /// The revision of the (last) delete; the store's revision when nothing was deleted.
    pub revision: u64,
}

/// A prefix delete body: `all` only for the empty prefix.
pub(crate) fn prefix_body(prefix: &str, all: bool, request_id: Uuid) -> Value {
    let mut body = serde_json::json!({"prefix": prefix, "request_id": request_id});
    if all {
        body["all"] = true.into();
    }
    body
}

/// A prefix delete reply (`ok`).
pub(crate) fn prefix_deleted(reply: Value) -> Result<PrefixDeleted, ClientError> {
    serde_json::from_value(reply)
        .map_err(|e| ClientError::Decode(format!("delete by prefix reply: {e}")))
}

/// Adds one call's result to the running total of a loop (the CLI runs its own loop, to
/// show progress); an error when the cluster said `more` but deleted nothing, which would
/// loop forever.
pub fn add_call(total: &mut PrefixDeleted, call: PrefixDeleted) -> Result<(), ClientError> {
    if call.more && call.count == 0 {
        return Err(ClientError::Decode(
            "delete by prefix said more but deleted nothing".into(),
        ));
    }
    total.count = total.count.saturating_add(call.count);
    total.more = call.more;
    total.revision = call.revision;
    Ok(())
}

impl Client {
    /// Deletes up to `limits.max_delete_keys` keys under `prefix` (not empty: see
    /// [`Client::delete_every_key`]) at one revision, with a fresh `request_id`, retried
    /// like [`Client::delete`]. `more` says whether keys remain under it.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<PrefixDeleted, ClientError> {
        self.delete_prefix_with_id(prefix, false, Uuid::new_v4())
            .await
    }

    /// One delete by prefix with the caller's `request_id`; `all` must be set for the empty
    /// prefix and only for it (the cluster refuses anything else with `bad_request`).
    pub async fn delete_prefix_with_id(
        &self,
        prefix: &str,
        all: bool,
        request_id: Uuid,
    ) -> Result<PrefixDeleted, ClientError> {
        let body = prefix_body(prefix, all, request_id);
        let r = self
            .send(self.subjects.kv(KvOp::Delete), &body, Retry::Idempotent)
            .await?;
        prefix_deleted(r)
    }

    /// Deletes every key under `prefix`, calling again while the cluster says `more` (each
    /// call at its own revision, so this is not atomic over more than one call). Returns the
    /// total count and the last call's revision.
    pub async fn delete_prefix_all(&self, prefix: &str) -> Result<PrefixDeleted, ClientError> {
        self.delete_prefix_loop(prefix, false).await
    }

    /// Deletes every key of the cluster (the empty prefix with `"all": true`), like
    /// [`Client::delete_prefix_all`].
    pub async fn delete_every_key(&self) -> Result<PrefixDeleted, ClientError> {
        self.delete_prefix_loop("", true).await
    }

    async fn delete_prefix_loop(
        &self,
        prefix: &str,
        all: bool,
    ) -> Result<PrefixDeleted, ClientError> {
        let mut total = PrefixDeleted {
            count: 0,
            more: true,
            revision: 0,
        };
        for _ in 0..MAX_PREFIX_CALLS {
            let call = self
                .delete_prefix_with_id(prefix, all, Uuid::new_v4())
                .await?;
            add_call(&mut total, call)?;
            if !total.more {
                return Ok(total);
            }
        }
        Err(ClientError::Decode(format!(
            "delete by prefix still said more after {MAX_PREFIX_CALLS} calls ({} keys deleted)",
            total.count
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prefix_bodies_say_all_only_for_every_key() {
        let id = Uuid::new_v4();
        assert_eq!(
            prefix_body("app/", false, id),
            json!({"prefix": "app/", "request_id": id.to_string()})
        );
        assert_eq!(prefix_body("", true, id)["all"], json!(true));
    }

    #[test]
    fn prefix_replies_decode_and_loops_add_up() {
        let r = json!({"ok": true, "deleted": true, "count": 3, "more": true, "revision": 12});
        let first = prefix_deleted(r).expect("a reply");
        assert_eq!((first.count, first.more, first.revision), (3, true, 12));
        let mut total = PrefixDeleted {
            count: 0,
            more: true,
            revision: 0,
        };
        add_call(&mut total, first).expect("first call");
        let last = prefix_deleted(json!({"ok": true, "deleted": true, "count": 2,
            "more": false, "revision": 13}))
        .expect("a reply");
        add_call(&mut total, last).expect("last call");
        assert_eq!((total.count, total.more, total.revision), (5, false, 13));
        let stuck = PrefixDeleted {
            count: 0,
            more: true,
            revision: 14,
        };
        assert!(matches!(
            add_call(&mut total, stuck),
            Err(ClientError::Decode(_))
        ));
        assert!(prefix_deleted(json!({"ok": true, "count": 1, "revision": 2})).is_err());
    }
}
