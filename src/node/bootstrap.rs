//! Forming the cluster: before Raft starts, ask who already answers on this subject prefix
//! ([`check_prefix`]) and refuse to start inside another cluster; after, the bootstrapper of
//! a new cluster initializes it ([`form_cluster`]), and the first leader commits a cluster id
//! ([`ensure_cluster_id`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, ServerState};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Error;
use crate::command::{Command, LogCommand};
use crate::config::Config;
use crate::raft::types::Raft;
use crate::store::StateView;
use crate::subjects::{AdminOp, Subjects};

/// What answered `P.admin.status` when this node started.
#[derive(Debug, serde::Deserialize)]
struct PeerStatus {
    node: u64,
    cluster_name: String,
    cluster_id: Option<Uuid>,
    #[serde(default)]
    members: Option<PeerMembers>,
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

/// Asks `P.admin.status` who serves this prefix. Refuses to start if another cluster does;
/// returns whether a live member of this cluster answered.
pub(super) async fn check_prefix(
    client: &Client,
    subjects: &Subjects,
    config: &Config,
    admin_token: Option<&str>,
    my_cluster_id: Option<Uuid>,
    pristine: bool,
) -> Result<bool, Error> {
    let mut req = async_nats::Request::new()
        .payload("{}".into())
        .timeout(Some(Duration::from_millis(1500)));
    if let Some(t) = admin_token {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Authorization", format!("Bearer {t}").as_str());
        req = req.headers(h);
    }
    let reply = match client
        .send_request(subjects.admin(AdminOp::Status), req)
        .await
    {
        Ok(m) => m,
        Err(e) if e.kind() == RequestErrorKind::NoResponders => return Ok(false),
        Err(e) => {
            tracing::warn!(error = %e, "no answer on {}; assuming no cluster", subjects.admin(AdminOp::Status));
            return Ok(false);
        }
    };
    if is_unauthorized(&reply.payload) {
        if config.auth.enabled {
            tracing::warn!(
                "a node with auth answers on '{}' and refuses this node's credential; assuming it is this cluster (set auth.admin_token to the cluster's admin credential to check)",
                subjects.admin(AdminOp::Status)
            );
            return Ok(true);
        }
        return Err(Error::OtherCluster(format!(
            "a cluster with auth on answers on subject prefix '{}', and this node has auth off; \
             give this cluster its own nats.subject_prefix, or turn auth on with its admin credential",
            subjects.prefix()
        )));
    }
    let Ok(peer) = serde_json::from_slice::<PeerStatus>(&reply.payload) else {
        return Err(Error::OtherCluster(format!(
            "something that is not a Concord node answers on '{}'; give this cluster its own nats.subject_prefix",
            subjects.admin(AdminOp::Status)
        )));
    };
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
            subjects.prefix(),
            peer.node,
            config.cluster.name,
            my_cluster_id
                .map(|u| u.to_string())
                .unwrap_or_else(|| "not yet assigned".into()),
        )));
    }
    // A node the cluster removed while it could not be told must not rejoin with its old
    // state: it would campaign and answer clients without ever reaching a leader.
    if let (false, Some(m), Some(_)) = (pristine, &peer.members, my_cluster_id) {
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
    Ok(true)
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
