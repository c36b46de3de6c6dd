//! `P.kv.txn`: its JSON body into a [`Txn`], the limits and rules a txn is held to before it
//! is proposed (what is decided at apply is in `store::apply::txn`), and its reply.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::validate::{self, Limits};
use crate::command::{CmpOp, Compare, Found, Target, Txn, TxnApplied, TxnOp, TxnResult};
use crate::error::{bad_request, invalid_key, value_too_large, WireError};
use crate::limits::{excerpt, MAX_TXN_COMPARES};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnBody {
    #[serde(default)]
    compare: Vec<CompareBody>,
    #[serde(default)]
    success: Vec<OpBody>,
    #[serde(default)]
    failure: Vec<OpBody>,
    pub token: Option<String>,
    pub timeout_ms: Option<u64>,
    pub request_id: Option<uuid::Uuid>,
    fence: Option<super::coord_codec::FenceBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareBody {
    key: String,
    target: Target,
    op: CmpOp,
    value: Box<RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum OpBody {
    Put(PutOp),
    Delete(KeyOp),
    DeletePrefix(PrefixOp),
    Get(KeyOp),
    Incr(IncrOp),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutOp {
    key: String,
    value: Box<RawValue>,
    lease: Option<u64>,
    ttl_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyOp {
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrefixOp {
    prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncrOp {
    key: String,
    #[serde(default = "one")]
    by: i64,
}

fn one() -> i64 {
    1
}

impl TxnBody {
    /// The txn as the log carries it, after the checks that need no limits.
    pub fn txn(self) -> Result<Txn, WireError> {
        let compare = self
            .compare
            .into_iter()
            .map(CompareBody::compare)
            .collect::<Result<_, _>>()?;
        let branch = |ops: Vec<OpBody>| -> Result<Vec<TxnOp>, WireError> {
            ops.into_iter().map(OpBody::op).collect()
        };
        Ok(Txn {
            compare,
            success: branch(self.success)?,
            failure: branch(self.failure)?,
            fence: self
                .fence
                .map(super::coord_codec::FenceBody::fence)
                .transpose()?,
        })
    }
}

impl CompareBody {
    fn compare(self) -> Result<Compare, WireError> {
        let value = self.value.get();
        let target = self.target;
        match target {
            Target::Value => validate::value_depth(value)?,
            Target::Exists => {
                if serde_json::from_str::<bool>(value).is_err() {
                    return Err(bad_request(format!(
                        "compare on `exists` of key {:?} takes true or false, not {}",
                        excerpt(&self.key),
                        excerpt(value)
                    )));
                }
                if !matches!(self.op, CmpOp::Eq | CmpOp::Ne) {
                    return Err(bad_request("compare on `exists` takes == or != only"));
                }
            }
            _ => {
                if serde_json::from_str::<u64>(value).is_err() {
                    return Err(bad_request(format!(
                        "compare on {:?} of key {:?} takes a non-negative integer, not {}",
                        target,
                        excerpt(&self.key),
                        excerpt(value)
                    )));
                }
            }
        }
        Ok(Compare {
            key: self.key,
            target,
            op: self.op,
            value: value.to_string(),
        })
    }
}

impl OpBody {
    fn op(self) -> Result<TxnOp, WireError> {
        Ok(match self {
            OpBody::Put(p) => {
                if p.ttl_ms.is_some() {
                    return Err(bad_request(
                        "ttl_ms on a txn put is not taken: grant a lease (lease.grant) and name it with `lease`",
                    ));
                }
                if let Some(id) = p.lease {
                    super::coord_codec::check_lease_id(id)?;
                }
                TxnOp::Put {
                    key: p.key,
                    value: p.value.get().to_string(),
                    lease: p.lease,
                    ttl_ms: None,
                }
            }
            OpBody::Delete(k) => TxnOp::Delete { key: k.key },
            OpBody::DeletePrefix(p) => TxnOp::DeletePrefix { prefix: p.prefix },
            OpBody::Get(k) => TxnOp::Get { key: k.key },
            OpBody::Incr(i) => TxnOp::Incr {
                key: i.key,
                by: i.by,
            },
        })
    }
}

/// The limits and rules of a txn: compares and ops per branch, keys, values, the entry's
/// size, and each key written at most once per branch.
pub fn validate(txn: &Txn, limits: &Limits) -> Result<(), WireError> {
    if txn.compare.len() > MAX_TXN_COMPARES {
        return Err(bad_request(format!(
            "the txn has {} compares, the limit is {MAX_TXN_COMPARES}",
            txn.compare.len()
        )));
    }
    for c in &txn.compare {
        validate::key(&c.key)?;
    }
    for (name, ops) in [("success", &txn.success), ("failure", &txn.failure)] {
        if ops.len() > limits.max_txn_ops {
            return Err(bad_request(format!(
                "the txn's {name} branch has {} ops, the limit is {} (limits.max_txn_ops)",
                ops.len(),
                limits.max_txn_ops
            )));
        }
        branch(name, ops, limits)?;
    }
    let size = txn.approximate_size() + 64;
    if size > limits.max_entry_bytes {
        return Err(value_too_large(format!(
            "the txn's entry would be about {size} bytes, over the {} that fit in one NATS message",
            limits.max_entry_bytes
        )));
    }
    Ok(())
}

/// One branch's ops: valid keys and values, and no key written twice (by name, or under a
/// prefix the branch deletes).
fn branch(name: &str, ops: &[TxnOp], limits: &Limits) -> Result<(), WireError> {
    let mut written = BTreeSet::new();
    let mut prefixes: Vec<&str> = Vec::new();
    for op in ops {
        match op {
            TxnOp::Put { key, value, .. } => {
                validate::key(key)?;
                validate::writable(key)?;
                validate::value(value, limits)?;
            }
            TxnOp::Delete { key } | TxnOp::Incr { key, .. } => {
                validate::key(key)?;
                validate::writable(key)?;
            }
            TxnOp::Get { key } => validate::key(key)?,
            TxnOp::DeletePrefix { prefix } => {
                validate::prefix(prefix)?;
                validate::writable(prefix)?;
                if prefix.is_empty() {
                    return Err(invalid_key(
                        "a txn's delete_prefix needs a non-empty prefix (P.kv.delete with \"all\": true deletes every key)",
                    ));
                }
                prefixes.push(prefix);
            }
        }
        let key = match op {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Incr { key, .. } => key,
            TxnOp::Get { .. } | TxnOp::DeletePrefix { .. } => continue,
        };
        if !written.insert(key.as_str()) {
            return Err(bad_request(format!(
                "the txn's {name} branch writes key {:?} twice; a branch may write a key once",
                excerpt(key)
            )));
        }
    }
    for (i, p) in prefixes.iter().enumerate() {
        let overlaps = prefixes[..i]
            .iter()
            .any(|q| p.starts_with(q) || q.starts_with(p));
        let under = written.iter().find(|k| k.starts_with(p));
        if overlaps || under.is_some() {
            return Err(bad_request(format!(
                "the txn's {name} branch writes under prefix {:?} twice (another write or delete_prefix there); a branch may write a key once",
                excerpt(p)
            )));
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct TxnReply<'a> {
    ok: bool,
    succeeded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    store_revision: Option<u64>,
    results: Vec<ResultOut<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum ResultOut<'a> {
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
    Get(GetOut<'a>),
    Incr {
        value: i64,
    },
}

#[derive(Serialize)]
struct GetOut<'a> {
    found: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    item: Option<FoundOut<'a>>,
}

#[derive(Serialize)]
struct FoundOut<'a> {
    value: &'a RawValue,
    revision: u64,
    create_revision: u64,
    version: u64,
    lease: u64,
}

/// The reply of an applied txn: `revision` when its branch wrote, `store_revision` when not.
pub fn encode(t: &TxnApplied) -> Result<Vec<u8>, WireError> {
    let results = t
        .results
        .iter()
        .map(|r| {
            Ok(match r {
                TxnResult::Put { revision } => ResultOut::Put {
                    revision: *revision,
                },
                TxnResult::Delete { deleted } => ResultOut::Delete { deleted: *deleted },
                TxnResult::DeletePrefix { count, more } => ResultOut::DeletePrefix {
                    deleted: *count > 0,
                    count: *count,
                    more: *more,
                },
                TxnResult::Get(found) => ResultOut::Get(GetOut {
                    found: found.is_some(),
                    item: found.as_ref().map(found_out).transpose()?,
                }),
                TxnResult::Incr { value } => ResultOut::Incr { value: *value },
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    Ok(super::codec::encode_ok(&TxnReply {
        ok: true,
        succeeded: t.succeeded,
        revision: t.revision,
        store_revision: t.revision.is_none().then_some(t.store_revision),
        results,
    }))
}

fn found_out(f: &Found) -> Result<FoundOut<'_>, WireError> {
    Ok(FoundOut {
        value: serde_json::from_str(&f.value)
            .map_err(|_| crate::error::internal("stored value is not JSON"))?,
        revision: f.revision,
        create_revision: f.create_revision,
        version: f.version,
        lease: f.lease,
    })
}
