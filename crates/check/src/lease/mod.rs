//! The lease workload (`--workload lease`): the two lease guarantees of DESIGN.md "Leases
//! and TTL" under faults, and revoke.
//!
//! - **Kept**: one lease of [`KEPT_TTL_MS`] with a key attached, a keepalive every second
//!   (one attempt each, with a deadline). It must never end: no keepalive answers
//!   `not_found`, and after the faults `lease.get` finds it and its key is still there.
//! - **Abandoned**: leases of [`ABANDONED_TTL_MS`] granted one after another, each with a
//!   key, one keepalive acknowledged, then none; each is polled with `lease.get` (read on the
//!   leader after ReadIndex) until it answers `not_found`. Never early: no poll answered
//!   `not_found` before the last acknowledged keepalive's send time + ttl. Bounded late: no
//!   poll sent after its acknowledgement + ttl + 2 × `election_timeout_max` + 1 s found it
//!   (judged only when no outage of the whole cluster overlapped that window).
//! - **Revoke**: leases with [`REVOKE_KEYS`] keys, revoked; the reply's count is the keys
//!   attached, a get of each key after it finds none, and the change log holds their
//!   `delete` events at the revoke's revision and nowhere else.
//!
//! [`client`] performs and records; [`check`] judges.

pub mod check;
pub mod client;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::call::Outcome;

/// The key prefix of every key the workload writes.
pub const PREFIX: &str = "lease/";
pub const KEPT_TTL_MS: u64 = 10_000;
pub const ABANDONED_TTL_MS: u64 = 3_000;
pub const REVOKE_KEYS: usize = 4;
/// The bound's slack beyond ttl + 2 × `election_timeout_max` (DESIGN.md).
pub const LATE_SLACK_MS: u64 = 1_000;

/// One keepalive of the kept lease (times in ns since the workload started).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Keepalive {
    pub sent: u64,
    pub done: u64,
    pub outcome: Outcome,
}

/// The kept lease.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    pub id: u64,
    pub key: String,
    pub keepalives: Vec<Keepalive>,
    /// `lease.get` after the faults healed (`None`: never answered).
    pub final_get: Option<Outcome>,
    /// A get of its key after the faults (`None`: never answered); the reply's `lease`.
    pub final_key: Option<Outcome>,
}

/// One abandoned lease, as observed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Abandoned {
    pub id: u64,
    pub ttl_ms: u64,
    pub key: String,
    /// Send time of the last acknowledged renewal (the keepalive, else the grant).
    pub renewed_sent: u64,
    /// Its acknowledgement.
    pub renewed_acked: u64,
    /// The latest completion of a renewal attempt of unknown outcome after it (it may have
    /// applied up to then, extending the lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_renewal: Option<u64>,
    /// The latest send time of a poll that found the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_found_sent: Option<u64>,
    /// The first poll that answered `not_found`: (sent, received).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<(u64, u64)>,
    /// Polls that got no definite answer.
    pub polls_unanswered: u64,
    /// A get of its key once the lease was seen ended: still present (with its value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_after_end: Option<Outcome>,
}

/// One revoked lease.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Revoke {
    pub id: u64,
    /// Keys whose attaching put was acknowledged, and those of unknown outcome.
    pub keys: Vec<String>,
    pub keys_unknown: Vec<String>,
    pub outcome: Option<Outcome>,
    /// The gets of each key after an acknowledged revoke: keys still present.
    pub present_after: Vec<String>,
    /// Gets that never answered.
    pub unchecked: u64,
}

/// What the lease workload recorded, written as `lease-history.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseHistory {
    pub election_timeout_max_ms: u64,
    pub kept: Kept,
    pub abandoned: Vec<Abandoned>,
    /// Abandoned leases whose grant or keepalive never got acknowledged (not judged).
    pub abandoned_skipped: u64,
    pub revokes: Vec<Revoke>,
    /// Windows (ns) in which no quorum was up (every node killed), from the nemesis.
    pub outages: Vec<(u64, u64)>,
    /// Windows (ns) of the leader-kill nemesis, for the count of leases judged under it.
    pub leader_kill: Vec<(u64, u64)>,
    /// The change log of [`PREFIX`] from the workload's start (`None`: not read in full).
    pub change_log: Option<Vec<Value>>,
}
