//! `admin.status` and `admin.members`: what this node knows of itself and of the cluster,
//! answered from its own view (checked against its own token table), except the
//! replication progress in `admin.members`, which only the leader knows.

use async_nats::Message;
use openraft::ServerState;
use serde::Serialize;

use crate::api::{codec, route, Ctx};
use crate::auth::{Credential, Role};
use crate::error::{internal, WireError};
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
    pub members: Members,
    pub storage: StorageFigures,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub security: SigningFigures,
    /// `auth.enabled` on this node: a starting node compares it with its own.
    pub auth_enabled: bool,
}

/// Node-to-node message signing (`cluster.secret`), as seen by this node.
#[derive(Debug, Serialize)]
pub struct SigningFigures {
    /// Raft RPCs and RPC replies dropped as unsigned or forged, since this node started.
    pub rpc_rejected: u64,
    pub rpc_rejected_unsigned: u64,
    pub rpc_rejected_forged: u64,
    /// Node-to-node requests refused for naming another cluster id (also in `rpc_rejected`).
    pub rpc_rejected_wrong_cluster: u64,
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
    super::control::check_cluster(ctx, msg)?;
    if !super::control::node_vouched(ctx, msg) {
        let cred = Credential::of(body.token.as_deref(), msg.headers.as_ref());
        ctx.security
            .auth
            .check(ctx.consensus.view.tokens(), cred, Role::Read)?;
    }
    if status_asked {
        status(ctx, body.digest).await.map(|s| codec::encode_ok(&s))
    } else {
        Ok(members_from_leader(ctx, msg).await)
    }
}

pub async fn status(ctx: &Ctx, with_digest: bool) -> Result<Status, WireError> {
    let m = ctx.consensus.raft.metrics().borrow().clone();
    let commit_index = ctx
        .consensus
        .raft
        .with_raft_state(|s| s.committed.map(|l| l.index))
        .await
        .ok()
        .flatten();
    let digest = if with_digest {
        let view = ctx.consensus.view.clone();
        let (hex, _) = tokio::task::spawn_blocking(move || view.digest())
            .await
            .map_err(|e| internal(e.to_string()))?
            .map_err(|e| internal(e.to_string()))?;
        Some(hex)
    } else {
        None
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
        members: Members {
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
        },
        storage: StorageFigures {
            keys: ctx.consensus.view.key_count(),
            bytes: ctx.consensus.view.store().disk_bytes(),
            data_bytes: ctx.consensus.view.data_bytes(),
            max_bytes: ctx.limits.sizes.max_data_bytes,
        },
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        digest,
        security: signing_figures(ctx),
        auth_enabled: ctx.security.auth.enabled(),
    })
}

fn signing_figures(ctx: &Ctx) -> SigningFigures {
    let c = ctx.security.rejections.counts();
    SigningFigures {
        rpc_rejected: c.total(),
        rpc_rejected_unsigned: c.unsigned(),
        rpc_rejected_forged: c.forged(),
        rpc_rejected_wrong_cluster: c.wrong_cluster,
    }
}

/// Replication progress is known only to the leader: ask it, unless this node leads, the
/// request was already forwarded, or the leader does not answer (then answer locally).
async fn members_from_leader(ctx: &Ctx, msg: &Message) -> Vec<u8> {
    let leader = ctx.consensus.raft.metrics().borrow().current_leader;
    if let (Some(l), false) = (leader, route::is_forwarded(msg)) {
        if l != ctx.cluster.me {
            // The client's headers go along: its credential may be there.
            let mut headers = msg.headers.clone().unwrap_or_default();
            headers.insert(
                crate::subjects::HEADER_FORWARDED,
                ctx.cluster.me.to_string().as_str(),
            );
            crate::signing::set_cluster_id(&mut headers, ctx.consensus.view.cluster_id());
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
            if let Ok(reply) = asked {
                return reply.payload.to_vec();
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
