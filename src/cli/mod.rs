//! The `concord` command line: `serve` runs a node; the other commands are clients of the
//! wire protocol. Every client command takes `--json` and exits non-zero with the error
//! code on failure: [`EXIT_CONFLICT`] for a `conflict`, 1 for any other error.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use concord::client::{Client, ClientError, ReadConsistency};
use concord::config::{self, Config};

pub mod backup;
mod bench;
pub mod check;
mod cluster;
mod kv;
mod lease;
mod lock;
mod membership;
mod observe;
pub mod serve;
mod token;
mod txn;
mod watch;

pub use bench::BenchArgs;
pub use check::CheckArgs;
pub use cluster::ClusterCmd;
pub use serve::ServeArgs;
pub use token::TokenCmd;

/// The exit status of a client command refused with `conflict` (e.g. `--if-revision` did not
/// hold): nothing was written, and a script can tell it from a failure.
pub const EXIT_CONFLICT: i32 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "concord",
    version,
    about = "A distributed, strongly consistent key-value store on Raft and NATS",
    after_help = "Exit status of client commands: 0 ok; 1 error; 2 bad command line; \
                  3 conflict (a condition such as --if-revision did not hold; nothing was written)."
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
    ///
    /// Exit status: 0 written; 3 conflict (--if-revision did not hold, nothing written; the
    /// error shows the key's current revision); 1 any other error.
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        cond: kv::IfRevisionArg,
        #[command(flatten)]
        lease: kv::LeaseArgs,
        #[command(flatten)]
        fence: kv::FenceArg,
        #[command(flatten)]
        id: kv::RequestIdArg,
    },
    /// Print the value of KEY on stdout and its metadata on stderr (revision, create
    /// revision, version, lease, and the store's revision); --json prints the whole reply.
    Get {
        key: String,
        /// Read from the answering node's state, without a leader round trip (may lag).
        #[arg(long)]
        stale: bool,
        /// With --stale: wait until the node has applied this revision.
        #[arg(long, value_name = "N")]
        min_revision: Option<u64>,
    },
    /// Delete KEY, or every key under --prefix.
    ///
    /// Exit status: 0 done (also when the key was absent); 3 conflict (--if-revision did not
    /// hold, nothing deleted); 1 any other error.
    Delete {
        #[arg(required_unless_present = "prefix")]
        key: Option<String>,
        /// Delete every key under P instead of KEY, and print how many. Each call deletes up
        /// to the cluster's limits.max_delete_keys keys at one revision; the command calls
        /// again while keys remain (progress on stderr), so a large prefix is deleted over
        /// several revisions. An empty P (every key) needs --all.
        #[arg(long, value_name = "P", conflicts_with_all = ["key", "if_revision", "request_id", "fence"])]
        prefix: Option<String>,
        /// With --prefix "": delete every key of the cluster.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        cond: kv::IfRevisionArg,
        #[command(flatten)]
        fence: kv::FenceArg,
        #[command(flatten)]
        id: kv::RequestIdArg,
    },
    /// Add N (default 1) to the integer at KEY, atomically, and print the new value; a
    /// missing key counts as 0.
    ///
    /// Exit status: 0 written; 3 conflict (the result would be below --min, above --max or
    /// overflow, or KEY holds something that is not an integer: nothing written, the error
    /// shows the current value); 1 any other error.
    Incr {
        key: String,
        /// What to add (negative to subtract).
        #[arg(
            long,
            value_name = "N",
            default_value_t = 1,
            allow_negative_numbers = true
        )]
        by: i64,
        /// The smallest value the result may take.
        #[arg(long, value_name = "A", allow_negative_numbers = true)]
        min: Option<i64>,
        /// The largest value the result may take, e.g. a quota.
        #[arg(long, value_name = "B", allow_negative_numbers = true)]
        max: Option<i64>,
        /// When this incr creates the key: it vanishes this long after (a fixed window,
        /// e.g. 1m for N per minute with --max N).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        #[command(flatten)]
        fence: kv::FenceArg,
        #[command(flatten)]
        id: kv::RequestIdArg,
    },
    /// Renew the lease of KEY (its own, from `put --ttl`, or a shared one) without a new
    /// revision; --ttl replaces the lease's ttl. Exit 1 (not_found) when KEY is absent or
    /// has no lease.
    Touch {
        key: String,
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Leases: keys attached to one are deleted when it ends.
    #[command(subcommand)]
    Lease(lease::LeaseCmd),
    /// Run CMD while holding lock NAME: the fence is in CMD's environment
    /// (CONCORD_LOCK_FENCE, with CONCORD_LOCK_LEASE and CONCORD_LOCK_NAME), the lock's lease
    /// is kept alive, the lock is released when CMD exits.
    ///
    /// Exit status: CMD's; 3 the lock is held (no --wait) or the wait ended (nothing run);
    /// 1 the lock was lost while CMD ran (CMD was stopped: SIGTERM, then SIGKILL after
    /// --grace), or any other error.
    Lock(lock::LockArgs),
    /// Run a transaction: the JSON body of P.kv.txn ({"compare":[...],"success":[...],
    /// "failure":[...]}, see docs/protocol.md) from FILE, or stdin when FILE is - or absent.
    /// Prints whether the compares held, the revision, and one line per result; --json
    /// prints the reply as the cluster sent it.
    ///
    /// Exit status: 0 done (whichever branch ran); 3 conflict (an incr op found no integer
    /// or left the 64-bit range: nothing written); 1 any other error.
    Txn {
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        #[command(flatten)]
        id: kv::RequestIdArg,
    },
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
    /// Print every change under PREFIX (or of one key with --key) as it comes, one line
    /// each (`put key=value rev=N`), or one JSON event per line with --json. The watch
    /// resumes by itself when its node dies or ends it (shown on stderr).
    ///
    /// Exit status: 0 after --count events or --until-revision; 130 after Ctrl-C (the watch
    /// is cancelled); 1 on compacted (the revisions to watch from are gone: list again) or
    /// any other error.
    Watch(watch::WatchArgs),
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

/// Loads the layered configuration with the flags given on the command line on top.
pub fn load_config(
    global: &Global,
    serve: Option<&ServeArgs>,
) -> Result<(Config, Vec<String>), config::Error> {
    config::load(global.config.as_deref(), &flags(global, serve))
}

/// The configuration flags given on the command line, as settings over every other layer.
pub(crate) fn flags(global: &Global, serve: Option<&ServeArgs>) -> Vec<config::Flag> {
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
        return bench::run(global, args).await;
    }
    if let Cmd::Delete {
        key, prefix, all, ..
    } = &cmd
    {
        if let Some(m) = delete_prefix_refusal(key.as_deref(), prefix.as_deref(), *all) {
            eprintln!("error: {m}");
            return Ok(2);
        }
    }
    let (config, _) = load_config(global, None)?;
    let timeout = Duration::from_millis(global.timeout_ms);
    let token = match client_token(global, &config) {
        Ok(t) => t,
        Err(e) => {
            return Ok(report(
                global,
                &ClientError::Server(concord::error::bad_request(e.to_string())),
            ))
        }
    };
    let client = match Client::connect(&config.nats, timeout).await {
        Ok(c) => c.with_token(token),
        Err(e) => return Ok(report(global, &e)),
    };
    let cmd = match run_write(&client, global, cmd).await {
        Ok(code) => return Ok(code),
        Err(cmd) => cmd,
    };
    let res = match cmd {
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
            kv::get(&client, global, &key, c, min_revision).await
        }
        Cmd::Scan {
            prefix,
            limit,
            after,
        } => kv::scan(&client, global, prefix.unwrap_or_default(), limit, after).await,
        Cmd::Cluster(ClusterCmd::Status) => cluster::status(&client, global).await,
        Cmd::Cluster(ClusterCmd::Members) => client.members().await.map(|v| {
            let text = cluster::members_text(&v);
            out(global, v, || text)
        }),
        Cmd::Cluster(ClusterCmd::Add { id, learner, wait }) => {
            membership::add(&client, global, id, learner, wait).await
        }
        Cmd::Cluster(ClusterCmd::Remove { id }) => membership::remove(&client, global, id).await,
        Cmd::Token(cmd) => token::run(&client, global, cmd).await,
        Cmd::WatchTelemetry { filter } => {
            observe::watch_telemetry(&client, global, filter.as_deref()).await
        }
        Cmd::Watch(args) => {
            let res = watch::run(&client, global, &args).await;
            if let Some(hint) = res.as_ref().err().and_then(watch::compacted_hint) {
                eprintln!("{hint}");
            }
            res
        }
        Cmd::Snapshot { node } => observe::snapshot(&client, global, node).await,
        Cmd::Lease(cmd) => lease::run(&client, global, cmd).await,
        Cmd::Touch { key, ttl } => lease::touch(&client, global, &key, ttl).await,
        Cmd::Lock(args) => lock::run(&client, global, &args).await,
        Cmd::Backup { out } => backup::backup(&client, global, &out).await,
        Cmd::Serve(_) | Cmd::Check(_) | Cmd::Restore(_) => {
            unreachable!("serve, check and restore are dispatched by main")
        }
        Cmd::Put { .. } | Cmd::Delete { .. } | Cmd::Incr { .. } | Cmd::Txn { .. } => {
            unreachable!("writes are dispatched by run_write")
        }
        Cmd::Bench(_) => unreachable!("bench is dispatched above"),
    };
    Ok(match res {
        Ok(code) => code,
        Err(e) => report(global, &e),
    })
}

/// Runs a write command (put, delete, incr, txn): its exit code, or the command back when it
/// is not one.
async fn run_write(client: &Client, global: &Global, cmd: Cmd) -> Result<i32, Cmd> {
    Ok(match cmd {
        Cmd::Put {
            key,
            value,
            cond,
            lease,
            fence,
            id,
        } => {
            let value = parse_value(&value);
            let write = kv::Write {
                key: &key,
                if_revision: cond.if_revision,
                id: id.get(),
            };
            let opts = concord::client::PutOptions {
                if_revision: cond.if_revision,
                lease: lease.lease,
                ttl: lease.ttl,
                fence: fence.fence,
            };
            kv::put(client, global, &write, &value, &opts).await
        }
        // `delete_prefix_refusal` ran before connecting.
        Cmd::Delete {
            prefix: Some(prefix),
            all,
            ..
        } => kv::delete_prefix(client, global, &prefix, all).await,
        Cmd::Delete {
            key,
            cond,
            fence,
            id,
            ..
        } => {
            let write = kv::Write {
                key: key.as_deref().unwrap_or_default(),
                if_revision: cond.if_revision,
                id: id.get(),
            };
            kv::delete(client, global, &write, fence.fence.as_ref()).await
        }
        Cmd::Incr {
            key,
            by,
            min,
            max,
            ttl,
            fence,
            id,
        } => {
            let write = kv::Write {
                key: &key,
                if_revision: None,
                id: id.get(),
            };
            let incr = concord::client::Incr {
                by,
                min,
                max,
                ttl,
                fence: fence.fence,
            };
            kv::incr(client, global, &write, incr).await
        }
        Cmd::Txn { file, id } => txn::run(client, global, file.as_deref(), id.get()).await,
        other => return Err(other),
    })
}

/// The client's token: `--token` / `CONCORD_TOKEN`, then `client.token`, then the node's
/// bootstrap admin credential when the config file has one.
pub(crate) fn client_token(
    global: &Global,
    config: &Config,
) -> Result<Option<String>, config::Error> {
    if let Some(t) = &global.token {
        return Ok(Some(t.clone()));
    }
    if let Some(t) = &config.client.token {
        return Ok(Some(t.clone()));
    }
    config.admin_token()
}

/// Why `delete --prefix P [--all]` is refused before it is sent: the empty prefix deletes
/// every key and needs `--all`, which means nothing with any other prefix.
fn delete_prefix_refusal(key: Option<&str>, prefix: Option<&str>, all: bool) -> Option<String> {
    let Some(prefix) = prefix else {
        return all.then(|| "--all goes with --prefix \"\" (every key), not with KEY".into());
    };
    if key.is_some() {
        return Some("give KEY or --prefix, not both".into());
    }
    match (prefix.is_empty(), all) {
        (true, false) => Some("an empty --prefix deletes every key: add --all to mean it".into()),
        (false, true) => Some(format!(
            "--all deletes every key and goes with --prefix \"\" only, not --prefix '{prefix}'"
        )),
        _ => None,
    }
}

/// Writes a line to stdout; a closed pipe (`| head`) is not an error worth a panic.
pub(crate) fn emit(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

pub(crate) fn out(global: &Global, v: Value, human: impl FnOnce() -> String) -> i32 {
    if global.json {
        emit(&v.to_string());
    } else {
        emit(&human());
    }
    0
}

pub(crate) fn report(global: &Global, e: &ClientError) -> i32 {
    let code = e.code();
    let message = e.message();
    if global.json {
        emit(&json!({"ok": false, "error": e.to_json()}).to_string());
    }
    eprintln!("error: {code}: {message}");
    exit_code(e)
}

/// The exit status for a failed client command: [`EXIT_CONFLICT`] or 1.
pub(crate) fn exit_code(e: &ClientError) -> i32 {
    if e.code() == concord::ErrorKind::Conflict {
        EXIT_CONFLICT
    } else {
        1
    }
}

pub(crate) fn display_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_by_prefix_needs_all_exactly_for_every_key() {
        assert_eq!(delete_prefix_refusal(Some("k"), None, false), None);
        assert_eq!(delete_prefix_refusal(None, Some("app/"), false), None);
        assert_eq!(delete_prefix_refusal(None, Some(""), true), None);
        let refused = [
            (None, Some(""), false, "add --all"),
            (None, Some("app/"), true, "--prefix 'app/'"),
            (Some("k"), None, true, "not with KEY"),
        ];
        for (key, prefix, all, says) in refused {
            let m = delete_prefix_refusal(key, prefix, all).unwrap_or_default();
            assert!(m.contains(says), "{key:?} {prefix:?} {all}: {m}");
        }
    }
}
