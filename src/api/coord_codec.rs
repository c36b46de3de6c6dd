//! The lease, lock and touch requests (DESIGN.md "Leases and TTL", "Locks and fencing"):
//! their bodies as the wire carries them, checked, and their replies.

use serde::{Deserialize, Serialize};

use super::codec::{common, typed, Common};
use crate::command::Fence;
use crate::error::{bad_request, WireError};
use crate::store::lease::{MAX_LEASE_ID, MAX_TTL_MS};
use crate::subjects::KvOp;

/// Default page of `P.lease.list`, and the most it gives.
pub const DEFAULT_LEASE_PAGE: usize = 1000;
pub const MAX_LEASE_PAGE: usize = 10_000;
/// Longest lock name.
pub const MAX_LOCK_NAME_BYTES: usize = 256;
/// Reserved key prefix of lock claims.
pub const LOCK_PREFIX: &str = "_lock/";

#[derive(Debug, Clone, PartialEq)]
pub enum CoordRequest {
    Touch {
        key: String,
        ttl_ms: Option<u64>,
    },
    LeaseGrant {
        id: Option<u64>,
        ttl_ms: u64,
    },
    LeaseKeepalive {
        id: u64,
    },
    LeaseRevoke {
        id: u64,
    },
    LeaseGet {
        id: u64,
        keys: bool,
    },
    LeaseList {
        after: u64,
        limit: usize,
    },
    LockAcquire {
        name: String,
        ttl_ms: Option<u64>,
        lease: Option<u64>,
        /// `None`: wait until shortly before the request's deadline.
        wait_ms: Option<u64>,
    },
    LockRelease {
        name: String,
        fence: u64,
    },
}

impl CoordRequest {
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            CoordRequest::LeaseGet { .. } | CoordRequest::LeaseList { .. }
        )
    }
}

/// `"fence": {"lock": name, "token": N}` on a write.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceBody {
    lock: String,
    token: u64,
}

impl FenceBody {
    pub fn fence(self) -> Result<Fence, WireError> {
        check_lock_name(&self.lock)?;
        Ok(Fence {
            lock: self.lock,
            token: self.token,
        })
    }
}

pub fn check_ttl(ttl_ms: u64) -> Result<(), WireError> {
    if ttl_ms == 0 || ttl_ms > MAX_TTL_MS {
        return Err(bad_request(format!(
            "ttl_ms must be between 1 and {MAX_TTL_MS} (30 days), not {ttl_ms}"
        )));
    }
    Ok(())
}

pub fn check_lease_id(id: u64) -> Result<(), WireError> {
    if id == 0 || id > MAX_LEASE_ID {
        return Err(bad_request(format!(
            "a lease id is between 1 and {MAX_LEASE_ID} (2^53 - 1), not {id}"
        )));
    }
    Ok(())
}

/// A lock name: a key's characters, no `/` (claims are `_lock/<name>/<id>`), at most 256
/// bytes.
pub fn check_lock_name(name: &str) -> Result<(), WireError> {
    if name.is_empty() || name.len() > MAX_LOCK_NAME_BYTES {
        return Err(bad_request(format!(
            "a lock name is 1 to {MAX_LOCK_NAME_BYTES} bytes"
        )));
    }
    if name.contains('/') || name.chars().any(char::is_control) {
        return Err(bad_request(
            "a lock name holds no `/` and no control characters",
        ));
    }
    Ok(())
}

/// The key prefix of lock `name`'s claims.
pub fn lock_prefix(name: &str) -> String {
    format!("{LOCK_PREFIX}{name}/")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TouchBody {
    key: String,
    ttl_ms: Option<u64>,
    token: Option<String>,
    timeout_ms: Option<u64>,
    /// Taken and ignored, as on a keepalive: a touch never enters the idempotency table
    /// (repeating one only renews again).
    #[allow(dead_code)]
    request_id: Option<uuid::Uuid>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    ttl_ms: u64,
    id: Option<u64>,
    token: Option<String>,
    timeout_ms: Option<u64>,
    request_id: Option<uuid::Uuid>,
}

/// keepalive, revoke, get.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseIdBody {
    id: u64,
    #[serde(default)]
    keys: bool,
    token: Option<String>,
    timeout_ms: Option<u64>,
    request_id: Option<uuid::Uuid>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListBody {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    token: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcquireBody {
    name: String,
    ttl_ms: Option<u64>,
    lease: Option<u64>,
    wait_ms: Option<u64>,
    token: Option<String>,
    timeout_ms: Option<u64>,
    request_id: Option<uuid::Uuid>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    name: String,
    fence: u64,
    token: Option<String>,
    timeout_ms: Option<u64>,
    request_id: Option<uuid::Uuid>,
}

fn tagged(c: Common, request_id: Option<uuid::Uuid>) -> Common {
    Common { request_id, ..c }
}

pub fn decode(op: KvOp, body: &[u8]) -> Result<(CoordRequest, Common), WireError> {
    Ok(match op {
        KvOp::Touch => {
            let b: TouchBody = typed(body)?;
            if let Some(ttl) = b.ttl_ms {
                check_ttl(ttl)?;
            }
            let req = CoordRequest::Touch {
                key: b.key,
                ttl_ms: b.ttl_ms,
            };
            (req, common(b.token, b.timeout_ms))
        }
        KvOp::LeaseGrant => {
            let b: GrantBody = typed(body)?;
            check_ttl(b.ttl_ms)?;
            if let Some(id) = b.id {
                check_lease_id(id)?;
            }
            let req = CoordRequest::LeaseGrant {
                id: b.id,
                ttl_ms: b.ttl_ms,
            };
            (req, tagged(common(b.token, b.timeout_ms), b.request_id))
        }
        KvOp::LeaseKeepalive | KvOp::LeaseRevoke | KvOp::LeaseGet => {
            let b: LeaseIdBody = typed(body)?;
            check_lease_id(b.id)?;
            let (req, request_id) = match op {
                KvOp::LeaseKeepalive => (CoordRequest::LeaseKeepalive { id: b.id }, None),
                KvOp::LeaseRevoke => (CoordRequest::LeaseRevoke { id: b.id }, b.request_id),
                _ => (
                    CoordRequest::LeaseGet {
                        id: b.id,
                        keys: b.keys,
                    },
                    None,
                ),
            };
            if b.keys && op != KvOp::LeaseGet {
                return Err(bad_request("`keys` goes with lease.get only"));
            }
            (req, tagged(common(b.token, b.timeout_ms), request_id))
        }
        KvOp::LeaseList => {
            let b: ListBody = typed(body)?;
            let limit = b.limit.unwrap_or(DEFAULT_LEASE_PAGE);
            if limit == 0 || limit > MAX_LEASE_PAGE {
                return Err(bad_request(format!(
                    "limit must be between 1 and {MAX_LEASE_PAGE}"
                )));
            }
            let req = CoordRequest::LeaseList {
                after: b.after,
                limit,
            };
            (req, common(b.token, b.timeout_ms))
        }
        KvOp::LockAcquire => {
            let b: AcquireBody = typed(body)?;
            check_lock_name(&b.name)?;
            match (b.ttl_ms, b.lease) {
                (Some(ttl), None) => check_ttl(ttl)?,
                (None, Some(id)) => check_lease_id(id)?,
                _ => return Err(bad_request(
                    "lock.acquire names either `ttl_ms` (a lease of the claim's own) or `lease`",
                )),
            }
            let req = CoordRequest::LockAcquire {
                name: b.name,
                ttl_ms: b.ttl_ms,
                lease: b.lease,
                wait_ms: b.wait_ms,
            };
            (req, tagged(common(b.token, b.timeout_ms), b.request_id))
        }
        KvOp::LockRelease => {
            let b: ReleaseBody = typed(body)?;
            check_lock_name(&b.name)?;
            let req = CoordRequest::LockRelease {
                name: b.name,
                fence: b.fence,
            };
            (req, tagged(common(b.token, b.timeout_ms), b.request_id))
        }
        other => {
            return Err(bad_request(format!(
                "{} is not a lease, lock or touch request",
                other.as_str()
            )))
        }
    })
}

#[derive(Serialize)]
pub struct LeaseReply {
    pub ok: bool,
    pub id: u64,
    pub ttl_ms: u64,
}

#[derive(Serialize)]
pub struct TouchReply<'a> {
    pub ok: bool,
    pub key: &'a str,
    pub lease: u64,
    pub ttl_ms: u64,
}

#[derive(Serialize)]
pub struct RevokeReply {
    pub ok: bool,
    pub revision: u64,
    pub count: u64,
}

#[derive(Serialize)]
pub struct LeaseGetReply {
    pub ok: bool,
    pub id: u64,
    pub ttl_ms: u64,
    pub remaining_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
}

#[derive(Serialize)]
pub struct LeaseItem {
    pub id: u64,
    pub ttl_ms: u64,
    pub remaining_ms: u64,
}

#[derive(Serialize)]
pub struct LeaseListReply {
    pub ok: bool,
    pub leases: Vec<LeaseItem>,
    pub more: bool,
}

#[derive(Serialize)]
pub struct LockReply<'a> {
    pub ok: bool,
    pub name: &'a str,
    pub fence: u64,
    pub lease: u64,
}

#[derive(Serialize)]
pub struct ReleaseReply {
    pub ok: bool,
    pub revision: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn refused(op: KvOp, body: &str) -> bool {
        decode(op, body.as_bytes()).is_err_and(|e| e.code == ErrorKind::BadRequest)
    }

    #[test]
    fn bodies_are_checked() {
        assert!(refused(KvOp::LeaseGrant, r#"{"ttl_ms":0}"#));
        assert!(refused(KvOp::LeaseGrant, r#"{"ttl_ms":1000,"id":0}"#));
        assert!(refused(
            KvOp::LeaseGrant,
            r#"{"ttl_ms":1000,"id":9007199254740992}"#
        ));
        assert!(refused(KvOp::LeaseKeepalive, r#"{"id":1,"keys":true}"#));
        assert!(refused(
            KvOp::LockAcquire,
            r#"{"name":"a/b","ttl_ms":1000}"#
        ));
        assert!(refused(KvOp::LockAcquire, r#"{"name":"a"}"#));
        assert!(refused(
            KvOp::LockAcquire,
            r#"{"name":"a","ttl_ms":1000,"lease":3}"#
        ));
        assert!(refused(KvOp::LeaseList, r#"{"limit":0}"#));
        let (req, common) = decode(
            KvOp::LockAcquire,
            br#"{"name":"job","ttl_ms":5000,"wait_ms":0}"#,
        )
        .expect("a valid acquire");
        assert_eq!(
            req,
            CoordRequest::LockAcquire {
                name: "job".into(),
                ttl_ms: Some(5000),
                lease: None,
                wait_ms: Some(0)
            }
        );
        assert!(common.request_id.is_none());
    }
}
