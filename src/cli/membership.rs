//! `concord cluster add|remove`: membership changes, one safe step at a time. `add` makes the
//! node a learner, waits (with progress) until it has caught up, then promotes it; the
//! leader refuses what would cost the cluster its majority.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{out, show, Global};
use concord::client::{Client, ClientError};
use concord::error::{ErrorKind, WireError};
use concord::subjects::AdminOp;

/// A learner this close to the leader is promoted (the leader allows up to 100).
const CAUGHT_UP_LAG: u64 = 50;
const POLL: Duration = Duration::from_millis(250);

pub async fn add(
    client: &Client,
    global: &Global,
    id: u64,
    learner_only: bool,
    wait: Duration,
) -> Result<i32, ClientError> {
    let added = client
        .admin(AdminOp::MemberAdd, json!({ "id": id }))
        .await?;
    // Progress goes to stderr, also with --json: stdout keeps the one JSON reply.
    if added["changed"] == json!(true) {
        eprintln!("node {id} added as a learner");
    } else {
        eprintln!("node {id} is already a {}", show(&added["role"]));
    }
    if learner_only || added["role"] == json!("voter") {
        return Ok(out(global, added, || summary(id, "learner")));
    }
    wait_caught_up(client, id, wait).await?;
    // Under a steady write load the lag moves; a refusal for lag means "poll again".
    let deadline = Instant::now() + wait;
    let promoted = loop {
        match client
            .admin(AdminOp::MemberPromote, json!({ "id": id }))
            .await
        {
            Ok(v) => break v,
            Err(ClientError::Server(e))
                if e.message
                    .contains(concord::api::admin::membership::BEHIND_LEADER)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(POLL).await;
            }
            Err(e) => return Err(e),
        }
    };
    Ok(out(global, promoted, || summary(id, "voter")))
}

pub async fn remove(client: &Client, global: &Global, id: u64) -> Result<i32, ClientError> {
    let v = client
        .admin(AdminOp::MemberRemove, json!({ "id": id }))
        .await?;
    Ok(out(global, v.clone(), || {
        if v["changed"] == json!(true) {
            format!(
                "node {id} removed; voters {} learners {}",
                show(&v["voters"]),
                show(&v["learners"])
            )
        } else {
            format!("node {id} is not a member; nothing changed")
        }
    }))
}

fn summary(id: u64, role: &str) -> String {
    format!("node {id} is a {role}")
}

/// Polls the leader's view of the learner until its lag is small, printing progress.
async fn wait_caught_up(client: &Client, id: u64, wait: Duration) -> Result<(), ClientError> {
    let started = Instant::now();
    let mut last_shown = (None, None);
    loop {
        let members = client.members().await?;
        let node = members["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["id"].as_u64() == Some(id))
            .cloned()
            .unwrap_or(Value::Null);
        let lag = node["lag"].as_u64();
        let matched = node["matched_index"].as_u64();
        let last = members["last_log_index"].as_u64();
        if (matched, last) != last_shown {
            eprintln!(
                "node {id}: replicated {} of {} entries (lag {})",
                matched.map(|m| (m + 1).to_string()).unwrap_or("0".into()),
                last.map(|l| (l + 1).to_string()).unwrap_or("-".into()),
                lag.map(|l| l.to_string()).unwrap_or("unknown".into()),
            );
            last_shown = (matched, last);
        }
        if lag.is_some_and(|l| l <= CAUGHT_UP_LAG) {
            return Ok(());
        }
        if started.elapsed() > wait {
            return Err(ClientError::Server(WireError::new(
                ErrorKind::Timeout,
                format!(
                    "node {id} did not catch up within {} s; it stays a learner (`concord cluster members` shows its lag)",
                    wait.as_secs()
                ),
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}
