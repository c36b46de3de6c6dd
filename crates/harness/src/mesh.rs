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

    // ----- internals ---------------------------------------------------------------------

    fn node_mut(&mut self, id: u64) -> Result<&mut Node, Error> {
        self.nodes
            .get_mut(index_checked(id)?)
            .ok_or(Error::UnknownNode(id))
    }

    /// `Err(NodeExited)` (and the child forgotten) if node `id` exited without being killed
    /// by us.
    fn check_exited(&mut self, id: u64) -> Result<(), Error> {
        let node = self.node_mut(id)?;
        let Some(child) = node.child.as_mut() else {
            return Ok(());
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                node.child = None;
                node.paused = false;
                Err(Error::NodeExited {
                    id,
                    status: status.to_string(),
                    log_tail: self.log_tail(id, 40),
                })
            }
            Err(e) => Err(io_err(format!("checking whether node {id} runs"))(e)),
        }
    }

    /// The node's full env: this module's settings, then the caller's `node_env`.
    fn node_env(&self, id: u64) -> Vec<(String, String)> {
        let nats_url = match &self.net {
            Net::Netns(_) => format!("nats://127.0.0.1:{NETNS_CLIENT_PORT}"),
            Net::Loopback { .. } => self.client_url(id),
        };
        let mut env: Vec<(String, String)> = vec![
            ("CONCORD_NODE__ID".into(), id.to_string()),
            ("CONCORD_CLUSTER__INITIAL_MEMBERS".into(), "1,2,3".into()),
            ("CONCORD_NATS__URL".into(), nats_url),
            (
                "CONCORD_DATA_DIR".into(),
                self.workdir.join(format!("n{id}")).display().to_string(),
            ),
            ("CONCORD_CLUSTER__NAME".into(), "check".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        for (k, v) in &self.spec.node_env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    fn spawn_node(&mut self, id: u64) -> Result<(), Error> {
        let bin = self.spec.bin.clone();
        let ns = match &self.net {
            Net::Netns(n) => Some(ns_name(&n.tag, id)),
            Net::Loopback { .. } => None,
        };
        let node = self.node_mut(id)?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .map_err(io_err(format!("opening {}", node.log_path.display())))?;
        writeln!(log, "----- check: starting node {id} -----")
            .map_err(io_err(format!("writing {}", node.log_path.display())))?;
        let mut cmd = in_namespace(ns.as_deref(), &bin);
        cmd.arg("serve");
        // Nothing from the caller's shell may leak into the node's configuration.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CONCORD_") {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(node.env.iter().map(|(k, v)| (k, v)));
        let child = spawn_logged(&mut cmd, log, &format!("node {id}"))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    async fn start_servers(&mut self) -> Result<(), Error> {
        if let Net::Netns(netns) = &self.net {
            let tag = netns.tag.clone();
            for id in IDS {
                let routes: Vec<String> = IDS
                    .iter()
                    .filter(|&&peer| peer != id)
                    .map(|&peer| format!("nats-route://{}:{NETNS_ROUTE_PORT}", mesh_ip(peer, id)))
                    .collect();
                let server = start_server(
                    &self.spec.nats_server,
                    &self.workdir,
                    Some(&ns_name(&tag, id)),
                    id,
                    &format!("0.0.0.0:{NETNS_CLIENT_PORT}"),
                    &format!("0.0.0.0:{NETNS_ROUTE_PORT}"),
                    &routes,
                )
                .await?;
                self.servers.push(server);
            }
            return Ok(());
        }
        // Loopback: free ports are picked by binding port 0; another process may take one
        // before the server binds it, so a failed start is retried with new ports.
        let mut last_err = None;
        for _ in 0..LOOPBACK_ATTEMPTS {
            let ports = free_ports(6)?;
            let (client_ports, route_ports) = ports.split_at(3);
            let mut servers = Vec::new();
            let mut failed = None;
            for id in IDS {
                let routes: Vec<String> = IDS
                    .iter()
                    .filter(|&&peer| peer != id)
                    .map(|&peer| format!("nats-route://127.0.0.1:{}", route_ports[index(peer)]))
                    .collect();
                match start_server(
                    &self.spec.nats_server,
                    &self.workdir,
                    None,
                    id,
                    &format!("127.0.0.1:{}", client_ports[index(id)]),
                    &format!("127.0.0.1:{}", route_ports[index(id)]),
                    &routes,
                )
                .await
                {
                    Ok(server) => servers.push(server),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => {
                    if let Net::Loopback {
                        client_ports: cp, ..
                    } = &mut self.net
                    {
                        *cp = client_ports.to_vec();
                    }
                    self.servers = servers;
                    return Ok(());
                }
                Some(e) => {
                    for mut server in servers {
                        if let Some(mut child) = server.child.take() {
                            let _ = child.kill();
                            let _ = reap(&mut child, "nats-server").await;
                        }
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Spec("no nats-server start attempted".into())))
    }

    /// One client per server plus a responder on `_CHECK.<tag>.mesh.<id>` for mesh probes.
    async fn connect_clients(&mut self) -> Result<(), Error> {
        for id in IDS {
            let url = self.client_url(id);
            // The server listens already, but a fresh veth may need a moment: retry briefly.
            let deadline = Instant::now() + Duration::from_secs(10);
            let client = loop {
                let attempt = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(2))
                    // Pinned to its own server: never fail over to another one.
                    .ignore_discovered_servers()
                    .connect(url.as_str())
                    .await;
                match attempt {
                    Ok(client) => break client,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(Error::Connect {
                            url,
                            message: e.to_string(),
                        })
                    }
                    Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
                }
            };
            let subject = format!("_CHECK.{}.mesh.{id}", self.tag);
            let mut sub = client
                .subscribe(subject.clone())
                .await
                .map_err(|e| Error::Request {
                    subject: subject.clone(),
                    message: format!("subscribing: {e}"),
                })?;
            let replier = client.clone();
            self.responders.push(tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    if let Some(reply) = msg.reply {
                        let _ = replier.publish(reply, Bytes::from_static(b"ok")).await;
                    }
                }
            }));
            self.clients.push(client);
        }
        Ok(())
    }

    /// `Ok` when a request from every server reaches a responder on every other server (so
    /// every route carries messages and subscription interest both ways).
    async fn mesh_probe(&self) -> Result<(), String> {
        let mut probes = Vec::new();
        for from in IDS {
            for to in IDS.iter().copied().filter(|&to| to != from) {
                probes.push(async move {
                    let subject = format!("_CHECK.{}.mesh.{to}", self.tag);
                    let client = self
                        .clients
                        .get(index(from))
                        .ok_or_else(|| format!("no client for server {from}"))?;
                    let req = async_nats::Request::new()
                        .payload(Bytes::new())
                        .timeout(Some(PROBE_TIMEOUT));
                    match tokio::time::timeout(PROBE_TIMEOUT * 2, client.send_request(subject, req))
                        .await
                    {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(format!("server {from} -> server {to}: {e}")),
                        Err(_) => Err(format!("server {from} -> server {to}: no reply")),
                    }
                });
            }
        }
        let failures: Vec<String> = futures::future::join_all(probes)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    async fn wait_mesh(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.mesh_probe().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                let logs: Vec<String> = IDS
                    .iter()
                    .map(|&id| format!("nats-server n{id}:\n{}", self.nats_log_tail(id, 10)))
                    .collect();
                return Err(Error::Timeout {
                    what: "the NATS servers to route messages between every pair".into(),
                    waited: timeout,
                    last: format!("{last}\n{}", logs.join("\n")),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Like [`CheckCluster::wait_for_leader`], but fails at once when a node exits.
    /// Like [`CheckCluster::wait_stable`], but fails at once when a node exits.
    async fn wait_stable_watching(&mut self, timeout: Duration) -> Result<u64, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            for id in IDS {
                self.check_exited(id)?;
            }
            let last = match stable_leader(&self.statuses().await) {
                Ok(leader) => return Ok(leader),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                let mut last = format!("{last}; {}", self.status_summary().await);
                for id in IDS {
                    last.push_str(&format!("\nnode {id} log tail:\n{}", self.log_tail(id, 15)));
                }
                return Err(Error::Timeout {
                    what: "every node of the new cluster to follow one leader".into(),
                    waited: timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn statuses(&self) -> BTreeMap<u64, Value> {
        let polls = futures::future::join_all(IDS.iter().map(|&id| self.status(id))).await;
        IDS.iter()
            .zip(polls)
            .filter_map(|(&id, r)| r.ok().map(|s| (id, s)))
            .collect()
    }

    /// One bracket per node, for error messages.
    async fn status_summary(&self) -> String {
        let polls = futures::future::join_all(IDS.iter().map(|&id| self.status(id))).await;
        IDS.iter()
            .zip(polls)
            .map(|(&id, r)| match r {
                Ok(s) => format!(
                    "[node {id}: role={} leader={} term={} last_applied={}]",
                    s["role"], s["leader"], s["term"], s["last_applied"]
                ),
                Err(e) => format!("[node {id}: {e}]"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Synchronous, best-effort, idempotent: stop everything and delete the namespaces.
    fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        for handle in self.responders.drain(..) {
            handle.abort();
        }
        for child in self
            .nodes
            .iter_mut()
            .filter_map(|n| n.child.take())
            .chain(self.servers.iter_mut().filter_map(|s| s.child.take()))
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Net::Netns(netns) = &mut self.net {
            netns.teardown();
        }
        self.cleaned = true;
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

// ----- network namespaces ----------------------------------------------------------------

/// The namespaces and veths of one cluster. Records what exists so that teardown removes
/// exactly that, also after a setup that failed halfway.
struct Netns {
    tag: String,
    /// Our claim on the client subnets `10.77.<4 slot + i>.0/24`; removed at teardown.
    slot: Option<(u8, PathBuf)>,
    namespaces: Vec<String>,
    root_links: Vec<String>,
    cut: BTreeSet<(u64, u64)>,
}

impl Netns {
    fn setup(tag: &str) -> Result<Netns, Error> {
        let mut netns = Netns {
            tag: tag.to_string(),
            slot: None,
            namespaces: Vec::new(),
            root_links: Vec::new(),
            cut: BTreeSet::new(),
        };
        // On error `netns` is dropped, which tears down what was created so far.
        netns.build()?;
        Ok(netns)
    }

    /// `10.77.<4 slot + id>.<host>`: host 1 is the root side, 2 the namespace side.
    fn client_ip(&self, id: u64, host: u8) -> String {
        let slot = self.slot.as_ref().map_or(0, |(s, _)| u64::from(*s));
        format!("10.77.{}.{host}", slot * 4 + id)
    }

    /// Claims the first free slot. A slot file is created with `create_new` (atomic, so two
    /// processes never get the same slot) and holds its owner's pid; the file of a dead
    /// owner is stale and taken over. A slot whose subnets are in use in the root namespace
    /// for any other reason is skipped.
    fn claim_slot(&mut self) -> Result<(), Error> {
        let dir = Path::new(SLOT_DIR);
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {SLOT_DIR}")))?;
        let addrs = ip_output(&["-4", "-o", "addr", "show"])?;
        let own = format!("{} {}", std::process::id(), self.tag);
        for slot in 0..MAX_SLOTS {
            let in_use = IDS
                .iter()
                .any(|&id| addrs.contains(&format!(" 10.77.{}.1/", u64::from(slot) * 4 + id)));
            if in_use {
                continue;
            }
            let path = dir.join(format!("slot-{slot}"));
            for _ in 0..2 {
                match OpenOptions::new().write(true).create_new(true).open(&path) {
                    Ok(mut file) => {
                        file.write_all(own.as_bytes())
                            .map_err(io_err(format!("writing {}", path.display())))?;
                        self.slot = Some((slot, path));
                        return Ok(());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let owner = std::fs::read_to_string(&path).unwrap_or_default();
                        let alive = owner
                            .split_whitespace()
                            .next()
                            .and_then(|p| p.parse::<u32>().ok())
                            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                        // An empty file may be a claim being written right now: leave it.
                        if alive || owner.is_empty() {
                            break;
                        }
                        let _ = std::fs::remove_file(&path);
                    }
                    Err(e) => {
                        return Err(io_err(format!("creating {}", path.display()))(e));
                    }
                }
            }
        }
        Err(Error::Spec(format!(
            "all {MAX_SLOTS} client subnet slots of {SLOT_DIR} are taken"
        )))
    }

    fn build(&mut self) -> Result<(), Error> {
        for id in IDS {
            let link = root_link(&self.tag, id);
            if link.len() > MAX_IFNAME {
                return Err(Error::Spec(format!(
                    "interface name {link} is longer than {MAX_IFNAME} characters"
                )));
            }
        }
        // The client subnets live in the root namespace, where another cluster's would be
        // ambiguous routes: claim subnets of our own.
        self.claim_slot()?;
        for id in IDS {
            let ns = ns_name(&self.tag, id);
            ip(&["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // Client link: root side in the root namespace, `c0` inside the namespace.
            let link = root_link(&self.tag, id);
            ip(&[
                "link", "add", &link, "type", "veth", "peer", "name", "c0", "netns", &ns,
            ])?;
            self.root_links.push(link.clone());
            ip(&[
                "addr",
                "add",
                &format!("{}/24", self.client_ip(id, 1)),
                "dev",
                &link,
            ])?;
            ip(&["link", "set", &link, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.client_ip(id, 2)),
                "dev",
                "c0",
            ])?;
            ip(&["-n", &ns, "link", "set", "c0", "up"])?;
        }
        // Mesh: in namespace i the link to j is `m<j>`. Both ends live in namespaces, so
        // their names only need to be unique there.
        for (a, b) in mesh_pairs() {
            let (ns_a, ns_b) = (ns_name(&self.tag, a), ns_name(&self.tag, b));
            let (link_a, link_b) = (format!("m{b}"), format!("m{a}"));
            ip(&[
                "-n", &ns_a, "link", "add", &link_a, "type", "veth", "peer", "name", &link_b,
                "netns", &ns_b,
            ])?;
            ip(&[
                "-n",
                &ns_a,
                "addr",
                "add",
                &format!("{}/30", mesh_ip(a, b)),
                "dev",
                &link_a,
            ])?;
            ip(&[
                "-n",
                &ns_b,
                "addr",
                "add",
                &format!("{}/30", mesh_ip(b, a)),
                "dev",
                &link_b,
            ])?;
            ip(&["-n", &ns_a, "link", "set", &link_a, "up"])?;
            ip(&["-n", &ns_b, "link", "set", &link_b, "up"])?;
        }
        Ok(())
    }

    /// Both ends of the mesh link between `a < b`, so neither side can send.
    fn set_mesh_link(&mut self, a: u64, b: u64, up: bool) -> Result<(), Error> {
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &ns_name(&self.tag, a),
            "link",
            "set",
            &format!("m{b}"),
            state,
        ])?;
        ip(&[
            "-n",
            &ns_name(&self.tag, b),
            "link",
            "set",
            &format!("m{a}"),
            state,
        ])?;
        if up {
            self.cut.remove(&(a, b));
        } else {
            self.cut.insert((a, b));
        }
        Ok(())
    }

    /// Best effort and idempotent. The root side of a veth disappears with its peer's
    /// namespace; it is deleted explicitly anyway.
    fn teardown(&mut self) {
        for link in self.root_links.drain(..) {
            // Fails when the link is gone already; nothing to do then.
            let _ = ip(&["link", "del", &link]);
        }
        for ns in self.namespaces.drain(..) {
            if let Err(e) = delete_namespace(&ns) {
                tracing::warn!("could not delete network namespace {ns}: {e}");
            }
        }
        self.cut.clear();
        if let Some((_, path)) = self.slot.take() {
            let own = format!("{} {}", std::process::id(), self.tag);
            if std::fs::read_to_string(&path).is_ok_and(|owner| owner == own) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// `cc<pid>` for a process's first cluster, `cc<pid>s<seq>` for later ones.
fn run_tag(pid: u32, seq: u32) -> String {
    if seq == 0 {
        format!("cc{pid}")
    } else {
        format!("cc{pid}s{seq}")
    }
}

fn ns_name(tag: &str, id: u64) -> String {
    format!("{tag}n{id}")
}

/// Root side of namespace `id`'s client veth (≤ 15 characters for any pid up to 2^22).
fn root_link(tag: &str, id: u64) -> String {
    format!("{tag}c{id}")
}

/// The pairs `(a, b)`, `a < b`, in a fixed order; the position is the pair's /30 subnet.
fn mesh_pairs() -> Vec<(u64, u64)> {
    let mut pairs = Vec::new();
    for &a in &IDS {
        for &b in IDS.iter().filter(|&&b| b > a) {
            pairs.push((a, b));
        }
    }
    pairs
}

/// The address of server `own` on its mesh link to server `peer`: in subnet
/// `10.78.<pair index>.0/30` the lower id has `.1`, the higher `.2`.
fn mesh_ip(own: u64, peer: u64) -> String {
    let pair = (own.min(peer), own.max(peer));
    let k = mesh_pairs().iter().position(|&p| p == pair).unwrap_or(0);
    let host = if own < peer { 1 } else { 2 };
    format!("10.78.{k}.{host}")
}

/// The pid in a name of our scheme (`cc<pid>[s<seq>]n<1..3>`), `None` for any other name.
fn stale_candidate_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("cc")?;
    let (rest, id) = rest.split_at(rest.len().checked_sub(2)?);
    if !matches!(id, "n1" | "n2" | "n3") {
        return None;
    }
    let (pid, seq) = match rest.split_once('s') {
        Some((pid, seq)) => (pid, Some(seq)),
        None => (rest, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(pid) || seq.is_some_and(|s| !all_digits(s)) {
        return None;
    }
    pid.parse().ok()
}

/// `ip netns del`, retried for up to 2 s while the namespace file remains. The unlink in
/// `ip netns del` fails with EBUSY while another mount namespace still holds a copy of the
/// namespace's bind mount, which happens for a moment after a process started by
/// `ip netns exec` (each gets its own mount namespace) died. Processes still inside are
/// killed first: a namespace with a live process would outlive its name.
fn delete_namespace(ns: &str) -> Result<(), Error> {
    let file = Path::new("/run/netns").join(ns);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        kill_namespace_processes(ns);
        let result = ip(&["netns", "del", ns]);
        if result.is_ok() || !file.exists() || Instant::now() >= deadline {
            return result.or_else(|e| if file.exists() { Err(e) } else { Ok(()) });
        }
        // Called from `Drop` too, so it can only block; the wait is rare and short.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILLs every process in namespace `ns` (`ip netns pids`). Only used on namespaces this
/// module created, whose processes it started.
fn kill_namespace_processes(ns: &str) {
    let Ok(pids) = ip_output(&["netns", "pids", ns]) else {
        return;
    };
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
    {
        let _ = signal(pid, "-KILL");
    }
}

/// Runs `ip <args>`; fails with its stderr unless it exits 0.
fn ip(args: &[&str]) -> Result<(), Error> {
    ip_output(args).map(|_| ())
}

fn ip_output(args: &[&str]) -> Result<String, Error> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("running `{command}`")))?;
    if !out.status.success() {
        return Err(Error::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Effective uid 0, read from `/proc/self/status` (no libc in the dependencies).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

// ----- processes -------------------------------------------------------------------------

/// `program` itself, or `ip netns exec <ns> program`: `ip` execs the program after
/// entering the namespace, so the child's pid is the program's and signals reach it.
fn in_namespace(ns: Option<&str>, program: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

fn spawn_logged(cmd: &mut Command, log: File, what: &str) -> Result<Child, Error> {
    let err_log = log
        .try_clone()
        .map_err(io_err(format!("duplicating the log file of {what}")))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err_log))
        .spawn()
        .map_err(io_err(format!("spawning {what}")))
}

/// Polls until `child` is reaped (it was just sent SIGKILL).
async fn reap(child: &mut Child, what: &str) -> Result<ExitStatus, Error> {
    let deadline = Instant::now() + REAP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(io_err(format!("reaping {what}"))(e)),
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("{what} to exit after SIGKILL"),
                waited: REAP_TIMEOUT,
                last: "still running".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn signal(pid: u32, sig: &str) -> Result<(), Error> {
    crate::process::signal(pid, sig).map_err(|e| Error::Command {
        command: e.command,
        status: e.status,
        stderr: e.stderr,
    })
}

/// Writes server `id`'s config, starts it (in namespace `ns` if given) and waits until it
/// logs "Server is ready".
async fn start_server(
    binary: &Path,
    workdir: &Path,
    ns: Option<&str>,
    id: u64,
    client_listen: &str,
    route_listen: &str,
    routes: &[String],
) -> Result<Server, Error> {
    let conf_path = workdir.join(format!("nats-n{id}.conf"));
    let log_path = workdir.join(format!("nats-n{id}.log"));
    let out_path = workdir.join(format!("nats-n{id}.out"));
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""));
    let routes_conf: Vec<String> = routes.iter().map(|r| format!("    {}", quote(r))).collect();
    // - ping_interval/ping_max (top level for clients, in `cluster` for routes): a route
    //   whose link went down is declared dead after ~2-3 s instead of minutes.
    // - cluster.no_advertise: servers do not tell clients about each other, so a client
    //   (a node, or the workload) stays on the server it was given.
    // - Explicit routes are retried forever, once a second: a healed link reconnects.
    let conf = format!(
        "server_name: n{id}\n\
         listen: {listen}\n\
         ping_interval: \"1s\"\n\
         ping_max: 2\n\
         log_file: {log}\n\
         cluster {{\n  \
           name: concord-check\n  \
           listen: {route_listen}\n  \
           no_advertise: true\n  \
           ping_interval: \"1s\"\n  \
           ping_max: 2\n  \
           routes: [\n{routes}\n  ]\n\
         }}\n",
        listen = quote(client_listen),
        log = quote(&log_path.display().to_string()),
        route_listen = quote(route_listen),
        routes = routes_conf.join("\n"),
    );
    std::fs::write(&conf_path, conf).map_err(io_err(format!("writing {}", conf_path.display())))?;
    // Only what this instance logs counts: the log file may hold an earlier run's "ready".
    let offset = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)
        .map_err(io_err(format!("opening {}", out_path.display())))?;
    let mut cmd = in_namespace(ns, binary);
    cmd.arg("-c").arg(&conf_path);
    let mut child = spawn_logged(&mut cmd, out, &format!("nats-server n{id}"))?;

    let deadline = Instant::now() + SERVER_READY_TIMEOUT;
    loop {
        let text = read_from(&log_path, offset);
        if text.contains("Server is ready") {
            return Ok(Server {
                id,
                child: Some(child),
            });
        }
        let exited = match child.try_wait() {
            Ok(Some(status)) => Some(format!("exited with {status}")),
            Ok(None) => None,
            Err(e) => Some(format!("cannot be waited for: {e}")),
        };
        let timed_out = Instant::now() >= deadline;
        if exited.is_some() || timed_out {
            let _ = child.kill();
            let _ = child.wait();
            let why = exited.unwrap_or_else(|| {
                format!("did not log \"Server is ready\" within {SERVER_READY_TIMEOUT:?}")
            });
            let stdout = tail_lines(&out_path, 10);
            return Err(Error::NatsServer {
                id,
                message: format!("{why}; log:\n{}\n{stdout}", tail_str(&text, 20)),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `count` distinct free TCP ports on 127.0.0.1 (all bound at once, so they differ).
fn free_ports(count: usize) -> Result<Vec<u16>, Error> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err("binding a free port on 127.0.0.1"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err("reading a bound port"))
}

// ----- small helpers ---------------------------------------------------------------------

/// Position of node `id` in the per-node vectors (out of range for unknown ids).
fn index(id: u64) -> usize {
    usize::try_from(id.wrapping_sub(1)).unwrap_or(usize::MAX)
}

fn index_checked(id: u64) -> Result<usize, Error> {
    if IDS.contains(&id) {
        Ok(index(id))
    } else {
        Err(Error::UnknownNode(id))
    }
}

fn env_value(env: &[(String, String)], key: &str) -> Option<String> {
    env.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

/// Request with a JSON body, reply parsed as JSON (whatever its `ok`).
pub async fn request(
    client: &async_nats::Client,
    subject: &str,
    body: &Value,
    timeout: Duration,
) -> Result<Value, Error> {
    let payload = Bytes::from(body.to_string());
    let req = async_nats::Request::new()
        .payload(payload)
        .timeout(Some(timeout));
    // The outer timeout is a safety net in case the client's own timer does not fire.
    let msg = match tokio::time::timeout(
        timeout + Duration::from_millis(500),
        client.send_request(subject.to_string(), req),
    )
    .await
    {
        Ok(Ok(msg)) => msg,
        Ok(Err(e)) => {
            return Err(Error::Request {
                subject: subject.to_string(),
                message: e.to_string(),
            })
        }
        Err(_) => {
            return Err(Error::Request {
                subject: subject.to_string(),
                message: format!("no reply within {timeout:?}"),
            })
        }
    };
    serde_json::from_slice(&msg.payload).map_err(|e| Error::Request {
        subject: subject.to_string(),
        message: format!(
            "reply is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&msg.payload)
        ),
    })
}

/// The leader of a set of `admin.status` replies: a node that reports role `leader` and
/// names itself, named by more than half of the voters (its own member list, or the three
/// ids). Among several (stale replies), the highest term wins.
fn agreed_leader(statuses: &BTreeMap<u64, Value>) -> Option<u64> {
    crate::process::agreed_leader(statuses, IDS.len())
}

/// The leader when every node of [`IDS`] answered and follows it (see
/// [`CheckCluster::wait_stable`]); else what is missing.
fn stable_leader(statuses: &BTreeMap<u64, Value>) -> Result<u64, String> {
    let leader = agreed_leader(statuses).ok_or("no leader agreed by a majority")?;
    let own = statuses
        .get(&leader)
        .ok_or_else(|| format!("leader {leader} did not answer"))?;
    let commit = own["commit_index"].as_u64().unwrap_or(0);
    let voters = &own["members"]["voters"];
    for id in IDS {
        let s = statuses
            .get(&id)
            .ok_or_else(|| format!("node {id} did not answer"))?;
        let role = if id == leader { "leader" } else { "follower" };
        if s["leader"].as_u64() != Some(leader)
            || s["role"] != json!(role)
            || s["members"]["voters"] != *voters
            || s["last_applied"].as_u64().unwrap_or(0) < commit
        {
            return Err(format!(
                "node {id}: role={} leader={} voters={} last_applied={} \
                 (leader {leader}: commit_index={commit} voters={voters})",
                s["role"], s["leader"], s["members"]["voters"], s["last_applied"]
            ));
        }
    }
    Ok(leader)
}

fn read_from(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn tail_lines(path: &Path, lines: usize) -> String {
    tail_str(&read_from(path, 0), lines)
}

fn tail_str(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_parse_back() {
        // The largest pid Linux allows (2^22) with a two-digit sequence still fits IFNAMSIZ.
        let tag = run_tag(4_194_304, 99);
        assert!(
            root_link(&tag, 3).len() <= MAX_IFNAME,
            "{}",
            root_link(&tag, 3)
        );
        assert_eq!(stale_candidate_pid(&ns_name(&tag, 3)), Some(4_194_304));
        assert_eq!(
            stale_candidate_pid(&ns_name(&run_tag(123, 0), 1)),
            Some(123)
        );
        for other in [
            "cc123n4", "cc12xn1", "ccn1", "cc", "docker1", "cc123s1", "cc123sn2",
        ] {
            assert_eq!(stale_candidate_pid(other), None, "{other}");
        }
    }

    #[test]
    fn mesh_addresses_pair_up() {
        assert_eq!(mesh_pairs(), vec![(1, 2), (1, 3), (2, 3)]);
        assert_eq!(mesh_ip(1, 2), "10.78.0.1");
        assert_eq!(mesh_ip(2, 1), "10.78.0.2");
        assert_eq!(mesh_ip(3, 1), "10.78.1.2");
        assert_eq!(mesh_ip(2, 3), "10.78.2.1");
    }

    #[test]
    fn leader_needs_a_majority_and_its_own_claim() {
        let s = |role: &str, leader: u64, term: u64| {
            json!({"role": role, "leader": leader, "term": term,
                   "members": {"voters": [1, 2, 3]}})
        };
        let mut statuses = BTreeMap::new();
        statuses.insert(1, s("leader", 1, 2));
        assert_eq!(agreed_leader(&statuses), None, "one vote of three");
        statuses.insert(2, s("follower", 1, 2));
        assert_eq!(agreed_leader(&statuses), Some(1));
        // An isolated old leader still claiming leadership loses to the majority's leader.
        statuses.insert(2, s("leader", 2, 3));
        statuses.insert(3, s("follower", 2, 3));
        assert_eq!(agreed_leader(&statuses), Some(2));
        statuses.insert(2, s("candidate", 2, 3));
        assert_eq!(agreed_leader(&statuses), None);
    }

    // ----- real clusters (opt-in) --------------------------------------------------------

    /// Real clusters are slow and need `nats-server` (and root for namespaces): opt in with
    /// `CONCORD_CHECK_NETNS_TEST=1`. One at a time: two clusters on two cores would make the
    /// election timings meaningless.
    static REAL_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn real_cluster_spec(use_netns: bool) -> Option<(Spec, tempfile::TempDir)> {
        if std::env::var("CONCORD_CHECK_NETNS_TEST").as_deref() != Ok("1") {
            eprintln!("skipped: set CONCORD_CHECK_NETNS_TEST=1 to start a real check cluster");
            return None;
        }
        let bin = std::env::var_os("CONCORD_TEST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/concord")
            });
        assert!(
            bin.is_file(),
            "{} is missing: run `cargo build` first",
            bin.display()
        );
        let nats_server = crate::nats_server::find().expect("nats-server");
        let tmp = tempfile::Builder::new()
            .prefix("concord-check-")
            .tempdir()
            .expect("temp dir");
        let spec = Spec {
            bin,
            nats_server,
            workdir: tmp.path().to_path_buf(),
            node_env: vec![
                ("CONCORD_RAFT__HEARTBEAT_INTERVAL_MS".into(), "100".into()),
                ("CONCORD_RAFT__ELECTION_TIMEOUT_MIN_MS".into(), "800".into()),
                (
                    "CONCORD_RAFT__ELECTION_TIMEOUT_MAX_MS".into(),
                    "1600".into(),
                ),
            ],
            use_netns,
        };
        Some((spec, tmp))
    }

    async fn put(url: &str, key: &str, value: i64, timeout: Duration) -> Result<Value, Error> {
        let client = async_nats::ConnectOptions::new()
            .ignore_discovered_servers()
            .connect(url)
            .await
            .map_err(|e| Error::Connect {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        let body = json!({"key": key, "value": value, "timeout_ms": timeout.as_millis() as u64});
        request(
            &client,
            "concord.kv.put",
            &body,
            timeout + Duration::from_secs(1),
        )
        .await
    }

    fn namespaces_with(prefix: &str) -> Vec<String> {
        ip_output(&["netns", "list"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    /// Partition the leader: the two others elect a new one; heal: the old leader follows it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::await_holding_lock)] // the guard only serializes tests on their own runtimes
    async fn netns_partition_elects_and_heal_rejoins() {
        let Some((spec, _tmp)) = real_cluster_spec(true) else {
            return;
        };
        let _guard = REAL_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());

        // A leftover of a crashed run (a pid that cannot exist: pids are < 2^22), with a
        // process inside: `start` must remove both.
        let stale = "cc4194304n2";
        let stale_path = "/run/netns/cc4194304n2";
        ip(&["netns", "add", stale]).expect("ip netns add");
        let mut sleeper = Command::new("ip")
            .args(["netns", "exec", stale, "sleep", "600"])
            .spawn()
            .expect("sleep in the stale namespace");
        // `ip netns exec` enters the namespace a moment after the spawn.
        let entered = Instant::now();
        while ip_output(&["netns", "pids", stale])
            .unwrap_or_default()
            .trim()
            .is_empty()
        {
            assert!(
                entered.elapsed() < Duration::from_secs(5),
                "sleeper never entered {stale}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // A start that fails halfway (the "node" exits at once) leaves nothing behind.
        let failing = Spec {
            bin: PathBuf::from("/bin/false"),
            workdir: spec.workdir.join("failing"),
            ..spec.clone()
        };
        match CheckCluster::start(failing).await {
            Err(Error::NodeExited { id, status, .. }) => {
                eprintln!("failing start: node {id} exited with {status}")
            }
            Err(e) => panic!("failing start: unexpected error {e}"),
            Ok(_) => panic!("a cluster of /bin/false started"),
        }
        // Only this process's namespaces: other check clusters may run on the machine.
        let left = namespaces_with(&format!("cc{}", std::process::id()));
        assert!(left.is_empty(), "namespaces left: {left:?}");
        assert!(!Path::new(stale_path).exists(), "{stale_path} left");
        let sleeper_status = sleeper.wait().expect("reap the sleeper");
        eprintln!("stale namespace removed, its process ended with {sleeper_status}");

        let t0 = Instant::now();
        let mut cluster = CheckCluster::start(spec).await.expect("start");
        assert!(
            cluster.netns(),
            "namespaces unavailable: {:?}",
            cluster.fallback_reason()
        );
        let namespaces = cluster.namespaces();
        eprintln!("started in {:?}: namespaces {namespaces:?}", t0.elapsed());
        for id in cluster.ids() {
            let pid = cluster.pid(id).expect("running");
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            assert_eq!(
                comm.trim(),
                "concord",
                "pid {pid} of node {id} is the node itself"
            );
        }

        let leader = cluster
            .wait_for_leader(Duration::from_secs(10))
            .await
            .expect("leader");
        let term = cluster.status(leader).await.expect("status")["term"]
            .as_u64()
            .expect("term");
        let reply = put(&cluster.client_url(1), "k", 1, Duration::from_secs(5))
            .await
            .expect("put");
        assert_eq!(reply["ok"], json!(true), "{reply}");
        eprintln!("leader {leader} (term {term}), put ok: {reply}");

        cluster.partition(leader).await.expect("partition");
        let cut = Instant::now();
        let others: Vec<u64> = cluster.ids().into_iter().filter(|&i| i != leader).collect();
        let mut new_leader = None;
        while cut.elapsed() < Duration::from_secs(15) {
            let mut named = Vec::new();
            for &id in &others {
                if let Ok(s) = cluster.status(id).await {
                    named.push((s["leader"].as_u64(), s["term"].as_u64(), s["role"].clone()));
                }
            }
            let agreed = named.len() == 2
                && named[0].0 == named[1].0
                && named[0].0.is_some_and(|l| l != leader)
                && named[0].1.is_some_and(|t| t > term)
                && named.iter().any(|n| n.2 == json!("leader"));
            if agreed {
                new_leader = named[0].0;
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        let elected_in = cut.elapsed();
        let Some(new_leader) = new_leader else {
            panic!(
                "no new leader among {others:?} within 15 s: {}",
                cluster.status_summary().await
            )
        };
        let new_term = cluster.status(new_leader).await.expect("status")["term"]
            .as_u64()
            .expect("term");
        eprintln!("partitioned {leader}: {new_leader} elected (term {new_term}) in {elected_in:?}");

        // The majority serves writes; the isolated node cannot commit any. Right after the
        // election a request may still be routed toward the isolated node's subscription
        // (until its server declares the route dead) and be lost: retry a few times.
        let mut reply = Err(Error::Spec("not tried".into()));
        for _ in 0..5 {
            reply = put(
                &cluster.client_url(new_leader),
                "k",
                2,
                Duration::from_secs(2),
            )
            .await;
            if reply.as_ref().is_ok_and(|r| r["ok"] == json!(true)) {
                break;
            }
            eprintln!("put through the majority, retrying: {reply:?}");
        }
        let reply = reply.expect("put through the majority");
        assert_eq!(reply["ok"], json!(true), "{reply}");
        let minority = put(&cluster.client_url(leader), "k", 3, Duration::from_secs(1)).await;
        assert!(
            minority.as_ref().map_or(true, |r| r["ok"] != json!(true)),
            "a write through the isolated node succeeded: {minority:?}"
        );
        // The isolated node's client link stays up: its status still answers.
        cluster.status(leader).await.expect("isolated node answers");

        // Hold the cut long enough for every server to declare its routes dead (1 s pings,
        // 2 missed), as the nemesis does, so that the heal has to reconnect them.
        tokio::time::sleep(Duration::from_secs(5).saturating_sub(cut.elapsed())).await;
        eprintln!(
            "isolated server n{leader} before the heal:\n{}",
            cluster.nats_log_tail(leader, 6)
        );
        let heal_start = Instant::now();
        cluster.heal().await.expect("heal");
        let mesh_in = heal_start.elapsed();
        let mut rejoined = false;
        while heal_start.elapsed() < Duration::from_secs(15) {
            if let Ok(s) = cluster.status(leader).await {
                if s["leader"].as_u64() == Some(new_leader)
                    && s["term"].as_u64().is_some_and(|t| t >= new_term)
                    && s["role"] == json!("follower")
                {
                    rejoined = true;
                    break;
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        let rejoined_in = heal_start.elapsed();
        assert!(
            rejoined,
            "old leader {leader} did not follow {new_leader} within 15 s of the heal: {}",
            cluster.status_summary().await
        );
        eprintln!("healed: mesh back in {mesh_in:?}, old leader {leader} follows {new_leader} after {rejoined_in:?}");

        // Process faults work inside namespaces too.
        cluster.pause(new_leader).await.expect("pause");
        cluster.resume(new_leader).await.expect("resume");
        cluster.kill(leader).await.expect("kill");
        cluster.start_node(leader).await.expect("restart");
        cluster
            .wait_for_leader(Duration::from_secs(15))
            .await
            .expect("leader after restart");

        let tag_prefix = namespaces[0].trim_end_matches("n1").to_string() + "n";
        cluster.shutdown().await;
        let left = namespaces_with(&tag_prefix);
        assert!(left.is_empty(), "namespaces left after shutdown: {left:?}");
        let links = ip_output(&["-o", "link", "show"]).unwrap_or_default();
        let root_prefix = tag_prefix.trim_end_matches('n').to_string() + "c";
        assert!(
            !links.contains(&root_prefix),
            "root veths left after shutdown: {links}"
        );
        eprintln!("total {:?}", t0.elapsed());
    }

    /// Loopback: three clustered servers on 127.0.0.1; a leader, writes, process faults;
    /// partitions are refused with the reason.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::await_holding_lock)] // the guard only serializes tests on their own runtimes
    async fn loopback_fallback_elects_a_leader() {
        let Some((spec, _tmp)) = real_cluster_spec(false) else {
            return;
        };
        let _guard = REAL_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
        let t0 = Instant::now();
        let mut cluster = CheckCluster::start(spec).await.expect("start");
        assert!(!cluster.netns());
        let leader = cluster.leader().await.expect("start returns with a leader");
        eprintln!(
            "loopback cluster up in {:?}, leader {leader}, urls {:?}",
            t0.elapsed(),
            cluster.all_client_urls()
        );
        for url in cluster.all_client_urls() {
            let reply = put(&url, "k", 1, Duration::from_secs(5))
                .await
                .expect("put");
            assert_eq!(reply["ok"], json!(true), "{url}: {reply}");
        }
        match cluster.partition(leader).await {
            Err(Error::PartitionUnsupported(why)) => eprintln!("partition refused: {why}"),
            other => panic!("partition on loopback: {other:?}"),
        }
        cluster.heal().await.expect("heal is a no-op on loopback");

        cluster.kill(leader).await.expect("kill");
        assert!(matches!(
            cluster.kill(leader).await,
            Err(Error::NotRunning(_))
        ));
        let killed = Instant::now();
        let next = cluster
            .wait_for_leader(Duration::from_secs(15))
            .await
            .expect("new leader");
        assert_ne!(next, leader);
        eprintln!("killed {leader}: {next} leads after {:?}", killed.elapsed());
        cluster.start_node(leader).await.expect("restart");
        cluster.pause(next).await.expect("pause");
        let paused = Instant::now();
        let third = cluster
            .wait_for_leader(Duration::from_secs(15))
            .await
            .expect("leader while the old one is paused");
        assert_ne!(third, next);
        eprintln!("paused {next}: {third} leads after {:?}", paused.elapsed());
        cluster.resume(next).await.expect("resume");
        assert!(matches!(
            cluster.start_node(next).await,
            Err(Error::AlreadyRunning(_))
        ));
        let pids: Vec<u32> = cluster
            .ids()
            .iter()
            .filter_map(|&i| cluster.pid(i))
            .collect();
        cluster.shutdown().await;
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "node pid {pid} survived shutdown"
            );
        }
    }
}
