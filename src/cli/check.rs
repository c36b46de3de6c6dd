//! `concord check`: the fault suite (`concord-check`) against a cluster it starts itself,
//! through the shared harness (`concord-harness`), and its verdict.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::{out, Global};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Time given to each nemesis, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Instead of --duration: run each nemesis until it has hit the leader N times (for
    /// failover figures over many faults).
    #[arg(long, value_name = "N")]
    pub faults: Option<usize>,
    /// Kill and partition the leader every round (default: the leader every other round, a
    /// random node in between).
    #[arg(long)]
    pub leader_only: bool,
    /// How long a kill, pause or partition is held before it heals.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// The leader-kill nemesis's cadence: the leader is killed (and restarted at once)
    /// this often.
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    pub kill_every: Duration,
    /// Raft timings of the nodes: `suite` (heartbeat 100 ms, elections 800-1600 ms: faults
    /// heal fast) or `shipped` (the config's defaults, as deployed).
    #[arg(long, default_value = "suite", value_parser = ["suite", "shipped"])]
    pub timings: String,
    /// Raft timings to try instead, as HEARTBEAT,ELECTION_MIN,ELECTION_MAX in ms (e.g.
    /// 75,250,350): set on every node over --timings, to compare candidate defaults with one
    /// binary.
    #[arg(long, value_name = "HB,MIN,MAX")]
    pub raft: Option<String>,
    /// Nemeses to run one after the other: kill, pause, partition, restart (or all, which
    /// is those four), and leader-kill (the leader killed every --kill-every).
    #[arg(long, default_value = "all")]
    pub nemesis: String,
    /// What the clients do: `register` (reads, writes of unique values, deletes), `cas`
    /// (also compare-and-swap writes with `if_revision`, checked by the same model), `bank`
    /// (transfers between --keys accounts by txn with compares on revision, and reads of all
    /// accounts: the total never changes, no transfer applies twice) or `watch` (puts of
    /// unique values into --keys keys under `watch/`, followed by one watcher per node
    /// through every fault: each watcher's stream must equal a fresh watch's after the
    /// faults, every revision once and in order, with every acknowledged put in it), `lease`
    /// (a lease kept alive must never end, abandoned leases end neither early nor later
    /// than ttl + 2 x election_timeout_max + 1 s, a revoke deletes its keys at one
    /// revision) or `lock` (clients write under a lock's fence, one of them past its lease:
    /// no two holders' writes interleave, stale fences are refused).
    #[arg(long, default_value = "register", value_parser = ["register", "cas", "bank", "watch", "lease", "lock"])]
    pub workload: String,
    /// Concurrent client processes, spread over the three NATS servers.
    #[arg(long, default_value_t = 6)]
    pub clients: usize,
    /// Size of the key set (the number of accounts with --workload bank).
    #[arg(long, default_value_t = 8)]
    pub keys: usize,
    /// Deadline of one attempt of a client operation (sent as `timeout_ms`; the client waits
    /// 250 ms more, 500 ms with --no-retry). A request stuck at a dead leader costs its
    /// client this long before it retries, which bounds the write gap from below.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub op_timeout: Duration,
    /// Deadline of one client operation over all its attempts: past it, an operation whose
    /// attempts timed out is recorded with an unknown outcome.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub op_deadline: Duration,
    /// One attempt per operation, as before request ids: a timeout is final and retires its
    /// client process (writes still carry a request id).
    #[arg(long)]
    pub no_retry: bool,
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

/// `concord check`.
pub async fn run(global: &Global, args: &CheckArgs) -> anyhow::Result<i32> {
    let faults = parse_nemesis(&args.nemesis)?;
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
    // The flag, else the one search every harness user shares.
    let nats_server = match &args.nats_server {
        Some(p) => p.clone(),
        None => concord_harness::nats_server::find()?,
    };
    let mut node_env = Vec::new();
    if let Some(fp) = &args.failpoints {
        node_env.push(("CONCORD_FAILPOINTS".to_string(), fp.clone()));
    }
    if let Some(raft) = &args.raft {
        node_env.extend(raft_env(raft)?);
    }
    let timings = concord_check::run::Timings::parse(&args.timings)
        .ok_or_else(|| anyhow::anyhow!("--timings: '{}' is not suite or shipped", args.timings))?;
    let workload = concord_check::workload::Workload::parse(&args.workload).ok_or_else(|| {
        anyhow::anyhow!(
            "--workload: '{}' is not register, cas, bank, watch, lease or lock",
            args.workload
        )
    })?;
    let opts = concord_check::run::CheckOptions {
        workload,
        duration: args.duration,
        leader_faults: args.faults,
        leader_only: args.leader_only,
        hold: args.hold,
        kill_every: args.kill_every,
        timings,
        faults,
        clients: args.clients,
        keys: args.keys,
        op_timeout: args.op_timeout,
        retry: !args.no_retry,
        op_deadline: args.op_deadline,
        bin,
        nats_server,
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
            "concord check: {:?} workload, {:?} {} each, {} clients ({}), {} keys, {:?} timings{}; work dir {}",
            opts.workload,
            opts.faults,
            match opts.leader_faults {
                Some(n) => format!("until {n} faults on the leader"),
                None => format!("for {:?}", opts.duration),
            },
            opts.clients,
            if opts.retry {
                format!("retrying within {:?}", opts.op_deadline)
            } else {
                "no retries".to_string()
            },
            opts.keys,
            opts.timings,
            args.raft
                .as_ref()
                .map(|r| format!(" (raft {r})"))
                .unwrap_or_default(),
            workdir.display()
        );
    }
    let quiet = global.json;
    let verdict = concord_check::run::run(opts, |line| {
        if !quiet {
            eprintln!("  {line}");
        }
    })
    .await?;
    let code = if verdict.valid { 0 } else { 1 };
    let v = serde_json::to_value(&verdict)?;
    out(global, v, || report(&verdict));
    Ok(code)
}

/// `--nemesis`: a comma-separated list of faults, or `all`.
fn parse_nemesis(nemesis: &str) -> anyhow::Result<Vec<concord_check::nemesis::Fault>> {
    use concord_check::nemesis::Fault;
    if nemesis == "all" {
        return Ok(Fault::all());
    }
    nemesis
        .split(',')
        .map(|s| {
            Fault::parse(s.trim()).ok_or_else(|| {
                anyhow::anyhow!(
                    "--nemesis: '{s}' is not kill, pause, partition, restart, leader-kill or all"
                )
            })
        })
        .collect()
}

/// `--raft HB,MIN,MAX` as the nodes' environment.
fn raft_env(raft: &str) -> anyhow::Result<Vec<(String, String)>> {
    let ms: Vec<u64> = raft
        .split(',')
        .map(|v| v.trim().parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--raft: '{raft}': {e}"))?;
    let [hb, min, max] = ms[..] else {
        anyhow::bail!("--raft: '{raft}' is not HEARTBEAT,ELECTION_MIN,ELECTION_MAX");
    };
    Ok([
        ("CONCORD_RAFT__HEARTBEAT_INTERVAL_MS", hb),
        ("CONCORD_RAFT__ELECTION_TIMEOUT_MIN_MS", min),
        ("CONCORD_RAFT__ELECTION_TIMEOUT_MAX_MS", max),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect())
}

/// The verdict as text.
fn report(verdict: &concord_check::run::SuiteVerdict) -> String {
    let mut t = format!(
        "verdict: {}\nchecker: {}\nops: {} ok, {} fail, {} info ({} attempts, {} operations retried)\ncompare-and-swap: {} ok, {} conflict, {} other\nfaults injected: {}\nkeys checked: {}\nlost acknowledged writes: {}\nexactly once: {}\nslowest recovery: {}\nhistory: {}",
        if verdict.valid { "VALID" } else { "INVALID" },
        verdict.checker,
        verdict.ops.ok,
        verdict.ops.fail,
        verdict.ops.info,
        verdict.ops.attempts,
        verdict.ops.retried,
        verdict.cas.ok,
        verdict.cas.conflict,
        verdict.cas.other,
        verdict.faults.len(),
        verdict.keys_checked,
        verdict.lost_writes.len(),
        exactly_once_line(verdict.exactly_once.as_ref()),
        verdict.max_recovery_ms.map(|ms| format!("{ms} ms")).unwrap_or_else(|| "-".into()),
        verdict.history.display()
    );
    if let Some(b) = &verdict.bank {
        t.push_str(&format!("\n{}", bank_line(b)));
    }
    if let Some(w) = &verdict.watch {
        t.push_str(&watch_lines(w));
    }
    for line in concord_check::gaps::report_lines(&verdict.failover) {
        t.push_str(&format!("\nfailover: {line}"));
    }
    for p in &verdict.problems {
        t.push_str(&format!("\nproblem: {p}"));
    }
    for l in &verdict.lost_writes {
        t.push_str(&format!("\nlost: {l}"));
    }
    if let Some(e) = &verdict.exactly_once {
        for p in &e.revision_problems {
            t.push_str(&format!("\nrevision: {p}"));
        }
    }
    if let Some(e) = &verdict.explanation {
        t.push_str(&format!("\n{e}"));
    }
    t
}

/// The bank workload's counts in one line.
fn bank_line(b: &concord_check::bank::check::BankVerdict) -> String {
    let t = &b.transfers;
    format!(
        "bank: {} accounts, total {} ({}); transfers {} ok, {} failed compare, {} refused, {} unknown ({} of them applied; {} applied in all); reads {} ok, {} fail, {} unknown",
        b.setup.accounts.len(),
        b.total,
        if b.holds() {
            "kept by every read".to_string()
        } else {
            format!("{} VIOLATIONS", b.violation_count)
        },
        t.ok,
        t.failed_compare,
        t.refused,
        t.unknown,
        t.unknown_applied,
        t.applied,
        b.reads.ok,
        b.reads.fail,
        b.reads.unknown
    )
}

/// The watch workload's counts: one line, and one per watcher.
fn watch_lines(w: &concord_check::watch::check::WatchVerdict) -> String {
    let codes = |m: &std::collections::BTreeMap<String, u64>| {
        let s: Vec<String> = m.iter().map(|(c, n)| format!("{c} {n}")).collect();
        if s.is_empty() {
            "none".to_string()
        } else {
            s.join(", ")
        }
    };
    let p = &w.puts;
    let mut t = format!(
        "\nwatch: revisions {}..={} ({} events in the change log; {}); puts {} ok, {} failed, {} unknown ({} of them applied); {} events seen, {} resumes, ends: {}",
        w.start_revision,
        w.final_revision.map_or("?".to_string(), |r| r.to_string()),
        w.truth_events,
        if w.holds() {
            "every watcher saw exactly it".to_string()
        } else {
            format!("{} VIOLATIONS", w.violation_count)
        },
        p.ok,
        p.failed,
        p.unknown,
        p.unknown_applied,
        w.events,
        w.resumes,
        codes(&w.ends)
    );
    for s in &w.watchers {
        t.push_str(&format!(
            "\nwatcher {} (home n{}): {} events ({} received, {} dropped), {} progress notices, {} resumes, ends: {}; creates refused: {}; up to revision {}{}",
            s.name,
            s.home,
            s.events,
            s.received,
            s.dropped,
            s.progress,
            s.resumes,
            codes(&s.ends),
            codes(&s.refused),
            s.fully_seen,
            if s.matches_truth { "" } else { ", DIFFERS from the change log" }
        ));
    }
    t
}

/// The exactly-once check in one line.
fn exactly_once_line(e: Option<&concord_check::exactly_once::ExactlyOnce>) -> String {
    let Some(e) = e else {
        return "not checked (a revision probe failed)".into();
    };
    format!(
        "{} ({} revisions taken, {} writes account for them, {} unaccounted = applied twice; {} writes acknowledged after a retry of unknown outcome; {} revision problems)",
        if e.holds() { "yes" } else { "NO" },
        e.revisions_taken,
        e.writes_accounted,
        e.double_applies_bound,
        e.retried_after_unknown,
        e.revision_problems.len()
    )
}
