//! The lock workload (`--workload lock`): mutual exclusion with fencing (DESIGN.md "Locks
//! and fencing") under faults.
//!
//! - **Holders**: clients loop `lock.acquire` of [`NAME`] (ttl [`HOLD_TTL_MS`], `wait_ms`
//!   [`WAIT_MS`], a `request_id` kept over the retries), keep the claim's lease alive while
//!   they hold it, put [`WRITES`] values into [`KEY`] with the fence, and release.
//! - **The stale holder** (client 0): acquires with ttl [`STALE_TTL_MS`], writes once, then
//!   stops its keepalives as if SIGSTOPped and sleeps past ttl, 2 × `election_timeout_max`
//!   and 1 s more, waits until `lease.get` says its lease ended, and writes with its old fence: it
//!   must be refused with `conflict` reason `fence`.
//! - **The checker** ([`check`]) reads the change log of [`PREFIX`] and the records: fences
//!   never go down in revision order (no two holders' writes interleave), every write's
//!   revision is above its fence, every acknowledged write is in the log, every stale write
//!   refused, every acquire ends granted or `lock_wait` (never unknown while a quorum was
//!   up), a retried acquire gets one fence, and a grant acknowledged before another was
//!   asked for has the lower fence.

pub mod check;
pub mod client;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::call::{Outcome, Tries};

pub const NAME: &str = "guarded";
pub const PREFIX: &str = "guarded/";
pub const KEY: &str = "guarded/x";
pub const HOLD_TTL_MS: u64 = 5_000;
pub const STALE_TTL_MS: u64 = 2_000;
pub const WAIT_MS: u64 = 2_000;
/// Fenced writes per hold.
pub const WRITES: usize = 3;

/// One acquire (times in ns since the workload started).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Acquire {
    pub client: u64,
    pub request_id: String,
    pub invoked: u64,
    pub completed: u64,
    pub outcome: Outcome,
    pub tries: Tries,
}

/// One fenced put of `value` into [`KEY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Write {
    pub client: u64,
    pub fence: u64,
    pub value: String,
    pub invoked: u64,
    pub completed: u64,
    pub outcome: Outcome,
    /// Sent by the stale holder once its lease was past its end: must be refused.
    pub stale: bool,
    /// For a stale write: whether `lease.get` answered `not_found` before it was sent.
    #[serde(default)]
    pub lease_seen_ended: bool,
}

/// One release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub client: u64,
    pub fence: u64,
    pub outcome: Outcome,
    pub stale: bool,
}

/// What the lock workload recorded, written as `lock-history.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockHistory {
    pub acquires: Vec<Acquire>,
    pub writes: Vec<Write>,
    pub releases: Vec<Release>,
    /// Holds that ended with the lease lost (a keepalive answered `not_found`).
    pub leases_lost: u64,
    /// Windows (ns) in which no quorum was up (every node killed), from the nemesis.
    pub outages: Vec<(u64, u64)>,
    /// The change log of [`PREFIX`] from the workload's start (`None`: not read in full).
    pub change_log: Option<Vec<Value>>,
}

/// The value a client writes: who, under which fence, which write.
pub fn value(client: u64, fence: u64, n: usize) -> String {
    format!("c{client}-f{fence}-{n}")
}

/// The fence a value names (`None` for a value not of [`value`]'s form).
pub fn fence_of(value: &str) -> Option<u64> {
    value.split('-').nth(1)?.strip_prefix('f')?.parse().ok()
}
