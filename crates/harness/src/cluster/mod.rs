//! The integration tests' cluster: a real `nats-server` plus N `concord serve` child
//! processes, each node with its own data directory and log file. `tests/common` hands it the
//! `concord` binary cargo built and adds what needs the node library (secured connections).
//!
//! ```ignore
//! let cluster = Cluster::start(3).await?;           // nats-server -p -1 + 3 nodes
//! let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
//! cluster.kill(leader).await?;                      // SIGKILL, no graceful path
//! cluster.restart(leader).await?;                   // same data dir and id
//! cluster.wait_applied(leader, index, Duration::from_secs(10)).await?;
//! ```
//!
//! Rules this fixture keeps:
//! - Cluster tests are serialized, inside one test binary by a process-wide mutex and across
//!   test binaries by an exclusive lock file (`/tmp/concord-it.lock`), because several Raft
//!   clusters on 2 cores make election timings meaningless.
//! - Every wait polls a condition against a deadline and fails with a message that names what
//!   it waited for. Nothing sleeps and hopes.
//! - `Drop` kills every child. When the test panics (or a fixture call failed) every node log
//!   is printed to stderr; cargo shows it for failing tests. `CONCORD_TEST_DUMP_LOGS=1` prints
//!   them always, `CONCORD_TEST_KEEP_DIR=1` keeps the temp dir.
//!
//! Environment knobs: `CONCORD_TEST_NATS_SERVER` (see [`crate::nats_server::find`]) and
//! `CONCORD_TEST_BIN` (the node binary; default [`ClusterOptions::bin`], which `tests/common`
//! sets to the `concord` that cargo built for the test).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::{json, Value};

mod control;
mod lock;
mod monitor;
mod waits;

use lock::FileLock;
pub use lock::{exclusive, Exclusive};
pub use monitor::ClosedConnection;

use crate::nats_server::{self, NatsServer};
use crate::process::{self, signal, tail_bytes as tail};

/// Connects a client to the given NATS URL the way the test wants (credentials, TLS). The
/// harness cannot link the node library, so a test that needs `concord::nats::connect` passes
/// it in as this.
pub type Connector =
    Arc<dyn Fn(String) -> BoxFuture<'static, anyhow::Result<async_nats::Client>> + Send + Sync>;

/// Serializes cluster tests inside one test binary. The guard lives in the `Cluster`.
static LOCK: Mutex<()> = Mutex::new(());

/// Serializes cluster tests across test binaries (cargo runs them one after the other, but
/// `cargo test -j`/nextest or two terminals do not).
const FILE_LOCK_PATH: &str = "/tmp/concord-it.lock";
/// How long we wait for another test binary to finish its cluster tests.
const FILE_LOCK_WAIT: Duration = Duration::from_secs(30 * 60);

/// Default deadline for one request from the fixture (the nodes' own default is 3 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for one status poll: short, so that a paused or dead node does not stall a wait.
const STATUS_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a started node gets to answer `P.node.<id>.admin.status`.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Options for [`Cluster::start_with`]. Build with `ClusterOptions::default()` and the
/// builder methods.
#[derive(Clone)]
pub struct ClusterOptions {
    /// The `concord` binary the nodes and [`Cluster::run_cli`] run (`CONCORD_TEST_BIN`
    /// overrides it). Required.
    pub bin: Option<PathBuf>,
    /// `cluster.name` of every node.
    pub cluster_name: String,
    /// `nats.subject_prefix` of every node.
    pub prefix: String,
    /// Extra env for every node (applied after the fixture's defaults, so it overrides them).
    pub env: Vec<(String, String)>,
    /// Extra env for one node (applied after `env`).
    pub node_env: BTreeMap<u64, Vec<(String, String)>>,
    /// Start every node and wait until each answers its admin status. When false, the nodes
    /// are only prepared (data dir, env); start them with [`Cluster::start_node`].
    pub start_nodes: bool,
    /// Reuse a running NATS system instead of spawning `nats-server`. Used for a second
    /// cluster on the same NATS (give it another cluster name and prefix). Such a cluster does
    /// not take the test locks: the first cluster of the test already holds them.
    pub nats_url: Option<String>,
    /// Token the fixture's own status and wait calls send (`Authorization: Bearer`), for
    /// clusters with `auth.enabled`. Test requests carry their own credentials.
    pub admin_token: Option<String>,
    /// How the fixture's own test clients connect (credentials, TLS), given the cluster's
    /// URL. `None`: a plain connection.
    pub connector: Option<Connector>,
    /// A config for the fixture's `nats-server` (its file syntax; not the address, port or
    /// log, which come from the command line), e.g. ping settings, or `http_port: -1` for the
    /// monitoring endpoint [`Cluster::nats_monitor`] reads. Ignored with `nats_url`.
    pub nats_server_config: Option<String>,
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("bin", &self.bin)
            .field("cluster_name", &self.cluster_name)
            .field("prefix", &self.prefix)
            .field("env", &self.env)
            .field("node_env", &self.node_env)
            .field("start_nodes", &self.start_nodes)
            .field("nats_url", &self.nats_url)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("connector", &self.connector.as_ref().map(|_| "<fn>"))
            .field("nats_server_config", &self.nats_server_config)
            .finish()
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            bin: None,
            cluster_name: "concord-it".to_string(),
            prefix: "concord".to_string(),
            env: Vec::new(),
            node_env: BTreeMap::new(),
            start_nodes: true,
            nats_url: None,
            admin_token: None,
            connector: None,
            nats_server_config: None,
        }
    }
}

impl ClusterOptions {
    pub fn env(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.env.push((key.into(), value.to_string()));
        self
    }
    pub fn node_env(mut self, id: u64, key: impl Into<String>, value: impl ToString) -> Self {
        self.node_env
            .entry(id)
            .or_default()
            .push((key.into(), value.to_string()));
        self
    }
    pub fn cluster_name(mut self, name: impl Into<String>) -> Self {
        self.cluster_name = name.into();
        self
    }
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
    pub fn start_nodes(mut self, start: bool) -> Self {
        self.start_nodes = start;
        self
    }
    pub fn nats_url(mut self, url: impl Into<String>) -> Self {
        self.nats_url = Some(url.into());
        self
    }
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(token.into());
        self
    }
    /// The fixture's own client connects with these NATS settings (for a secured NATS).
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = Some(bin.into());
        self
    }

    pub fn connector(mut self, connector: Connector) -> Self {
        self.connector = Some(connector);
        self
    }
    pub fn nats_server_config(mut self, config: impl Into<String>) -> Self {
        self.nats_server_config = Some(config.into());
        self
    }
}

struct Node {
    id: u64,
    data_dir: PathBuf,
    log_path: PathBuf,
    /// Full env of this node's process (fixture defaults, then options, then per-node).
    env: Vec<(String, String)>,
    /// Another binary for this node than the cluster's (a rolling upgrade's old build).
    bin: Option<PathBuf>,
    child: Option<Child>,
    paused: bool,
}

/// A running test cluster. See the module docs.
pub struct Cluster {
    // Drop order matters: children are killed in `Drop::drop`, then the temp dir goes, then
    // the locks are released.
    nodes: Mutex<BTreeMap<u64, Node>>,
    nats: Mutex<Option<Child>>,
    nats_log: Option<PathBuf>,
    /// The fixture's `nats-server` monitoring port, when its config enables it.
    nats_monitor_port: Mutex<Option<u16>>,
    nats_url: String,
    client: async_nats::Client,
    prefix: String,
    cluster_name: String,
    initial_members: Vec<u64>,
    admin_token: Option<String>,
    /// The node binary.
    bin: PathBuf,
    /// [`ClusterOptions::connector`], for [`Cluster::connect`].
    connector: Option<Connector>,
    failed: AtomicBool,
    tmp: Option<tempfile::TempDir>,
    _file_lock: Option<FileLock>,
    _guard: Option<MutexGuard<'static, ()>>,
}

/// What one run of the CLI printed.
#[derive(Debug)]
pub struct CliRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// The `--json` reply on stdout.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(self.stdout.trim())
            .with_context(|| format!("CLI printed no JSON: {self:?}"))
    }
}

impl Cluster {
    /// `n` nodes (ids 1..=n, all initial members) on a fresh `nats-server`, all started and
    /// answering their admin status. Does not wait for a leader.
    pub async fn start(n: u64) -> Result<Cluster> {
        Cluster::start_with(n, ClusterOptions::default()).await
    }

    // The guard of `LOCK` is meant to live across awaits (for the whole test): it only
    // serializes tests, each on its own runtime, and is never contended within one.
    #[allow(clippy::await_holding_lock)]
    pub async fn start_with(n: u64, opts: ClusterOptions) -> Result<Cluster> {
        assert!(n >= 1, "a cluster needs at least one node");
        let bin = std::env::var_os("CONCORD_TEST_BIN")
            .map(PathBuf::from)
            .or_else(|| opts.bin.clone())
            .context("ClusterOptions::bin: which concord binary the nodes run")?;
        // Locks first: nothing may be spawned while another cluster test runs.
        let (guard, file_lock) = if opts.nats_url.is_none() {
            let guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let file_lock = FileLock::acquire(Path::new(FILE_LOCK_PATH), FILE_LOCK_WAIT).await?;
            (Some(guard), Some(file_lock))
        } else {
            (None, None)
        };

        let tmp = tempfile::Builder::new()
            .prefix("concord-it-")
            .tempdir()
            .context("creating the cluster temp dir")?;

        let (nats_child, nats_log, nats_url, monitor) = match &opts.nats_url {
            Some(url) => (None, None, url.clone(), None),
            None => {
                let bin = nats_server::find()?;
                let server = match &opts.nats_server_config {
                    Some(conf) => NatsServer::start_with_config(&bin, tmp.path(), conf).await?,
                    None => NatsServer::start(&bin, tmp.path()).await?,
                };
                let url = server.url();
                let monitor = server.monitor_port;
                (Some(server.child), Some(server.log_path), url, monitor)
            }
        };

        let client = match &opts.connector {
            Some(connect) => connect(nats_url.clone())
                .await
                .with_context(|| format!("connecting the test client to {nats_url}"))?,
            None => async_nats::ConnectOptions::new()
                .request_timeout(Some(REQUEST_TIMEOUT))
                .connect(nats_url.as_str())
                .await
                .with_context(|| format!("connecting the test client to {nats_url}"))?,
        };

        let initial_members: Vec<u64> = (1..=n).collect();
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let extra = opts.node_env.get(&id).cloned().unwrap_or_default();
            let node = prepare_node(
                tmp.path(),
                id,
                &initial_members,
                &nats_url,
                &opts,
                &opts.env,
                &extra,
            )?;
            nodes.insert(id, node);
        }

        let cluster = Cluster {
            nodes: Mutex::new(nodes),
            nats: Mutex::new(nats_child),
            nats_log,
            nats_monitor_port: Mutex::new(monitor),
            nats_url,
            client,
            prefix: opts.prefix.clone(),
            cluster_name: opts.cluster_name.clone(),
            initial_members,
            admin_token: opts.admin_token.clone(),
            bin,
            connector: opts.connector.clone(),
            failed: AtomicBool::new(false),
            tmp: Some(tmp),
            _file_lock: file_lock,
            _guard: guard,
        };

        if opts.start_nodes {
            for id in 1..=n {
                cluster.spawn_node(id)?;
            }
            for id in 1..=n {
                cluster
                    .wait_node_answers(id, NODE_READY_TIMEOUT)
                    .await
                    .map_err(|e| cluster.failed_with(e))?;
            }
        }
        Ok(cluster)
    }

    // ----- accessors ---------------------------------------------------------------------

    pub fn nats_url(&self) -> &str {
        &self.nats_url
    }

    /// A raw NATS client connected to the cluster's NATS (cheap clone of one connection).
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }

    /// A fresh NATS connection (for tests that need their own subscriptions or flushes).
    pub async fn connect(&self) -> Result<async_nats::Client> {
        if let Some(connect) = &self.connector {
            return connect(self.nats_url.clone())
                .await
                .with_context(|| format!("connecting to {}", self.nats_url));
        }
        async_nats::connect(self.nats_url.as_str())
            .await
            .with_context(|| format!("connecting to {}", self.nats_url))
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// `<prefix>.<suffix>`.
    pub fn subject(&self, suffix: &str) -> String {
        format!("{}.{}", self.prefix, suffix)
    }

    /// Ids of every node the fixture knows (running or not).
    pub fn ids(&self) -> Vec<u64> {
        self.nodes().keys().copied().collect()
    }

    /// Ids of nodes whose process is running and not paused.
    pub fn live_ids(&self) -> Vec<u64> {
        self.nodes()
            .values()
            .filter(|n| n.child.is_some() && !n.paused)
            .map(|n| n.id)
            .collect()
    }

    pub fn initial_members(&self) -> &[u64] {
        &self.initial_members
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.with_node(id, |n| Ok(n.data_dir.clone()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.with_node(id, |n| Ok(n.log_path.clone()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The OS pid of a running node.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes()
            .get(&id)
            .and_then(|n| n.child.as_ref().map(|c| c.id()))
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.pid(id).is_some()
    }

    /// The node's log so far.
    pub fn log(&self, id: u64) -> String {
        std::fs::read(self.log_path(id))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Marks the test as failed so that `Drop` prints the node logs even without a panic.
    pub fn mark_failed(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Passes a test body's result through, marking the cluster failed (so its node logs are
    /// printed) when it is an error.
    pub fn fail_on_err<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.mark_failed();
        }
        r
    }

    // ----- requests ----------------------------------------------------------------------

    /// Request `<prefix>.<suffix>` with a JSON body; the reply parsed as JSON (whatever its
    /// `ok`). Fails only on transport errors or a reply that is not JSON.
    pub async fn request(&self, suffix: &str, body: Value) -> Result<Value> {
        let subject = self.subject(suffix);
        self.request_raw(&subject, None, to_bytes(&body), REQUEST_TIMEOUT)
            .await
            .map_err(|e| self.failed_with(e))
    }

    /// Request `<prefix>.node.<id>.<suffix>`.
    pub async fn node_request(&self, id: u64, suffix: &str, body: Value) -> Result<Value> {
        let subject = self.subject(&format!("node.{id}.{suffix}"));
        self.request_raw(&subject, None, to_bytes(&body), REQUEST_TIMEOUT)
            .await
            .map_err(|e| self.failed_with(e))
    }

    /// Like [`Cluster::request`] with a client-side deadline of `timeout`.
    pub async fn request_timeout(
        &self,
        suffix: &str,
        body: Value,
        timeout: Duration,
    ) -> Result<Value> {
        let subject = self.subject(suffix);
        self.request_raw(&subject, None, to_bytes(&body), timeout)
            .await
    }

    /// The most general request: full subject, optional headers, raw payload, client-side
    /// deadline. Reply parsed as JSON. Does not mark the test failed (use it to probe).
    pub async fn request_raw(
        &self,
        subject: &str,
        headers: Option<async_nats::HeaderMap>,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Value> {
        let msg = self
            .request_message(subject, headers, payload, timeout)
            .await?;
        serde_json::from_slice(&msg.payload).map_err(|e| {
            anyhow!(
                "reply on {subject} is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&msg.payload)
            )
        })
    }

    /// Raw request returning the NATS message itself (reply headers included).
    pub async fn request_message(
        &self,
        subject: &str,
        headers: Option<async_nats::HeaderMap>,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<async_nats::Message> {
        let mut request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        if let Some(headers) = headers {
            request = request.headers(headers);
        }
        // The outer timeout is a safety net in case the client's own timer misbehaves.
        match tokio::time::timeout(
            timeout + Duration::from_secs(1),
            self.client.send_request(subject.to_string(), request),
        )
        .await
        {
            Ok(Ok(msg)) => Ok(msg),
            Ok(Err(e)) => Err(anyhow!(
                "request on {subject} failed after up to {timeout:?}: {e} ({:?})",
                e.kind()
            )),
            Err(_) => Err(anyhow!("request on {subject}: no reply within {timeout:?}")),
        }
    }

    /// `Authorization: Bearer <admin token>` when the cluster has one, for admin calls.
    pub fn admin_headers(&self) -> Option<async_nats::HeaderMap> {
        let token = self.admin_token.as_ref()?;
        let mut h = async_nats::HeaderMap::new();
        h.insert("Authorization", format!("Bearer {token}").as_str());
        Some(h)
    }

    /// Leaves node `id` behind: kills it, writes until the leader has purged its log past
    /// what `id` had applied, and restarts it, so it can only catch up by a snapshot
    /// install. Returns the leader's purged index.
    pub async fn restart_behind_snapshot(&self, id: u64) -> Result<u64> {
        let had = self.status(id).await?["last_applied"].as_u64().unwrap_or(0);
        self.kill(id).await?;
        let purged = self.fill_until_purged(had + 10, None).await?;
        self.restart(id).await?;
        Ok(purged)
    }

    /// Puts (bounded, on `P.kv.put`, with `headers`) until the leader has purged its log
    /// beyond `index`, so that a node behind `index` can only catch up by a snapshot.
    /// Returns the leader's purged index.
    pub async fn fill_until_purged(
        &self,
        index: u64,
        headers: Option<async_nats::HeaderMap>,
    ) -> Result<u64> {
        const MAX_PUTS: usize = 4000;
        for i in 0..MAX_PUTS {
            let reply = self
                .request_raw(
                    &self.subject("kv.put"),
                    headers.clone(),
                    to_bytes(&json!({"key": format!("fill-{}", i % 50), "value": i})),
                    Duration::from_secs(10),
                )
                .await?;
            if reply["ok"] != json!(true) {
                bail!("fill put {i} failed: {reply}");
            }
            if i % 50 == 49 {
                let leader = self
                    .agreed_leader()
                    .await?
                    .ok_or_else(|| anyhow!("no leader"))?;
                let purged = self.status(leader).await?["purged_index"]
                    .as_u64()
                    .unwrap_or(0);
                if purged > index {
                    eprintln!("leader purged to {purged} after {} puts", i + 1);
                    return Ok(purged);
                }
            }
        }
        bail!("the leader did not purge beyond {index} within {MAX_PUTS} puts")
    }

    /// `<prefix>.node.<id>.admin.status`; fails unless the reply has `"ok": true`.
    pub async fn status(&self, id: u64) -> Result<Value> {
        self.status_within(id, STATUS_TIMEOUT).await
    }

    async fn status_within(&self, id: u64, timeout: Duration) -> Result<Value> {
        let subject = self.subject(&format!("node.{id}.admin.status"));
        let reply = self
            .request_raw(
                &subject,
                self.admin_headers(),
                to_bytes(&json!({})),
                timeout,
            )
            .await?;
        if reply["ok"] != json!(true) {
            bail!("status of node {id} is not ok: {reply}");
        }
        Ok(reply)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let nodes = self.nodes.get_mut().unwrap_or_else(|p| p.into_inner());
        for node in nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                // SIGKILL also ends a SIGSTOPped process.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(mut nats) = self
            .nats
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = nats.kill();
            let _ = nats.wait();
        }
        let always = std::env::var_os("CONCORD_TEST_DUMP_LOGS").is_some_and(|v| v != "0");
        if std::thread::panicking() || self.failed.load(Ordering::SeqCst) || always {
            self.dump_logs();
        }
        if std::env::var_os("CONCORD_TEST_KEEP_DIR").is_some_and(|v| v != "0") {
            if let Some(tmp) = self.tmp.take() {
                eprintln!("keeping the cluster temp dir {}", tmp.keep().display());
            }
        }
    }
}

// ----- free helpers ----------------------------------------------------------------------

/// Polls `check` every 100 ms until it returns `Ok(true)` or `timeout` passes; the error names
/// `what` and the last `Err` that `check` returned.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err: Option<anyhow::Error> = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            return Err(match last_err {
                Some(e) => {
                    anyhow!("timed out after {timeout:?} waiting for {what} (last error: {e:#})")
                }
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

pub fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("a serde_json::Value always serializes"))
}

/// `error.code` of an error reply.
pub fn error_code(reply: &Value) -> Option<&str> {
    reply["error"]["code"].as_str()
}

fn prepare_node(
    tmp: &Path,
    id: u64,
    initial_members: &[u64],
    nats_url: &str,
    opts: &ClusterOptions,
    cluster_env: &[(String, String)],
    node_env: &[(String, String)],
) -> Result<Node> {
    let data_dir = tmp.join(format!("node-{id}")).join("data");
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {data_dir:?}"))?;
    let log_path = tmp.join(format!("node-{id}.log"));
    let members = initial_members
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut env: Vec<(String, String)> = vec![
        ("CONCORD_NODE__ID".into(), id.to_string()),
        ("CONCORD_CLUSTER__INITIAL_MEMBERS".into(), members),
        ("CONCORD_NATS__URL".into(), nats_url.to_string()),
        ("CONCORD_DATA_DIR".into(), data_dir.display().to_string()),
        ("CONCORD_CLUSTER__NAME".into(), opts.cluster_name.clone()),
        ("CONCORD_NATS__SUBJECT_PREFIX".into(), opts.prefix.clone()),
        // Fast but safe on 2 loaded cores: an election timeout of 8-16 heartbeats.
        ("CONCORD_RAFT__HEARTBEAT_INTERVAL_MS".into(), "100".into()),
        ("CONCORD_RAFT__ELECTION_TIMEOUT_MIN_MS".into(), "800".into()),
        (
            "CONCORD_RAFT__ELECTION_TIMEOUT_MAX_MS".into(),
            "1600".into(),
        ),
        ("RUST_LOG".into(), "info".into()),
        ("RUST_BACKTRACE".into(), "1".into()),
    ];
    for (k, v) in cluster_env.iter().chain(node_env) {
        // Later settings override earlier ones; keep one entry per key for readability.
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
    Ok(Node {
        id,
        data_dir,
        log_path,
        env,
        bin: None,
        child: None,
        paused: false,
    })
}
