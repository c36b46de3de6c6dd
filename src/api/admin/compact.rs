//! `P.admin.compact {"revision"}`: compacts the change log through a revision (admin), by a
//! log entry the leader proposes, so every node compacts at the same revision. Accepted at
//! the storage quota: it frees space. The retention task proposes the same entry on its
//! own (`watch::retention`).

use std::time::Duration;

use async_nats::Message;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::api::handler::propose;
use crate::api::route::{self, AttemptError, Routed};
use crate::api::{codec, Ctx};
use crate::auth::tokens::Role;
use crate::auth::Credential;
use crate::command::{Applied, Command, FORMAT_V2};
use crate::error::{cluster_not_ready, internal, WireError};
use crate::subjects::AdminOp;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactBody {
    revision: u64,
    token: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Serialize)]
struct Compacted {
    ok: bool,
    compact_revision: u64,
}

pub async fn handle_compact(ctx: &Ctx, msg: &Message) -> Vec<u8> {
    let arrival = Instant::now();
    match handle_inner(ctx, msg, arrival).await {
        Ok(b) => b,
        Err(e) => codec::encode_error(&e),
    }
}

async fn handle_inner(ctx: &Ctx, msg: &Message, arrival: Instant) -> Result<Vec<u8>, WireError> {
    let body: CompactBody = super::decode(&msg.payload)?;
    let timeout = body.timeout_ms.map(Duration::from_millis);
    let r = Routed::new(ctx, msg, arrival, timeout, true);
    let cred = Credential::of(body.token.as_deref(), msg.headers.as_ref());
    r.to_leader_within_deadline(
        ctx,
        |leader| ctx.cluster.subjects.node_admin(leader, AdminOp::Compact),
        || async {
            route::authorize_on_leader(ctx, cred, Role::Admin).await?;
            if ctx.consensus.view.cluster_format() < FORMAT_V2 {
                return Err(AttemptError::Fail(cluster_not_ready(
                    "the cluster keeps no change log until every node runs a build that reads log format 2",
                )));
            }
            let command = Command::Compact {
                revision: body.revision,
            };
            match propose(ctx, command, &r.delivery).await? {
                Applied::Compacted { revision } => Ok(codec::encode_ok(&Compacted {
                    ok: true,
                    compact_revision: revision,
                })),
                other => Err(AttemptError::Fail(internal(format!(
                    "unexpected outcome {other:?}"
                )))),
            }
        },
    )
    .await
}
