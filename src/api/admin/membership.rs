//! `P.admin.member.{add,promote,remove}`: membership changes, made by the leader with an
//! admin credential. A node joins as a learner, is promoted to voter once it has caught up,
//! and is removed outright (never kept as a learner).
//!
//! Two refusals keep a change from costing availability: the node named must answer on its
//! subjects, and the voters that answer right now must be a majority of the new voter set.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::Message;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::api::route::{self, AttemptError, Delivery, Routed};
use crate::api::{codec, Ctx};
use crate::auth::{Credential, Role};
use crate::error::{bad_request, internal, unauthorized, WireError};
use crate::raft::types::NodeId;
use crate::subjects::{AdminOp, HEADER_FORWARDED};

use super::control;

/// How long a node has to answer the leader's "are you there".
const PING_TIMEOUT: Duration = Duration::from_millis(1000);
/// A learner further behind than this is not promoted: as a voter it would slow every commit
/// until it caught up, and could cost the quorum if another voter failed meanwhile.
pub const PROMOTE_MAX_LAG: u64 = 100;
/// In the refusal of a learner that is too far behind: the CLI waits and asks again.
pub const BEHIND_LEADER: &str = "log entries behind the leader";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberBody {
    id: NodeId,
    token: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Changed {
    ok: bool,
    id: NodeId,
    /// `learner`, `voter` or `removed`: where the node stands now.
    role: &'static str,
    /// False when the node already stood there.
    changed: bool,
    voters: Vec<NodeId>,
    learners: Vec<NodeId>,
}

pub async fn handle_member(ctx: &Ctx, op: AdminOp, msg: &Message) -> Vec<u8> {
    let arrival = Instant::now();
    let res = async {
        let body: MemberBody = super::decode(&msg.payload)?;
        if op == AdminOp::MemberRemoved {
            return removed_notice(ctx, msg, &body);
        }
        let timeout = body.timeout_ms.map(Duration::from_millis);
        let r = Routed::new(ctx, msg, arrival, timeout, true);
        let cred = Credential::of(body.token.as_deref(), msg.headers.as_ref());
        r.to_leader_within_deadline(
            ctx,
            |leader| ctx.cluster.subjects.node_admin(leader, op),
            || on_leader(ctx, op, body.id, cred, &r.delivery),
        )
        .await
    }
    .await;
    match res {
        Ok(b) => b,
        Err(e) => codec::encode_error(&e),
    }
}

async fn on_leader(
    ctx: &Ctx,
    op: AdminOp,
    id: NodeId,
    cred: Credential<'_>,
    delivery: &Delivery,
) -> Result<Vec<u8>, AttemptError> {
    route::authorize_on_leader(ctx, cred, Role::Admin).await?;
    let m = ctx.consensus.raft.metrics().borrow().clone();
    if m.state != ServerState::Leader {
        return Err(AttemptError::Retry);
    }
    let membership = m.membership_config.membership().clone();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
    if membership.get_joint_config().len() > 1 {
        return Err(bad_request("a membership change is still in progress; try again").into());
    }
    let auth = authorization(cred);
    match op {
        AdminOp::MemberAdd => {
            if voters.contains(&id) || learners.contains(&id) {
                return done(ctx, id, false);
            }
            check_joiner(ctx, id, auth.as_deref()).await?;
            delivery.mark();
            ctx.consensus
                .raft
                .add_learner(id, BasicNode::default(), false)
                .await
                .map_err(change_failed)?;
            tracing::info!(node = id, "added as a learner");
            done(ctx, id, true)
        }
        AdminOp::MemberPromote => {
            if voters.contains(&id) {
                return done(ctx, id, false);
            }
            if !learners.contains(&id) {
                return Err(bad_request(format!(
                    "node {id} is not a learner of this cluster; add it first (`concord cluster add {id}`)"
                ))
                .into());
            }
            let lag = replication_lag(&m, id);
            if lag > PROMOTE_MAX_LAG {
                return Err(bad_request(format!(
                    "node {id} is {lag} {BEHIND_LEADER} (at most {PROMOTE_MAX_LAG} to be promoted); wait for it to catch up"
                ))
                .into());
            }
            let mut next = voters.clone();
            next.insert(id);
            check_majority(ctx, &voters, &next, auth.as_deref()).await?;
            delivery.mark();
            ctx.consensus
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                .await
                .map_err(change_failed)?;
            tracing::info!(node = id, "promoted to voter");
            done(ctx, id, true)
        }
        AdminOp::MemberRemove => {
            if learners.contains(&id) {
                delivery.mark();
                ctx.consensus
                    .raft
                    .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                    .await
                    .map_err(change_failed)?;
            } else if voters.contains(&id) {
                let mut next = voters.clone();
                next.remove(&id);
                if next.is_empty() {
                    return Err(bad_request(format!(
                        "node {id} is the only voter; a cluster cannot remove its last voter"
                    ))
                    .into());
                }
                check_majority(ctx, &voters, &next, auth.as_deref()).await?;
                delivery.mark();
                ctx.consensus
                    .raft
                    .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                    .await
                    .map_err(change_failed)?;
            } else {
                return done(ctx, id, false);
            }
            tracing::info!(node = id, "removed from the cluster");
            notify_removed(ctx, id, auth.as_deref()).await;
            done(ctx, id, true)
        }
        _ => Err(AttemptError::Fail(internal("not a membership operation"))),
    }
}

/// The reply, with the membership as this node now knows it.
fn done(ctx: &Ctx, id: NodeId, changed: bool) -> Result<Vec<u8>, AttemptError> {
    let m = ctx.consensus.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let learners: Vec<NodeId> = membership.learner_ids().collect();
    let role = if voters.contains(&id) {
        "voter"
    } else if learners.contains(&id) {
        "learner"
    } else {
        "removed"
    };
    Ok(codec::encode_ok(&Changed {
        ok: true,
        id,
        role,
        changed,
        voters,
        learners,
    }))
}

/// Entries the learner still lacks, as the leader sees it.
pub fn replication_lag(m: &crate::raft::types::RaftMetrics, id: NodeId) -> u64 {
    let matched = m
        .replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned().flatten())
        .map(|l| l.index + 1)
        .unwrap_or(0);
    let last = m.last_log_index.map(|i| i + 1).unwrap_or(0);
    last.saturating_sub(matched)
}

fn change_failed(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> AttemptError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => AttemptError::Retry,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )) => AttemptError::Fail(bad_request(
            "a membership change is still in progress; try again",
        )),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            AttemptError::Fail(bad_request(format!("membership change refused: {e}")))
        }
        RaftError::Fatal(e) => AttemptError::Fail(internal(format!("raft stopped: {e}"))),
    }
}

/// The client's credential, passed on when this node asks other nodes for their status.
fn authorization(cred: Credential<'_>) -> Option<String> {
    match cred {
        Credential::Token(t) => Some(format!("Bearer {t}")),
        _ => None,
    }
}

/// What a node says about itself on `P.node.<id>.admin.status`.
#[derive(Debug, Deserialize)]
struct Pong {
    cluster_name: String,
    cluster_id: Option<uuid::Uuid>,
    /// Absent in the status of a build before log format 2.
    log_format: Option<super::format_switch::LogFormat>,
}

/// Asks node `id` for its status, as a signed control request (see [`super::control`]):
/// with `cluster.secret` only a reply signed by a node of this cluster counts, and the
/// client's credential is not passed on.
async fn ping(ctx: &Ctx, id: NodeId, auth: Option<&str>) -> Result<Pong, String> {
    let subject = ctx.cluster.subjects.node_admin(id, AdminOp::Status);
    let reply = control::Sender::of(ctx)
        .send(subject.clone(), auth, "{}".into(), PING_TIMEOUT)
        .await
        .map_err(|e| format!("node {id} does not answer on {subject}: {e}"))?;
    if let Err(code) = codec::reply_code(&reply.payload) {
        return Err(format!(
            "node {id} answered {subject} with {}",
            code.as_str()
        ));
    }
    serde_json::from_slice(&reply.payload)
        .map_err(|e| format!("node {id} sent an unreadable status: {e}"))
}

/// A node joins only if it answers and belongs to no other cluster.
async fn check_joiner(ctx: &Ctx, id: NodeId, auth: Option<&str>) -> Result<(), AttemptError> {
    let pong = ping(ctx, id, auth).await.map_err(|why| {
        bad_request(format!(
            "{why}; start it first (with cluster.join = true) and add it again"
        ))
    })?;
    let cluster_format = ctx.consensus.view.cluster_format();
    let reads = pong.log_format.map_or(1, |f| f.reads);
    if reads < cluster_format {
        return Err(bad_request(format!(
            "node {id} reads log format {reads}, and this cluster writes format {cluster_format}: upgrade its binary first"
        ))
        .into());
    }
    if pong.cluster_name != ctx.cluster.name {
        return Err(bad_request(format!(
            "node {id} belongs to cluster '{}', not '{}'",
            pong.cluster_name, ctx.cluster.name
        ))
        .into());
    }
    match (pong.cluster_id, ctx.consensus.view.cluster_id()) {
        (Some(theirs), Some(ours)) if theirs != ours => Err(bad_request(format!(
            "node {id} holds data of another cluster (id {theirs}); wipe its data dir to join"
        ))
        .into()),
        (Some(_), _) => Err(bad_request(format!(
            "node {id} still holds this cluster's data from an earlier membership; wipe its data dir to join again"
        ))
        .into()),
        _ => Ok(()),
    }
}

/// Refuses a change unless the voters that answer now are a majority of the new voter set
/// and of the current one: the change commits through a joint configuration that needs both.
async fn check_majority(
    ctx: &Ctx,
    current: &BTreeSet<NodeId>,
    next: &BTreeSet<NodeId>,
    auth: Option<&str>,
) -> Result<(), AttemptError> {
    let pings = current
        .union(next)
        .filter(|&&v| v != ctx.cluster.me)
        .map(|&v| async move { (v, ping(ctx, v, auth).await.is_ok()) });
    let answers = futures::future::join_all(pings).await;
    let silent: BTreeSet<NodeId> = answers
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(v, _)| *v)
        .collect();
    for (set, which) in [(next, "new"), (current, "current")] {
        let down: Vec<String> = set.intersection(&silent).map(|v| v.to_string()).collect();
        let answering = set.len() - down.len();
        if answering * 2 <= set.len() {
            return Err(bad_request(format!(
                "refused: only {answering} of the {} voters of the {which} set answer now (node(s) {} do not), which is not a majority",
                set.len(),
                down.join(", ")
            ))
            .into());
        }
    }
    Ok(())
}

/// Tells a removed node to stop: the leader stops replicating to it before it could learn
/// of its removal from the log, and left alone it would campaign. Best effort.
async fn notify_removed(ctx: &Ctx, id: NodeId, auth: Option<&str>) {
    if id == ctx.cluster.me {
        ctx.lifecycle.removed.cancel();
        return;
    }
    let body = serde_json::json!({ "id": id }).to_string();
    let sent = control::Sender::of(ctx)
        .send(
            ctx.cluster.subjects.node_admin(id, AdminOp::MemberRemoved),
            auth,
            body.into(),
            PING_TIMEOUT,
        )
        .await;
    if let Err(e) = sent {
        tracing::warn!(node = id, error = %e, "could not tell the removed node; stop it by hand");
    }
}

/// On the removed node: the leader says this node left the membership. Only a signed,
/// forwarded notice from the leader this node follows is believed.
fn removed_notice(ctx: &Ctx, msg: &Message, body: &MemberBody) -> Result<Vec<u8>, WireError> {
    let sender = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(HEADER_FORWARDED))
        .and_then(|v| v.as_str().parse::<NodeId>().ok());
    let leader = ctx.consensus.raft.metrics().borrow().current_leader;
    if body.id != ctx.cluster.me || sender.is_none() || sender != leader {
        return Err(unauthorized(
            "a removal notice must come from the leader and name this node",
        ));
    }
    // Its cluster id, term and nonce were admitted with its MAC (`api::forwarded::admit`).
    // With the secret the leader's MAC is its credential; without it, an admin token.
    if !control::node_vouched(ctx, msg) {
        let cred = Credential::of(body.token.as_deref(), msg.headers.as_ref());
        ctx.security
            .auth
            .check(ctx.consensus.view.tokens(), cred, Role::Admin)?;
    }
    if crate::failpoints::enabled(crate::failpoints::Failpoint::IgnoreRemovalNotice) {
        return Err(internal("failpoint ignore-removal-notice: notice dropped"));
    }
    tracing::warn!(
        node = ctx.cluster.me,
        "removed from the cluster by the leader; stopping"
    );
    ctx.lifecycle.removed.cancel();
    Ok(codec::encode_ok(&serde_json::json!({"ok": true})))
}

/// A node removed while it could not be told (paused, partitioned) never hears from the
/// leader again, yet would keep campaigning and answering clients. When a member has had no
/// leader contact for `quiet`, and has been up for at least `quiet` itself (a leader needs
/// that long to reach a node that just started), it asks the leader whether it is still a
/// member, and stops if the leader's own, verified membership leaves it out.
pub async fn watch_removal(
    ctx: std::sync::Arc<Ctx>,
    admin_token: Option<String>,
    quiet: Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(quiet / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if started.elapsed() < quiet {
            continue;
        }
        let m = ctx.consensus.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        // A node waiting to be added is not in its own membership: nothing to check.
        let listed = membership
            .voter_ids()
            .chain(membership.learner_ids())
            .any(|id| id == ctx.cluster.me);
        let heard = ctx
            .consensus
            .contact
            .last_heard()
            .since()
            .is_some_and(|d| d < quiet);
        if m.state == ServerState::Leader || !listed || heard {
            continue;
        }
        if leader_dropped_me(&ctx, admin_token.as_deref()).await {
            tracing::warn!(
                node = ctx.cluster.me,
                "the leader's membership no longer lists this node: it was removed while it could not be told; stopping"
            );
            ctx.lifecycle.removed.cancel();
            return;
        }
    }
}

/// What `admin.members` says, as far as the removal watch needs it.
#[derive(Deserialize)]
struct Listed {
    leader: Option<NodeId>,
    voters: Vec<NodeId>,
    learners: Vec<NodeId>,
}

/// Asks the cluster who leads (`P.admin.members`), then that leader itself
/// (`P.node.<leader>.admin.members`); true only when the leader's own reply names itself
/// leader and lists this node neither as voter nor as learner. Both are signed control
/// requests: with `cluster.secret` only verified replies count, so a forged reply (counted
/// and ignored) can never make this node stop.
async fn leader_dropped_me(ctx: &Ctx, admin_token: Option<&str>) -> bool {
    let auth = admin_token.map(|t| format!("Bearer {t}"));
    let sender = control::Sender::of(ctx);
    let me = ctx.cluster.me;
    let asked = ask_members(
        &sender,
        ctx.cluster.subjects.admin(AdminOp::Members),
        auth.as_deref(),
    );
    let Some(leader) = asked.await.and_then(|l| l.leader).filter(|&l| l != me) else {
        return false;
    };
    let subject = ctx.cluster.subjects.node_admin(leader, AdminOp::Members);
    match ask_members(&sender, subject, auth.as_deref()).await {
        Some(l) => l.leader == Some(leader) && !l.voters.contains(&me) && !l.learners.contains(&me),
        None => false,
    }
}

/// One `admin.members` control request; `None` unless a (verified) success reply came.
async fn ask_members(
    sender: &control::Sender<'_>,
    subject: String,
    auth: Option<&str>,
) -> Option<Listed> {
    let reply = sender
        .send(subject, auth, "{}".into(), PING_TIMEOUT)
        .await
        .ok()?;
    codec::reply_code(&reply.payload).ok()?;
    serde_json::from_slice::<Listed>(&reply.payload).ok()
}
