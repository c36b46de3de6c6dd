//! The nemesis: faults injected into the real node processes while the workload runs, each
//! followed by a heal and a measure of how long the cluster takes to serve writes again.

use std::time::{Duration, Instant};

use serde::Serialize;

use concord_harness::mesh::{CheckCluster, Error};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// `kill -9` of the leader (odd rounds: of a random node), then a restart.
    Kill,
    /// SIGSTOP of the leader for longer than an election timeout, then SIGCONT.
    Pause,
    /// The leader's (odd rounds: a random node's) links to the other servers cut, then healed.
    Partition,
    /// `kill -9` of every node, then all restarted.
    Restart,
    /// `kill -9` of the leader, restarted at once, then the next leader killed
    /// [`Timing::kill_every`] after (the etcd #9888 scenario: a leader change every ttl/2).
    LeaderKill,
}

impl Fault {
    pub fn parse(s: &str) -> Option<Fault> {
        match s {
            "kill" => Some(Fault::Kill),
            "pause" => Some(Fault::Pause),
            "partition" => Some(Fault::Partition),
            "restart" => Some(Fault::Restart),
            "leader-kill" => Some(Fault::LeaderKill),
            _ => None,
        }
    }

    pub fn all() -> Vec<Fault> {
        vec![Fault::Kill, Fault::Pause, Fault::Partition, Fault::Restart]
    }
}

/// One injected fault, as reported in the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub fault: Fault,
    /// The node it hit (`None` for all of them).
    pub node: Option<u64>,
    pub was_leader: bool,
    /// Milliseconds since the check started.
    pub at_ms: u64,
    pub held_ms: u64,
    /// From the heal until a write succeeded again; `None` if it never did in time.
    pub recovery_ms: Option<u64>,
    /// From the fault until another node reported itself leader (leader faults only, while
    /// the fault was held); `None` if none did, or the fault did not hit the leader.
    pub new_leader_ms: Option<u64>,
    /// The longest stretch without a successful write as the workload's clients saw it,
    /// between the last write or delete acknowledged at or before the fault and the first one
    /// acknowledged once writes were served again (filled in from the history once the
    /// workload stopped).
    pub write_gap_ms: Option<u64>,
    /// The longest one client waited for one write (from its invoke to its completion, over
    /// all its attempts) among the writes in flight between the fault and writes being
    /// served again, acknowledged or given up at the operation deadline (filled in from the
    /// history).
    pub write_wait_ms: Option<u64>,
    /// Probe writes sent after the heal that may have applied (acknowledged, or of unknown
    /// outcome): each may have taken a store revision, which the exactly-once check counts.
    pub probe_writes: u64,
    /// When the fault was injected, and when writes were served again after the heal (not
    /// serialized: `at_ms` and `recovery_ms` are their serialized forms).
    #[serde(skip)]
    pub injected: Option<Instant>,
    #[serde(skip)]
    pub writable: Option<Instant>,
}

/// Timings of one fault.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a fault is held before it heals.
    pub hold: Duration,
    /// A pause must outlast the election timeout for a new leader to take over.
    pub pause: Duration,
    /// Quiet time between faults.
    pub quiet: Duration,
    /// Longest wait for the cluster to serve a write after a heal.
    pub recovery_limit: Duration,
    /// The leader-kill nemesis's cadence: from one kill to the next.
    pub kill_every: Duration,
}

pub struct Nemesis {
    pub timing: Timing,
    pub started: Instant,
    /// Kill and partition hit the leader every round, not only on odd ones.
    pub leader_only: bool,
    rng: u64,
    round: u64,
}

impl Nemesis {
    pub fn new(timing: Timing, started: Instant, seed: u64) -> Nemesis {
        Nemesis {
            timing,
            started,
            leader_only: false,
            rng: seed | 1,
            round: 0,
        }
    }

    fn random_node(&mut self, ids: &[u64]) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        ids[(x % ids.len() as u64) as usize]
    }

    /// The leader on even rounds, a random node on odd ones (for kill and partition).
    async fn target(&mut self, cluster: &CheckCluster, leader_only: bool) -> (u64, bool) {
        let ids = cluster.ids();
        let leader = cluster.leader().await;
        self.round += 1;
        match leader {
            Some(l) if leader_only || self.leader_only || self.round % 2 == 1 => (l, true),
            _ => {
                let n = self.random_node(&ids);
                (n, Some(n) == leader)
            }
        }
    }

    /// Injects one fault, holds it, heals it, and waits for the cluster to serve writes.
    /// While a fault on the leader is held, watches the other nodes for a new leader.
    pub async fn cycle(
        &mut self,
        cluster: &mut CheckCluster,
        fault: Fault,
    ) -> Result<FaultRecord, Error> {
        let at = self.started.elapsed();
        let (node, was_leader) = match fault {
            Fault::Pause | Fault::LeaderKill => {
                let (n, l) = self.target(cluster, true).await;
                (Some(n), l)
            }
            Fault::Kill | Fault::Partition => {
                let (n, l) = self.target(cluster, false).await;
                (Some(n), l)
            }
            Fault::Restart => (None, true),
        };
        let injected = Instant::now();
        match (fault, node) {
            (Fault::Kill | Fault::LeaderKill, Some(n)) => cluster.kill(n).await?,
            (Fault::Pause, Some(n)) => cluster.pause(n).await?,
            (Fault::Partition, Some(n)) => cluster.partition(n).await?,
            _ => {
                for id in cluster.ids() {
                    cluster.kill(id).await?;
                }
            }
        }
        let held = match fault {
            Fault::Pause => self.timing.pause,
            Fault::Restart => Duration::from_millis(500),
            // Back at once: the cluster keeps all three nodes, only the leader changes.
            Fault::LeaderKill => Duration::from_millis(200),
            _ => self.timing.hold,
        };
        let new_leader = match node {
            Some(n) if was_leader => new_leader(cluster, n, injected + held).await,
            _ => None,
        };
        tokio::time::sleep_until((injected + held).into()).await;
        match (fault, node) {
            (Fault::Kill | Fault::LeaderKill, Some(n)) => cluster.start_node(n).await?,
            (Fault::Pause, Some(n)) => cluster.resume(n).await?,
            (Fault::Partition, Some(_)) => cluster.heal().await?,
            _ => {
                for id in cluster.ids() {
                    cluster.start_node(id).await?;
                }
            }
        }
        let healed = Instant::now();
        let (recovered, probe_writes) = wait_writable(cluster, self.timing.recovery_limit).await;
        Ok(FaultRecord {
            fault,
            node,
            was_leader,
            at_ms: at.as_millis() as u64,
            held_ms: held.as_millis() as u64,
            recovery_ms: recovered.then(|| healed.elapsed().as_millis() as u64),
            new_leader_ms: new_leader.map(|t| t.duration_since(injected).as_millis() as u64),
            write_gap_ms: None,
            write_wait_ms: None,
            probe_writes,
            injected: Some(injected),
            writable: recovered.then(Instant::now),
        })
    }
}

/// Polls every node but `old` (each through its own server) until one reports itself leader,
/// or `until` passes; returns when it was seen. The poll interval bounds the resolution.
async fn new_leader(cluster: &CheckCluster, old: u64, until: Instant) -> Option<Instant> {
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != old).collect();
    while Instant::now() < until {
        let polls = futures::future::join_all(others.iter().map(|&id| cluster.status(id))).await;
        if polls
            .iter()
            .flatten()
            .any(|s| s["role"] == serde_json::json!("leader"))
        {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Polls with probe writes (outside the checked keys) until one is acknowledged through
/// every server, or `limit` passes. Also returns how many of the probes may have applied.
async fn wait_writable(cluster: &CheckCluster, limit: Duration) -> (bool, u64) {
    let until = Instant::now() + limit;
    let mut conns = Vec::new();
    for url in cluster.all_client_urls() {
        if let Ok(c) = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(1))
            .connect(url.as_str())
            .await
        {
            conns.push(c);
        }
    }
    if conns.is_empty() {
        return (false, 0);
    }
    let mut applied = 0;
    let mut pending: Vec<usize> = (0..conns.len()).collect();
    while Instant::now() < until {
        let mut still = Vec::new();
        for i in pending {
            let body =
                serde_json::json!({"key": format!("probe:{i}"), "value": 0, "timeout_ms": 1000});
            let req = async_nats::Request::new()
                .payload(body.to_string().into())
                .timeout(Some(Duration::from_millis(1500)));
            let reply = conns[i].send_request("concord.kv.put", req).await;
            applied += u64::from(may_have_applied(&reply));
            if !reply.is_ok_and(|m| m.payload.starts_with(br#"{"ok":true"#)) {
                still.push(i);
            }
        }
        if still.is_empty() {
            return (true, applied);
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (false, applied)
}

/// Whether a probe put with this reply may have applied: all but a request nobody received
/// and the codes that say the command did not happen.
fn may_have_applied(reply: &Result<async_nats::Message, async_nats::RequestError>) -> bool {
    match reply {
        Ok(m) => {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            !matches!(
                v["error"]["code"].as_str(),
                Some("cluster_not_ready" | "busy")
            )
        }
        Err(e) => e.kind() != async_nats::RequestErrorKind::NoResponders,
    }
}
