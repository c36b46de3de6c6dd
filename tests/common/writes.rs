//! Write logs of a load run and the checks on them: what was acknowledged reads back, what
//! was refused is absent, the nodes converge and end with equal keyspace digests.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use concord::client::{Client, ClientError};
use concord::ErrorKind;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::{to_bytes, Cluster};

const POLL: Duration = Duration::from_millis(100);

/// What a writer learned about its writes, by outcome.
#[derive(Default)]
pub struct WriteLog {
    /// key → (value, revision) of every acked put.
    pub acked: BTreeMap<String, (Value, u64)>,
    /// Writes answered `cluster_not_ready`/`busy`/"no responders": never applied.
    pub refused: BTreeMap<String, String>,
    /// Writes of unknown outcome: key → (value written, error).
    pub unknown: BTreeMap<String, (Value, String)>,
}

impl WriteLog {
    pub fn record(&mut self, key: String, value: Value, res: Result<u64, ClientError>) {
        match res {
            Ok(rev) => {
                self.acked.insert(key, (value, rev));
            }
            Err(e) if not_applied(&e) => {
                self.refused.insert(key, e.to_string());
            }
            Err(e) => {
                self.unknown.insert(key, (value, e.to_string()));
            }
        }
    }

    pub fn merge(&mut self, other: WriteLog) {
        self.acked.extend(other.acked);
        self.refused.extend(other.refused);
        self.unknown.extend(other.unknown);
    }

    pub fn max_acked_revision(&self) -> u64 {
        self.acked.values().map(|(_, r)| *r).max().unwrap_or(0)
    }
}

/// Whether an error means, by the contract, that the write was not applied.
pub fn not_applied(e: &ClientError) -> bool {
    match e {
        ClientError::Server(w) => matches!(w.code, ErrorKind::ClusterNotReady | ErrorKind::Busy),
        ClientError::Nats(m) => m.starts_with("no responders"),
        _ => false,
    }
}

/// The safety checks on a [`WriteLog`] of unique keys: acked revisions are distinct, acked
/// keys read back exactly, refused keys are absent, unknown keys are absent or hold the
/// value that was written.
pub async fn check_write_log(cluster: &Cluster, client: &Client, log: &WriteLog) -> Result<()> {
    let mut by_revision: BTreeMap<u64, &str> = BTreeMap::new();
    for (key, (_, rev)) in &log.acked {
        if let Some(other) = by_revision.insert(*rev, key) {
            bail!("revision {rev} was acked for two puts: {other} and {key}");
        }
    }

    let mut failures = read_back(client, &log.acked).await;

    let probe = |key: String| {
        let client = client.clone();
        async move {
            let r = client.get(&key).await;
            (key, r)
        }
    };
    let refused: Vec<_> = stream::iter(log.refused.keys().cloned())
        .map(probe)
        .buffer_unordered(16)
        .collect()
        .await;
    for (key, r) in refused {
        match r {
            Ok(None) => {}
            Ok(Some(v)) => failures.push(format!(
                "{key} was refused ({}) but is present: {v:?}",
                log.refused[&key]
            )),
            Err(e) => failures.push(format!("get {key}: {e}")),
        }
    }
    let unknown: Vec<_> = stream::iter(log.unknown.keys().cloned())
        .map(probe)
        .buffer_unordered(16)
        .collect()
        .await;
    let mut unknown_applied = 0;
    for (key, r) in unknown {
        match r {
            Ok(None) => {}
            Ok(Some(v)) if v.value == log.unknown[&key].0 => unknown_applied += 1,
            Ok(Some(v)) => failures.push(format!(
                "{key} (outcome unknown) holds {v:?}, not the value written"
            )),
            Err(e) => failures.push(format!("get {key}: {e}")),
        }
    }
    eprintln!(
        "{} of {} unknown-outcome writes were applied",
        unknown_applied,
        log.unknown.len()
    );
    if !failures.is_empty() {
        cluster.mark_failed();
        bail!(
            "{} write-log violations:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

/// Reads every acked key (linearizable, 16 at a time) and returns one line per key that
/// does not hold its acked value and revision.
pub async fn read_back(client: &Client, acked: &BTreeMap<String, (Value, u64)>) -> Vec<String> {
    let results: Vec<_> = stream::iter(acked.iter())
        .map(|(key, want)| {
            let client = client.clone();
            async move { (key, want, client.get(key).await) }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut failures = Vec::new();
    for (key, (value, rev), got) in results {
        match got {
            Ok(Some(v)) if v.value == *value && v.revision == *rev => {}
            Ok(Some(v)) => failures.push(format!(
                "{key}: acked {value} at revision {rev}, reads {} at revision {}",
                v.value, v.revision
            )),
            Ok(None) => failures.push(format!(
                "{key}: acked {value} at revision {rev}, now missing"
            )),
            Err(e) => failures.push(format!("{key}: get failed: {e}")),
        }
    }
    failures
}

/// Waits until a majority agrees on a leader that has applied its commit index, and every
/// node of `ids` has applied up to that commit index and reached the leader's revision.
/// Returns (leader, revision).
pub async fn wait_converged(
    cluster: &Cluster,
    ids: &[u64],
    timeout: Duration,
) -> Result<(u64, u64)> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match converged_once(cluster, ids).await {
            Ok(r) => return Ok(r),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            cluster.mark_failed();
            bail!(
                "timed out after {timeout:?} waiting for nodes {ids:?} to apply the leader's \
                 commit index and reach its revision (last: {last})"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

pub async fn converged_once(cluster: &Cluster, ids: &[u64]) -> Result<(u64, u64)> {
    let leader = cluster
        .agreed_leader()
        .await?
        .ok_or_else(|| anyhow!("no leader agreed by a majority"))?;
    let ls = cluster.status(leader).await?;
    let commit = ls["commit_index"]
        .as_u64()
        .ok_or_else(|| anyhow!("leader {leader} has no commit_index: {ls}"))?;
    let revision = ls["revision"]
        .as_u64()
        .ok_or_else(|| anyhow!("leader {leader} has no revision: {ls}"))?;
    for &id in ids {
        let s = if id == leader {
            ls.clone()
        } else {
            cluster.status(id).await?
        };
        let applied = s["last_applied"].as_u64().unwrap_or(0);
        ensure!(
            applied >= commit && s["revision"].as_u64() == Some(revision),
            "node {id}: role={} last_applied={} revision={} (leader {leader}: commit_index={commit} revision={revision})",
            s["role"],
            s["last_applied"],
            s["revision"]
        );
    }
    Ok((leader, revision))
}

/// Asks every node of `ids` for `{"digest": true}` status; all digests (and revisions) must
/// be identical. Call it once the nodes have converged and no write is in flight.
pub async fn assert_digests_equal(cluster: &Cluster, ids: &[u64]) -> Result<()> {
    let mut digests = BTreeMap::new();
    for &id in ids {
        let subject = cluster.subject(&format!("node.{id}.admin.status"));
        let s = cluster
            .request_raw(
                &subject,
                None,
                to_bytes(&json!({"digest": true})),
                Duration::from_secs(15),
            )
            .await
            .with_context(|| format!("digest status of node {id}"))?;
        ensure!(
            s["ok"] == json!(true),
            "digest status of node {id} not ok: {s}"
        );
        let digest = s["digest"]
            .as_str()
            .ok_or_else(|| anyhow!("status of node {id} has no digest: {s}"))?
            .to_string();
        digests.insert(
            id,
            (digest, s["revision"].clone(), s["storage"]["keys"].clone()),
        );
    }
    let distinct: BTreeSet<_> = digests.values().map(|(d, _, _)| d.clone()).collect();
    if distinct.len() != 1 {
        cluster.mark_failed();
        bail!("keyspace digests differ (node → digest, revision, keys): {digests:?}");
    }
    eprintln!(
        "digests equal on nodes {ids:?}: {}",
        distinct.iter().next().map(String::as_str).unwrap_or("")
    );
    Ok(())
}
