//! The client writes of log format 2 ([`Request`]): each command with its own exactly-once
//! tag, and every operation of DESIGN.md's Coordination section, decodable from the start.
//! What applies is decided in `store::apply`; an operation this build does not give
//! behaviour to yet applies as a deterministic refusal, never differently on two nodes.
//!
//! Bincode encodes enum variants by index and struct fields in order: new variants go at the
//! end, and a released field never moves.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One client write as the log carries it in format 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The client's id for the logical operation (exactly-once retries), if it sent one.
    pub request_id: Option<Uuid>,
    /// The id of the token that sent it (`auth.enabled`): ids are per token.
    pub token_id: Option<String>,
    pub op: Op,
}

impl Request {
    /// A write without an exactly-once tag.
    pub fn untagged(op: Op) -> Self {
        Request {
            request_id: None,
            token_id: None,
            op,
        }
    }
}

/// A fenced write's condition: it applies only while `token` is the fence of `lock`'s holder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fence {
    pub lock: String,
    pub token: u64,
}

/// What a client write does. Values are JSON text as the client sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Put {
        key: String,
        value: String,
        /// Only if the key's revision is this (0: only if absent).
        if_revision: Option<u64>,
        lease: Option<u64>,
        /// A lease of the key's own, granted with the put.
        ttl_ms: Option<u64>,
        fence: Option<Fence>,
    },
    Delete {
        key: String,
        if_revision: Option<u64>,
        fence: Option<Fence>,
    },
    /// Deletes up to `limit` keys under `prefix` at one revision (`""` only when the client
    /// said `all`); the limit is in the entry so that every node stops at the same key.
    DeletePrefix {
        prefix: String,
        limit: u64,
        fence: Option<Fence>,
    },
    Incr {
        key: String,
        by: i64,
        min: Option<i64>,
        max: Option<i64>,
        /// Applies only when the call creates the key.
        ttl_ms: Option<u64>,
        fence: Option<Fence>,
    },
    Txn(Txn),
    /// Renews the key's own lease without a new revision.
    Touch {
        key: String,
        ttl_ms: Option<u64>,
    },
    LeaseGrant {
        /// `None`: the state machine picks the next free id.
        id: Option<u64>,
        ttl_ms: u64,
    },
    LeaseKeepalive {
        id: u64,
    },
    LeaseRevoke {
        id: u64,
    },
    LockAcquire {
        name: String,
        ttl_ms: Option<u64>,
        lease: Option<u64>,
        /// Whether the claim waits in line (`wait_ms` > 0) or is tried once.
        wait: bool,
    },
    LockRelease {
        name: String,
        fence: u64,
    },
}

impl Op {
    /// The operation's name in telemetry.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Put { .. } => "put",
            Op::Delete { .. } => "delete",
            Op::DeletePrefix { .. } => "delete_prefix",
            Op::Incr { .. } => "incr",
            Op::Txn(_) => "txn",
            Op::Touch { .. } => "touch",
            Op::LeaseGrant { .. } => "lease_grant",
            Op::LeaseKeepalive { .. } => "lease_keepalive",
            Op::LeaseRevoke { .. } => "lease_revoke",
            Op::LockAcquire { .. } => "lock_acquire",
            Op::LockRelease { .. } => "lock_release",
        }
    }

    /// The key the operation names, for telemetry's `include_keys`.
    pub fn key(&self) -> Option<&str> {
        match self {
            Op::Put { key, .. }
            | Op::Delete { key, .. }
            | Op::Incr { key, .. }
            | Op::Touch { key, .. } => Some(key),
            Op::DeletePrefix { prefix, .. } => Some(prefix),
            Op::LockAcquire { name, .. } | Op::LockRelease { name, .. } => Some(name),
            Op::Txn(_)
            | Op::LeaseGrant { .. }
            | Op::LeaseKeepalive { .. }
            | Op::LeaseRevoke { .. } => None,
        }
    }

    /// Bytes the operation adds to an entry, for the size check before proposing.
    pub fn approximate_size(&self) -> usize {
        let fence = |f: &Option<Fence>| f.as_ref().map_or(1, |f| f.lock.len() + 17);
        match self {
            Op::Put {
                key,
                value,
                fence: f,
                ..
            } => key.len() + value.len() + 40 + fence(f),
            Op::Delete { key, fence: f, .. } => key.len() + 24 + fence(f),
            Op::DeletePrefix {
                prefix, fence: f, ..
            } => prefix.len() + 24 + fence(f),
            Op::Incr { key, fence: f, .. } => key.len() + 48 + fence(f),
            Op::Txn(t) => t.approximate_size(),
            Op::Touch { key, .. } => key.len() + 16,
            Op::LeaseGrant { .. } | Op::LeaseKeepalive { .. } | Op::LeaseRevoke { .. } => 24,
            Op::LockAcquire { name, .. } | Op::LockRelease { name, .. } => name.len() + 32,
        }
    }
}

/// `P.kv.txn`: compares, then one branch of ops, at one revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
    pub fence: Option<Fence>,
}

impl Txn {
    /// Bytes the txn adds to an entry.
    pub fn approximate_size(&self) -> usize {
        let compares: usize = self
            .compare
            .iter()
            .map(|c| c.key.len() + c.value.len() + 16)
            .sum();
        let ops: usize = self
            .success
            .iter()
            .chain(&self.failure)
            .map(TxnOp::approximate_size)
            .sum();
        compares + ops + 32
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub target: Target,
    pub op: CmpOp,
    /// The JSON text to compare with.
    pub value: String,
}

/// Also the wire's names (`P.kv.txn`), in snake_case; the log encodes variants by index, so
/// the names never reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Revision,
    CreateRevision,
    Version,
    Value,
    Lease,
    Exists,
}

/// Named on the wire by their symbols (`==`, `!=`, `<`, `<=`, `>`, `>=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TxnOp {
    Put {
        key: String,
        value: String,
        lease: Option<u64>,
        ttl_ms: Option<u64>,
    },
    Delete {
        key: String,
    },
    DeletePrefix {
        prefix: String,
    },
    Get {
        key: String,
    },
    Incr {
        key: String,
        by: i64,
    },
}

impl TxnOp {
    fn approximate_size(&self) -> usize {
        match self {
            TxnOp::Put { key, value, .. } => key.len() + value.len() + 32,
            TxnOp::Delete { key } | TxnOp::Get { key } | TxnOp::DeletePrefix { prefix: key } => {
                key.len() + 16
            }
            TxnOp::Incr { key, .. } => key.len() + 24,
        }
    }
}
