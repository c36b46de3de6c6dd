//! Transactions for [`Client`]: a typed builder for the body of `P.kv.txn` (compares, the
//! ops of the `success` and `failure` branches) and a typed reply.
//!
//! ```no_run
//! # async fn switch(client: &concord::Client) -> Result<(), concord::client::ClientError> {
//! use concord::client::{Compare, Txn, TxnOp};
//! use serde_json::json;
//! let txn = Txn::new()
//!     .when(Compare::revision("cfg/version").eq(5))
//!     .and(Compare::exists("cfg/lock").is(false))
//!     .then(TxnOp::put("cfg/version", json!(6)))
//!     .then(TxnOp::put("cfg/mode", json!("blue")))
//!     .otherwise(TxnOp::get("cfg/version"));
//! let reply = client.txn(&txn).await?;
//! println!("succeeded: {}", reply.succeeded);
//! # Ok(()) }
//! ```
//!
//! The compares are decided by the cluster when the txn applies, in log order: a compare
//! that does not hold is not an error (`succeeded: false`, the `failure` branch ran). Only an
//! `incr` op that finds no integer or leaves the i64 range makes the whole txn a
//! [`ClientError::Conflict`] (with the op's `key`), and nothing is written. A txn is a write:
//! it carries a `request_id` and is retried like [`Client::put`].

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{Client, ClientError, KeyValue, Retry};
use crate::subjects::KvOp;

/// What a compare looks at, and its operator: the types the log carries, whose serde names
/// are the wire's.
pub use crate::command::{CmpOp, Target};

/// One condition of a txn. A missing key has revision, create revision, version and lease
/// 0, value `null`, and does not exist.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Compare {
    pub key: String,
    pub target: Target,
    pub op: CmpOp,
    pub value: Value,
}

/// A compare under construction on a numeric target (revision, create revision, version,
/// lease): finish it with an operator and a number.
#[derive(Debug, Clone)]
pub struct OnNumber {
    key: String,
    target: Target,
}

/// A compare under construction on a key's value: `==`/`!=` compare JSON values; the
/// ordering operators hold only between two numbers or two strings.
#[derive(Debug, Clone)]
pub struct OnValue {
    key: String,
}

/// A compare under construction on whether a key exists.
#[derive(Debug, Clone)]
pub struct OnExists {
    key: String,
}

impl Compare {
    /// The revision of the write that last set the key (what `if_revision` compares).
    pub fn revision(key: impl Into<String>) -> OnNumber {
        OnNumber::new(key, Target::Revision)
    }

    /// The revision that created the key since it last did not exist.
    pub fn create_revision(key: impl Into<String>) -> OnNumber {
        OnNumber::new(key, Target::CreateRevision)
    }

    /// The key's version: 1 at creation, +1 per write.
    pub fn version(key: impl Into<String>) -> OnNumber {
        OnNumber::new(key, Target::Version)
    }

    /// The key's lease (0 = none).
    pub fn lease(key: impl Into<String>) -> OnNumber {
        OnNumber::new(key, Target::Lease)
    }

    /// The key's value (JSON; `null` when the key is absent).
    pub fn value(key: impl Into<String>) -> OnValue {
        OnValue { key: key.into() }
    }

    /// Whether the key exists.
    pub fn exists(key: impl Into<String>) -> OnExists {
        OnExists { key: key.into() }
    }
}

impl OnNumber {
    fn new(key: impl Into<String>, target: Target) -> OnNumber {
        OnNumber {
            key: key.into(),
            target,
        }
    }

    fn with(self, op: CmpOp, n: u64) -> Compare {
        Compare {
            key: self.key,
            target: self.target,
            op,
            value: n.into(),
        }
    }

    pub fn eq(self, n: u64) -> Compare {
        self.with(CmpOp::Eq, n)
    }
    pub fn ne(self, n: u64) -> Compare {
        self.with(CmpOp::Ne, n)
    }
    pub fn lt(self, n: u64) -> Compare {
        self.with(CmpOp::Lt, n)
    }
    pub fn le(self, n: u64) -> Compare {
        self.with(CmpOp::Le, n)
    }
    pub fn gt(self, n: u64) -> Compare {
        self.with(CmpOp::Gt, n)
    }
    pub fn ge(self, n: u64) -> Compare {
        self.with(CmpOp::Ge, n)
    }
}

impl OnValue {
    fn with(self, op: CmpOp, v: impl Into<Value>) -> Compare {
        Compare {
            key: self.key,
            target: Target::Value,
            op,
            value: v.into(),
        }
    }

    pub fn eq(self, v: impl Into<Value>) -> Compare {
        self.with(CmpOp::Eq, v)
    }
    pub fn ne(self, v: impl Into<Value>) -> Compare {
        self.with(CmpOp::Ne, v)
    }
    pub fn lt(self, v: impl Into<Value>) -> Compare {
        self.with(CmpOp::Lt, v)
    }
    pub fn le(self, v: impl Into<Value>) -> Compare {
        self.with(CmpOp::Le, v)
    }
    pub fn gt(self, v: impl Into<Value>) -> Compare {
        self.with(CmpOp::Gt, v)
    }
    pub fn ge(self, v: impl Into<Value>) -> Compare {
        self.with(CmpOp::Ge, v)
    }
}

impl OnExists {
    /// Holds when the key's existence is `exists`.
    pub fn is(self, exists: bool) -> Compare {
        Compare {
            key: self.key,
            target: Target::Exists,
            op: CmpOp::Eq,
            value: exists.into(),
        }
    }
}

/// One op of a txn branch. Later ops see the writes of earlier ones; a branch may write a
/// key only once.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnOp {
    Put { key: String, value: Value },
    Delete { key: String },
    DeletePrefix { prefix: String },
    Get { key: String },
    Incr { key: String, by: i64 },
}

impl TxnOp {
    pub fn put(key: impl Into<String>, value: impl Into<Value>) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
        }
    }
    pub fn delete(key: impl Into<String>) -> TxnOp {
        TxnOp::Delete { key: key.into() }
    }
    pub fn delete_prefix(prefix: impl Into<String>) -> TxnOp {
        TxnOp::DeletePrefix {
            prefix: prefix.into(),
        }
    }
    pub fn get(key: impl Into<String>) -> TxnOp {
        TxnOp::Get { key: key.into() }
    }
    pub fn incr(key: impl Into<String>, by: i64) -> TxnOp {
        TxnOp::Incr {
            key: key.into(),
            by,
        }
    }
}

/// A txn body: every compare must hold for `success` to run; otherwise `failure` runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
    /// The txn applies only under this fence (nothing runs otherwise: `conflict`, `fence`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence: Option<super::Fence>,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Adds a compare (the same as [`Txn::and`]; reads better first).
    pub fn when(self, c: Compare) -> Txn {
        self.and(c)
    }

    /// Adds a compare: all must hold.
    pub fn and(mut self, c: Compare) -> Txn {
        self.compare.push(c);
        self
    }

    /// Adds an op to the `success` branch.
    pub fn then(mut self, op: TxnOp) -> Txn {
        self.success.push(op);
        self
    }

    /// Adds an op to the `failure` branch.
    pub fn otherwise(mut self, op: TxnOp) -> Txn {
        self.failure.push(op);
        self
    }

    /// Runs the txn only under `fence` (the holder's fence of a lock).
    pub fn fenced(mut self, fence: super::Fence) -> Txn {
        self.fence = Some(fence);
        self
    }

    /// The wire body with `request_id`.
    pub(crate) fn body(&self, request_id: Uuid) -> Result<Value, ClientError> {
        let mut body =
            serde_json::to_value(self).map_err(|e| ClientError::Decode(e.to_string()))?;
        body["request_id"] = request_id.to_string().into();
        Ok(body)
    }
}

/// The result of one op of the branch that ran, in the order of the ops.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "ResultWire")]
pub enum TxnResult {
    Put {
        revision: u64,
    },
    Delete {
        deleted: bool,
    },
    DeletePrefix {
        deleted: bool,
        count: u64,
        more: bool,
    },
    /// The key with its metadata as the txn saw it (after the branch's earlier writes), or
    /// `None` when absent. `store_revision` is 0 here: the reply carries it once.
    Get(Option<KeyValue>),
    Incr {
        value: i64,
    },
}

/// A txn's reply.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TxnReply {
    /// Whether every compare held (`success` ran) or not (`failure` ran).
    pub succeeded: bool,
    /// The one revision of every write of the branch, when it wrote.
    #[serde(default)]
    pub revision: Option<u64>,
    /// Where the store stood, when the branch wrote nothing.
    #[serde(default)]
    pub store_revision: Option<u64>,
    pub results: Vec<TxnResult>,
}

impl TxnReply {
    /// Parses an `ok` txn reply.
    pub fn from_reply(reply: Value) -> Result<TxnReply, ClientError> {
        serde_json::from_value(reply).map_err(|e| ClientError::Decode(format!("txn reply: {e}")))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ResultWire {
    Put {
        revision: u64,
    },
    Delete {
        deleted: bool,
    },
    DeletePrefix {
        deleted: bool,
        count: u64,
        more: bool,
    },
    Get(GetWire),
    Incr {
        value: i64,
    },
}

#[derive(Deserialize)]
struct GetWire {
    found: bool,
    #[serde(default)]
    value: Value,
    revision: Option<u64>,
    #[serde(default)]
    create_revision: u64,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    lease: u64,
}

impl TryFrom<ResultWire> for TxnResult {
    type Error = String;

    fn try_from(w: ResultWire) -> Result<TxnResult, String> {
        Ok(match w {
            ResultWire::Put { revision } => TxnResult::Put { revision },
            ResultWire::Delete { deleted } => TxnResult::Delete { deleted },
            ResultWire::DeletePrefix {
                deleted,
                count,
                more,
            } => TxnResult::DeletePrefix {
                deleted,
                count,
                more,
            },
            ResultWire::Get(g) if !g.found => TxnResult::Get(None),
            ResultWire::Get(g) => TxnResult::Get(Some(KeyValue {
                value: g.value,
                revision: g
                    .revision
                    .ok_or("a found get result has no revision".to_string())?,
                create_revision: g.create_revision,
                version: g.version,
                lease: g.lease,
                store_revision: 0,
            })),
            ResultWire::Incr { value } => TxnResult::Incr { value },
        })
    }
}

impl Client {
    /// Runs `txn` with a fresh `request_id`, retried like [`Client::put`]. A compare that
    /// does not hold is `Ok` with `succeeded: false`; see the module doc for the errors.
    pub async fn txn(&self, txn: &Txn) -> Result<TxnReply, ClientError> {
        self.txn_with_id(txn, Uuid::new_v4()).await
    }

    /// [`Client::txn`] with the caller's `request_id` (see [`Client::put_with_id`]).
    pub async fn txn_with_id(&self, txn: &Txn, request_id: Uuid) -> Result<TxnReply, ClientError> {
        let body = txn.body(request_id)?;
        let r = self
            .send(self.subjects.kv(KvOp::Txn), &body, Retry::Idempotent)
            .await?;
        TxnReply::from_reply(r)
    }

    /// A txn from a JSON body as the wire has it (e.g. read from a file): it gets a fresh
    /// `request_id` unless it names one, and is retried like [`Client::txn`]. The raw reply.
    pub async fn txn_json(&self, body: Value) -> Result<Value, ClientError> {
        self.write(self.subjects.kv(KvOp::Txn), body).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode_reply;
    use super::*;
    use serde_json::json;

    #[test]
    fn the_builder_makes_the_wire_body() {
        let id = Uuid::nil();
        let txn = Txn::new()
            .when(Compare::revision("a").eq(5))
            .and(Compare::exists("b").is(false))
            .and(Compare::value("c").ge("m"))
            .and(Compare::create_revision("a").gt(1))
            .and(Compare::version("a").ne(0))
            .and(Compare::lease("a").le(0))
            .and(Compare::value("n").lt(json!({"x": [1]})))
            .then(TxnOp::put("a", json!({"v": 2})))
            .then(TxnOp::incr("n", -2))
            .then(TxnOp::delete_prefix("tmp/"))
            .otherwise(TxnOp::get("a"))
            .otherwise(TxnOp::delete("b"));
        let body = txn.body(id).expect("a body");
        assert_eq!(
            body,
            json!({
                "compare": [
                    {"key": "a", "target": "revision", "op": "==", "value": 5},
                    {"key": "b", "target": "exists", "op": "==", "value": false},
                    {"key": "c", "target": "value", "op": ">=", "value": "m"},
                    {"key": "a", "target": "create_revision", "op": ">", "value": 1},
                    {"key": "a", "target": "version", "op": "!=", "value": 0},
                    {"key": "a", "target": "lease", "op": "<=", "value": 0},
                    {"key": "n", "target": "value", "op": "<", "value": {"x": [1]}},
                ],
                "success": [
                    {"put": {"key": "a", "value": {"v": 2}}},
                    {"incr": {"key": "n", "by": -2}},
                    {"delete_prefix": {"prefix": "tmp/"}},
                ],
                "failure": [{"get": {"key": "a"}}, {"delete": {"key": "b"}}],
                "request_id": id.to_string(),
            })
        );
        let empty = Txn::new().body(id).expect("a body");
        assert_eq!(
            empty,
            json!({"compare": [], "success": [], "failure": [], "request_id": id.to_string()})
        );
    }

    #[test]
    fn replies_decode_with_one_typed_result_per_op() {
        let r = decode_reply(
            br#"{"ok":true,"succeeded":true,"revision":12,"results":[
                {"put":{"revision":12}},
                {"delete":{"deleted":false}},
                {"delete_prefix":{"deleted":true,"count":3,"more":false}},
                {"get":{"found":true,"value":null,"revision":12,"create_revision":4,
                        "version":2,"lease":0}},
                {"get":{"found":false}},
                {"incr":{"value":-7}}]}"#,
        )
        .expect("ok");
        let reply = TxnReply::from_reply(r).expect("a txn reply");
        assert!(reply.succeeded);
        assert_eq!((reply.revision, reply.store_revision), (Some(12), None));
        let kv = KeyValue {
            value: Value::Null,
            revision: 12,
            create_revision: 4,
            version: 2,
            lease: 0,
            store_revision: 0,
        };
        assert_eq!(
            reply.results,
            vec![
                TxnResult::Put { revision: 12 },
                TxnResult::Delete { deleted: false },
                TxnResult::DeletePrefix {
                    deleted: true,
                    count: 3,
                    more: false
                },
                TxnResult::Get(Some(kv)),
                TxnResult::Get(None),
                TxnResult::Incr { value: -7 },
            ]
        );
        let failed = TxnReply::from_reply(json!({"ok": true, "succeeded": false,
            "store_revision": 30, "results": []}))
        .expect("a reply");
        assert!(!failed.succeeded);
        assert_eq!((failed.revision, failed.store_revision), (None, Some(30)));
    }

    #[test]
    fn malformed_replies_are_decode_errors() {
        let bad = [
            json!({"ok": true, "succeeded": true, "revision": 1}),
            json!({"ok": true, "succeeded": true, "results": [{"watch": {}}]}),
            json!({"ok": true, "succeeded": true, "results": [{"get": {"found": true}}]}),
            json!({"ok": true, "succeeded": true, "results": [{"incr": {"value": "1"}}]}),
            json!({"ok": true, "results": []}),
        ];
        for b in bad {
            assert!(
                matches!(TxnReply::from_reply(b.clone()), Err(ClientError::Decode(_))),
                "{b}"
            );
        }
    }

    #[test]
    fn an_incr_conflict_in_a_txn_names_its_key() {
        let e = decode_reply(
            br#"{"ok":false,"error":{"code":"conflict","reason":"not_integer","key":"n",
                 "value":"abc","revision":4,"message":"n is not an integer"}}"#,
        )
        .expect_err("a conflict");
        match &e {
            ClientError::Conflict {
                reason, key, value, ..
            } => {
                assert_eq!(
                    (reason.as_str(), key.as_deref()),
                    ("not_integer", Some("n"))
                );
                assert_eq!(value.as_deref(), Some(&json!("abc")));
            }
            other => panic!("not a conflict: {other:?}"),
        }
    }
}
