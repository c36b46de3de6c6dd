//! What a transaction gave ([`TxnApplied`]): kept in the idempotency table with every other
//! reply, so fields and variants only ever go at the end.

use serde::{Deserialize, Serialize};

/// A txn that applied: which branch ran, where it left the store, and one result per op of
/// that branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnApplied {
    /// Whether every compare held (the success branch ran).
    pub succeeded: bool,
    /// The branch's one revision when it wrote; `None` when it wrote nothing.
    pub revision: Option<u64>,
    /// The store's revision after the txn (the branch's own when it wrote).
    pub store_revision: u64,
    pub results: Vec<TxnResult>,
}

/// The result of one txn op, in the order of the branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TxnResult {
    Put { revision: u64 },
    Delete { deleted: bool },
    DeletePrefix { count: u64, more: bool },
    Get(Option<Found>),
    Incr { value: i64 },
}

/// A key a txn's `get` found: its JSON value and metadata, as the earlier ops left them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Found {
    pub value: String,
    pub revision: u64,
    pub create_revision: u64,
    pub version: u64,
    pub lease: u64,
}
