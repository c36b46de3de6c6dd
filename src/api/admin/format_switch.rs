//! The cluster's switch to log format 2 (DESIGN.md "Format v2, once"): a rolling upgrade
//! replaces nodes one at a time, and until every member reads format 2, every node, new or
//! old, writes format 1. The leader asks each member for its status (a signed control
//! request, `super::control`) and, once every voter and learner reports that it reads
//! format 2, proposes `Command::FormatSwitch`. From its apply on, leaders write format 2.
//!
//! A member whose build predates format 2 says nothing of its log format in its status, and
//! counts as reading format 1. A node that cannot be asked holds the switch back, so a
//! member that is down during the upgrade is waited for. After the switch, the membership
//! change refuses a joiner that does not read the cluster's format, and an older build
//! refuses the data directory (`store::migrations`).

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::control;
use crate::api::{codec, Ctx};
use crate::command::{Command, LogCommand, COMMAND_FORMAT};
use crate::raft::types::NodeId;
use crate::subjects::AdminOp;

/// How often a leader of a format-1 cluster checks its members: often, because until the
/// switch a new cluster ignores request ids (exactly-once writes). It asks only until the
/// switch applied, once per member: a few small requests per second during an upgrade.
const CHECK_EVERY: Duration = Duration::from_millis(200);
const ASK_TIMEOUT: Duration = Duration::from_millis(1000);
/// How often the members that hold the switch back are named in the log.
const WAITING_NOTE_EVERY: Duration = Duration::from_secs(30);

/// The log formats a node states in its status (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct LogFormat {
    /// The format the cluster writes, as applied on the node.
    pub cluster: u8,
    /// The newest format the node's build reads.
    pub reads: u8,
}

#[derive(Deserialize)]
struct StatusFormat {
    /// Absent in the status of a build before format 2.
    log_format: Option<LogFormat>,
}

/// Runs on every node; acts while this node leads a cluster that has not switched yet, and
/// ends once the switch applied here.
pub async fn run(ctx: Arc<Ctx>, admin_token: Option<String>, cancel: CancellationToken) {
    let auth = admin_token.map(|t| format!("Bearer {t}"));
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_note: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let view = &ctx.consensus.view;
        if view.cluster_format() >= COMMAND_FORMAT {
            return;
        }
        let m = ctx.consensus.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader || view.cluster_id().is_none() {
            continue;
        }
        let membership = m.membership_config.membership();
        let members: Vec<NodeId> = membership
            .voter_ids()
            .chain(membership.learner_ids())
            .filter(|&id| id != ctx.cluster.me)
            .collect();
        let waiting = laggards(&ctx, &members, auth.as_deref()).await;
        if !waiting.is_empty() {
            if last_note.is_none_or(|t| t.elapsed() >= WAITING_NOTE_EVERY) {
                tracing::info!(
                    ?waiting,
                    format = COMMAND_FORMAT,
                    "log format switch waits for these members to read the new format"
                );
                last_note = Some(tokio::time::Instant::now());
            }
            continue;
        }
        let switch = LogCommand::new(Command::FormatSwitch {
            format: COMMAND_FORMAT,
        });
        match ctx.consensus.raft.client_write(switch).await {
            Ok(_) => tracing::info!(
                format = COMMAND_FORMAT,
                "every member reads the new log format: the cluster switched to it"
            ),
            Err(e) => tracing::info!("log format switch not committed ({e}); trying again"),
        }
    }
}

/// The members that do not (or cannot be asked whether they) read this build's format.
async fn laggards(ctx: &Ctx, members: &[NodeId], auth: Option<&str>) -> Vec<NodeId> {
    let asks = members.iter().map(|&id| async move {
        let subject = ctx.cluster.subjects.node_admin(id, AdminOp::Status);
        let reply = control::Sender::of(ctx)
            .send(subject, auth, "{}".into(), ASK_TIMEOUT)
            .await
            .ok()?;
        codec::reply_code(&reply.payload).ok()?;
        let status: StatusFormat = serde_json::from_slice(&reply.payload).ok()?;
        status.log_format.filter(|f| f.reads >= COMMAND_FORMAT)
    });
    let answers = futures::future::join_all(asks).await;
    members
        .iter()
        .zip(answers)
        .filter(|(_, reads)| reads.is_none())
        .map(|(&id, _)| id)
        .collect()
}
