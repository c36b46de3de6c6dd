//! Lease requests for [`Client`] (DESIGN.md "Leases and TTL"): grant, keepalive, revoke, get
//! and list, one request each. [`super::keeper`] builds the background keepalive
//! ([`Client::lease`]) on them.
//!
//! Grant and revoke are writes: a fresh `request_id`, retried like a put (a retried grant
//! gets the first grant). A keepalive carries no id (the cluster keeps none for it: a
//! renewal done twice is a renewal) and is retried like a read. A lease that ended, or never
//! was, is the cluster's `not_found` ([`ClientError::is_not_found`]).

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::put::ttl_ms;
use super::{Client, ClientError, Retry};
use crate::subjects::KvOp;

pub use super::put::Touched;

/// How many pages [`Client::lease_list`] follows at most (1000 leases each by default): a
/// bound, so that a cluster that keeps saying `more` cannot keep the client in the loop.
pub const MAX_LEASE_PAGES: u32 = 100_000;

/// A lease and its ttl, as grant and keepalive answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct LeaseTtl {
    pub id: u64,
    pub ttl_ms: u64,
}

impl LeaseTtl {
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }
}

/// A revoke's reply: the revision at which every attached key was deleted, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Revoked {
    pub revision: u64,
    pub count: u64,
}

/// `P.lease.get`: the lease, the time it has left by the leader's cluster time, and its keys
/// when asked for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LeaseInfo {
    pub id: u64,
    pub ttl_ms: u64,
    pub remaining_ms: u64,
    #[serde(default)]
    pub keys: Option<Vec<String>>,
}

/// One page of `P.lease.list`, in ascending ids.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LeasePage {
    pub leases: Vec<LeaseInfo>,
    pub more: bool,
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, v: Value) -> Result<T, ClientError> {
    serde_json::from_value(v).map_err(|e| ClientError::Decode(format!("{what} reply: {e}")))
}

/// A `lease.grant` body.
pub(crate) fn grant_body(ttl: Duration, id: Option<u64>, request_id: Uuid) -> Value {
    let mut body = serde_json::json!({"ttl_ms": ttl_ms(ttl), "request_id": request_id});
    if let Some(id) = id {
        body["id"] = id.into();
    }
    body
}

impl Client {
    /// Grants a lease of `ttl` (the cluster picks the id unless `id` is given: a taken one is
    /// a `conflict` with reason `lease_exists`). The countdown starts when the grant
    /// applies; keep it alive with [`Client::lease_keepalive`] or use [`Client::lease`].
    pub async fn lease_grant(
        &self,
        ttl: Duration,
        id: Option<u64>,
    ) -> Result<LeaseTtl, ClientError> {
        let body = grant_body(ttl, id, Uuid::new_v4());
        let r = self
            .send(self.subjects.kv(KvOp::LeaseGrant), &body, Retry::Idempotent)
            .await?;
        decode("lease.grant", r)
    }

    /// Renews lease `id` for its ttl, counted from when this renewal applies; answered only
    /// once that is committed. `not_found` once the lease has ended.
    pub async fn lease_keepalive(&self, id: u64) -> Result<LeaseTtl, ClientError> {
        let body = serde_json::json!({"id": id});
        let r = self
            .send(
                self.subjects.kv(KvOp::LeaseKeepalive),
                &body,
                Retry::Idempotent,
            )
            .await?;
        decode("lease.keepalive", r)
    }

    /// Ends lease `id` now: every key attached to it is deleted at one revision (`delete`
    /// events). `not_found` if there is no such lease.
    pub async fn lease_revoke(&self, id: u64) -> Result<Revoked, ClientError> {
        let body = serde_json::json!({"id": id, "request_id": Uuid::new_v4()});
        let r = self
            .send(
                self.subjects.kv(KvOp::LeaseRevoke),
                &body,
                Retry::Idempotent,
            )
            .await?;
        decode("lease.revoke", r)
    }

    /// Lease `id` with its time left, and its keys when `keys`; `not_found` when it has
    /// ended or never was.
    pub async fn lease_get(&self, id: u64, keys: bool) -> Result<LeaseInfo, ClientError> {
        let mut body = serde_json::json!({"id": id});
        if keys {
            body["keys"] = true.into();
        }
        let r = self
            .send(self.subjects.kv(KvOp::LeaseGet), &body, Retry::Idempotent)
            .await?;
        decode("lease.get", r)
    }

    /// One page of the leases whose ids come after `after` (0: from the start).
    pub async fn lease_list_page(
        &self,
        after: u64,
        limit: Option<usize>,
    ) -> Result<LeasePage, ClientError> {
        let mut body = serde_json::json!({});
        if after > 0 {
            body["after"] = after.into();
        }
        if let Some(l) = limit {
            body["limit"] = l.into();
        }
        let r = self
            .send(self.subjects.kv(KvOp::LeaseList), &body, Retry::Idempotent)
            .await?;
        decode("lease.list", r)
    }

    /// Every lease, following `more` from page to page.
    pub async fn lease_list(&self) -> Result<Vec<LeaseInfo>, ClientError> {
        let mut out: Vec<LeaseInfo> = Vec::new();
        for _ in 0..MAX_LEASE_PAGES {
            let after = out.last().map_or(0, |l| l.id);
            let page = self.lease_list_page(after, None).await?;
            let moved = page.leases.last().is_some_and(|l| l.id > after);
            out.extend(page.leases);
            if !page.more {
                return Ok(out);
            }
            // Ids only grow from page to page; a page that does not would loop forever.
            if !moved {
                return Err(ClientError::Decode(
                    "lease.list said more but its page did not move past the last id".into(),
                ));
            }
        }
        Err(ClientError::Decode(format!(
            "lease.list still said more after {MAX_LEASE_PAGES} pages"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode_reply;
    use super::*;
    use serde_json::json;

    #[test]
    fn grant_bodies_name_an_id_only_when_given() {
        let rid = Uuid::new_v4();
        let b = grant_body(Duration::from_secs(30), None, rid);
        assert_eq!(b, json!({"ttl_ms": 30_000, "request_id": rid.to_string()}));
        let b = grant_body(Duration::from_millis(1500), Some(42), rid);
        assert_eq!(
            (b["ttl_ms"].clone(), b["id"].clone()),
            (json!(1500), json!(42))
        );
    }

    #[test]
    fn lease_replies_decode() {
        let r = decode_reply(br#"{"ok":true,"id":7,"ttl_ms":5000}"#).expect("ok");
        let t: LeaseTtl = decode("grant", r).expect("a lease");
        assert_eq!((t.id, t.ttl()), (7, Duration::from_secs(5)));
        let g: LeaseInfo = decode(
            "get",
            json!({"ok": true, "id": 7, "ttl_ms": 5000, "remaining_ms": 4200, "keys": ["a"]}),
        )
        .expect("info");
        assert_eq!(g.keys, Some(vec!["a".to_string()]));
        let p: LeasePage = decode(
            "list",
            json!({"ok": true, "more": false,
                   "leases": [{"id": 1, "ttl_ms": 10, "remaining_ms": 3}]}),
        )
        .expect("page");
        assert_eq!((p.leases.len(), p.leases[0].keys.clone()), (1, None));
        let gone = decode_reply(br#"{"ok":false,"error":{"code":"not_found","message":"m"}}"#)
            .expect_err("not found");
        assert!(gone.is_not_found());
        let taken = decode_reply(
            br#"{"ok":false,"error":{"code":"conflict","reason":"lease_exists","message":"m"}}"#,
        )
        .expect_err("taken");
        assert_eq!(taken.conflict_reason(), Some("lease_exists"));
    }
}
