//! What the Raft log replicates: a versioned envelope ([`LogCommand`], `envelope`) around a
//! [`Command`], and what applying it gave ([`Applied`]). Format 2's client writes and their
//! operations are in `ops`.
//!
//! Bincode encodes enum variants by index: new variants go at the end, never in between,
//! so that entries written by an older build keep decoding. The first six variants are
//! format 1's; a node writes the others only after the cluster switched to format 2
//! (`Command::FormatSwitch`), when every member reads them.

mod envelope;
mod ops;
mod outcome;

pub use envelope::{LogCommand, COMMAND_FORMAT, FORMAT_V1, FORMAT_V2};
pub use ops::{CmpOp, Compare, Fence, Op, Request, Target, Txn, TxnOp};
pub use outcome::{Found, TxnApplied, TxnResult};

use std::cell::Cell;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::auth::{TokenDigest, TokenRecord};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// The first command of a new cluster: its identity, set once.
    SetClusterId {
        id: Uuid,
    },
    /// `value` is the JSON text as the client sent it, stored without re-encoding.
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// Several client writes sharing one log entry; each takes its own revision. One level
    /// deep: the proposer never puts a batch in a batch, and decoding refuses one (see
    /// [`batch_parts`]).
    Batch(#[serde(deserialize_with = "batch_parts")] Vec<Command>),
    /// Adds a token to the replicated table: its digest, never the token itself.
    TokenCreate {
        digest: TokenDigest,
        record: TokenRecord,
    },
    /// Removes a token from the table.
    TokenRevoke {
        digest: TokenDigest,
    },
    // ---- format 2 from here on ----
    /// A client write with its own exactly-once tag (format 2's put and delete, and every
    /// Coordination write).
    Client(Request),
    /// The cluster's switch to log format `format`, proposed by a leader once every member
    /// reports that it reads it. From its apply on, entries are written in that format.
    FormatSwitch {
        format: u8,
    },
    /// The end of lease `id`, judged by the leader in cluster time; `renewal` is the stamp of
    /// the renewal it judged, so a later renewal that applied first makes it a no-op.
    LeaseExpire {
        id: u64,
        renewal: u64,
    },
    /// Withdraws a waiting lock claim (its wait ended), `claim` being its create revision.
    LockWithdraw {
        name: String,
        claim: u64,
    },
    /// Compacts the change log up to `revision` (by the leader's retention, or an admin).
    Compact {
        revision: u64,
    },
    /// The idempotency table's settings, proposed by a leader whose `idempotency.*` config
    /// differs from the applied one: every node judges expiry and the entry limit alike.
    IdempotencySettings(IdempotencySettings),
}

/// How long the state machine keeps a request id (in cluster time), and how many at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencySettings {
    pub window_ms: u64,
    pub max_entries: u64,
}

impl Default for IdempotencySettings {
    /// What a cluster uses until a leader proposes its own (DESIGN.md: 5 minutes).
    fn default() -> Self {
        IdempotencySettings {
            window_ms: 300_000,
            max_entries: 1_000_000,
        }
    }
}

impl Command {
    /// The command's name in telemetry (`operation` of an apply event).
    pub fn name(&self) -> &'static str {
        match self {
            Command::SetClusterId { .. } => "set_cluster_id",
            Command::Put { .. } => "put",
            Command::Delete { .. } => "delete",
            Command::Batch(_) => "batch",
            Command::TokenCreate { .. } => "token_create",
            Command::TokenRevoke { .. } => "token_revoke",
            Command::Client(r) => r.op.name(),
            Command::FormatSwitch { .. } => "format_switch",
            Command::LeaseExpire { .. } => "lease_expire",
            Command::LockWithdraw { .. } => "lock_withdraw",
            Command::Compact { .. } => "compact",
            Command::IdempotencySettings(_) => "idempotency_settings",
        }
    }

    /// Whether applying the command writes to fjall at once, not with the next flush: what
    /// is not in the recent-writes table (the cluster id and the token table change rarely)
    /// goes to fjall with the apply batch that changed it. Such a batch is applied on the
    /// blocking pool, never inline on the async workers. No wildcard arm: a new command must
    /// answer this.
    pub fn flushes_at_once(&self) -> bool {
        match self {
            Command::Put { .. }
            | Command::Delete { .. }
            | Command::Client(_)
            | Command::IdempotencySettings(_)
            | Command::LeaseExpire { .. }
            | Command::LockWithdraw { .. } => false,
            Command::Batch(parts) => parts.iter().any(Command::flushes_at_once),
            Command::SetClusterId { .. }
            | Command::TokenCreate { .. }
            | Command::TokenRevoke { .. }
            | Command::FormatSwitch { .. }
            | Command::Compact { .. } => true,
        }
    }

    /// Client commands this command counts for when sizing an apply batch: each part of a
    /// batch counts.
    pub fn client_commands(&self) -> usize {
        match self {
            Command::Batch(parts) => parts.len(),
            Command::SetClusterId { .. }
            | Command::Put { .. }
            | Command::Delete { .. }
            | Command::TokenCreate { .. }
            | Command::TokenRevoke { .. }
            | Command::Client(_)
            | Command::FormatSwitch { .. }
            | Command::LeaseExpire { .. }
            | Command::LockWithdraw { .. }
            | Command::Compact { .. }
            | Command::IdempotencySettings(_) => 1,
        }
    }

    /// The command as format 2 writes it: put and delete become untagged client writes (a
    /// batch's parts too); the rest is the same in both formats.
    pub fn into_format_2(self) -> Command {
        match self {
            Command::Put { key, value } => Command::Client(Request::untagged(Op::Put {
                key,
                value,
                if_revision: None,
                lease: None,
                ttl_ms: None,
                fence: None,
            })),
            Command::Delete { key } => Command::Client(Request::untagged(Op::Delete {
                key,
                if_revision: None,
                fence: None,
            })),
            Command::Batch(parts) => {
                Command::Batch(parts.into_iter().map(Command::into_format_2).collect())
            }
            other => other,
        }
    }

    /// Bytes the command adds to an entry, for the size check before proposing.
    pub fn approximate_size(&self) -> usize {
        match self {
            Command::SetClusterId { .. } => 32,
            Command::Put { key, value } => key.len() + value.len() + 32,
            Command::Delete { key } => key.len() + 16,
            Command::Batch(cmds) => cmds.iter().map(Command::approximate_size).sum::<usize>() + 8,
            Command::TokenCreate { record, .. } => {
                96 + record.id.len() + record.name.as_ref().map_or(0, String::len)
            }
            Command::TokenRevoke { .. } => 40,
            Command::Client(r) => {
                r.op.approximate_size() + 18 + r.token_id.as_ref().map_or(1, |t| t.len() + 9)
            }
            Command::FormatSwitch { .. }
            | Command::LeaseExpire { .. }
            | Command::Compact { .. } => 24,
            Command::IdempotencySettings(_) => 24,
            Command::LockWithdraw { name, .. } => name.len() + 24,
        }
    }
}

/// What a batch inside a batch is refused with, wherever it is decoded (a Raft RPC, a log
/// entry read back).
pub const NESTED_BATCH: &str = "a batch inside a batch is refused (batches are one level deep)";

thread_local! {
    /// Whether this thread is decoding the parts of a batch now. Decoding is synchronous, so
    /// a thread-local marks the nesting without threading a depth through serde.
    static IN_BATCH: Cell<bool> = const { Cell::new(false) };
}

/// Decodes a batch's parts, refusing a batch among them. Without this a peer (or anyone who
/// can publish, when `cluster.secret` is unset) could send a batch nested 100,000 deep, and
/// the recursive decoder would overflow the stack: an abort of the whole node.
fn batch_parts<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Command>, D::Error> {
    /// Clears the mark when the outer batch is done, on error too.
    struct Outer;
    impl Drop for Outer {
        fn drop(&mut self) {
            IN_BATCH.set(false);
        }
    }
    if IN_BATCH.replace(true) {
        // Already inside a batch: refuse before reading anything of the inner one.
        return Err(D::Error::custom(NESTED_BATCH));
    }
    let _outer = Outer;
    Vec::<Command>::deserialize(d)
}

/// What applying a command gave: openraft hands it back to the proposer (`R` of the
/// `TypeConfig`), and the request handler turns it into the client's reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Applied {
    /// Blank and membership entries.
    None,
    ClusterId {
        id: Uuid,
    },
    Put {
        revision: u64,
    },
    Delete {
        deleted: bool,
        revision: u64,
    },
    Batch(Vec<Applied>),
    /// A token command: whether it changed the table (false: the digest was already there,
    /// or already gone).
    Token {
        changed: bool,
    },
    /// The cluster's log format after a format switch applied.
    Format {
        format: u8,
    },
    /// A command this build decodes but does not act on yet: it changed nothing, on every
    /// node alike.
    Unsupported {
        operation: String,
    },
    /// A condition of the command did not hold; nothing was written.
    Conflict {
        reason: ConflictReason,
        /// The current revision the condition was checked against, when it has one.
        revision: Option<u64>,
    },
    // ---- new variants at the end: replies are kept in the idempotency table ----
    /// An incr applied: the key's new value, and the revision that holds it (the key's own
    /// when `by` was 0 and nothing was written).
    Incr {
        value: i64,
        revision: u64,
    },
    /// A delete by prefix: how many keys went (all at `revision`; the store's revision when
    /// none did), and whether more remain under the prefix.
    DeletePrefix {
        count: u64,
        more: bool,
        revision: u64,
    },
    Txn(TxnApplied),
    /// A condition on a key's value did not hold (`bound`, `not_integer`); nothing written.
    ConflictValue {
        reason: ConflictReason,
        /// The key, when the command names more than one (a txn).
        key: Option<String>,
        /// The key's revision, 0 when absent.
        revision: u64,
        /// Its JSON value as stored (`None` when absent).
        value: Option<String>,
    },
    /// The reads of a txn would make a reply past `limit` bytes; nothing written.
    TooLarge {
        bytes: u64,
        limit: u64,
    },
    /// The change log's compact revision after a compaction applied.
    Compacted {
        revision: u64,
    },
    /// A put that attached its key to a lease (named, or one of its own from `ttl_ms`).
    PutLeased {
        revision: u64,
        lease: u64,
    },
    /// A lease granted, renewed (keepalive, touch): its id and ttl.
    Lease {
        id: u64,
        ttl_ms: u64,
    },
    /// A lease ended by revoke or expiry: its keys went at `revision` (the store's own
    /// when it had none), `count` of them.
    LeaseEnded {
        revision: u64,
        count: u64,
    },
    /// The lease named is not there (never granted, or ended).
    LeaseNotFound {
        id: u64,
    },
    /// A touch of a key that is absent or has no lease.
    KeyNotLeased,
    /// Lease `id` already holds the most keys a lease may.
    LeaseFull {
        id: u64,
        limit: u64,
    },
    /// A lock claim that holds the lock: its fence (its create revision) and lease.
    LockGranted {
        fence: u64,
        lease: u64,
    },
    /// A lock claim waiting in line: its create revision and lease.
    LockWaiting {
        claim: u64,
        lease: u64,
    },
    /// A waiting claim withdrawn (or already gone) before it was granted.
    LockWithdrawn,
    /// The holder's claim deleted at `revision`.
    LockReleased {
        revision: u64,
    },
    /// A lease expiry that found a later renewal (or no lease): nothing changed.
    LeaseKept,
}

/// Which condition a [`Applied::Conflict`] failed (DESIGN.md's `reason`). Stored in the
/// idempotency table: new reasons go at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConflictReason {
    /// The request id was used before with another command.
    RequestId,
    /// `if_revision` did not match the key's revision.
    Revision,
    /// An incr's result is outside `[min, max]`, or overflows.
    Bound,
    /// An incr found a value that is not a JSON integer.
    NotInteger,
    /// A fenced write's token is not the lock holder's fence (`revision` carries the
    /// holder's, 0 when the lock is free).
    Fence,
    /// A lock acquire with `wait_ms` 0 found the lock held (`revision`: the holder's fence).
    LockHeld,
    /// A waiting claim was withdrawn before it was granted.
    LockWait,
    /// A lease grant named an id that is taken.
    LeaseExists,
}

impl ConflictReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictReason::RequestId => "request_id",
            ConflictReason::Revision => "revision",
            ConflictReason::Bound => "bound",
            ConflictReason::NotInteger => "not_integer",
            ConflictReason::Fence => "fence",
            ConflictReason::LockHeld => "lock_held",
            ConflictReason::LockWait => "lock_wait",
            ConflictReason::LeaseExists => "lease_exists",
        }
    }
}
