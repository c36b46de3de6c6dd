//! `P.kv.txn` at apply: the compares against the keys as this batch leaves them, then one
//! branch planned in an overlay (later ops see earlier writes) and written only if the whole
//! branch holds, every write at one revision.

use std::collections::BTreeMap;

use fjall::Slice;
use serde_json::Value;

use super::write::{self, Current};
use super::ApplyBatch;
use crate::command::{Applied, CmpOp, Compare, Found, Target, Txn, TxnApplied, TxnOp, TxnResult};
use crate::limits::{MAX_TXN_REPLY_BYTES, TXN_DELETE_PREFIX_KEYS};
use crate::store::keys::KeyMeta;
use crate::store::Error;

/// What a get result adds to the reply besides its value: the metadata fields and the JSON
/// around them.
const GET_RESULT_OVERHEAD: usize = 128;

pub(super) fn apply(b: &mut ApplyBatch, txn: Txn) -> Result<Applied, Error> {
    let mut succeeded = true;
    for c in &txn.compare {
        if !holds(c, write::current(b, &c.key)?.as_ref()) {
            succeeded = false;
            break;
        }
    }
    b.condition = Some(if succeeded { "held" } else { "failed" });
    let branch = if succeeded { txn.success } else { txn.failure };
    let mut plan = Plan {
        overlay: BTreeMap::new(),
        revision: b.revision + 1,
        results: Vec::with_capacity(branch.len()),
        reply_bytes: 0,
    };
    for op in branch {
        if let Some(refused) = plan.op(b, op)? {
            return Ok(refused);
        }
    }
    if plan.reply_bytes > MAX_TXN_REPLY_BYTES {
        return Ok(Applied::TooLarge {
            bytes: plan.reply_bytes as u64,
            limit: MAX_TXN_REPLY_BYTES as u64,
        });
    }
    let wrote = !plan.overlay.is_empty();
    if wrote {
        b.revision += 1;
        for (key, record) in plan.overlay {
            let old = b.writes.get(&key)?.map(write::Old::Record);
            match (record, old) {
                (Some((meta, json)), old) => write::set_record(b, key, &meta, &json, old),
                (None, Some(old)) => write::remove_record(b, key, old),
                (None, None) => {}
            }
        }
    }
    Ok(Applied::Txn(TxnApplied {
        succeeded,
        revision: wrote.then_some(b.revision),
        store_revision: b.revision,
        results: plan.results,
    }))
}

/// One branch being planned: what it writes (a record, or `None` for a removal) at
/// `revision`, its results so far, and the bytes its get results add to the reply.
struct Plan {
    overlay: BTreeMap<String, Option<(KeyMeta, Slice)>>,
    revision: u64,
    results: Vec<TxnResult>,
    reply_bytes: usize,
}

impl Plan {
    /// `key` as the branch's earlier ops leave it.
    fn seen(&self, b: &ApplyBatch, key: &str) -> Result<Option<Current>, Error> {
        match self.overlay.get(key) {
            Some(Some((meta, json))) => Ok(Some(Current {
                meta: *meta,
                stored: json.clone(),
                header: 0,
            })),
            Some(None) => Ok(None),
            None => write::current(b, key),
        }
    }

    /// Plans `key`'s new record, attached to `lease` (0: none).
    fn set(&mut self, key: String, old: Option<&Current>, json: Slice, lease: u64) {
        let meta = KeyMeta {
            lease,
            ..write::next_meta(old.map(|c| c.meta), self.revision)
        };
        self.overlay.insert(key, Some((meta, json)));
    }

    /// Plans one op; `Some` is the refusal that ends the whole txn, nothing written.
    fn op(&mut self, b: &ApplyBatch, op: TxnOp) -> Result<Option<Applied>, Error> {
        let result = match op {
            TxnOp::Put {
                key,
                value,
                lease,
                ttl_ms: None,
            } => {
                if let Some(refused) = lease.and_then(|id| super::lease::attachable(b, id, &key)) {
                    return Ok(Some(refused));
                }
                let old = self.seen(b, &key)?;
                let json = Slice::from(value.into_bytes());
                self.set(key, old.as_ref(), json, lease.unwrap_or(0));
                TxnResult::Put {
                    revision: self.revision,
                }
            }
            // A lease of a key's own inside a txn: refused alike on every node (grant a
            // lease and name it instead).
            TxnOp::Put { .. } => {
                return Ok(Some(Applied::Unsupported {
                    operation: "a txn put with ttl_ms (grant a lease and put with `lease`)".into(),
                }))
            }
            TxnOp::Delete { key } => {
                let deleted = self.seen(b, &key)?.is_some();
                if deleted {
                    self.overlay.insert(key, None);
                }
                TxnResult::Delete { deleted }
            }
            TxnOp::DeletePrefix { prefix } => {
                let (mut keys, more) = b.writes.keys_under(&prefix, TXN_DELETE_PREFIX_KEYS)?;
                keys.retain(|k| !k.starts_with(super::lock::LOCK_PREFIX));
                let mut count = 0;
                for key in keys {
                    if !matches!(self.overlay.get(&key), Some(None)) {
                        self.overlay.insert(key, None);
                        count += 1;
                    }
                }
                TxnResult::DeletePrefix { count, more }
            }
            TxnOp::Get { key } => {
                let found = self.seen(b, &key)?.map(|c| found(&c));
                self.reply_bytes +=
                    found.as_ref().map_or(0, |f| f.value.len()) + GET_RESULT_OVERHEAD;
                TxnResult::Get(found)
            }
            TxnOp::Incr { key, by } => {
                let old = self.seen(b, &key)?;
                let value = match write::step(Some(&key), old.as_ref(), by, (None, None)) {
                    Ok(value) => value,
                    Err(conflict) => return Ok(Some(conflict)),
                };
                if by != 0 || old.is_none() {
                    // An incr keeps the key's lease.
                    let lease = old.as_ref().map_or(0, |c| c.meta.lease);
                    let json = Slice::from(value.to_string().into_bytes());
                    self.set(key, old.as_ref(), json, lease);
                }
                TxnResult::Incr { value }
            }
        };
        self.results.push(result);
        Ok(None)
    }
}

fn found(c: &Current) -> Found {
    Found {
        value: String::from_utf8_lossy(c.json()).into_owned(),
        revision: c.meta.revision,
        create_revision: c.meta.create_revision,
        version: c.meta.version,
        lease: c.meta.lease,
    }
}

/// Whether compare `c` holds for the key as found (`None`: absent, which has revision,
/// create_revision, version and lease 0, value null, exists false).
fn holds(c: &Compare, found: Option<&Current>) -> bool {
    let Ok(want) = serde_json::from_str::<Value>(&c.value) else {
        return false;
    };
    let meta = found.map(|f| f.meta);
    let number = |n: Option<u64>| Value::from(n.unwrap_or(0));
    let have = match c.target {
        Target::Revision => number(meta.map(|m| m.revision)),
        Target::CreateRevision => number(meta.map(|m| m.create_revision)),
        Target::Version => number(meta.map(|m| m.version)),
        Target::Lease => number(meta.map(|m| m.lease)),
        Target::Exists => Value::Bool(found.is_some()),
        Target::Value => match found {
            Some(f) => serde_json::from_slice(f.json()).unwrap_or(Value::Null),
            None => Value::Null,
        },
    };
    compare(&have, c.op, &want)
}

/// `==` and `!=` on JSON values (numbers by value, so `1` equals `1.0`); the ordering
/// operators hold only between two numbers or two strings.
fn compare(have: &Value, op: CmpOp, want: &Value) -> bool {
    use std::cmp::Ordering;
    let order = match (have, want) {
        (Value::Number(a), Value::Number(b)) => number_order(a, b),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => None,
    };
    match op {
        CmpOp::Eq => order.map_or(have == want, |o| o == Ordering::Equal),
        CmpOp::Ne => order.map_or(have != want, |o| o != Ordering::Equal),
        CmpOp::Lt => order == Some(Ordering::Less),
        CmpOp::Le => matches!(order, Some(Ordering::Less | Ordering::Equal)),
        CmpOp::Gt => order == Some(Ordering::Greater),
        CmpOp::Ge => matches!(order, Some(Ordering::Greater | Ordering::Equal)),
    }
}

/// Integers exactly, anything else as f64.
fn number_order(a: &serde_json::Number, b: &serde_json::Number) -> Option<std::cmp::Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(have: &str, op: CmpOp, want: &str) -> bool {
        let have: Value = serde_json::from_str(have).unwrap();
        let want: Value = serde_json::from_str(want).unwrap();
        compare(&have, op, &want)
    }

    #[test]
    fn numbers_compare_by_value_and_strings_by_bytes() {
        assert!(cmp("1", CmpOp::Eq, "1.0"));
        assert!(cmp("-1", CmpOp::Lt, "18446744073709551615"));
        assert!(cmp("\"b\"", CmpOp::Gt, "\"a\""));
        assert!(cmp("{\"a\":[1]}", CmpOp::Eq, "{\"a\":[1]}"));
        assert!(cmp("null", CmpOp::Ne, "0"));
    }

    #[test]
    fn ordering_between_other_types_never_holds() {
        for op in [CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge] {
            assert!(!cmp("1", op, "\"1\""), "{op:?}");
            assert!(!cmp("null", op, "null"), "{op:?}");
            assert!(!cmp("true", op, "false"), "{op:?}");
        }
    }

    #[test]
    fn a_missing_key_has_zeroes_null_and_not_exists() {
        let c = |target, value: &str| Compare {
            key: "k".into(),
            target,
            op: CmpOp::Eq,
            value: value.into(),
        };
        for target in [
            Target::Revision,
            Target::CreateRevision,
            Target::Version,
            Target::Lease,
        ] {
            assert!(holds(&c(target, "0"), None), "{target:?}");
        }
        assert!(holds(&c(Target::Value, "null"), None));
        assert!(holds(&c(Target::Exists, "false"), None));
        assert!(!holds(&c(Target::Exists, "true"), None));
    }
}
