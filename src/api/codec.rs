//! Decoding client requests and encoding replies (DESIGN.md's JSON contract).
//!
//! Values stay as the client's JSON text from decode to disk to reply: never parsed into a
//! tree, never re-encoded. No IO here.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::command::Fence;
use crate::error::{bad_request, value_too_large, ErrorKind, WireError};
use crate::limits::{excerpt, excerpt_to};
use crate::store::keys::KeyMeta;
use crate::store::state_machine::Item;
use crate::subjects::KvOp;

pub use super::coord_codec::{CoordRequest, FenceBody};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    #[default]
    Linearizable,
    Stale,
}

/// A decoded client request.
#[derive(Debug, Clone, PartialEq)]
pub enum KvRequest {
    Put {
        key: String,
        value: String,
        /// Only if the key's revision is this (0: only if absent), decided at apply.
        if_revision: Option<u64>,
        /// The lease to attach it to, or a ttl for a lease of its own (not both).
        lease: Option<u64>,
        ttl_ms: Option<u64>,
        fence: Option<Fence>,
    },
    Get {
        key: String,
        consistency: Consistency,
        min_revision: Option<u64>,
    },
    Delete {
        key: String,
        if_revision: Option<u64>,
        fence: Option<Fence>,
    },
    Scan {
        prefix: String,
        limit: Option<usize>,
        after: Option<String>,
        consistency: Consistency,
        min_revision: Option<u64>,
    },
    Incr {
        key: String,
        by: i64,
        min: Option<i64>,
        max: Option<i64>,
        ttl_ms: Option<u64>,
        fence: Option<Fence>,
    },
    /// A delete with `prefix` instead of `key` (`""` only with `"all": true`).
    DeletePrefix {
        prefix: String,
        fence: Option<Fence>,
    },
    Txn(crate::command::Txn),
    /// The lease, lock and touch requests (`coord_codec`).
    Coord(CoordRequest),
}

impl KvRequest {
    /// Whether it goes through the log (every txn does, even one that only reads).
    pub fn is_write(&self) -> bool {
        match self {
            KvRequest::Get { .. } | KvRequest::Scan { .. } => false,
            KvRequest::Coord(c) => c.is_write(),
            _ => true,
        }
    }

    /// Whether it may change the key space, so needs the `readwrite` role: every write
    /// but a txn whose branches only read, which a `read` token may send.
    pub fn may_change_keys(&self) -> bool {
        match self {
            KvRequest::Get { .. } | KvRequest::Scan { .. } => false,
            KvRequest::Coord(c) => c.is_write(),
            KvRequest::Txn(t) => t
                .success
                .iter()
                .chain(&t.failure)
                .any(|op| !matches!(op, crate::command::TxnOp::Get { .. })),
            _ => true,
        }
    }
}

/// Fields every request may carry besides its own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Common {
    pub token: Option<String>,
    pub timeout: Option<Duration>,
    /// The client's id for an exactly-once write (put, delete).
    pub request_id: Option<uuid::Uuid>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody<'a> {
    key: String,
    #[serde(borrow)]
    value: &'a RawValue,
    token: Option<String>,
    timeout_ms: Option<u64>,
    request_id: Option<uuid::Uuid>,
    if_revision: Option<u64>,
    lease: Option<u64>,
    ttl_ms: Option<u64>,
    fence: Option<FenceBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetBody {
    key: String,
    #[serde(default)]
    consistency: Consistency,
    min_revision: Option<u64>,
    token: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    key: Option<String>,
    prefix: Option<String>,
    #[serde(default)]
    all: bool,
    token: Option<String>,
    timeout_ms: Option<u64>,
    request_id: Option<uuid::Uuid>,
    if_revision: Option<u64>,
    fence: Option<FenceBody>,
}

impl DeleteBody {
    /// A delete of one key, or by prefix: exactly one of `key` and `prefix`; the empty
    /// prefix (everything) only with `all`, and `all` only with it.
    fn request(self) -> Result<KvRequest, WireError> {
        let fence = self.fence.map(FenceBody::fence).transpose()?;
        match (self.key, self.prefix) {
            (Some(key), None) if !self.all => Ok(KvRequest::Delete {
                key,
                if_revision: self.if_revision,
                fence,
            }),
            (Some(_), None) => Err(bad_request("`all` goes with `prefix`, not with `key`")),
            (Some(_), Some(_)) => Err(bad_request(
                "a delete names either `key` or `prefix`, not both",
            )),
            (None, None) => Err(bad_request("missing field `key` (or `prefix`)")),
            (None, Some(_)) if self.if_revision.is_some() => Err(bad_request(
                "if_revision goes with `key`: a delete by prefix has no single revision to compare",
            )),
            (None, Some(prefix)) if prefix.is_empty() && !self.all => Err(bad_request(
                "an empty prefix deletes every key: say so with \"all\": true",
            )),
            (None, Some(prefix)) if !prefix.is_empty() && self.all => Err(bad_request(
                "\"all\": true deletes every key and goes with the empty prefix only",
            )),
            (None, Some(prefix)) => Ok(KvRequest::DeletePrefix { prefix, fence }),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncrBody {
    key: String,
    #[serde(default = "one")]
    by: i64,
    min: Option<i64>,
    max: Option<i64>,
    ttl_ms: Option<u64>,
    fence: Option<FenceBody>,
    token: Option<String>,
    timeout_ms: Option<u64>,
    request_id: Option<uuid::Uuid>,
}

fn one() -> i64 {
    1
}

impl IncrBody {
    fn request(self) -> Result<KvRequest, WireError> {
        if let Some(ttl) = self.ttl_ms {
            super::coord_codec::check_ttl(ttl)?;
        }
        if let (Some(min), Some(max)) = (self.min, self.max) {
            if min > max {
                return Err(bad_request(format!(
                    "min ({min}) is above max ({max}): no value could hold"
                )));
            }
        }
        Ok(KvRequest::Incr {
            key: self.key,
            by: self.by,
            min: self.min,
            max: self.max,
            ttl_ms: self.ttl_ms,
            fence: self.fence.map(FenceBody::fence).transpose()?,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanBody {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    after: Option<String>,
    #[serde(default)]
    consistency: Consistency,
    min_revision: Option<u64>,
    token: Option<String>,
    timeout_ms: Option<u64>,
}

/// Admin requests: `{}` or `{"digest": true}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminBody {
    #[serde(default)]
    pub digest: bool,
    pub token: Option<String>,
    pub timeout_ms: Option<u64>,
}

pub(super) fn common(token: Option<String>, timeout_ms: Option<u64>) -> Common {
    Common {
        token,
        timeout: timeout_ms.map(Duration::from_millis),
        request_id: None,
    }
}

/// Rejects what is not a JSON object before the typed decode, so the message says which.
pub fn check_object(body: &[u8]) -> Result<(), WireError> {
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        return Err(bad_request(format!(
            "request body is not JSON: {}",
            bounded_message(&e.to_string())
        )));
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(bad_request("request body must be a JSON object"));
    }
    Ok(())
}

pub fn typed<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, WireError> {
    serde_json::from_slice(body).map_err(|e| {
        // serde's messages name the field ("missing field `key`", "unknown variant ...").
        let msg = e.to_string();
        let msg = match msg.find(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        bad_request(format!("invalid request: {}", bounded_message(&msg)))
    })
}

/// Longest parser message a reply carries (serde's own text and the quoted parts, each cut).
const MAX_PARSER_MESSAGE_BYTES: usize = 512;

/// A serde message with every quoted part (an unknown field name, a string of the wrong
/// type, an unknown variant: the client's input) cut to an [`excerpt`], and the whole cut
/// too, so a 500 KB field name makes a short `bad_request`, not a reply too big to publish.
fn bounded_message(msg: &str) -> String {
    let mut out = String::new();
    let mut rest = msg;
    // Each turn consumes at least one byte of `rest`, and stops once `out` is long enough.
    while out.len() <= MAX_PARSER_MESSAGE_BYTES {
        match rest.find(['`', '"']) {
            Some(i) => {
                out.push_str(&excerpt(&rest[..i]));
                // An ASCII delimiter: `i + 1` is a char boundary.
                out.push(char::from(rest.as_bytes()[i]));
                rest = &rest[i + 1..];
            }
            None => {
                out.push_str(&excerpt(rest));
                break;
            }
        }
    }
    excerpt_to(&out, MAX_PARSER_MESSAGE_BYTES).into_owned()
}

pub fn decode_kv(op: KvOp, body: &[u8]) -> Result<(KvRequest, Common), WireError> {
    check_object(body)?;
    Ok(match op {
        KvOp::Put => {
            let b: PutBody = typed(body)?;
            if b.lease.is_some() && b.ttl_ms.is_some() {
                return Err(bad_request(
                    "a put names either `lease` (attach to it) or `ttl_ms` (a lease of the key's own), not both",
                ));
            }
            if let Some(ttl) = b.ttl_ms {
                super::coord_codec::check_ttl(ttl)?;
            }
            if let Some(id) = b.lease {
                super::coord_codec::check_lease_id(id)?;
            }
            (
                KvRequest::Put {
                    key: b.key,
                    value: b.value.get().to_string(),
                    if_revision: b.if_revision,
                    lease: b.lease,
                    ttl_ms: b.ttl_ms,
                    fence: b.fence.map(FenceBody::fence).transpose()?,
                },
                Common {
                    request_id: b.request_id,
                    ..common(b.token, b.timeout_ms)
                },
            )
        }
        KvOp::Get => {
            let b: GetBody = typed(body)?;
            (
                KvRequest::Get {
                    key: b.key,
                    consistency: b.consistency,
                    min_revision: b.min_revision,
                },
                common(b.token, b.timeout_ms),
            )
        }
        KvOp::Delete => {
            let b: DeleteBody = typed(body)?;
            let common = Common {
                request_id: b.request_id,
                ..common(b.token.clone(), b.timeout_ms)
            };
            (b.request()?, common)
        }
        KvOp::Incr => {
            let b: IncrBody = typed(body)?;
            let common = Common {
                request_id: b.request_id,
                ..common(b.token.clone(), b.timeout_ms)
            };
            (b.request()?, common)
        }
        KvOp::Txn => {
            let b: super::txn_codec::TxnBody = typed(body)?;
            let common = Common {
                request_id: b.request_id,
                ..common(b.token.clone(), b.timeout_ms)
            };
            (KvRequest::Txn(b.txn()?), common)
        }
        KvOp::Touch
        | KvOp::LeaseGrant
        | KvOp::LeaseKeepalive
        | KvOp::LeaseRevoke
        | KvOp::LeaseGet
        | KvOp::LeaseList
        | KvOp::LockAcquire
        | KvOp::LockRelease => {
            let (req, common) = super::coord_codec::decode(op, body)?;
            (KvRequest::Coord(req), common)
        }
        KvOp::Scan => {
            let b: ScanBody = typed(body)?;
            (
                KvRequest::Scan {
                    prefix: b.prefix,
                    limit: b.limit,
                    after: b.after,
                    consistency: b.consistency,
                    min_revision: b.min_revision,
                },
                common(b.token, b.timeout_ms),
            )
        }
    })
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    ok: bool,
    error: &'a WireError,
}

pub fn encode_error(e: &WireError) -> Vec<u8> {
    serde_json::to_vec(&ErrorReply {
        ok: false,
        error: e,
    })
    .unwrap_or_default()
}

/// The outcome a reply body reports: `Ok` or its error code. Error replies start with
/// `{"ok":false` (ours, and those relayed from the leader); only they are parsed.
pub fn reply_code(body: &[u8]) -> Result<(), ErrorKind> {
    if !body.starts_with(br#"{"ok":false"#) {
        return Ok(());
    }
    #[derive(Deserialize)]
    struct Code {
        code: ErrorKind,
    }
    #[derive(Deserialize)]
    struct Reply {
        error: Code,
    }
    match serde_json::from_slice::<Reply>(body) {
        Ok(r) => Err(r.error.code),
        Err(_) => Err(ErrorKind::Internal),
    }
}

/// The `reason` of a `conflict` reply (`""` when it has none).
pub fn conflict_reason(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Reason {
        #[serde(default)]
        reason: String,
    }
    #[derive(Deserialize)]
    struct Reply {
        error: Reason,
    }
    serde_json::from_slice::<Reply>(body)
        .map(|r| r.error.reason)
        .unwrap_or_default()
}

/// The key of a key-space request (the prefix of a scan), for telemetry events with
/// `telemetry.include_keys`; `None` if the body has none.
pub fn request_key(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Keyed<'a> {
        #[serde(borrow)]
        key: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        prefix: Option<std::borrow::Cow<'a, str>>,
    }
    let k: Keyed = serde_json::from_slice(body).ok()?;
    k.key.or(k.prefix).map(|c| c.into_owned())
}

/// A successful reply body, already shaped as the contract says.
pub fn encode_ok<T: Serialize>(body: &T) -> Vec<u8> {
    serde_json::to_vec(body).unwrap_or_default()
}

#[derive(Serialize)]
pub struct PutReply {
    pub ok: bool,
    pub revision: u64,
    /// The lease the key is attached to, when the put named one (or a ttl).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
}

#[derive(Serialize)]
pub struct GetReply<'a> {
    pub ok: bool,
    pub value: &'a RawValue,
    pub revision: u64,
    pub create_revision: u64,
    pub version: u64,
    pub lease: u64,
    /// The store had applied at least this revision when the key was read.
    pub store_revision: u64,
}

#[derive(Serialize)]
pub struct DeleteReply {
    pub ok: bool,
    pub deleted: bool,
    pub revision: u64,
}

#[derive(Serialize)]
pub struct DeletePrefixReply {
    pub ok: bool,
    pub deleted: bool,
    pub count: u64,
    pub more: bool,
    pub revision: u64,
}

#[derive(Serialize)]
pub struct IncrReply {
    pub ok: bool,
    pub value: i64,
    pub revision: u64,
}

#[derive(Serialize)]
struct ScanItem<'a> {
    key: &'a str,
    value: &'a RawValue,
    revision: u64,
    create_revision: u64,
    version: u64,
    lease: u64,
}

/// Stored JSON was validated on the way in; a failure here means corrupt storage.
fn raw(json: &[u8]) -> Result<&RawValue, WireError> {
    let s = std::str::from_utf8(json)
        .map_err(|_| crate::error::internal("stored value is not UTF-8"))?;
    serde_json::from_str(s).map_err(|_| crate::error::internal("stored value is not JSON"))
}

/// A get reply: the value with its key's metadata, and where the store stood (at least
/// `store_revision`, and never below the key's own revision).
pub fn encode_get(meta: &KeyMeta, json: &[u8], store_revision: u64) -> Result<Vec<u8>, WireError> {
    Ok(encode_ok(&GetReply {
        ok: true,
        value: raw(json)?,
        revision: meta.revision,
        create_revision: meta.create_revision,
        version: meta.version,
        lease: meta.lease,
        store_revision: store_revision.max(meta.revision),
    }))
}

/// Bytes a reply leaves under the NATS max payload for its headers (a forwarded reply's MAC).
pub const REPLY_HEADER_ROOM: usize = 1024;

/// One scan page: the items the store read, cut further so the encoded reply is at most
/// `max_bytes` (the store's cut is an estimate; a key's JSON escapes can double it). `more`
/// is the store's word that keys remain; an item left out here makes it true too.
///
/// The page ends with `store_revision`: the store had applied at least that revision when
/// the page was read, and no item on it is newer.
pub fn encode_scan(
    items: &[Item],
    more: bool,
    max_bytes: usize,
    store_revision: u64,
) -> Result<Vec<u8>, WireError> {
    let store_revision = items
        .iter()
        .map(|it| it.meta.revision)
        .fold(store_revision, u64::max);
    let tail = format!(r#","store_revision":{store_revision}}}"#);
    let items = items.iter().map(|it| {
        Ok(ScanItem {
            key: &it.key,
            value: raw(&it.json)?,
            revision: it.meta.revision,
            create_revision: it.meta.create_revision,
            version: it.meta.version,
            lease: it.meta.lease,
        })
    });
    let room = max_bytes.saturating_sub(tail.len());
    let (mut body, _) = encode_page("items", items, usize::MAX, more, room)?;
    // `{"ok":true,"items":[…],"more":M}` ends with its brace: the field goes before it.
    body.pop();
    body.extend_from_slice(tail.as_bytes());
    Ok(body)
}

/// A list reply, `{"ok":true,"<field>":[…],"more":M}`, of at most `limit` items and at most
/// `max_bytes` bytes in all, built item by item so that the cut is by encoded bytes. Returns
/// the body and how many items it holds. `more` is true when the caller has more
/// (`source_more`) or an item was left out here. One item that alone would not fit is
/// `value_too_large`: no page can hold it.
pub fn encode_page<T: Serialize>(
    field: &str,
    items: impl IntoIterator<Item = Result<T, WireError>>,
    limit: usize,
    source_more: bool,
    max_bytes: usize,
) -> Result<(Vec<u8>, usize), WireError> {
    // The longer of the two endings, so either fits.
    const TAIL_BYTES: usize = r#"],"more":false}"#.len();
    let mut out = format!(r#"{{"ok":true,"{field}":["#).into_bytes();
    let (mut count, mut cut) = (0usize, false);
    for item in items {
        if count == limit {
            cut = true;
            break;
        }
        let item = item?;
        let mark = out.len();
        if count > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, &item)
            .map_err(|e| crate::error::internal(format!("encoding a reply: {e}")))?;
        if out.len() + TAIL_BYTES > max_bytes {
            if count == 0 {
                return Err(value_too_large(format!(
                    "one item alone makes a reply of {} bytes, over the {max_bytes} that fit in one NATS message",
                    out.len() + TAIL_BYTES
                )));
            }
            out.truncate(mark);
            cut = true;
            break;
        }
        count += 1;
    }
    let more = cut || source_more;
    out.extend_from_slice(if more {
        br#"],"more":true}"#
    } else {
        br#"],"more":false}"#
    });
    Ok((out, count))
}

#[cfg(test)]
mod tests;
