//! The fault suite's cluster: three `concord serve` nodes, each connected to its own
//! `nats-server`, the three servers joined as one NATS cluster, so that the nemesis can kill,
//! pause, restart and partition real node processes.
//!
//! Two modes:
//!
//! - **Network namespaces** (root, `ip netns` works): server `i` and node `i` live in
//!   namespace `cc<pid>n<i>` (`cc<pid>s<seq>n<i>` for a process's later clusters). Each
//!   namespace has one veth pair to the root namespace for client traffic (`10.77.<i>.1`
//!   root side, `10.77.<i>.2` namespace side) and one veth pair to each other namespace for
//!   the NATS cluster routes (`10.78.<k>.1/.2`, a /30 per pair). Clusters running at the
//!   same time on one machine (a `concord check` beside a test) each claim a slot, a file in
//!   `/run/concord-check/`; slot `s` uses `10.77.<4s+i>.x` (slot 0 is the plan above).
//!   A partition sets mesh links down; the client link of the isolated namespace stays up, so
//!   a client pinned to its server still reaches it (and sees what a minority node does).
//! - **Loopback** (not root, no `ip netns`, or not asked for): the three servers listen on
//!   127.0.0.1 with distinct ports, still clustered; partitions are unsupported and
//!   [`CheckCluster::partition`] says why.
//!
//! What this module must never do:
//!
//! - Route between namespaces through the root namespace: it adds no route between the
//!   namespaces and leaves `net.ipv4.ip_forward` alone, so the mesh links are the only path
//!   between servers and setting them down really partitions.
//! - Touch any interface, namespace or process it did not create, except namespaces of this
//!   module's naming scheme whose creating process is dead ([`cleanup_stale_namespaces`]).
//! - Leave namespaces or processes behind: [`CheckCluster::shutdown`] and `Drop` kill every
//!   child and delete every namespace and veth it created, also when `start` fails halfway.
//! - Mask a node crash: a node that exited on its own is reported as
//!   [`Error::NodeExited`] (with its log tail) by the next call that touches it.
//! - Panic on anything external (processes, files, `ip`, NATS): every such failure is an
//!   [`Error`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};

mod netns;
mod setup;
mod spawn;
#[cfg(test)]
mod tests;

use netns::*;
pub use spawn::request;
use spawn::*;

/// Node ids of the check cluster (all three are initial voters).
const IDS: [u64; 3] = [1, 2, 3];
/// Client and route ports inside a namespace (each namespace has its own port space).
const NETNS_CLIENT_PORT: u16 = 4222;
const NETNS_ROUTE_PORT: u16 = 6222;
/// How long a `nats-server` gets to log "Server is ready".
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the three servers get to connect their routes (at start and after a heal).
const MESH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `start` waits for a leader, and `start_node` for the node to answer.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// One admin status request: short, so a paused or cut-off node does not stall a poll.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// One mesh probe request.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a SIGKILLed process gets to be reaped (it may be in an uninterruptible fsync).
const REAP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Loopback mode picks free ports and may lose a race for them: attempts before giving up.
const LOOPBACK_ATTEMPTS: usize = 3;
/// Slot files of the clusters running on this machine (tmpfs: gone after a reboot).
const SLOT_DIR: &str = "/run/concord-check";
/// Slots of client subnets: slot `s` uses `10.77.<4s+1 ..= 4s+3>.0/24`.
const MAX_SLOTS: u8 = 60;
/// Linux's limit for interface names (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// Distinguishes several clusters started by one process (the namespace names carry it).
static RUN_SEQ: AtomicU32 = AtomicU32::new(0);

/// What can go wrong. Every message names the node, server, command or wait involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("nats-server n{id}: {message}")]
    NatsServer { id: u64, message: String },
    #[error("node {id} exited on its own with {status}; log tail:\n{log_tail}")]
    NodeExited {
        id: u64,
        status: String,
        log_tail: String,
    },
    #[error("connecting a NATS client to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("request on {subject}: {message}")]
    Request { subject: String, message: String },
    #[error("timed out after {waited:?} waiting for {what} (last: {last})")]
    Timeout {
        what: String,
        waited: Duration,
        last: String,
    },
    #[error("no node {0} in the check cluster (its ids are 1, 2, 3)")]
    UnknownNode(u64),
    #[error("node {0} is not running")]
    NotRunning(u64),
    #[error("node {0} is already running")]
    AlreadyRunning(u64),
    #[error("partitions are not supported: {0}")]
    PartitionUnsupported(String),
    #[error("invalid cluster spec: {0}")]
    Spec(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// What to run and where.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The `concord` binary.
    pub bin: PathBuf,
    /// The `nats-server` binary (a bare name is looked up on PATH).
    pub nats_server: PathBuf,
    /// Data dirs, logs and server configs go here; it should be empty (an old data dir
    /// would be reused as is).
    pub workdir: PathBuf,
    /// Extra env for every node, applied after this module's own settings (so it overrides
    /// them, e.g. `CONCORD_CLUSTER__NAME` or `CONCORD_NATS__SUBJECT_PREFIX`).
    pub node_env: Vec<(String, String)>,
    /// Ask for network namespaces; falls back to loopback when they are not possible.
    pub use_netns: bool,
    /// nats-server's `ping_interval` for clients (the nodes) and routes, with `ping_max` 2:
    /// how soon a paused node's connection, or a cut route, is dropped with the queue
    /// subscriptions behind it. `None`: `1s`, which suits the suite's 0.8–1.6 s elections;
    /// the shipped timings ship `250ms` (compose/nats/liveness.conf, which sets both).
    pub client_ping_interval: Option<String>,
}

/// A running check cluster. See the module docs.
pub struct CheckCluster {
    spec: Spec,
    workdir: PathBuf,
    net: Net,
    servers: Vec<Server>,
    nodes: Vec<Node>,
    /// One client per server (index `id - 1`), connected to [`CheckCluster::client_url`].
    clients: Vec<async_nats::Client>,
    /// Mesh probe responders, one per server.
    responders: Vec<tokio::task::JoinHandle<()>>,
    /// `nats.subject_prefix` of the nodes.
    prefix: String,
    /// Unique per cluster: names the namespaces and the mesh probe subjects.
    tag: String,
    cleaned: bool,
}

enum Net {
    Netns(Netns),
    /// Client ports of the three servers; why namespaces are not used.
    Loopback {
        client_ports: Vec<u16>,
        reason: String,
    },
}

struct Server {
    id: u64,
    child: Option<Child>,
}

struct Node {
    id: u64,
    log_path: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    paused: bool,
}

impl CheckCluster {
    /// Starts the three servers, waits until their routes carry messages both ways, starts
    /// the three nodes and waits (30 s) until all three follow one leader
    /// ([`CheckCluster::wait_stable`]). Falls back to loopback when namespaces were asked for
    /// but are not possible ([`CheckCluster::fallback_reason`] says why).
    pub async fn start(spec: Spec) -> Result<CheckCluster, Error> {
        if !spec.bin.is_file() {
            return Err(Error::Spec(format!(
                "the concord binary {} does not exist",
                spec.bin.display()
            )));
        }
        std::fs::create_dir_all(&spec.workdir)
            .map_err(io_err(format!("creating {}", spec.workdir.display())))?;
        // Absolute, because the node's data dir and the server's log file are handed to
        // other processes (and `ip netns exec` keeps the working directory, but be explicit).
        let workdir = std::path::absolute(&spec.workdir)
            .map_err(io_err(format!("resolving {}", spec.workdir.display())))?;

        let seq = RUN_SEQ.fetch_add(1, Ordering::SeqCst);
        let tag = run_tag(std::process::id(), seq);

        let net = if !spec.use_netns {
            Net::Loopback {
                client_ports: Vec::new(),
                reason: "network namespaces were not requested".into(),
            }
        } else if !is_root() {
            Net::Loopback {
                client_ports: Vec::new(),
                reason: "not running as root (network namespaces need root)".into(),
            }
        } else {
            cleanup_stale_namespaces();
            match Netns::setup(&tag) {
                Ok(netns) => Net::Netns(netns),
                Err(e) => {
                    tracing::warn!("network namespaces unavailable, using loopback: {e}");
                    Net::Loopback {
                        client_ports: Vec::new(),
                        reason: format!("setting up network namespaces failed: {e}"),
                    }
                }
            }
        };

        let prefix = env_value(&spec.node_env, "CONCORD_NATS__SUBJECT_PREFIX")
            .unwrap_or_else(|| "concord".to_string());
        let nodes = IDS
            .iter()
            .map(|&id| Node {
                id,
                log_path: workdir.join(format!("n{id}.log")),
                env: Vec::new(),
                child: None,
                paused: false,
            })
            .collect();
        // From here on `Drop` cleans up whatever an early return leaves behind.
        let mut cluster = CheckCluster {
            spec,
            workdir,
            net,
            servers: Vec::new(),
            nodes,
            clients: Vec::new(),
            responders: Vec::new(),
            prefix,
            tag,
            cleaned: false,
        };
        cluster.start_servers().await?;
        cluster.connect_clients().await?;
        cluster.wait_mesh(MESH_TIMEOUT).await?;
        for id in IDS {
            cluster.nodes[index(id)].env = cluster.node_env(id);
            cluster.spawn_node(id)?;
        }
        cluster.wait_stable_watching(LEADER_TIMEOUT).await?;
        Ok(cluster)
    }

    /// Whether the cluster runs in network namespaces (and so supports partitions).
    pub fn netns(&self) -> bool {
        matches!(self.net, Net::Netns(_))
    }

    /// Why the cluster runs on loopback; `None` in namespace mode.
    pub fn fallback_reason(&self) -> Option<&str> {
        match &self.net {
            Net::Netns(_) => None,
            Net::Loopback { reason, .. } => Some(reason),
        }
    }

    /// The namespaces of this cluster (empty in loopback mode).
    pub fn namespaces(&self) -> Vec<String> {
        match &self.net {
            Net::Netns(n) => n.namespaces.clone(),
            Net::Loopback { .. } => Vec::new(),
        }
    }

    pub fn ids(&self) -> Vec<u64> {
        IDS.to_vec()
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// The URL of server `id`, reachable from the root namespace. A client connected to it
    /// stays on that server: the servers do not advertise each other to clients.
    pub fn client_url(&self, id: u64) -> String {
        match &self.net {
            Net::Netns(n) => format!("nats://{}:{NETNS_CLIENT_PORT}", n.client_ip(id, 2)),
            Net::Loopback { client_ports, .. } => {
                let port = client_ports.get(index(id)).copied().unwrap_or(0);
                format!("nats://127.0.0.1:{port}")
            }
        }
    }

    /// The client connected to server `id` (see [`CheckCluster::client_url`]).
    pub fn client(&self, id: u64) -> Result<&async_nats::Client, Error> {
        self.clients.get(index(id)).ok_or(Error::UnknownNode(id))
    }

    pub fn all_client_urls(&self) -> Vec<String> {
        IDS.iter().map(|&id| self.client_url(id)).collect()
    }

    /// The OS pid of node `id` while it runs (in namespace mode `ip netns exec` execs the
    /// node, so this is the node itself).
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes
            .get(index(id))
            .and_then(|n| n.child.as_ref().map(Child::id))
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.pid(id).is_some()
    }

    pub fn is_paused(&self, id: u64) -> bool {
        self.nodes.get(index(id)).is_some_and(|n| n.paused)
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.workdir.join(format!("n{id}.log"))
    }

    /// The last `lines` lines of node `id`'s log (empty if there is none).
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        tail_lines(&self.log_path(id), lines)
    }

    /// The last `lines` lines of server `id`'s log.
    pub fn nats_log_tail(&self, id: u64, lines: usize) -> String {
        tail_lines(&self.workdir.join(format!("nats-n{id}.log")), lines)
    }

    /// Node `id`'s `P.node.<id>.admin.status`, asked through server `id` (1 s timeout).
    /// Fails unless the reply has `"ok": true`.
    pub async fn status(&self, id: u64) -> Result<Value, Error> {
        let client = self.client(id)?;
        let subject = format!("{}.node.{id}.admin.status", self.prefix);
        let reply = request(client, &subject, &json!({}), STATUS_TIMEOUT).await?;
        if reply["ok"] != json!(true) {
            return Err(Error::Request {
                subject,
                message: format!("reply is not ok: {reply}"),
            });
        }
        Ok(reply)
    }

    /// A node that reports itself leader and that a majority of the voters name as leader
    /// (asking every node through its own server). `None` while there is none.
    pub async fn leader(&self) -> Option<u64> {
        agreed_leader(&self.statuses().await)
    }

    /// Polls [`CheckCluster::leader`] until there is one.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader().await {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "a leader agreed by a majority".into(),
                    waited: timeout,
                    last: self.status_summary().await,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Stronger than [`CheckCluster::wait_for_leader`]: waits until *every* node answers,
    /// names the same leader (which reports role `leader`, the others `follower`), has the
    /// leader's voter set and has applied up to the leader's commit index. A majority can
    /// elect a leader while the third node has not heard from it yet; a fault injected then
    /// (partitioning the leader) would leave no quorum and look like a Concord bug.
    pub async fn wait_stable(&self, timeout: Duration) -> Result<u64, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match stable_leader(&self.statuses().await) {
                Ok(leader) => return Ok(leader),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "every node to follow one leader".into(),
                    waited: timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// SIGKILL node `id` and reap it. A node that had already exited on its own is
    /// reported as [`Error::NodeExited`] (and forgotten, so it can be started again).
    pub async fn kill(&mut self, id: u64) -> Result<(), Error> {
        self.check_exited(id)?;
        let node = self.node_mut(id)?;
        let child = node.child.as_mut().ok_or(Error::NotRunning(id))?;
        // SIGKILL also ends a SIGSTOPped process.
        child.kill().map_err(io_err(format!("SIGKILL node {id}")))?;
        reap(child, &format!("node {id}")).await?;
        node.child = None;
        node.paused = false;
        Ok(())
    }

    /// Starts node `id` again (same id, env and data dir; its log is appended to) and waits
    /// until it answers its admin status.
    pub async fn start_node(&mut self, id: u64) -> Result<(), Error> {
        self.check_exited(id)?;
        if self.node_mut(id)?.child.is_some() {
            return Err(Error::AlreadyRunning(id));
        }
        self.spawn_node(id)?;
        let deadline = Instant::now() + NODE_READY_TIMEOUT;
        loop {
            self.check_exited(id)?;
            let last = match self.status(id).await {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("restarted node {id} to answer its admin status"),
                    waited: NODE_READY_TIMEOUT,
                    last: format!("{last}; log tail:\n{}", self.log_tail(id, 30)),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// SIGSTOP: the node freezes (no heartbeats, no replies) but keeps its connection.
    pub async fn pause(&mut self, id: u64) -> Result<(), Error> {
        self.check_exited(id)?;
        let pid = self.pid(id).ok_or(Error::NotRunning(id))?;
        signal(pid, "-STOP")?;
        self.node_mut(id)?.paused = true;
        Ok(())
    }

    /// SIGCONT.
    pub async fn resume(&mut self, id: u64) -> Result<(), Error> {
        self.check_exited(id)?;
        let pid = self.pid(id).ok_or(Error::NotRunning(id))?;
        signal(pid, "-CONT")?;
        self.node_mut(id)?.paused = false;
        Ok(())
    }

    /// Cuts server `isolated` off from both other servers (its mesh links go down at both
    /// ends). Its client link stays up: clients pinned to it, and its node, still reach it.
    /// Returns once the links are down; NATS notices a dead route within about 3 s (1 s
    /// pings, 2 missed).
    pub async fn partition(&mut self, isolated: u64) -> Result<(), Error> {
        index_checked(isolated)?;
        let pairs: Vec<(u64, u64)> = IDS
            .iter()
            .filter(|&&other| other != isolated)
            .map(|&other| (isolated, other))
            .collect();
        self.partition_pairs(&pairs)
    }

    /// Cuts the mesh link of each pair of servers (any cut: `[(1, 2)]` leaves 3 talking to
    /// both). Cuts add up until [`CheckCluster::heal`].
    pub fn partition_pairs(&mut self, pairs: &[(u64, u64)]) -> Result<(), Error> {
        for &(a, b) in pairs {
            index_checked(a)?;
            index_checked(b)?;
            if a == b {
                return Err(Error::Spec(format!("cannot cut server {a} from itself")));
            }
        }
        let netns = match &mut self.net {
            Net::Netns(n) => n,
            Net::Loopback { reason, .. } => {
                return Err(Error::PartitionUnsupported(format!(
                    "the cluster runs on loopback because {reason}"
                )))
            }
        };
        for &(a, b) in pairs {
            netns.set_mesh_link(a.min(b), a.max(b), false)?;
        }
        Ok(())
    }

    /// Sets every mesh link up again and waits (20 s) until the servers' routes carry
    /// messages between every pair, so that the network is really healed when it returns.
    /// Does nothing on loopback (nothing can be cut there).
    pub async fn heal(&mut self) -> Result<(), Error> {
        let Net::Netns(netns) = &mut self.net else {
            return Ok(());
        };
        // All of them, not only the recorded cuts: healing must not depend on bookkeeping.
        for (a, b) in mesh_pairs() {
            netns.set_mesh_link(a, b, true)?;
        }
        self.wait_mesh(MESH_TIMEOUT).await
    }

    /// Kills every node and server and deletes the namespaces and veths. Idempotent; `Drop`
    /// does the same for a cluster that is not shut down.
    pub async fn shutdown(mut self) {
        for handle in self.responders.drain(..) {
            handle.abort();
        }
        // Reap asynchronously here (Drop can only block).
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                if reap(&mut child, &format!("node {}", node.id))
                    .await
                    .is_err()
                {
                    let _ = child.wait();
                }
            }
        }
        for server in &mut self.servers {
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                if reap(&mut child, &format!("nats-server n{}", server.id))
                    .await
                    .is_err()
                {
                    let _ = child.wait();
                }
            }
        }
        self.cleanup();
    }
}

impl Drop for CheckCluster {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Deletes namespaces of this module's naming scheme (`cc<pid>[s<seq>]n<1..3>`) whose
/// creating process is gone: leftovers of a run that crashed or was SIGKILLed. Processes
/// still inside them (that run's servers and nodes) are killed first. Returns the names it
/// deleted. Best effort: errors are ignored.
pub fn cleanup_stale_namespaces() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    let own = std::process::id();
    let mut deleted = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `ip netns list` prints `name` or `name (id: N)`.
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = stale_candidate_pid(name) else {
            continue;
        };
        if pid == own || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if delete_namespace(name).is_ok() {
            deleted.push(name.to_string());
        }
    }
    deleted
}
