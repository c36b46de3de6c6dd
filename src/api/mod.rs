//! The client-facing side of a node: requests arrive on NATS ([`server`]), are decoded
//! ([`codec`]), checked ([`validate`]) and routed ([`route`]): the leader proposes writes
//! to Raft ([`propose`]) and confirms leadership for reads ([`read_index`]); a follower
//! forwards to the leader. [`handler`] serves the key space; [`admin`] answers status and
//! membership questions, administers tokens, takes a snapshot on demand, and writes
//! backups.

pub mod admin;
pub mod codec;
pub mod contact;
pub mod coord;
pub mod coord_codec;
pub mod expiry;
pub mod forwarded;
pub mod handler;
pub mod propose;
pub mod read_index;
pub mod route;
pub mod server;
pub mod txn_codec;
pub mod validate;
pub mod workers;
pub mod writes;

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::raft::inbox::Inbox;
use crate::raft::types::Raft;
use crate::store::StateView;
use crate::subjects::Subjects;

/// What every request handler needs, shared by reference, grouped by what it is for.
pub struct Ctx {
    pub cluster: Cluster,
    pub consensus: Consensus,
    pub security: Security,
    pub limits: RequestLimits,
    /// Metrics and telemetry events of this node.
    pub observer: Arc<crate::observe::Observer>,
    pub lifecycle: Lifecycle,
    /// Threads of their own for the digest, backups and scan pages (see [`workers`]).
    pub workers: workers::Workers,
}

/// Who this node is, and how it reaches the other nodes.
pub struct Cluster {
    pub me: u64,
    /// `cluster.name`.
    pub name: String,
    pub subjects: Subjects,
    pub client: Client,
    /// Client replies over 4 KiB (`server::SMALL_REPLY_BYTES`): a second connection, so a
    /// large scan page or backup chunk never holds Raft's heartbeats in the client
    /// connection's send queue (issue #20, item 7).
    pub bulk: Client,
    /// Outbound requests to other nodes (Raft RPCs, forwarded requests, node control
    /// requests) and their replies, on the client connection.
    pub inbox: Arc<Inbox>,
}

/// Raft, what the request path builds on it, and the state it applies.
pub struct Consensus {
    pub raft: Raft,
    /// Group commit of client writes on the leader.
    pub proposer: propose::Proposer,
    /// Batched leadership confirmation for linearizable reads.
    pub read_index: read_index::ReadIndex,
    pub view: Arc<StateView>,
    /// Whether this node is in contact with a leader (stale reads, readiness).
    pub contact: contact::ContactWindow,
}

/// Who may do what, and node-to-node signing.
pub struct Security {
    /// Token checks (`auth.enabled`).
    pub auth: crate::auth::Authorizer,
    /// Signs forwarded requests and their replies (`cluster.secret`).
    pub signer: Option<crate::signing::Signer>,
    /// Messages dropped as unsigned or forged (`cluster.secret`).
    pub rejections: Arc<crate::signing::Rejections>,
    /// Nonces of the requests this node forwards, and those forwarded to it (anti-replay).
    pub forwarding: forwarded::Forwarding,
}

/// How large and how long a request may be.
pub struct RequestLimits {
    pub sizes: validate::Limits,
    /// A request's deadline when it names none.
    pub default_timeout: Duration,
    /// The longest deadline a request may name; a longer one is clamped to it.
    pub max_timeout: Duration,
    /// The NATS server's max payload: bounds scan pages and backup chunks.
    pub max_payload: usize,
}

/// The node's life as requests see it.
pub struct Lifecycle {
    /// Cancelled when this node learns it was removed from the cluster: the node stops.
    pub removed: CancellationToken,
    /// Cancelled at shutdown, once Raft stopped: tasks a request leaves behind stop.
    pub cancel: CancellationToken,
    /// The node's task tracker: a task a request leaves running is spawned here.
    pub tracker: TaskTracker,
}
