//! The client-facing side of a node: requests arrive on NATS ([`server`]), are decoded
//! ([`codec`]), checked ([`validate`]) and routed ([`handler`]): the leader proposes writes
//! to Raft and confirms leadership for reads; a follower forwards to the leader.
//! [`admin`] answers status and membership questions, [`snapshot`] builds one on demand,
//! [`backup`] writes a backup on the leader and serves it in chunks.

pub mod admin;
pub mod backup;
pub mod codec;
pub mod handler;
pub mod membership;
pub mod propose;
pub mod read_index;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod tokens;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;

use crate::raft::service::LeaderContact;
use crate::raft::types::Raft;
use crate::store::StateView;
use crate::subjects::Subjects;

/// What every request handler needs, shared by reference.
pub struct Ctx {
    pub me: u64,
    pub cluster_name: String,
    pub raft: Raft,
    /// Group commit of client writes on the leader.
    pub proposer: propose::Proposer,
    /// Batched leadership confirmation for linearizable reads.
    pub read_index: read_index::ReadIndex,
    pub view: Arc<StateView>,
    pub client: Client,
    pub subjects: Subjects,
    pub limits: validate::Limits,
    pub default_timeout: Duration,
    /// A node that has not heard from a leader within this long may not serve stale reads.
    pub stale_window: Duration,
    pub contact: Arc<LeaderContact>,
    pub max_payload: usize,
    /// Token checks (`auth.enabled`).
    pub auth: crate::auth::Authorizer,
    /// Signs forwarded requests and their replies (`cluster.secret`).
    pub signer: Option<crate::signing::Signer>,
    /// Messages dropped as unsigned or forged (`cluster.secret`).
    pub rejections: Arc<crate::signing::Rejections>,
    /// Outbound requests to other nodes (Raft RPCs, forwarded requests) and their replies.
    pub inbox: Arc<crate::raft::inbox::Inbox>,
    /// Metrics and telemetry events of this node.
    pub observer: Arc<crate::observe::Observer>,
    /// Cancelled when this node learns it was removed from the cluster: the node stops.
    pub removed: tokio_util::sync::CancellationToken,
}
