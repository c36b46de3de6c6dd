//! `concord::Client`: an async client of the wire protocol, used by the CLI and the tests.
//!
//! Every request runs within the client's `timeout` (the caller's deadline); the rules of
//! [`retry`] decide what is sent again inside it, after a pause of 25 ms doubling to 400 ms
//! (jittered):
//!
//! - **Writes** (`put`, `delete`, [`Client::write`]) carry a `request_id`: a fresh UUID v4 per
//!   call, the same on every retry of that call (`put_with_id` and `delete_with_id` take the
//!   caller's, e.g. to retry a command that ended in `timeout`). They are retried after
//!   `busy`, `cluster_not_ready`, NATS "no responders", and also after `timeout` (a NATS
//!   request that got no reply included): the cluster keeps each id's reply for
//!   `idempotency.window`, so a retry gets the first attempt's reply instead of applying
//!   again. `conflict` (the id was used for another command) and every other code are final.
//! - **Linearizable reads** (`get`, `scan`) are retried the same way, without an id.
//! - Each such attempt gets min(time left, max(1 s, timeout / 3)) (sent as
//!   `Concord-Timeout-Ms`), so one attempt stuck on a dead or paused node does not use the
//!   whole deadline; a new attempt may reach another node.
//! - **Stale reads, admin calls** and [`Client::call`] retry only refusals (`busy`,
//!   `cluster_not_ready`, no responders: nothing was done), each attempt with all the time
//!   left; they never retry `timeout` or `internal`.
//! - A write whose retries end in a refusal after an attempt without an answer reports
//!   `timeout`: it may have applied.
//!
//! Compare-and-swap ([`cas`]): `put_if` and `delete_if` send `if_revision` and are retried
//! like the other writes; a `conflict` comes back as [`ClientError::Conflict`] with the key's
//! current revision and is never retried by the transport. [`Client::update`] is the
//! optimistic read-modify-write loop built on them.
//!
//! Counters ([`incr`]: `incr`, `incr_with` with bounds), deletes by prefix ([`prefix`]:
//! `delete_prefix`, `delete_prefix_all` following `more`) and transactions ([`txn`]: a typed
//! builder, `Client::txn`) are writes too: each call sends a fresh `request_id` and is retried
//! the same way; their conflicts (`bound`, `not_integer`) are [`ClientError::Conflict`] with
//! the key's current `value`.
//!
//! Leases ([`lease`]: grant, keepalive, revoke, get, list; [`keeper`]: [`Client::lease`], a
//! lease kept alive in the background that reports its loss), puts with a lease, a ttl or a
//! fence ([`put`]: [`PutOptions`], `touch`, `delete_fenced`) and fenced locks ([`lock`]:
//! [`Client::lock`] and its [`LockGuard`]). Lock conflicts come back as their own errors
//! ([`ClientError::LockHeld`], [`ClientError::LockWait`], [`ClientError::Fence`]); a lease
//! that ended is `not_found` ([`ClientError::is_not_found`]).

use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::RequestErrorKind;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use crate::config::NatsConfig;
use crate::error::{ErrorKind, WireError};
use crate::subjects::{AdminOp, KvOp, Subjects, HEADER_TIMEOUT_MS};

pub mod cas;
pub mod incr;
pub mod keeper;
pub mod lease;
pub mod lock;
pub mod prefix;
pub mod put;
pub mod retry;
pub mod txn;
pub mod watch;
pub use cas::KeyValue;
pub use incr::{Counter, Incr};
pub use keeper::{Lease, LeaseLoss, LeaseState, LossReason};
pub use lease::{LeaseInfo, LeasePage, LeaseTtl, Revoked, Touched};
pub use lock::{LockGuard, LockOptions};
pub use prefix::PrefixDeleted;
pub use put::{Fence, PutOptions, PutReply};
pub use retry::Retry;
pub use txn::{CmpOp, Compare, Target, Txn, TxnOp, TxnReply, TxnResult};
pub use watch::{EventType, Resumed, Watch, WatchEvent, WatchStream};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cluster answered with an error code.
    #[error("{0}")]
    Server(WireError),
    /// The cluster answered `conflict`: a condition of the write did not hold and nothing was
    /// written. `reason` says which (`revision` for `if_revision`, `bound` for an `incr` out
    /// of its bounds or overflowing, `not_integer` for an `incr` of a value that is not an
    /// integer, `request_id` for an id reused with another command); `revision` is the key's
    /// current revision (0 when it is absent) and `value` its current value when the cluster
    /// sends them; `key` names the key of a txn op that failed. Never retried as it is: the
    /// caller decides.
    #[error("conflict: {message}")]
    Conflict {
        reason: String,
        revision: Option<u64>,
        // Boxed: keeps every `Result<_, ClientError>` small.
        value: Option<Box<Value>>,
        key: Option<String>,
        message: String,
    },
    /// The cluster answered `compacted`: the revisions asked for (a watch's start, or the
    /// next revision of a stream that fell behind) are older than its change log keeps,
    /// which starts after `compact_revision`. A watcher lists again and watches from the
    /// list ([`Client::list_watch`]).
    #[error("compacted: the change log starts after revision {compact_revision}; list again and watch from there")]
    Compacted { compact_revision: u64 },
    /// `conflict` with reason `lock_held`: a lock acquire that tried once (no wait) found
    /// the lock held; `fence` is the holder's. No claim was left.
    #[error("conflict: {message}")]
    LockHeld { fence: u64, message: String },
    /// `conflict` with reason `lock_wait`: the wait ended before the lock was granted; the
    /// claim was withdrawn.
    #[error("conflict: {message}")]
    LockWait { message: String },
    /// `conflict` with reason `fence`: a fenced write (or a release) named a fence that is
    /// not the lock's current holder's; `current` is the holder's (0: the lock is free).
    /// Nothing was written.
    #[error("conflict: {message}")]
    Fence { current: u64, message: String },
    #[error(transparent)]
    Connect(#[from] crate::nats::Error),
    /// Nobody subscribes to the subject: the request was never delivered.
    #[error("{0}")]
    NoResponders(String),
    #[error("NATS request failed: {0}")]
    Nats(String),
    #[error("unreadable reply: {0}")]
    Decode(String),
}

impl ClientError {
    /// The wire code this error stands for, for exit statuses and `--json` output.
    pub fn code(&self) -> ErrorKind {
        match self {
            ClientError::Server(e) => e.code,
            ClientError::Conflict { .. }
            | ClientError::LockHeld { .. }
            | ClientError::LockWait { .. }
            | ClientError::Fence { .. } => ErrorKind::Conflict,
            ClientError::Compacted { .. } => ErrorKind::Compacted,
            ClientError::Connect(_) | ClientError::NoResponders(_) => ErrorKind::ClusterNotReady,
            ClientError::Nats(_) => ErrorKind::Timeout,
            ClientError::Decode(_) => ErrorKind::Internal,
        }
    }

    /// The error object for `--json` output: the server's as it sent it (with `reason` and
    /// the current state for a `conflict`), or a code and message for a local failure.
    pub fn to_json(&self) -> Value {
        match self {
            ClientError::Server(e) => serde_json::to_value(e).unwrap_or_default(),
            ClientError::Conflict {
                reason,
                revision,
                value,
                key,
                message,
            } => {
                let mut v = serde_json::json!({"code": ErrorKind::Conflict, "reason": reason,
                    "message": message});
                if let Some(r) = revision {
                    v["revision"] = (*r).into();
                }
                if let Some(x) = value {
                    v["value"] = (**x).clone();
                }
                if let Some(k) = key {
                    v["key"] = k.as_str().into();
                }
                v
            }
            ClientError::Compacted { compact_revision } => serde_json::json!({
                "code": ErrorKind::Compacted, "compact_revision": compact_revision,
                "message": self.message()}),
            ClientError::LockHeld { fence, message } => serde_json::json!({
                "code": ErrorKind::Conflict, "reason": "lock_held", "fence": fence,
                "message": message}),
            ClientError::LockWait { message } => serde_json::json!({
                "code": ErrorKind::Conflict, "reason": "lock_wait", "message": message}),
            ClientError::Fence { current, message } => serde_json::json!({
                "code": ErrorKind::Conflict, "reason": "fence", "fence": current,
                "message": message}),
            other => serde_json::json!({"code": other.code(), "message": other.message()}),
        }
    }

    /// The message without the code in front.
    pub fn message(&self) -> String {
        match self {
            ClientError::Server(e) => e.message.clone(),
            ClientError::Conflict { message, .. }
            | ClientError::LockHeld { message, .. }
            | ClientError::LockWait { message }
            | ClientError::Fence { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// The key's current revision when this is a `conflict` with reason `revision` (an
    /// `if_revision` that did not hold; 0 when the key is absent), else `None`.
    pub fn conflict_revision(&self) -> Option<u64> {
        match self {
            ClientError::Conflict {
                reason, revision, ..
            } if reason == "revision" => Some(revision.unwrap_or(0)),
            _ => None,
        }
    }

    /// The reason of a `conflict` (`revision`, `bound`, `not_integer`, ...), else `None`.
    pub fn conflict_reason(&self) -> Option<&str> {
        match self {
            ClientError::Conflict { reason, .. } => Some(reason),
            ClientError::LockHeld { .. } => Some("lock_held"),
            ClientError::LockWait { .. } => Some("lock_wait"),
            ClientError::Fence { .. } => Some("fence"),
            _ => None,
        }
    }

    /// The lock's current fence carried by a `fence` or `lock_held` conflict (0: the lock
    /// is free), else `None`.
    pub fn conflict_fence(&self) -> Option<u64> {
        match self {
            ClientError::LockHeld { fence, .. } => Some(*fence),
            ClientError::Fence { current, .. } => Some(*current),
            _ => None,
        }
    }

    /// Whether the cluster answered `not_found` (an absent key, or a lease that never
    /// existed or has ended).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Server(e) if e.code == ErrorKind::NotFound)
    }

    /// The key's current value carried by a `conflict` (an `incr` that hit a bound or found
    /// no integer; an `if_revision` write whose key holds at most 4 KiB), else `None`.
    pub fn conflict_value(&self) -> Option<&Value> {
        match self {
            ClientError::Conflict { value, .. } => value.as_deref(),
            _ => None,
        }
    }
}

/// A key's value and the revision that set it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Versioned {
    pub value: Value,
    pub revision: u64,
}

/// One key of a scan page, with its metadata (see [`KeyValue`]; 0 from a cluster that
/// predates key metadata).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ScanItem {
    pub key: String,
    pub value: Value,
    pub revision: u64,
    #[serde(default)]
    pub create_revision: u64,
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub lease: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ScanPage {
    pub items: Vec<ScanItem>,
    pub more: bool,
    /// The revision the store stood at when the page was read (0 from an older cluster).
    #[serde(default)]
    pub store_revision: u64,
}

/// One page of `token.list`: tokens in id order, and whether more follow.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TokenPage {
    pub tokens: Vec<Value>,
    /// Absent from servers that do not page: their one reply held every token.
    #[serde(default)]
    pub more: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadConsistency {
    Linearizable,
    Stale,
}

#[derive(Clone)]
pub struct Client {
    nats: async_nats::Client,
    subjects: Subjects,
    timeout: Duration,
    token: Option<String>,
}

impl Client {
    pub async fn connect(nats: &NatsConfig, timeout: Duration) -> Result<Client, ClientError> {
        let client =
            crate::nats::connect(nats, "concord-cli", timeout.max(Duration::from_secs(2))).await?;
        Ok(Client::from_nats(client, &nats.subject_prefix, timeout))
    }

    pub fn from_nats(nats: async_nats::Client, prefix: &str, timeout: Duration) -> Client {
        Client {
            nats,
            subjects: Subjects::new(prefix, "-"),
            timeout,
            token: None,
        }
    }

    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self
    }

    /// The same client with another per-request timeout (e.g. for a long backup).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Any `P.node.<id>.admin.<op>` request, retried like [`Client::call`].
    pub async fn node_admin(
        &self,
        node: u64,
        op: AdminOp,
        body: Value,
    ) -> Result<Value, ClientError> {
        self.call(self.subjects.node_admin(node, op), body).await
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// `P.node.<id>.admin.snapshot`: that node builds a snapshot; the reply names its index.
    pub async fn node_snapshot(&self, node: u64) -> Result<Value, ClientError> {
        self.call_once(
            self.subjects.node_admin(node, AdminOp::Snapshot),
            &serde_json::json!({}),
            self.timeout,
        )
        .await
    }

    /// Puts `value` at `key` with a fresh `request_id`; returns the revision.
    pub async fn put(&self, key: &str, value: &Value) -> Result<u64, ClientError> {
        self.put_with_id(key, value, Uuid::new_v4()).await
    }

    /// [`Client::put`] with the caller's `request_id`: the same id and body again (e.g. a
    /// retry of a put that ended in `timeout`) applies at most once within the cluster's
    /// `idempotency.window`.
    pub async fn put_with_id(
        &self,
        key: &str,
        value: &Value,
        request_id: Uuid,
    ) -> Result<u64, ClientError> {
        let body = cas::put_body(key, value, None, request_id);
        let r = self
            .send(self.subjects.kv(KvOp::Put), &body, Retry::Idempotent)
            .await?;
        revision(&r)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Versioned>, ClientError> {
        self.get_with(key, ReadConsistency::Linearizable, None)
            .await
    }

    pub async fn get_with(
        &self,
        key: &str,
        consistency: ReadConsistency,
        min_revision: Option<u64>,
    ) -> Result<Option<Versioned>, ClientError> {
        let kv = self.get_kv_with(key, consistency, min_revision).await?;
        Ok(kv.map(|kv| Versioned {
            value: kv.value,
            revision: kv.revision,
        }))
    }

    /// Deletes `key` with a fresh `request_id`. Returns whether the key existed, and the
    /// revision after the delete.
    pub async fn delete(&self, key: &str) -> Result<(bool, u64), ClientError> {
        self.delete_with_id(key, Uuid::new_v4()).await
    }

    /// [`Client::delete`] with the caller's `request_id` (see [`Client::put_with_id`]).
    pub async fn delete_with_id(
        &self,
        key: &str,
        request_id: Uuid,
    ) -> Result<(bool, u64), ClientError> {
        let body = cas::delete_body(key, None, request_id);
        let r = self
            .send(self.subjects.kv(KvOp::Delete), &body, Retry::Idempotent)
            .await?;
        cas::delete_reply(&r)
    }

    pub async fn scan(
        &self,
        prefix: &str,
        limit: Option<usize>,
        after: Option<&str>,
        consistency: ReadConsistency,
    ) -> Result<ScanPage, ClientError> {
        let mut body = serde_json::json!({"prefix": prefix});
        if let Some(l) = limit {
            body["limit"] = l.into();
        }
        if let Some(a) = after {
            body["after"] = a.into();
        }
        if consistency == ReadConsistency::Stale {
            body["consistency"] = "stale".into();
        }
        let retry = match consistency {
            ReadConsistency::Linearizable => Retry::Idempotent,
            ReadConsistency::Stale => Retry::Refused,
        };
        let v = self
            .send(self.subjects.kv(KvOp::Scan), &body, retry)
            .await?;
        serde_json::from_value(v).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Every key under `prefix`, following `more` from page to page.
    pub async fn scan_all(&self, prefix: &str) -> Result<Vec<ScanItem>, ClientError> {
        Ok(self.scan_pages(prefix).await?.0)
    }

    /// Every key under `prefix`, page after page, and the first page's `store_revision`
    /// (where a watch that follows the list starts from).
    pub(crate) async fn scan_pages(
        &self,
        prefix: &str,
    ) -> Result<(Vec<ScanItem>, u64), ClientError> {
        let mut items: Vec<ScanItem> = Vec::new();
        let mut first_store_revision = None;
        loop {
            let after = items.last().map(|i| i.key.clone());
            let page = self
                .scan(
                    prefix,
                    None,
                    after.as_deref(),
                    ReadConsistency::Linearizable,
                )
                .await?;
            first_store_revision.get_or_insert(page.store_revision);
            let moved = !page.items.is_empty();
            items.extend(page.items);
            if !page.more {
                return Ok((items, first_store_revision.unwrap_or(0)));
            }
            // A page that says more but holds nothing would ask for itself forever.
            if !moved {
                return Err(ClientError::Decode(
                    "scan said more but its page was empty".into(),
                ));
            }
        }
    }

    /// `P.admin.status`, answered by some voter of the cluster.
    pub async fn status(&self) -> Result<Value, ClientError> {
        self.call(self.subjects.admin(AdminOp::Status), serde_json::json!({}))
            .await
    }

    /// `P.node.<id>.admin.status`: that node's own view.
    pub async fn node_status(&self, node: u64) -> Result<Value, ClientError> {
        self.call_once(
            self.subjects.node_admin(node, AdminOp::Status),
            &serde_json::json!({}),
            self.timeout,
        )
        .await
    }

    /// Any `P.admin.<op>` request; the reply when it is `ok`.
    pub async fn admin(&self, op: AdminOp, body: Value) -> Result<Value, ClientError> {
        self.call(self.subjects.admin(op), body).await
    }

    /// One page of `P.admin.token.list`: up to `limit` tokens (the server's default page
    /// when `None`) whose ids come after `after`.
    pub async fn token_list_page(
        &self,
        limit: Option<usize>,
        after: Option<&str>,
    ) -> Result<TokenPage, ClientError> {
        let mut body = serde_json::json!({});
        if let Some(l) = limit {
            body["limit"] = l.into();
        }
        if let Some(a) = after {
            body["after"] = a.into();
        }
        let v = self.admin(AdminOp::TokenList, body).await?;
        serde_json::from_value(v).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Every token, following `more` from page to page.
    pub async fn token_list(&self) -> Result<Vec<Value>, ClientError> {
        let mut out: Vec<Value> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.token_list_page(None, after.as_deref()).await?;
            let last = page.tokens.last().and_then(|t| t["id"].as_str());
            let last = last.map(str::to_string);
            out.extend(page.tokens);
            if !page.more {
                return Ok(out);
            }
            // Ids only grow from page to page: a page that does not move on is a server bug,
            // and following it would loop forever.
            match last {
                Some(id) if after.as_deref().is_none_or(|a| id.as_str() > a) => after = Some(id),
                _ => {
                    return Err(ClientError::Decode(
                        "token.list said more but its page did not move past the last id".into(),
                    ))
                }
            }
        }
    }

    pub async fn members(&self) -> Result<Value, ClientError> {
        self.call(self.subjects.admin(AdminOp::Members), serde_json::json!({}))
            .await
    }

    /// Any write request (e.g. an operation this client has no method for) to `subject`:
    /// `body` must be a JSON object; it gets a fresh `request_id` unless it names one (not
    /// `null`), and is retried like a put (see the module doc). The reply when it is `ok`.
    pub async fn write(&self, subject: String, mut body: Value) -> Result<Value, ClientError> {
        let Some(fields) = body.as_object_mut() else {
            return Err(ClientError::Server(crate::error::bad_request(
                "a write's body must be a JSON object",
            )));
        };
        // `null` would mean "no id" to the server, and a write without one must not be
        // retried after `timeout`: it gets a fresh id like an absent one.
        let id = fields.entry("request_id").or_insert(Value::Null);
        if id.is_null() {
            *id = Value::String(Uuid::new_v4().to_string());
        }
        self.send(subject, &body, Retry::Idempotent).await
    }

    /// One request, retried only on refusals (`cluster_not_ready`, `busy`, no responders)
    /// until the timeout: right for any request, including writes without a `request_id`.
    pub async fn call(&self, subject: String, body: Value) -> Result<Value, ClientError> {
        self.send(subject, &body, Retry::Refused).await
    }

    /// Sends `body` until it is answered, `retry` allows no more attempts, or the deadline
    /// (`self.timeout` from now) passes. The loop ends: every pause is at least 12 ms, and
    /// none starts without time left.
    async fn send(
        &self,
        subject: String,
        body: &Value,
        retry: Retry,
    ) -> Result<Value, ClientError> {
        let total = self.timeout;
        let deadline = Instant::now() + total;
        let mut earlier_unknown = false;
        let mut retries = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = retry.attempt_timeout(total, remaining);
            let err = match self.call_once(subject.clone(), body, attempt).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match retry.pause(&err, retries, left, retry::jitter()) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return Err(retry::final_error(err, earlier_unknown)),
            }
            earlier_unknown |= retry::outcome_unknown(&err);
            retries = retries.saturating_add(1);
        }
    }

    async fn call_once(
        &self,
        subject: String,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER_TIMEOUT_MS,
            timeout.as_millis().max(1).to_string().as_str(),
        );
        if let Some(t) = &self.token {
            headers.insert("Authorization", format!("Bearer {t}").as_str());
        }
        let payload = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        // The server answers just before the header deadline; wait a little longer for it.
        let request = async_nats::Request::new()
            .payload(payload.into())
            .headers(headers)
            .timeout(Some(timeout + Duration::from_millis(250)));
        let reply = self
            .nats
            .send_request(subject.clone(), request)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => ClientError::NoResponders(format!(
                    "no node answers on {subject}: is the cluster up, with this subject prefix?"
                )),
                RequestErrorKind::TimedOut => ClientError::Server(WireError::new(
                    ErrorKind::Timeout,
                    format!("no reply on {subject} within {} ms", timeout.as_millis()),
                )),
                _ => ClientError::Nats(e.to_string()),
            })?;
        decode_reply(&reply.payload)
    }
}

/// A reply's body: the reply when it is `ok`, else its error.
fn decode_reply(payload: &[u8]) -> Result<Value, ClientError> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| ClientError::Decode(e.to_string()))?;
    if v.get("ok").and_then(Value::as_bool) == Some(true) {
        return Ok(v);
    }
    #[derive(Deserialize)]
    struct ErrReply {
        error: WireError,
    }
    let code = v["error"]["code"].as_str();
    match (ErrReply::deserialize(&v), code) {
        (Ok(e), _) if e.error.code == ErrorKind::Conflict => Err(conflict(e.error, &v)),
        (Ok(e), _) if e.error.code == ErrorKind::Compacted => Err(ClientError::Compacted {
            compact_revision: e.error.compact_revision.unwrap_or(0),
        }),
        (Ok(e), _) => Err(ClientError::Server(e.error)),
        // A code newer than this client (e.g. `conflict` from a newer cluster): final, never
        // retried, and shown as the cluster sent it.
        (Err(_), Some(code)) => Err(ClientError::Decode(format!(
            "the cluster answered with error code '{code}', unknown to this client: {}",
            v["error"]["message"].as_str().unwrap_or("")
        ))),
        (Err(e), None) => Err(ClientError::Decode(format!(
            "reply is neither ok nor an error: {e}"
        ))),
    }
}

/// A `conflict` error: the lock reasons as their own variants, every other reason as
/// [`ClientError::Conflict`].
fn conflict(e: WireError, v: &Value) -> ClientError {
    let fence = e.fence.unwrap_or(0);
    match e.reason.as_deref() {
        Some("lock_held") => ClientError::LockHeld {
            fence,
            message: e.message,
        },
        Some("lock_wait") => ClientError::LockWait { message: e.message },
        Some("fence") => ClientError::Fence {
            current: fence,
            message: e.message,
        },
        _ => ClientError::Conflict {
            reason: e.reason.unwrap_or_default(),
            revision: e.revision,
            // `null` is a value the key may hold: present, unlike an absent field.
            value: v["error"].get("value").cloned().map(Box::new),
            key: e.key,
            message: e.message,
        },
    }
}

fn revision(v: &Value) -> Result<u64, ClientError> {
    v.get("revision")
        .and_then(Value::as_u64)
        .ok_or_else(|| ClientError::Decode("reply has no revision".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_decode_to_values_errors_and_final_unknown_codes() {
        let ok = decode_reply(br#"{"ok":true,"revision":3}"#).expect("an ok reply");
        assert_eq!(revision(&ok).ok(), Some(3));
        let busy = decode_reply(br#"{"ok":false,"error":{"code":"busy","message":"m"}}"#);
        assert!(matches!(busy, Err(ClientError::Server(e)) if e.code == ErrorKind::Busy));
        let newer =
            br#"{"ok":false,"error":{"code":"conflict","reason":"request_id","message":"used"}}"#;
        // Unknown to this build (a `Decode` error) or known (a `Server` error): final either way.
        match decode_reply(newer) {
            Err(e) => {
                assert!(e.to_string().contains("conflict"), "{e}");
                assert!(!Retry::Idempotent.allows(&e) && !Retry::Refused.allows(&e));
            }
            Ok(v) => panic!("a conflict decoded as ok: {v}"),
        }
        assert!(matches!(
            decode_reply(b"{\"ok\":false}"),
            Err(ClientError::Decode(_))
        ));
        assert!(matches!(
            decode_reply(b"not json"),
            Err(ClientError::Decode(_))
        ));
    }
}
