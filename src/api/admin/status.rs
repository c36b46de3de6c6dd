//! `admin.status` and `admin.members`: what this node knows of itself and of the cluster,
//! answered from its own view (checked against its own token table), except the
//! replication progress in `admin.members`, which only the leader knows.

use async_nats::Message;
use openraft::ServerState;
use serde::Serialize;
use tokio::time::Instant;

use crate::api::{codec, route, Ctx};
use crate::auth::{Credential, Role};
use crate::error::{internal, timeout, WireError};
use crate::subjects::AdminOp;

#[derive(Debug, Serialize)]
pub struct Members {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

#[derive(Debug, Serialize)]
pub struct StorageFigures {
    pub keys: u64,
    pub bytes: u64,
    /// Live data size: key + stored value bytes of live keys (what the quota counts).
    pub data_bytes: u64,
    /// `storage.max_bytes`; 0: no quota.
    pub max_bytes: u64,
    /// `storage.fsync`: false means an acknowledged write can be lost to a power cut.
    pub fsync: bool,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub ok: bool,
    pub node: u64,
    pub cluster_name: String,
    pub cluster_id: Option<uuid::Uuid>,
    pub role: &'static str,
    pub leader: Option<u64>,
    pub term: u64,
    pub commit_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub last_log_index: Option<u64>,
    pub revision: u64,
    /// The change log's compact revision: no watch starts at or below it.
    pub compact_revision: u64,
    /// The change log on this node: the first revision it holds (0: none yet) and its
    /// bytes on disk.
    pub history: HistoryStatus,
    pub members: Members,
    pub storage: StorageFigures,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub security: SigningFigures,
    /// `auth.enabled` on this node: a starting node compares it with its own.
    pub auth_enabled: bool,
    /// This node's reading of cluster time (ms): the newest stamp it appended plus its
    /// monotonic time since.
    pub cluster_time_ms: u64,
    /// Cluster time of the newest entry applied here (0 before the first stamped one).
    pub applied_cluster_time_ms: u64,
    /// The log format the cluster writes, and the newest this node's build reads.
    pub log_format: super::format_switch::LogFormat,
    /// The idempotency table (exactly-once writes) as applied here.
    pub idempotency: IdempotencyStatus,
    /// The lease table as applied here.
    pub leases: LeaseStatus,
}

/// Leases in `admin.status`.
#[derive(Debug, Serialize)]
pub struct LeaseStatus {
    /// Leases held, and keys attached to them.
    pub count: u64,
    pub keys: u64,
}

/// The change log in `admin.status`.
#[derive(Debug, Serialize)]
pub struct HistoryStatus {
    pub start_revision: u64,
    pub bytes: u64,
}

/// The idempotency table in `admin.status`.
#[derive(Debug, Serialize)]
pub struct IdempotencyStatus {
    /// How long a request id is remembered (cluster time), and how many at most: the
    /// cluster's applied settings.
    pub window_ms: u64,
    pub max_entries: u64,
    /// Request ids held now.
    pub entries: u64,
    /// How long the oldest held id has left (ms of cluster time): with the table full, ids
    /// are forgotten sooner than the window, and this shows by how much.
    pub oldest_left_ms: u64,
    /// Retries answered from the table, and ids reused with another command, since this
    /// node started.
    pub replays: u64,
    pub conflicts: u64,
}

/// Node-to-node message signing (`cluster.secret`), as seen by this node.
#[derive(Debug, Serialize)]
pub struct SigningFigures {
    /// Raft RPCs and RPC replies dropped as unsigned or forged, since this node started.
    pub rpc_rejected: u64,
    pub rpc_rejected_unsigned: u64,
    pub rpc_rejected_forged: u64,
    /// Signed forwarded requests refused for naming another cluster id.
    pub rpc_rejected_other_cluster: u64,
    /// Signed forwarded requests refused as replays (nonce already seen in the term).
    pub rpc_rejected_replayed: u64,
}

#[derive(Debug, Serialize)]
pub struct NodeMember {
    pub id: u64,
    pub role: &'static str,
    /// Last log index known to be replicated to it (leader's view only).
    pub matched_index: Option<u64>,
    /// Entries it still lacks (leader's view only).
    pub lag: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct MembersReply {
    pub ok: bool,
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// The answering node's last log index: the mark `lag` is measured against.
    pub last_log_index: Option<u64>,
    pub nodes: Vec<NodeMember>,
}

pub use crate::types::role_name;

/// Status and membership are this node's own view: checked against its own token table,
/// except for another node's signed control request (see [`super::control`]).
pub(super) async fn own_view(
    ctx: &Ctx,
    status_asked: bool,
    msg: &Message,
) -> Result<Vec<u8>, WireError> {
    let body: codec::AdminBody = super::decode(&msg.payload)?;
    if !super::control::node_vouched(ctx, msg) {
        let cred = Credential::of(body.token.as_deref(), msg.headers.as_ref());
        ctx.security
            .auth
            .check(ctx.consensus.view.tokens(), cred, Role::Read)?;
    }
    if status_asked {
        let arrival = tokio::time::Instant::now();
        let timeout_len = route::timeout_len(
            msg,
            body.timeout_ms.map(std::time::Duration::from_millis),
            &ctx.limits,
        );
        let deadline = route::deadline_for(arrival, timeout_len);
        let digest = body.digest.then_some(deadline);
        status(ctx, digest).await.map(|s| codec::encode_ok(&s))
    } else {
        Ok(members_from_leader(ctx, msg).await)
    }
}

/// This node's status; with `digest` (the request's deadline), the digest of its whole
/// key space too.
pub async fn status(ctx: &Ctx, digest: Option<Instant>) -> Result<Status, WireError> {
    let m = ctx.consensus.raft.metrics().borrow().clone();
    let commit_index = ctx
        .consensus
        .raft
        .with_raft_state(|s| s.committed.map(|l| l.index))
        .await
        .ok()
        .flatten();
    let digest = match digest {
        Some(deadline) => Some(digest_within(ctx, deadline).await?),
        None => None,
    };
    let membership = m.membership_config.membership();
    Ok(Status {
        ok: true,
        node: ctx.cluster.me,
        cluster_name: ctx.cluster.name.clone(),
        cluster_id: ctx.consensus.view.cluster_id(),
        role: role_name(m.state),
        leader: m.current_leader,
        term: m.current_term,
        commit_index,
        last_applied: m.last_applied.map(|l| l.index),
        last_log_index: m.last_log_index,
        revision: ctx.consensus.view.revision(),
        compact_revision: ctx.consensus.view.compact_revision(),
        history: HistoryStatus {
            start_revision: ctx.consensus.view.history_start(),
            bytes: ctx.consensus.view.history_bytes(),
        },
        members: Members {
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
        },
        storage: StorageFigures {
            keys: ctx.consensus.view.key_count(),
            bytes: ctx.consensus.view.store().disk_bytes(),
            data_bytes: ctx.consensus.view.data_bytes(),
            max_bytes: ctx.limits.sizes.max_data_bytes,
            fsync: ctx.consensus.view.store().fsync,
        },
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        digest,
        security: signing_figures(ctx),
        auth_enabled: ctx.security.auth.enabled(),
        cluster_time_ms: ctx.consensus.view.clock().reading(),
        applied_cluster_time_ms: ctx.consensus.view.applied_cluster_time(),
        log_format: super::format_switch::LogFormat {
            cluster: ctx.consensus.view.cluster_format(),
            reads: crate::command::COMMAND_FORMAT,
        },
        idempotency: idempotency_status(ctx),
        leases: ctx.consensus.view.with_leases(|t| LeaseStatus {
            count: t.len() as u64,
            keys: t.key_count() as u64,
        }),
    })
}

fn idempotency_status(ctx: &Ctx) -> IdempotencyStatus {
    let r = ctx.consensus.view.idempotency();
    IdempotencyStatus {
        window_ms: r.window_ms,
        max_entries: r.max_entries,
        entries: r.entries,
        oldest_left_ms: r
            .oldest_expiry
            .saturating_sub(ctx.consensus.view.applied_cluster_time()),
        replays: r.replays,
        conflicts: r.conflicts,
    }
}

/// Hashes the whole key space on the heavy pool (issue #20, item 7): one job at a time,
/// `busy` when the pool stays taken until the deadline, `timeout` when the hash does not
/// finish by then (it runs to its end anyway, holding the pool's permit).
async fn digest_within(ctx: &Ctx, deadline: Instant) -> Result<String, WireError> {
    let view = ctx.consensus.view.clone();
    let hashed = ctx
        .workers
        .heavy
        .run(deadline, "the key-space digest", move || view.digest());
    match tokio::time::timeout_at(deadline, hashed).await {
        Ok(Ok(Ok((hex, _)))) => Ok(hex),
        Ok(Ok(Err(e))) => Err(internal(format!("digest: {e}"))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(timeout(
            "the key-space digest did not finish before the request's deadline; retry with a longer timeout_ms",
        )),
    }
}

fn signing_figures(ctx: &Ctx) -> SigningFigures {
    let c = ctx.security.rejections.counts();
    SigningFigures {
        rpc_rejected: c.total(),
        rpc_rejected_unsigned: c.unsigned(),
        rpc_rejected_forged: c.forged(),
        rpc_rejected_other_cluster: c.other_cluster,
        rpc_rejected_replayed: c.replayed,
    }
}

/// Replication progress is known only to the leader: ask it, unless this node leads, the
/// request was already forwarded, or the leader does not answer (then answer locally).
async fn members_from_leader(ctx: &Ctx, msg: &Message) -> Vec<u8> {
    let leader = ctx.consensus.raft.metrics().borrow().current_leader;
    if let (Some(l), false) = (leader, route::is_forwarded(msg)) {
        if l != ctx.cluster.me {
            // The client's headers go along: its credential may be there.
            let headers = super::super::forwarded::forward_headers(ctx, msg.headers.as_ref());
            let asked = ctx
                .cluster
                .inbox
                .request_with_headers(
                    ctx.cluster.subjects.node_admin(l, AdminOp::Members),
                    Some(headers),
                    &route::SIGNED_FORWARD_HEADERS,
                    msg.payload.clone(),
                    std::time::Duration::from_secs(1),
                )
                .await;
            // A refusal (the leader's term moved on) is no answer: answer locally then.
            if let Ok(reply) = asked.as_ref().map(|r| &r.payload) {
                if !route::is_not_ready(reply) {
                    return reply.to_vec();
                }
            }
        }
    }
    codec::encode_ok(&members(ctx))
}

pub fn members(ctx: &Ctx) -> MembersReply {
    let m = ctx.consensus.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let learners: Vec<u64> = membership.learner_ids().collect();
    let matched = |id: u64| {
        m.replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map(|l| l.index)
            .or_else(|| (id == ctx.cluster.me).then_some(m.last_log_index).flatten())
    };
    let leading = m.state == ServerState::Leader;
    let node = |id: u64, role: &'static str| NodeMember {
        id,
        role,
        matched_index: matched(id),
        lag: leading.then(|| {
            if id == ctx.cluster.me {
                0
            } else {
                super::membership::replication_lag(&m, id)
            }
        }),
    };
    let nodes = voters
        .iter()
        .map(|&id| node(id, "voter"))
        .chain(learners.iter().map(|&id| node(id, "learner")))
        .collect();
    MembersReply {
        ok: true,
        leader: m.current_leader,
        term: m.current_term,
        voters,
        learners,
        last_log_index: m.last_log_index,
        nodes,
    }
}
