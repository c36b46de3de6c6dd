//! The `concord` command line: `serve` runs a node; the other commands are clients of the
//! wire protocol. Every client command takes `--json` and exits non-zero with the error
//! code on failure.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::client::{Client, ClientError, ReadConsistency};
use crate::config::{self, Config};

mod backup;
mod membership;
mod observe;

#[derive(Debug, Parser)]
#[command(
    name = "concord",
    version,
    about = "A distributed, strongly consistent key-value store on Raft and NATS"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Configuration file (default: ./concord.toml when present).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// NATS server URL(s), comma-separated [env: CONCORD_NATS__URL].
    #[arg(long, global = true, value_name = "URL")]
    pub nats_url: Option<String>,
    /// Subject prefix of the cluster [env: CONCORD_NATS__SUBJECT_PREFIX].
    #[arg(long, global = true, value_name = "PREFIX")]
    pub subject_prefix: Option<String>,
    /// Request timeout in milliseconds (client commands).
    #[arg(
        long,
        global = true,
        env = "CONCORD_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub timeout_ms: u64,
    /// Print replies as JSON, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    /// Token sent with client commands (default: `client.token`, then `auth.admin_token`
    /// of the config file).
    #[arg(
        long,
        global = true,
        env = "CONCORD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run one node.
    Serve(ServeArgs),
    /// Set KEY to VALUE (taken as JSON when it parses, else as a string).
    Put { key: String, value: String },
    /// Print the value of KEY.
    Get {
        key: String,
        /// Read from the answering node's state, without a leader round trip (may lag).
        #[arg(long)]
        stale: bool,
        /// With --stale: wait until the node has applied this revision.
        #[arg(long, value_name = "N")]
        min_revision: Option<u64>,
    },
    /// Delete KEY.
    Delete { key: String },
    /// List keys starting with PREFIX (all keys without one), following pages.
    Scan {
        prefix: Option<String>,
        /// Stop after this many items.
        #[arg(long)]
        limit: Option<usize>,
        /// Start after this key.
        #[arg(long)]
        after: Option<String>,
    },
    /// Cluster administration.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Access tokens (needs an admin credential when auth is on).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Closed-loop load generator over the wire protocol.
    Bench(BenchArgs),
    /// Print the telemetry events of every node (`P.telemetry.>`) as they come, until Ctrl-C.
    WatchTelemetry {
        /// Only events on this path or under it, e.g. `api.put`, `api`, `snapshot`.
        #[arg(long, value_name = "PATH")]
        filter: Option<String>,
    },
    /// Build a snapshot now on one node, or on every member, and wait until it is built
    /// (needs an admin credential when auth is on).
    Snapshot {
        /// The node (default: every voter and learner).
        #[arg(long, value_name = "ID")]
        node: Option<u64>,
    },
    /// Write a consistent backup of the whole cluster (keys, revisions, tokens) to FILE: the
    /// leader takes it at a linearizable point; it is downloaded and checked (admin).
    Backup {
        /// Where to write the backup (written as FILE.part, renamed when complete).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Seed a new, empty data directory from a backup (offline; no NATS needed). Restore the
    /// same backup into every initial member's directory, then start the nodes.
    Restore(RestoreArgs),
    /// Fault suite: start a cluster, run a recorded workload under a nemesis, check the
    /// history for linearizability and lost writes, print a verdict.
    Check(CheckArgs),
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Make a new token and print it once: the cluster keeps only its SHA-256.
    Create {
        /// What the token may do: read (get, scan), readwrite (also put, delete) or admin.
        #[arg(long, default_value = "read", value_parser = ["read", "readwrite", "admin"])]
        role: String,
        /// A label shown by `token list`.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. 30d or 12h (default: no expiry).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// List tokens: id, name, role, created, expires (never the tokens themselves).
    List,
    /// Revoke a token by its id (from `token list`) or by the token itself.
    Revoke {
        #[arg(value_name = "ID|TOKEN")]
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file (from `concord backup`).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The node's data directory: must not exist or be empty (default: the config's
    /// `data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Voters of the restored cluster, e.g. 1,2,3 (default: the config's
    /// `cluster.initial_members`).
    #[arg(long, value_name = "IDS")]
    pub members: Option<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Time given to each nemesis, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Nemeses to run one after the other: kill, pause, partition, restart (or all).
    #[arg(long, default_value = "all")]
    pub nemesis: String,
    /// Concurrent client processes, spread over the three NATS servers.
    #[arg(long, default_value_t = 6)]
    pub clients: usize,
    /// Size of the key set.
    #[arg(long, default_value_t = 8)]
    pub keys: usize,
    /// Where the history, node data and logs go (default: a new temp dir, kept).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Node binary (default: this one).
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
    /// nats-server binary (default: from PATH, then ./.tools/bin).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// Run all servers on loopback without network namespaces (no partition nemesis).
    #[arg(long)]
    pub no_netns: bool,
    /// Failpoints to switch on in the nodes (needs a build with --features failpoints).
    #[arg(long)]
    pub failpoints: Option<String>,
    /// Seed of the nemesis's choices.
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// How long to run, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Stop after this many operations (whichever of --ops and --duration comes first).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Operation weights.
    #[arg(long, default_value = "put=100")]
    pub mix: String,
    /// Size of the key space.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Read consistency of gets: linearizable or stale.
    #[arg(long, default_value = "linearizable")]
    pub consistency: String,
    /// What to load: the cluster (`concord`), a local NATS echo responder (`echo`: the
    /// round-trip floor), 4 KiB appends with fdatasync in --fsync-dir (`fsync`), a NATS
    /// JetStream KV bucket (`natskv`), or an etcd v3 cluster (`etcd`, in builds with
    /// `--features bench-etcd`).
    #[arg(long, default_value = "concord")]
    pub target: String,
    /// Directory for `--target fsync` (use the disk the nodes' data lives on).
    #[arg(long, default_value = ".")]
    pub fsync_dir: PathBuf,
    /// Put every key of the key space once before the measured run, so gets find data.
    #[arg(long)]
    pub preload: bool,
    /// Report the CPU time (user + system) these processes spend during the run, in total
    /// and per 10,000 operations: the servers under test, e.g. `--cpu-pids 101,102,103`.
    #[arg(long, value_name = "PID,...")]
    pub cpu_pids: Option<String>,
    /// `--target etcd`: client endpoints, comma-separated.
    #[arg(long, value_name = "URL,...", default_value = "http://127.0.0.1:2379")]
    pub endpoints: String,
    /// `--target etcd`: gRPC channels (each one HTTP/2 connection per member) that the
    /// clients share round-robin.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub etcd_conns: usize,
    /// `--target natskv`: the KV bucket, created if missing.
    #[arg(long, default_value = "bench")]
    pub bucket: String,
    /// `--target natskv`: replicas of a bucket this run creates.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
}

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

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// This node's id [env: CONCORD_NODE__ID].
    #[arg(long, value_name = "ID")]
    pub node_id: Option<u64>,
    /// Data directory [env: CONCORD_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Cluster name [env: CONCORD_CLUSTER__NAME].
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// Initial voters, e.g. 1,2,3 [env: CONCORD_CLUSTER__INITIAL_MEMBERS].
    #[arg(long, value_name = "IDS")]
    pub initial_members: Option<String>,
    /// Print the effective configuration, each setting with where it came from (default,
    /// config file, env variable or flag), secrets masked, and exit; `--json` for JSON.
    #[arg(long)]
    pub check_config: bool,
}

/// Loads the layered configuration with the flags given on the command line on top.
pub fn load_config(
    global: &Global,
    serve: Option<&ServeArgs>,
) -> Result<(Config, Vec<String>), config::Error> {
    config::load(global.config.as_deref(), &flags(global, serve))
}

/// The configuration flags given on the command line, as settings over every other layer.
fn flags(global: &Global, serve: Option<&ServeArgs>) -> Vec<config::Flag> {
    use figment::value::Value as F;
    let mut flags = Vec::new();
    let mut set = |key, flag, value: F| flags.push(config::Flag { key, flag, value });
    if let Some(u) = &global.nats_url {
        set("nats.url", "--nats-url", F::from(u.clone()));
    }
    if let Some(p) = &global.subject_prefix {
        set(
            "nats.subject_prefix",
            "--subject-prefix",
            F::from(p.clone()),
        );
    }
    if let Some(s) = serve {
        if let Some(id) = s.node_id {
            set("node.id", "--node-id", F::from(id));
        }
        if let Some(d) = &s.data_dir {
            set("data_dir", "--data-dir", F::from(d.display().to_string()));
        }
        if let Some(n) = &s.cluster_name {
            set("cluster.name", "--cluster-name", F::from(n.clone()));
        }
        if let Some(m) = &s.initial_members {
            set(
                "cluster.initial_members",
                "--initial-members",
                F::from(m.clone()),
            );
        }
    }
    flags
}

/// Parses a CLI value: JSON when it parses, else the text as a JSON string.
pub fn parse_value(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

/// Runs a client command; returns the process exit code.
pub async fn run_client(global: &Global, cmd: Cmd) -> anyhow::Result<i32> {
    // Some bench targets (etcd, fsync) need no NATS connection.
    if let Cmd::Bench(args) = cmd {
        return bench(global, args).await;
    }
    let (config, _) = load_config(global, None)?;
    let timeout = Duration::from_millis(global.timeout_ms);
    let token = match client_token(global, &config) {
        Ok(t) => t,
        Err(e) => {
            return Ok(report(
                global,
                &ClientError::Server(crate::error::bad_request(e.to_string())),
            ))
        }
    };
    let client = match Client::connect(&config.nats, timeout).await {
        Ok(c) => c.with_token(token),
        Err(e) => return Ok(report(global, &e)),
    };
    let res = match cmd {
        Cmd::Put { key, value } => client.put(&key, &parse_value(&value)).await.map(|rev| {
            out(global, json!({"ok": true, "revision": rev}), || {
                format!("OK (revision {rev})")
            })
        }),
        Cmd::Get {
            key,
            stale,
            min_revision,
        } => {
            let c = if stale {
                ReadConsistency::Stale
            } else {
                ReadConsistency::Linearizable
            };
            match client.get_with(&key, c, min_revision).await {
                Ok(Some(v)) => Ok(out(
                    global,
                    json!({"ok": true, "value": v.value, "revision": v.revision}),
                    || display_value(&v.value),
                )),
                Ok(None) => Err(ClientError::Server(crate::error::not_found(format!(
                    "key '{key}' not found"
                )))),
                Err(e) => Err(e),
            }
        }
        Cmd::Delete { key } => client.delete(&key).await.map(|(deleted, rev)| {
            out(
                global,
                json!({"ok": true, "deleted": deleted, "revision": rev}),
                || {
                    if deleted {
                        format!("deleted (revision {rev})")
                    } else {
                        format!("not found, nothing deleted (revision {rev})")
                    }
                },
            )
        }),
        Cmd::Scan {
            prefix,
            limit,
            after,
        } => scan(&client, global, prefix.unwrap_or_default(), limit, after).await,
        Cmd::Cluster(ClusterCmd::Status) => cluster_status(&client, global).await,
        Cmd::Cluster(ClusterCmd::Members) => client.members().await.map(|v| {
            let text = members_text(&v);
            out(global, v, || text)
        }),
        Cmd::Cluster(ClusterCmd::Add { id, learner, wait }) => {
            membership::add(&client, global, id, learner, wait).await
        }
        Cmd::Cluster(ClusterCmd::Remove { id }) => membership::remove(&client, global, id).await,
        Cmd::Token(cmd) => token_command(&client, global, cmd).await,
        Cmd::WatchTelemetry { filter } => {
            observe::watch_telemetry(&client, global, filter.as_deref()).await
        }
        Cmd::Snapshot { node } => observe::snapshot(&client, global, node).await,
        Cmd::Backup { out } => backup::backup(&client, global, &out).await,
        Cmd::Serve(_) | Cmd::Check(_) | Cmd::Restore(_) => {
            unreachable!("serve, check and restore are dispatched by main")
        }
        Cmd::Bench(_) => unreachable!("bench is dispatched above"),
    };
    Ok(match res {
        Ok(code) => code,
        Err(e) => report(global, &e),
    })
}

/// `concord bench`: connects to what `--target` names (NATS only for the targets that use
/// it), runs the closed loop, prints the summary.
async fn bench(global: &Global, args: BenchArgs) -> anyhow::Result<i32> {
    use crate::bench::Target;
    let mix = crate::bench::parse_mix(&args.mix).map_err(|e| anyhow::anyhow!("--mix: {e}"))?;
    let stale = match args.consistency.as_str() {
        "linearizable" => false,
        "stale" => true,
        other => anyhow::bail!("--consistency: '{other}' is not linearizable or stale"),
    };
    let cpu_pids = match &args.cpu_pids {
        Some(p) => {
            crate::bench::cpu::parse_pids(p).map_err(|e| anyhow::anyhow!("--cpu-pids: {e}"))?
        }
        None => Vec::new(),
    };
    let timeout = Duration::from_millis(global.timeout_ms);
    if args.target == "fsync" {
        let n = args.ops.unwrap_or(2000) as usize;
        let s = crate::bench::fsync_floor(&args.fsync_dir, n)?;
        let v = serde_json::to_value(&s)?;
        return Ok(out(global, v, || {
            format!(
                "{} x (4 KiB append + fdatasync): p50 {} us p99 {} us, {:.0}/s",
                s.ops, s.latency_us["p50"], s.latency_us["p99"], s.ops_per_sec
            )
        }));
    }
    let (config, _) = load_config(global, None)?;
    let nats = || async {
        Client::connect(&config.nats, timeout)
            .await
            .map(|c| c.nats().clone())
            .map_err(|e| anyhow::anyhow!("{}: {}", e.code(), e.message()))
    };
    let prefix = config.nats.subject_prefix.clone();
    let target = match args.target.as_str() {
        "concord" => Target::Concord {
            nats: nats().await?,
            prefix,
            token: client_token(global, &config)?,
        },
        "echo" => Target::Echo {
            nats: nats().await?,
            prefix,
        },
        "natskv" => Target::NatsKv {
            nats: nats().await?,
            bucket: args.bucket.clone(),
            replicas: args.replicas.max(1),
        },
        #[cfg(feature = "bench-etcd")]
        "etcd" => Target::Etcd {
            endpoints: args
                .endpoints
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect(),
            conns: args.etcd_conns.max(1),
        },
        #[cfg(not(feature = "bench-etcd"))]
        "etcd" => anyhow::bail!(
            "--target etcd: this build has no etcd client; rebuild with `cargo build --release --features bench-etcd` (needs protoc)"
        ),
        other => {
            anyhow::bail!("--target: '{other}' is not concord, echo, fsync, natskv or etcd")
        }
    };
    let cfg = crate::bench::BenchConfig {
        clients: args.clients.max(1),
        duration: args.duration,
        ops: args.ops,
        mix,
        keys: args.keys,
        value_size: args.value_size,
        stale,
        timeout,
        preload: args.preload,
        cpu_pids,
    };
    let s = crate::bench::run(target, cfg, !global.json).await?;
    let v = serde_json::to_value(&s)?;
    Ok(out(global, v, || {
        let mut line = format!(
            "{} ops in {:.1}s: {:.0} ops/s | latency us p50 {} p90 {} p99 {} p99.9 {} max {} | errors {:?}",
            s.ops, s.seconds, s.ops_per_sec, s.latency_us["p50"], s.latency_us["p90"],
            s.latency_us["p99"], s.latency_us["p999"], s.latency_us["max"], s.errors
        );
        if let (Some(c), Some(per)) = (s.cpu_seconds, s.cpu_seconds_per_10k_ops) {
            line.push_str(&format!(" | cpu {c:.2} s, {per:.3} s per 10k ops"));
        }
        line
    }))
}

/// The client's token: `--token` / `CONCORD_TOKEN`, then `client.token`, then the node's
/// bootstrap admin credential when the config file has one.
fn client_token(global: &Global, config: &Config) -> Result<Option<String>, config::Error> {
    if let Some(t) = &global.token {
        return Ok(Some(t.clone()));
    }
    if let Some(t) = &config.client.token {
        return Ok(Some(t.clone()));
    }
    config.admin_token()
}

async fn token_command(
    client: &Client,
    global: &Global,
    cmd: TokenCmd,
) -> Result<i32, ClientError> {
    use crate::subjects::AdminOp;
    let (op, body) = match cmd {
        TokenCmd::Create {
            role,
            name,
            expires,
        } => (
            AdminOp::TokenCreate,
            json!({"role": role, "name": name, "expires_in": expires}),
        ),
        TokenCmd::List => (AdminOp::TokenList, json!({})),
        TokenCmd::Revoke { id } => (AdminOp::TokenRevoke, json!({ "id": id })),
    };
    let v = client.admin(op, body).await?;
    let text = match op {
        AdminOp::TokenCreate => format!(
            "{}\n\nid {}, role {}, expires {}.\nStore the token now: it cannot be shown again.",
            show(&v["token"]),
            show(&v["id"]),
            show(&v["role"]),
            v["expires"].as_str().unwrap_or("never"),
        ),
        AdminOp::TokenRevoke => {
            if v["revoked"] == json!(true) {
                format!("revoked token {}", show(&v["id"]))
            } else {
                format!("token {} was already revoked", show(&v["id"]))
            }
        }
        _ => tokens_text(&v),
    };
    Ok(out(global, v, || text))
}

fn tokens_text(v: &Value) -> String {
    let empty = Vec::new();
    let list = v["tokens"].as_array().unwrap_or(&empty);
    if list.is_empty() {
        return "no tokens".into();
    }
    let mut s = format!(
        "{:<16}  {:<9}  {:<20}  {:<20}  {}",
        "ID", "ROLE", "CREATED", "EXPIRES", "NAME"
    );
    for t in list {
        let expires = match (t["expires"].as_str(), t["expired"] == json!(true)) {
            (None, _) => "never".to_string(),
            (Some(e), true) => format!("{e} (expired)"),
            (Some(e), false) => e.to_string(),
        };
        s.push_str(&format!(
            "\n{:<16}  {:<9}  {:<20}  {:<20}  {}",
            show(&t["id"]),
            show(&t["role"]),
            show(&t["created"]),
            expires,
            t["name"].as_str().unwrap_or("-"),
        ));
    }
    s
}

/// Writes a line to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn emit(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

fn out(global: &Global, v: Value, human: impl FnOnce() -> String) -> i32 {
    if global.json {
        emit(&v.to_string());
    } else {
        emit(&human());
    }
    0
}

fn report(global: &Global, e: &ClientError) -> i32 {
    let code = e.code();
    let message = e.message();
    if global.json {
        emit(&json!({"ok": false, "error": {"code": code, "message": message}}).to_string());
    }
    eprintln!("error: {code}: {message}");
    1
}

fn display_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn scan(
    client: &Client,
    global: &Global,
    prefix: String,
    limit: Option<usize>,
    after: Option<String>,
) -> Result<i32, ClientError> {
    let mut items = Vec::new();
    let mut after = after;
    loop {
        let want = limit.map(|l| l.saturating_sub(items.len()).min(1000));
        let page = client
            .scan(
                &prefix,
                want,
                after.as_deref(),
                ReadConsistency::Linearizable,
            )
            .await?;
        after = page.items.last().map(|i| i.key.clone());
        items.extend(page.items);
        let full = limit.is_some_and(|l| items.len() >= l);
        if !page.more || full || after.is_none() {
            let more = page.more;
            let json_items: Vec<Value> = items
                .iter()
                .map(|i| json!({"key": i.key, "value": i.value, "revision": i.revision}))
                .collect();
            return Ok(out(
                global,
                json!({"ok": true, "items": json_items, "more": more && full}),
                || {
                    items
                        .iter()
                        .map(|i| format!("{}\t{}", i.key, display_value(&i.value)))
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            ));
        }
    }
}

async fn cluster_status(client: &Client, global: &Global) -> Result<i32, ClientError> {
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
        "members": status["members"],
        "nodes": nodes,
    });
    let text = status_text(&summary);
    Ok(out(global, summary, || text))
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
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
    t.trim_end().to_string()
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

fn members_text(v: &Value) -> String {
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

/// Finds `nats-server`: the flag, `CONCORD_TEST_NATS_SERVER`, PATH, then `./.tools/bin`.
fn find_nats_server(flag: Option<PathBuf>) -> PathBuf {
    if let Some(p) = flag {
        return p;
    }
    if let Ok(p) = std::env::var("CONCORD_TEST_NATS_SERVER") {
        return PathBuf::from(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("nats-server");
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from(".tools/bin/nats-server")
}

/// `concord check`.
pub async fn check(global: &Global, args: &CheckArgs) -> anyhow::Result<i32> {
    use crate::check::nemesis::Fault;
    let faults = if args.nemesis == "all" {
        Fault::all()
    } else {
        args.nemesis
            .split(',')
            .map(|s| {
                Fault::parse(s.trim()).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--nemesis: '{s}' is not kill, pause, partition, restart or all"
                    )
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let workdir = match &args.out {
        Some(p) => p.clone(),
        None => {
            std::env::temp_dir().join(format!("concord-check-{}", uuid::Uuid::new_v4().simple()))
        }
    };
    let bin = match &args.node_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating this binary")?,
    };
    let mut node_env = Vec::new();
    if let Some(fp) = &args.failpoints {
        node_env.push(("CONCORD_FAILPOINTS".to_string(), fp.clone()));
    }
    let opts = crate::check::run::CheckOptions {
        duration: args.duration,
        faults,
        clients: args.clients,
        keys: args.keys,
        bin,
        nats_server: find_nats_server(args.nats_server.clone()),
        workdir: workdir.clone(),
        node_env,
        netns: !args.no_netns,
        seed: args.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        }),
    };
    if !global.json {
        eprintln!(
            "concord check: {:?} for {:?} each, {} clients, {} keys; work dir {}",
            opts.faults,
            opts.duration,
            opts.clients,
            opts.keys,
            workdir.display()
        );
    }
    let quiet = global.json;
    let verdict = crate::check::run::run(opts, |line| {
        if !quiet {
            eprintln!("  {line}");
        }
    })
    .await?;
    let code = if verdict.valid { 0 } else { 1 };
    let v = serde_json::to_value(&verdict)?;
    out(global, v, || {
        let mut t = format!(
            "verdict: {}\nchecker: {}\nops: {} ok, {} fail, {} info\nfaults injected: {}\nkeys checked: {}\nlost acknowledged writes: {}\nslowest recovery: {}\nhistory: {}",
            if verdict.valid { "VALID" } else { "INVALID" },
            verdict.checker,
            verdict.ops.ok,
            verdict.ops.fail,
            verdict.ops.info,
            verdict.faults.len(),
            verdict.keys_checked,
            verdict.lost_writes.len(),
            verdict.max_recovery_ms.map(|ms| format!("{ms} ms")).unwrap_or_else(|| "-".into()),
            verdict.history.display()
        );
        for p in &verdict.problems {
            t.push_str(&format!("\nproblem: {p}"));
        }
        for l in &verdict.lost_writes {
            t.push_str(&format!("\nlost: {l}"));
        }
        if let Some(e) = &verdict.explanation {
            t.push_str(&format!("\n{e}"));
        }
        t
    });
    Ok(code)
}

/// `concord restore`.
pub async fn restore(global: &Global, args: &RestoreArgs) -> anyhow::Result<i32> {
    backup::restore(global, args).await
}

/// `concord serve`.
pub async fn serve(global: &Global, args: &ServeArgs) -> anyhow::Result<i32> {
    if args.check_config {
        let (_, warnings, settings) =
            config::load_with_sources(global.config.as_deref(), &flags(global, Some(args)))?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        if global.json {
            emit(&serde_json::to_string_pretty(&config::settings_json(
                &settings,
            ))?);
        } else {
            emit(&config::settings_text(&settings));
        }
        return Ok(0);
    }
    let (config, warnings) = load_config(global, Some(args))?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    // Before NATS and the store: a second node on the same directory stops at once.
    let _lock = crate::lock::DataDirLock::acquire(&config.data_dir)?;
    crate::node::run(config, shutdown_signal()).await?;
    Ok(0)
}

/// Resolves on the first SIGTERM or Ctrl-C. From then on a second one ends the process at
/// once (exit 130) instead of waiting for the graceful shutdown.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        // Acknowledged writes are already fsynced: this is no worse than a crash.
        eprintln!("second signal during shutdown: exiting now");
        std::process::exit(130);
    });
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
    }
}
