//! Forming the cluster: before Raft starts, ask who already answers on this subject prefix
//! ([`check_prefix`], signed with `cluster.secret`) and refuse to start inside another
//! cluster or with another `auth.enabled` than the cluster's; after, the bootstrapper of
//! a new cluster initializes it ([`form_cluster`]), and the first leader commits a cluster id
//! ([`ensure_cluster_id`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, ServerState};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::start::Opened;
use super::Error;
use crate::api::admin::control;
use crate::command::{Command, LogCommand};
use crate::config::Config;
use crate::raft::inbox::CallError;
use crate::raft::types::Raft;
use crate::store::StateView;
use crate::subjects::AdminOp;

/// What answered `P.admin.status` when this node started.
#[derive(Debug, serde::Deserialize)]
struct PeerStatus {
    node: u64,
    cluster_name: String,
    cluster_id: Option<Uuid>,
    #[serde(default)]
    members: Option<PeerMembers>,
    /// Absent from nodes older than this field.
    #[serde(default)]
    auth_enabled: Option<bool>,
}

#[derive(Debug, serde::Deserialize)]
struct PeerMembers {
    voters: Vec<u64>,
    learners: Vec<u64>,
}

/// What a pristine node does once Raft runs: wait to be added (`cluster.join`), initialize
/// a new cluster (the bootstrapper, when no live cluster answered), or wait to be contacted.
pub(super) async fn form_cluster(
    config: &Config,
    raft: &Raft,
    pristine: bool,
    live_cluster: bool,
    prefix: &str,
) -> Result<(), Error> {
    let me = config.node.id;
    if pristine && config.cluster.join {
        tracing::info!(
            "cluster.join: waiting to be added (`concord cluster add {me}` against the running cluster)"
        );
    } else if pristine && config.is_bootstrapper() {
        if live_cluster {
            tracing::warn!(
                "a live cluster answers on prefix '{prefix}': not initializing a new one; this node waits to be added (`concord cluster add {me}`)"
            );
        } else {
            initialize(raft, &config.initial_members()).await?;
        }
    } else if pristine {
        tracing::info!("empty data directory: waiting to be contacted by the cluster");
    }
    Ok(())
}

/// Asks `P.admin.status` who serves this prefix, as a signed control request (see
/// [`crate::api::admin::control`]). Refuses to start if another cluster does, or if the
/// cluster's `auth.enabled` differs from this node's; returns whether something live
/// answered (only replies that do not verify count as live, loudly logged, so no second
/// cluster is formed there). Persists nothing: whatever it refuses, the next start checks
/// again.
pub(super) async fn check_prefix(config: &Config, opened: &Opened) -> Result<bool, Error> {
    let subject = opened.subjects.admin(AdminOp::Status);
    let signed = opened.signer.is_some();
    let sender = control::Sender {
        inbox: &opened.inbox,
        signed,
        me: config.node.id,
        cluster_id: opened.view.cluster_id(),
        stamp: None,
    };
    let auth = opened.admin_token.as_deref().map(|t| format!("Bearer {t}"));
    let before = opened.rejections.counts();
    let timeout = Duration::from_millis(1500);
    let reply = match sender
        .send(subject.clone(), auth.as_deref(), "{}".into(), timeout)
        .await
    {
        Ok(m) if m.status.is_none() || !m.payload.is_empty() => m,
        Ok(_) | Err(CallError::NoResponders) => return Ok(false),
        Err(e) => {
            let after = opened.rejections.counts();
            let dropped = (after.unsigned_replies + after.forged_replies)
                - (before.unsigned_replies + before.forged_replies);
            if signed && dropped > 0 {
                // Not refused: a node restarted with the wrong secret still starts (and is
                // ignored by the cluster). Assumed live, so a new node never forms a second
                // cluster on a prefix someone serves; nothing is recorded.
                tracing::error!(
                    "only replies that do not verify with this node's cluster.secret ({dropped} of them) answer on '{subject}': \
                     another cluster (with another secret), a node of this one with another secret, or a forger, serves this \
                     subject prefix. Not forming a new cluster here; check that cluster.secret is the same on every node and \
                     that each cluster has its own nats.subject_prefix"
                );
                return Ok(true);
            }
            tracing::warn!(error = %e, "no answer on {subject}; assuming no cluster");
            return Ok(false);
        }
    };
    let peer = read_peer(config, opened, &reply.payload)?;
    let Some(peer) = peer else {
        return Ok(true);
    };
    check_peer(config, opened, &peer)?;
    Ok(true)
}

/// The status that answered, or `None` for a refusal that still shows a live member of
/// this cluster; an error for what shows another cluster.
fn read_peer(
    config: &Config,
    opened: &Opened,
    payload: &[u8],
) -> Result<Option<PeerStatus>, Error> {
    let subjects = &opened.subjects;
    if is_unauthorized(payload) {
        if config.auth.enabled {
            tracing::warn!(
                "a node with auth answers on '{}' and refuses this node's credential; assuming it is this cluster (set auth.admin_token to the cluster's admin credential to check)",
                subjects.admin(AdminOp::Status)
            );
            return Ok(None);
        }
        return Err(Error::OtherCluster(format!(
            "a cluster with auth on answers on subject prefix '{}', and this node has auth off; \
             give this cluster its own nats.subject_prefix, or turn auth on with its admin credential",
            subjects.prefix()
        )));
    }
    if crate::api::codec::reply_code(payload) == Err(crate::error::ErrorKind::BadRequest) {
        // The answering node refused this node's cluster id.
        return Err(Error::OtherCluster(format!(
            "a node on subject prefix '{}' refused this node: {}. Give each cluster its own nats.subject_prefix",
            subjects.prefix(),
            error_message(payload)
        )));
    }
    match serde_json::from_slice::<PeerStatus>(payload) {
        Ok(p) => Ok(Some(p)),
        Err(_) => Err(Error::OtherCluster(format!(
            "something that is not a Concord node answers on '{}'; give this cluster its own nats.subject_prefix",
            subjects.admin(AdminOp::Status)
        ))),
    }
}

/// Refuses to start inside another cluster, with another `auth.enabled` than the cluster's,
/// or after the cluster removed this node.
fn check_peer(config: &Config, opened: &Opened, peer: &PeerStatus) -> Result<(), Error> {
    let my_cluster_id = opened.view.cluster_id();
    let other = peer.cluster_name != config.cluster.name
        || matches!((peer.cluster_id, my_cluster_id), (Some(a), Some(b)) if a != b);
    if other {
        return Err(Error::OtherCluster(format!(
            "another cluster ('{}', id {}) already answers on subject prefix '{}' (its node {}); \
             this node belongs to '{}' (id {}). Give each cluster its own nats.subject_prefix",
            peer.cluster_name,
            peer.cluster_id
                .map(|u| u.to_string())
                .unwrap_or_else(|| "unknown".into()),
            opened.subjects.prefix(),
            peer.node,
            config.cluster.name,
            my_cluster_id
                .map(|u| u.to_string())
                .unwrap_or_else(|| "not yet assigned".into()),
        )));
    }
    // One node with auth off would serve (and forward) requests without a token.
    if let Some(theirs) = peer.auth_enabled.filter(|&a| a != config.auth.enabled) {
        return Err(Error::Config(format!(
            "auth.enabled is {} on this node but {theirs} on the cluster (says its node {}): every node of a cluster \
             must have the same auth.enabled; set it to {theirs} and start again",
            config.auth.enabled, peer.node
        )));
    }
    // A node the cluster removed while it could not be told must not rejoin with its old
    // state: it would campaign and answer clients without ever reaching a leader.
    if let (false, Some(m), Some(_)) = (opened.pristine, &peer.members, my_cluster_id) {
        let me = config.node.id;
        if !m.voters.contains(&me) && !m.learners.contains(&me) {
            return Err(Error::Config(format!(
                "this cluster's members are voters {:?} and learners {:?} (says node {}); node {me} is not among them. \
                 If it was removed, wipe {} and add it again with cluster.join = true and `concord cluster add {me}`",
                m.voters,
                m.learners,
                peer.node,
                config.data_dir.display()
            )));
        }
    }
    Ok(())
}

/// The message of an error reply, bounded.
fn error_message(payload: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .map(|m| m.chars().take(300).collect())
        })
        .unwrap_or_default()
}

fn is_unauthorized(payload: &[u8]) -> bool {
    crate::api::codec::reply_code(payload) == Err(crate::error::ErrorKind::Unauthorized)
}

async fn initialize(raft: &Raft, members: &BTreeSet<u64>) -> Result<(), Error> {
    let nodes: BTreeMap<u64, BasicNode> = members
        .iter()
        .map(|&id| (id, BasicNode::default()))
        .collect();
    match raft.initialize(nodes).await {
        Ok(()) => {
            tracing::info!(?members, "initialized a new cluster");
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(RaftError::APIError(e)) => {
            Err(Error::Config(format!("cannot initialize the cluster: {e}")))
        }
        Err(RaftError::Fatal(e)) => Err(Error::Raft(e.into())),
    }
}

/// A leader that finds no cluster id commits a fresh one; the state machine keeps only the
/// first, so racing leaders agree.
pub(super) async fn ensure_cluster_id(raft: Raft, view: Arc<StateView>, cancel: CancellationToken) {
    let mut metrics = raft.metrics();
    loop {
        let leader = metrics.borrow_and_update().state == ServerState::Leader;
        if view.cluster_id().is_some() {
            return;
        }
        if leader {
            let cmd = LogCommand::new(Command::SetClusterId { id: Uuid::new_v4() });
            match raft.client_write(cmd).await {
                Ok(r) => {
                    tracing::info!(outcome = ?r.data, "cluster id committed");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "committing the cluster id failed; will retry")
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
