//! What both clusters of the harness do to their child processes and status replies: send
//! signals (kill, pause, resume), read log tails, and decide which node leads.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// `kill <sig> <pid>` failed to run or reported failure.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed: {status}: {stderr}")]
pub struct SignalError {
    pub command: String,
    pub status: String,
    pub stderr: String,
}

/// `kill <sig> <pid>`, e.g. `signal(pid, "-STOP")` (the `kill` command: no libc in the
/// dependencies).
pub fn signal(pid: u32, sig: &str) -> Result<(), SignalError> {
    let command = format!("kill {sig} {pid}");
    let out = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SignalError {
            command: command.clone(),
            status: "not run".into(),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(SignalError {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The last `max` bytes of `text` (on a char boundary).
pub fn tail_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The leader named by a majority of the voters in the statuses (`P.node.<id>.admin.status`
/// replies by node id), which must itself answer as that leader. The voter count comes from
/// the leader's own `members.voters`, else `default_voters`. When two qualify (an isolated old
/// leader still claims its majority of stale replies), the higher term wins.
pub fn agreed_leader(statuses: &BTreeMap<u64, Value>, default_voters: usize) -> Option<u64> {
    let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
    for status in statuses.values() {
        if let Some(leader) = status["leader"].as_u64() {
            *votes.entry(leader).or_default() += 1;
        }
    }
    votes
        .into_iter()
        .filter_map(|(leader, count)| {
            let own = statuses.get(&leader)?;
            if own["role"] != json!("leader") || own["leader"].as_u64() != Some(leader) {
                return None;
            }
            let voters = own["members"]["voters"]
                .as_array()
                .map(Vec::len)
                .filter(|&n| n > 0)
                .unwrap_or(default_voters);
            (count > voters / 2).then(|| (own["term"].as_u64().unwrap_or(0), leader))
        })
        .max()
        .map(|(_, leader)| leader)
}
