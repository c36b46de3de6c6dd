//! `concord cluster status|members|add|remove`: the command enum and the status and member
//! tables (membership changes themselves are in `membership.rs`).

use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};

use super::{out, show, Global};
use concord::client::{Client, ClientError};

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Leader, term, indices, members and each node's role and storage.
    Status,
    /// Voters and learners with their replication index and lag.
    Members,
    /// Add a running node (started with `cluster.join = true`): as a learner, then, once it
    /// has caught up, as a voter.
    Add {
        /// The node's id.
        id: u64,
        /// Stop after adding it as a learner.
        #[arg(long)]
        learner: bool,
        /// How long to wait for it to catch up before giving up (it stays a learner).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Remove a voter or learner (the leader too: it steps down once the change commits).
    /// The removed node stops and its data dir is marked as removed.
    Remove {
        /// The node's id.
        id: u64,
    },
}

/// `concord cluster status`: the cluster's view, then each member's own.
pub async fn status(client: &Client, global: &Global) -> Result<i32, ClientError> {
    let status = client.status().await?;
    let members: Vec<u64> = status["members"]["voters"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            status["members"]["learners"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .filter_map(Value::as_u64)
        .collect();
    let mut nodes = Vec::new();
    for id in &members {
        let s = match client.node_status(*id).await {
            Ok(s) => s,
            Err(e) => json!({"node": id, "role": "unreachable", "error": e.to_string()}),
        };
        nodes.push(s);
    }
    let leader = status["leader"].clone();
    let leader_status = nodes
        .iter()
        .find(|n| n["node"] == leader && n["role"] == "leader")
        .cloned()
        .unwrap_or(status.clone());
    let summary = json!({
        "ok": true,
        "cluster_name": status["cluster_name"],
        "cluster_id": status["cluster_id"],
        "leader": leader,
        "term": leader_status["term"],
        "commit_index": leader_status["commit_index"],
        "last_applied": leader_status["last_applied"],
        "revision": leader_status["revision"],
        "log_format": leader_status["log_format"],
        "cluster_time_ms": leader_status["cluster_time_ms"],
        "members": status["members"],
        "nodes": nodes,
    });
    let text = status_text(&summary);
    Ok(out(global, summary, || text))
}

fn status_text(s: &Value) -> String {
    let mut t = String::new();
    t.push_str(&format!(
        "cluster   {} ({})\n",
        show(&s["cluster_name"]),
        show(&s["cluster_id"])
    ));
    t.push_str(&format!("leader    node {}\n", show(&s["leader"])));
    t.push_str(&format!("term      {}\n", show(&s["term"])));
    t.push_str(&format!("commit    {}\n", show(&s["commit_index"])));
    t.push_str(&format!("applied   {}\n", show(&s["last_applied"])));
    t.push_str(&format!("revision  {}\n", show(&s["revision"])));
    t.push_str(&format!("format    {}\n", format_text(s)));
    if let Some(ms) = s["cluster_time_ms"].as_u64() {
        t.push_str(&format!(
            "time      {}.{:03} s of cluster time\n",
            ms / 1000,
            ms % 1000
        ));
    }
    t.push_str(&format!(
        "members   voters {} learners {}\n\n",
        show(&s["members"]["voters"]),
        show(&s["members"]["learners"])
    ));
    t.push_str(&format!(
        "{:<6} {:<12} {:>6} {:>10} {:>10} {:>10} {:>12} {:>16} {:>9}\n",
        "NODE", "ROLE", "TERM", "COMMIT", "APPLIED", "KEYS", "BYTES", "DATA", "REJECTED"
    ));
    for n in s["nodes"].as_array().into_iter().flatten() {
        t.push_str(&format!(
            "{:<6} {:<12} {:>6} {:>10} {:>10} {:>10} {:>12} {:>16} {:>9}\n",
            show(&n["node"]),
            show(&n["role"]),
            show(&n["term"]),
            show(&n["commit_index"]),
            show(&n["last_applied"]),
            show(&n["storage"]["keys"]),
            show(&n["storage"]["bytes"]),
            data_text(&n["storage"]),
            show(&n["security"]["rpc_rejected"]),
        ));
    }
    let unsynced: Vec<String> = s["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["storage"]["fsync"] == json!(false))
        .map(|n| show(&n["node"]))
        .collect();
    if !unsynced.is_empty() {
        t.push_str(&format!(
            "\nwarning: storage.fsync is off on node {}: acknowledged writes can be lost to a power cut\n",
            unsynced.join(", ")
        ));
    }
    t.trim_end().to_string()
}

/// The log format the cluster writes, and who holds a pending switch back.
fn format_text(s: &Value) -> String {
    let Some(cluster) = s["log_format"]["cluster"].as_u64() else {
        return "log 1 (the leader's build predates log format 2)".into();
    };
    let behind: Vec<String> = s["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["log_format"]["reads"].as_u64().unwrap_or(1) <= cluster)
        .map(|n| show(&n["node"]))
        .collect();
    let newest = concord::command::COMMAND_FORMAT as u64;
    if cluster >= newest || behind.is_empty() {
        format!("log {cluster}")
    } else {
        format!(
            "log {cluster} (the switch to {newest} waits for node {} to read it)",
            behind.join(", ")
        )
    }
}

/// Live data size, with the quota's share when there is one: `1048576 (12%)`.
fn data_text(storage: &Value) -> String {
    let data = show(&storage["data_bytes"]);
    match (
        storage["data_bytes"].as_u64(),
        storage["max_bytes"].as_u64(),
    ) {
        (Some(d), Some(max)) if max > 0 => format!("{data} ({}%)", d.saturating_mul(100) / max),
        _ => data,
    }
}

pub fn members_text(v: &Value) -> String {
    let mut t = format!(
        "leader node {} (term {})\n",
        show(&v["leader"]),
        show(&v["term"])
    );
    t.push_str(&format!(
        "{:<6} {:<8} {:>10} {:>8}\n",
        "NODE", "ROLE", "MATCHED", "LAG"
    ));
    for n in v["nodes"].as_array().into_iter().flatten() {
        t.push_str(&format!(
            "{:<6} {:<8} {:>10} {:>8}\n",
            show(&n["id"]),
            show(&n["role"]),
            show(&n["matched_index"]),
            show(&n["lag"])
        ));
    }
    t.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_shows_live_data_and_the_quota_share() {
        assert_eq!(
            data_text(&json!({"data_bytes": 512, "max_bytes": 2048})),
            "512 (25%)"
        );
        assert_eq!(
            data_text(&json!({"data_bytes": 512, "max_bytes": 0})),
            "512"
        );
        assert_eq!(data_text(&json!({})), "-");
        let s = json!({"nodes": [{"node": 1, "storage": {"keys": 3, "bytes": 9, "data_bytes": 10, "max_bytes": 100}}]});
        let text = status_text(&s);
        assert!(text.contains("DATA") && text.contains("10 (10%)"), "{text}");
        assert!(!text.contains("fsync"), "{text}");
    }

    #[test]
    fn status_warns_of_nodes_without_fsync() {
        let s = json!({"nodes": [
            {"node": 1, "storage": {"fsync": true}},
            {"node": 2, "storage": {"fsync": false}},
        ]});
        let text = status_text(&s);
        assert!(
            text.contains("warning: storage.fsync is off on node 2:"),
            "{text}"
        );
    }
}
