//! `concord watch-telemetry` (print the event stream of `P.telemetry.>`) and
//! `concord snapshot` (build a snapshot on one node or on every member).

use futures::StreamExt;
use serde_json::{json, Value};

use super::{emit, out, show, Global};
use concord::client::{Client, ClientError};

/// Prints events until Ctrl-C (or the connection closes): the JSON as published with
/// `--json`, else one readable line each. `filter` is an event path or a prefix of one
/// (`api`, `api.put`, `snapshot`).
pub async fn watch_telemetry(
    client: &Client,
    global: &Global,
    filter: Option<&str>,
) -> Result<i32, ClientError> {
    let nats = client.nats();
    let subjects = client.subjects();
    let subscribe = |subject: String| async move {
        nats.subscribe(subject)
            .await
            .map_err(|e| ClientError::Nats(e.to_string()))
    };
    // The filter goes to the server: an exact path and everything under it.
    let mut events = match filter.map(|f| f.trim_matches('.')) {
        None | Some("") => subscribe(subjects.telemetry_wildcard()).await?.boxed(),
        Some(f) => {
            let exact = subscribe(subjects.telemetry(f)).await?;
            let under = subscribe(subjects.telemetry(&format!("{f}.>"))).await?;
            futures::stream::select(exact, under).boxed()
        }
    };
    if !global.json {
        eprintln!(
            "watching {} (Ctrl-C to stop)",
            subjects.telemetry(filter.unwrap_or(">"))
        );
    }
    // One listener for the whole run: a Ctrl-C between two events must not be missed.
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let msg = tokio::select! {
            _ = &mut stop => return Ok(0),
            m = events.next() => match m {
                Some(m) => m,
                None => return Err(ClientError::Nats("the NATS connection closed".into())),
            },
        };
        if global.json {
            emit(&String::from_utf8_lossy(&msg.payload));
            continue;
        }
        match serde_json::from_slice::<Value>(&msg.payload) {
            Ok(v) => emit(&event_line(&v)),
            Err(_) => emit(&format!(
                "{}: (not JSON) {} bytes",
                msg.subject,
                msg.payload.len()
            )),
        }
    }
}

/// `<time> node <id> <path> k=v ...`: measurements, then metadata.
fn event_line(v: &Value) -> String {
    let path: Vec<String> = v["event"]
        .as_array()
        .into_iter()
        .flatten()
        .skip(1)
        .map(show)
        .collect();
    let mut line = format!(
        "{} node {} {}",
        show(&v["time"]),
        show(&v["node"]),
        path.join(".")
    );
    for part in ["measurements", "metadata"] {
        for (k, val) in v[part].as_object().into_iter().flatten() {
            line.push_str(&format!(" {k}={}", show(val)));
        }
    }
    line
}

/// Asks `node` (or every member) to build a snapshot and waits for each.
pub async fn snapshot(
    client: &Client,
    global: &Global,
    node: Option<u64>,
) -> Result<i32, ClientError> {
    let nodes = match node {
        Some(id) => vec![id],
        None => {
            let status = client.status().await?;
            ["voters", "learners"]
                .iter()
                .flat_map(|k| status["members"][k].as_array().cloned().unwrap_or_default())
                .filter_map(|v| v.as_u64())
                .collect()
        }
    };
    let mut results = Vec::new();
    let mut failed = false;
    for id in nodes {
        match client.node_snapshot(id).await {
            Ok(v) => {
                results.push(json!({"node": id, "ok": true, "snapshot_index": v["snapshot_index"]}))
            }
            Err(e) => {
                failed = true;
                results.push(json!({"node": id, "ok": false,
                    "error": {"code": e.code(), "message": e.message()}}));
            }
        }
    }
    let text = results
        .iter()
        .map(|r| match r["ok"].as_bool() {
            Some(true) => format!(
                "node {}: snapshot at index {}",
                show(&r["node"]),
                show(&r["snapshot_index"])
            ),
            _ => format!(
                "node {}: failed: {}: {}",
                show(&r["node"]),
                show(&r["error"]["code"]),
                show(&r["error"]["message"])
            ),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let code = out(global, json!({"ok": !failed, "nodes": results}), || text);
    Ok(if failed { 1 } else { code })
}
