//! The fault suite in CI: `concord check` runs the recorded workload (writes with request
//! ids, retried through timeouts) against a real three-node cluster (each node with its own
//! nats-server, in its own network namespace when run as root) under each nemesis, and must
//! find the history linearizable, no acknowledged write lost, none applied twice, and the
//! cluster writable again soon after every fault heals. The compare-and-swap workload
//! (`--workload cas`), the bank workload (`--workload bank`) and the watch workload
//! (`--workload watch`) each run under every nemesis in turn on one cluster, and so do the
//! lease and lock workloads (`--workload lease|lock`), with the leader-kill nemesis too. With a
//! failpoint that breaks linearizable reads, the same suite must fail.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use concord::raft::handoff::ElectRequest;
use concord::raft::wire::{self, RpcReply, RpcRequest, RPC_FORMAT};
use concord::subjects::Subjects;
use concord_harness::mesh::{self as cluster, CheckCluster, Spec};
use concord_harness::nats_server;
use serde_json::{json, Value};

/// Seconds each nemesis runs in CI (issue 3: about 30–60 s each).
const SECONDS: u64 = 30;
/// The longest a cluster may take to serve writes again after a fault heals.
const RECOVERY_LIMIT_MS: u64 = 10_000;
/// How long the suite holds a fault (`concord check --hold`, default 4 s).
const HOLD_MS: u64 = 4_000;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs `concord check` on `nemesis` for [`SECONDS`] each, and returns its exit success and
/// its JSON verdict.
async fn check(nemesis: &str, extra: &[&str]) -> Result<(bool, Value)> {
    let duration = format!("{SECONDS}s");
    let mut args = vec!["--nemesis", nemesis, "--duration", &duration, "--keys", "6"];
    args.extend_from_slice(extra);
    check_with(&args).await
}

/// Runs `concord check` with `args` and returns its exit success and its JSON verdict.
async fn check_with(args: &[&str]) -> Result<(bool, Value)> {
    let _lock = common::exclusive().await?;
    let out = tempfile::Builder::new()
        .prefix("concord-check-")
        .tempdir()?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_concord"));
    cmd.args(["check", "--json", "--clients", "6"])
        .args(args)
        .arg("--out")
        .arg(out.path());
    if !is_root() {
        cmd.arg("--no-netns");
    }
    let output = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let args = args.join(" ");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let verdict: Value = serde_json::from_str(stdout.trim()).with_context(|| {
        format!(
            "concord check printed no verdict; stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    if !output.status.success() {
        // Keep what explains a failure: the verdict and log tails here, the history on disk.
        let kept = out.keep();
        eprintln!(
            "concord check {args}: verdict: {verdict:#}\nwork dir kept: {}",
            kept.display()
        );
        let out = kept;
        for f in std::fs::read_dir(&out)?.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if name.ends_with(".tail.log") {
                eprintln!(
                    "--- {name}\n{}",
                    std::fs::read_to_string(f.path()).unwrap_or_default()
                );
            }
        }
    }
    Ok((output.status.success(), verdict))
}

fn assert_valid(nemesis: &str, ok: bool, v: &Value) -> Result<()> {
    ensure!(ok, "{nemesis}: verdict invalid: {v:#}");
    ensure!(
        v["checker"] == "linearizable",
        "{nemesis}: {}",
        v["checker"]
    );
    ensure!(
        v["lost_writes"].as_array().is_some_and(|l| l.is_empty()),
        "{nemesis}: lost writes {}",
        v["lost_writes"]
    );
    assert_exactly_once(nemesis, v)?;
    let faults = v["faults"].as_array().context("faults")?;
    ensure!(!faults.is_empty(), "{nemesis}: no fault was injected");
    for f in faults {
        let ms = f["recovery_ms"]
            .as_u64()
            .context("a fault never recovered")?;
        ensure!(
            ms <= RECOVERY_LIMIT_MS,
            "{nemesis}: writable again only after {ms} ms: {f}"
        );
    }
    assert_failover_figures(nemesis, v)?;
    ensure!(
        v["ops"]["ok"].as_u64().unwrap_or(0) > 100,
        "{nemesis}: too few operations: {}",
        v["ops"]
    );
    ensure!(
        v["keys_checked"].as_u64().unwrap_or(0) >= 1,
        "{nemesis}: no key checked"
    );
    Ok(())
}

/// The workload retried with request ids, and no write applied twice: every store revision
/// taken during the run is accounted for by a write of the history, and acknowledged writes
/// carry distinct revisions.
fn assert_exactly_once(nemesis: &str, v: &Value) -> Result<()> {
    ensure!(v["retry"] == true, "{nemesis}: the workload did not retry");
    let e = &v["exactly_once"];
    ensure!(
        e["double_applies_bound"] == 0
            && e["revision_problems"]
                .as_array()
                .is_some_and(|p| p.is_empty()),
        "{nemesis}: a write applied twice: {e}"
    );
    let (taken, accounted) = (
        e["revisions_taken"].as_u64().context("revisions_taken")?,
        e["writes_accounted"].as_u64().context("writes_accounted")?,
    );
    ensure!(
        0 < taken && taken <= accounted,
        "{nemesis}: implausible revision count: {e}"
    );
    ensure!(
        v["ops"]["attempts"].as_u64() >= v["ops"]["ok"].as_u64(),
        "{nemesis}: fewer attempts than operations: {}",
        v["ops"]
    );
    Ok(())
}

/// The failover report: every fault on the leader has a write gap, longer than nothing (the
/// leader's loss stops writes) and no longer than the fault's hold plus the recovery bound;
/// a new leader, when one was seen, came while the fault was held; the nemesis's summary
/// counts those faults and its median is at most its maximum.
fn assert_failover_figures(nemesis: &str, v: &Value) -> Result<()> {
    let faults = v["faults"].as_array().context("faults")?;
    let on_leader: Vec<&Value> = faults.iter().filter(|f| f["was_leader"] == true).collect();
    ensure!(
        !on_leader.is_empty(),
        "{nemesis}: no fault hit the leader: {v}"
    );
    for f in &on_leader {
        let gap = f["write_gap_ms"]
            .as_u64()
            .with_context(|| format!("{nemesis}: no write gap for {f}"))?;
        ensure!(
            gap > 0 && gap <= HOLD_MS + RECOVERY_LIMIT_MS,
            "{nemesis}: implausible write gap {gap} ms: {f}"
        );
        if let Some(ms) = f["new_leader_ms"].as_u64() {
            ensure!(ms <= HOLD_MS, "{nemesis}: new leader after the hold: {f}");
        }
        // One write waits at most its operation deadline (`concord check`'s 10 s), plus
        // the attempt in flight when it passed.
        let wait = f["write_wait_ms"]
            .as_u64()
            .with_context(|| format!("{nemesis}: no write wait for {f}"))?;
        ensure!(wait <= 12_000, "{nemesis}: a write waited {wait} ms: {f}");
    }
    let summary = v["failover"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["fault"] == nemesis))
        .with_context(|| format!("{nemesis}: no failover summary: {}", v["failover"]))?;
    ensure!(
        summary["leader_faults"].as_u64() == Some(on_leader.len() as u64)
            && summary["measured"].as_u64() == Some(on_leader.len() as u64),
        "{nemesis}: summary does not count the faults: {summary}"
    );
    let (p50, max) = (
        summary["write_gap_p50_ms"].as_u64().context("p50")?,
        summary["write_gap_max_ms"].as_u64().context("max")?,
    );
    ensure!(0 < p50 && p50 <= max, "{nemesis}: p50 {p50} max {max}");
    Ok(())
}

/// `kill -9` of the leader and of random nodes, each followed by a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nemesis_keeps_the_history_linearizable() -> Result<()> {
    let (ok, v) = check("kill", &[]).await?;
    assert_valid("kill", ok, &v)
}

/// SIGSTOP of the leader for longer than an election timeout, then SIGCONT: the old leader
/// must neither serve a stale read nor acknowledge a lost write when it wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_nemesis_keeps_the_history_linearizable() -> Result<()> {
    let (ok, v) = check("pause", &[]).await?;
    assert_valid("pause", ok, &v)
}

/// One node, the leader included, cut off from the other two (clients on every side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_nemesis_keeps_the_history_linearizable() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: partitions need root for network namespaces (CI runs as root)");
        return Ok(());
    }
    let (ok, v) = check("partition", &[]).await?;
    ensure!(
        v["netns"] == true,
        "partition run without network namespaces: {v}"
    );
    assert_valid("partition", ok, &v)
}

/// Every node killed with `kill -9` at once, then all restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_nemesis_keeps_the_history_linearizable() -> Result<()> {
    let (ok, v) = check("restart", &[]).await?;
    assert_valid("restart", ok, &v)
}

/// Seconds the compare-and-swap workload gives each nemesis: all four run in turn on one
/// cluster, each hitting the leader at least once.
const CAS_SECONDS: u64 = 8;

/// The compare-and-swap workload (reads, writes, and writes with `if_revision` from each
/// client's last read, on 5 keys) under every nemesis in turn, each fault on the leader:
/// the history must be linearizable with the model that knows compare-and-swap (a swap
/// applies only at its expected revision, a refusal observes the current one), no
/// acknowledged write lost, none applied twice, and the run must have swaps that applied
/// and swaps refused with `conflict`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_workload_keeps_the_history_linearizable_under_every_nemesis() -> Result<()> {
    let nemesis = if is_root() {
        "kill,pause,partition,restart"
    } else {
        "kill,pause,restart"
    };
    let duration = format!("{CAS_SECONDS}s");
    let args = [
        "--workload",
        "cas",
        "--nemesis",
        nemesis,
        "--duration",
        &duration,
        "--keys",
        "5",
        "--leader-only",
    ];
    let (ok, v) = check_with(&args).await?;
    ensure!(ok, "cas: verdict invalid: {v:#}");
    ensure!(
        v["workload"] == "cas",
        "not the cas workload: {}",
        v["workload"]
    );
    ensure!(v["checker"] == "linearizable", "cas: {}", v["checker"]);
    ensure!(
        v["lost_writes"].as_array().is_some_and(|l| l.is_empty()),
        "cas: lost writes {}",
        v["lost_writes"]
    );
    assert_exactly_once("cas", &v)?;
    let faults = v["faults"].as_array().context("faults")?;
    for name in nemesis.split(',') {
        let hit = faults
            .iter()
            .filter(|f| f["fault"] == name && f["was_leader"] == true)
            .count();
        ensure!(hit >= 1, "cas: {name} never hit the leader: {faults:?}");
    }
    for f in faults {
        let ms = f["recovery_ms"]
            .as_u64()
            .context("a fault never recovered")?;
        ensure!(
            ms <= RECOVERY_LIMIT_MS,
            "cas: writable again only after {ms} ms: {f}"
        );
    }
    let (applied, refused) = (
        v["cas"]["ok"].as_u64().unwrap_or(0),
        v["cas"]["conflict"].as_u64().unwrap_or(0),
    );
    ensure!(
        applied >= 20 && refused >= 20,
        "cas: too few swaps to test anything: {}",
        v["cas"]
    );
    ensure!(
        v["ops"]["ok"].as_u64().unwrap_or(0) > 100,
        "cas: too few operations: {}",
        v["ops"]
    );
    Ok(())
}

/// The bank workload (transfers between 5 accounts by txn with compares on both accounts'
/// revision, reads of all accounts by one txn of gets) under every nemesis in turn, each
/// fault on the leader, as long as the compare-and-swap test: every read totals 5 × 100, no
/// transfer applied twice or lost (every account's states chain from the creation through
/// the transfers that applied, and the final read is the chain's end), reads monotonic and
/// not stale, every store revision accounted for; and the run must have transfers that
/// applied, compares that failed, and reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_workload_keeps_the_total_under_every_nemesis() -> Result<()> {
    let nemesis = if is_root() {
        "kill,pause,partition,restart"
    } else {
        "kill,pause,restart"
    };
    let duration = format!("{CAS_SECONDS}s");
    let args = [
        "--workload",
        "bank",
        "--nemesis",
        nemesis,
        "--duration",
        &duration,
        "--keys",
        "5",
        "--leader-only",
    ];
    let (ok, v) = check_with(&args).await?;
    ensure!(ok, "bank: verdict invalid: {v:#}");
    ensure!(
        v["workload"] == "bank",
        "not the bank workload: {}",
        v["workload"]
    );
    ensure!(v["checker"] == "bank: consistent", "bank: {}", v["checker"]);
    let bank = &v["bank"];
    ensure!(
        bank["violation_count"] == 0 && bank["total"] == 500,
        "bank: {bank:#}"
    );
    let finals = bank["final_accounts"].as_array().context("no final read")?;
    let total: i64 = finals.iter().filter_map(|a| a["balance"].as_i64()).sum();
    ensure!(
        finals.len() == 5 && total == 500,
        "bank: final read {finals:?}"
    );
    assert_exactly_once("bank", &v)?;
    let faults = v["faults"].as_array().context("faults")?;
    for name in nemesis.split(',') {
        let hit = faults
            .iter()
            .filter(|f| f["fault"] == name && f["was_leader"] == true)
            .count();
        ensure!(hit >= 1, "bank: {name} never hit the leader: {faults:?}");
    }
    for f in faults {
        let ms = f["recovery_ms"]
            .as_u64()
            .context("a fault never recovered")?;
        ensure!(
            ms <= RECOVERY_LIMIT_MS,
            "bank: writable again only after {ms} ms: {f}"
        );
    }
    let t = &bank["transfers"];
    let (applied, failed, reads) = (
        t["ok"].as_u64().unwrap_or(0),
        t["failed_compare"].as_u64().unwrap_or(0),
        bank["reads"]["ok"].as_u64().unwrap_or(0),
    );
    ensure!(
        applied >= 20 && failed >= 5 && reads >= 20,
        "bank: too few transfers or reads to test anything: {t} {}",
        bank["reads"]
    );
    Ok(())
}

/// The watch workload (puts of unique values into 5 keys under `watch/`, one watcher per
/// node following the prefix through every fault) under every nemesis in turn, each fault on
/// the leader, as long as the bank test: every watcher's stream equals a fresh watch's from
/// the start revision after the faults (every revision once, in order, the same events) up
/// to the final revision, and every acknowledged put is in it at its revision; and the run
/// must have puts to follow and faults the watchers had to resume through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_workload_follows_the_change_log_under_every_nemesis() -> Result<()> {
    let nemesis = if is_root() {
        "kill,pause,partition,restart"
    } else {
        "kill,pause,restart"
    };
    let duration = format!("{CAS_SECONDS}s");
    let args = [
        "--workload",
        "watch",
        "--nemesis",
        nemesis,
        "--duration",
        &duration,
        "--keys",
        "5",
        "--leader-only",
    ];
    let (ok, v) = check_with(&args).await?;
    ensure!(ok, "watch: verdict invalid: {v:#}");
    ensure!(
        v["workload"] == "watch",
        "not the watch workload: {}",
        v["workload"]
    );
    let w = &v["watch"];
    ensure!(w["violation_count"] == 0, "watch: {w:#}");
    let watchers = w["watchers"].as_array().context("no watchers")?;
    ensure!(
        watchers.len() == 3,
        "watch: not one watcher per node: {w:#}"
    );
    let final_revision = w["final_revision"].as_u64().context("no final revision")?;
    for s in watchers {
        ensure!(
            s["matches_truth"] == true && s["fully_seen"].as_u64() >= Some(final_revision),
            "watch: {s:#}"
        );
    }
    assert_exactly_once("watch", &v)?;
    let faults = v["faults"].as_array().context("faults")?;
    for name in nemesis.split(',') {
        let hit = faults
            .iter()
            .filter(|f| f["fault"] == name && f["was_leader"] == true)
            .count();
        ensure!(hit >= 1, "watch: {name} never hit the leader: {faults:?}");
    }
    let (ok_puts, events, resumes) = (
        w["puts"]["ok"].as_u64().unwrap_or(0),
        w["truth_events"].as_u64().unwrap_or(0),
        w["resumes"].as_u64().unwrap_or(0),
    );
    // Killing the leader's node ends its watcher's stream at least (by silence or its end).
    ensure!(
        ok_puts >= 50 && events >= ok_puts && resumes >= 1,
        "watch: too little to test anything: {ok_puts} puts acknowledged, {events} events, {resumes} resumes"
    );
    Ok(())
}

/// Seconds each nemesis gets in the lease and lock tests: enough for abandoned leases
/// (ttl 3 s) to end inside a phase, and for the stale lock holder's silence (about 7 s).
const COORD_SECONDS: u64 = 8;

/// Every nemesis (partition only as root) and the leader killed every 1.5 s (ttl/2 of the
/// abandoned leases: the etcd #9888 scenario).
fn coord_nemeses() -> &'static str {
    if is_root() {
        "kill,pause,partition,restart,leader-kill"
    } else {
        "kill,pause,restart,leader-kill"
    }
}

/// The lease workload under every nemesis in turn, each fault on the leader: a 10 s lease
/// with a keepalive every second never ends (no keepalive answers `not_found`, it and its
/// key are there after the faults); abandoned leases (ttl 3 s, one keepalive) end neither
/// before the last acknowledged keepalive's send + ttl nor after its acknowledgement + ttl
/// + 2 × election_timeout_max + 1 s, also while the leader is killed every 1.5 s; a revoke
/// deletes every attached key at its one revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_workload_keeps_both_lease_guarantees_under_every_nemesis() -> Result<()> {
    let duration = format!("{COORD_SECONDS}s");
    let args = [
        "--workload",
        "lease",
        "--nemesis",
        coord_nemeses(),
        "--duration",
        &duration,
        "--leader-only",
    ];
    let (ok, v) = check_with(&args).await?;
    ensure!(ok, "lease: verdict invalid: {v:#}");
    let l = &v["lease"];
    ensure!(l["violation_count"] == 0, "lease: {l:#}");
    ensure!(
        l["kept"]["alive_at_end"] == true && l["kept"]["acknowledged"].as_u64() >= Some(20),
        "lease: the kept lease: {}",
        l["kept"]
    );
    let a = &l["abandoned"];
    ensure!(
        a["judged_late"].as_u64() >= Some(20) && a["judged_under_leader_kill"].as_u64() >= Some(3),
        "lease: too few abandoned leases judged: {a}"
    );
    ensure!(
        l["revokes"]["revoked"].as_u64() >= Some(10) && l["change_log_events"].as_u64() > Some(0),
        "lease: too few revokes, or no change log: {l:#}"
    );
    assert_coord_faults("lease", &v)
}

/// The lock workload under every nemesis in turn, each fault on the leader: holders'
/// fenced writes never interleave (fences never go down in revision order, in the replies
/// and in the change log), the stale holder's writes are refused with `conflict` (`fence`),
/// every acquire ends granted or `lock_wait`, a retried acquire keeps its fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_workload_keeps_mutual_exclusion_under_every_nemesis() -> Result<()> {
    let duration = format!("{COORD_SECONDS}s");
    let args = [
        "--workload",
        "lock",
        "--nemesis",
        coord_nemeses(),
        "--duration",
        &duration,
        "--leader-only",
    ];
    let (ok, v) = check_with(&args).await?;
    ensure!(ok, "lock: verdict invalid: {v:#}");
    let l = &v["lock"];
    ensure!(l["violation_count"] == 0, "lock: {l:#}");
    let (w, a) = (&l["writes"], &l["acquires"]);
    ensure!(
        w["ok"].as_u64() >= Some(10)
            && l["holders"].as_u64() >= Some(3)
            && w["stale"].as_u64() >= Some(1)
            && w["stale_refused"] == w["stale"]
            && a["lock_wait"].as_u64() >= Some(1),
        "lock: too little to test anything: {l:#}"
    );
    assert_coord_faults("lock", &v)
}

/// Every nemesis of [`coord_nemeses`] hit the leader, and the cluster was writable again in
/// time after each fault.
fn assert_coord_faults(workload: &str, v: &Value) -> Result<()> {
    let faults = v["faults"].as_array().context("faults")?;
    for name in coord_nemeses().split(',') {
        let hit = faults
            .iter()
            .filter(|f| f["fault"] == name.replace('-', "_") && f["was_leader"] == true)
            .count();
        ensure!(
            hit >= 1,
            "{workload}: {name} never hit the leader: {faults:?}"
        );
    }
    for f in faults {
        let ms = f["recovery_ms"]
            .as_u64()
            .context("a fault never recovered")?;
        ensure!(
            ms <= RECOVERY_LIMIT_MS,
            "{workload}: writable again only after {ms} ms: {f}"
        );
    }
    Ok(())
}

/// Proves the suite can fail: nodes that answer linearizable reads from their own state
/// (no ReadIndex, no forwarding) must be caught by the checker.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_failpoint_is_caught() -> Result<()> {
    let nemesis = if is_root() { "partition" } else { "pause" };
    let (ok, v) = check(nemesis, &["--failpoints", "stale-reads"]).await?;
    ensure!(
        !ok,
        "the suite passed a node that serves stale reads: {v:#}"
    );
    ensure!(
        v["checker"] == "NOT linearizable",
        "expected a linearizability violation, got {}",
        v["checker"]
    );
    ensure!(
        v["explanation"].as_str().is_some_and(|e| !e.is_empty()),
        "no operations named"
    );
    Ok(())
}

/// Proves that a write left unanswered on a former leader does not hold up that node's
/// writes once it leads again. The leader, cut off from both others, appends a write that
/// cannot commit; the others elect a new leader, which writes until it has purged its log;
/// after the heal the former leader catches up by installing a snapshot, so openraft never
/// answers its write (it answers a proposal only when the entry applies or is truncated).
/// Asked to campaign the way a departing leader asks (raft::handoff), the node leads again
/// and must accept a write on its own subject within 20 s, in the term it leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn former_leader_behind_a_snapshot_serves_writes_when_it_leads_again() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: partitions need root for network namespaces (CI runs as root)");
        return Ok(());
    }
    let _lock = common::exclusive().await?;
    let work = tempfile::Builder::new()
        .prefix("concord-orphan-")
        .tempdir()?;
    let nats_server = nats_server::find().context("no nats-server: run scripts/test.sh")?;
    let env = [
        ("CONCORD_CLUSTER__NAME", CLUSTER),
        ("CONCORD_RAFT__HEARTBEAT_INTERVAL_MS", "100"),
        ("CONCORD_RAFT__ELECTION_TIMEOUT_MIN_MS", "800"),
        ("CONCORD_RAFT__ELECTION_TIMEOUT_MAX_MS", "1600"),
        ("CONCORD_RAFT__SNAPSHOT_EVERY", "100"),
        ("CONCORD_RAFT__MAX_IN_SNAPSHOT_LOG_TO_KEEP", "10"),
    ];
    let mut cluster = CheckCluster::start(Spec {
        bin: PathBuf::from(env!("CARGO_BIN_EXE_concord")),
        nats_server,
        workdir: work.path().to_path_buf(),
        node_env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        use_netns: true,
        client_ping_interval: None,
    })
    .await?;
    let r = orphaned_write_body(&mut cluster).await;
    if r.is_err() {
        for id in cluster.ids() {
            eprintln!("--- node {id}\n{}", cluster.log_tail(id, 60));
        }
    }
    cluster.shutdown().await;
    r
}

const CLUSTER: &str = "orphan";

async fn orphaned_write_body(cluster: &mut CheckCluster) -> Result<()> {
    ensure!(
        cluster.netns(),
        "no namespaces: {:?}",
        cluster.fallback_reason()
    );
    let old = cluster.wait_stable(Duration::from_secs(30)).await?;
    let on_old = cluster.client(old)?.clone();

    cluster.partition(old).await?;
    let reply = request(
        &on_old,
        &format!("concord.node.{old}.kv.put"),
        json!({"key": "orphan", "value": 1, "timeout_ms": 1000}),
    )
    .await?;
    ensure!(
        reply["error"]["code"] == "timeout",
        "a put on leader {old}, cut off from both others, answered {reply}, not timeout"
    );
    let old_last = cluster.status(old).await?["last_log_index"]
        .as_u64()
        .ok_or_else(|| anyhow!("node {old} reports no last_log_index"))?;
    eprintln!("leader {old} holds a write it cannot commit (last log index {old_last})");

    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        match cluster.leader().await {
            Some(leader) if leader != old => break leader,
            _ => ensure!(
                Instant::now() < deadline,
                "the two nodes cut off from leader {old} elected none within 30 s"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elected_at = Instant::now();
    cut_off_leader_refuses_at_once(&on_old, old).await?;
    let on_new = cluster.client(new)?.clone();
    let purged = fill_until_purged(cluster, &on_new, new, old_last + 10).await?;
    eprintln!("new leader {new} purged its log to {purged}; healing");

    cluster.heal().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = cluster.status(old).await;
        let caught_up = s
            .as_ref()
            .is_ok_and(|s| s["role"] == "follower" && s["snapshot_index"].as_u64() >= Some(purged));
        if caught_up {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "node {old} did not install a snapshot within 60 s: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // `new` votes for another candidate only once it has led for `election_timeout_max`
    // (1.6 s here); the third node, hearing from `new`, refuses, and follows the winner.
    tokio::time::sleep_until((elected_at + Duration::from_secs(3)).into()).await;
    let new_term = cluster.status(new).await?["term"]
        .as_u64()
        .ok_or_else(|| anyhow!("node {new} reports no term"))?;
    ask_to_campaign(&on_old, old, new, new_term).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let term = loop {
        let s = cluster.status(old).await;
        if let Ok(s) = &s {
            if s["role"] == "leader" {
                break s["term"].as_u64();
            }
        }
        ensure!(
            Instant::now() < deadline,
            "node {old} did not lead again within 20 s: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("node {old} leads again in term {term:?}");

    let deadline = Instant::now() + Duration::from_secs(20);
    let revision = loop {
        let reply = request(
            &on_old,
            &format!("concord.node.{old}.kv.put"),
            json!({"key": "after", "value": 2, "timeout_ms": 2000}),
        )
        .await?;
        if reply["ok"] == true {
            break reply["revision"].as_u64();
        }
        // `timeout` is what an unanswered write holding up the node looked like.
        ensure!(
            matches!(
                reply["error"]["code"].as_str(),
                Some("cluster_not_ready" | "busy" | "timeout")
            ),
            "put on node {old} failed: {reply}"
        );
        ensure!(
            Instant::now() < deadline,
            "node {old}, leading again, did not accept a write within 20 s: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let s = cluster.status(old).await?;
    ensure!(
        s["role"] == "leader" && s["term"].as_u64() == term,
        "node {old} stopped leading term {term:?} while the write went through: {s}"
    );
    eprintln!("node {old} accepted a write at revision {revision:?}");

    let got = request(&on_old, "concord.kv.get", json!({"key": "orphan"})).await?;
    ensure!(
        got["error"]["code"] == "not_found" || got["value"] == 1,
        "the write of unknown outcome reads back as {got}"
    );
    Ok(())
}

/// The old leader, cut off from both others, keeps leading in its own eyes (openraft 0.9
/// steps down only on hearing of a newer term); once no quorum has acknowledged it for
/// twice `election_timeout_max` (3.2 s here) it refuses what it has not taken, at once and
/// with a reason, so that a client tries another node instead of waiting out its deadline.
async fn cut_off_leader_refuses_at_once(on_old: &async_nats::Client, old: u64) -> Result<()> {
    let subject = format!("concord.node.{old}.kv.put");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = request(
            on_old,
            &subject,
            json!({"key": "cut-off", "value": 1, "timeout_ms": 300}),
        )
        .await?;
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        if reply["error"]["code"] == "cluster_not_ready" && message.contains("no quorum") {
            break;
        }
        ensure!(
            reply["error"]["code"] == "timeout",
            "a put on leader {old}, cut off, answered {reply}"
        );
        ensure!(
            Instant::now() < deadline,
            "leader {old}, cut off for 15 s, still takes writes: {reply}"
        );
    }
    let asked = Instant::now();
    let reply = request(
        on_old,
        &subject,
        json!({"key": "cut-off", "value": 2, "timeout_ms": 5000}),
    )
    .await?;
    ensure!(
        reply["error"]["code"] == "cluster_not_ready" && asked.elapsed() < Duration::from_secs(1),
        "a put with 5 s to spare on cut-off leader {old} answered {reply} after {:?}",
        asked.elapsed()
    );
    eprintln!(
        "cut-off leader {old} refused a put at once: {}",
        reply["error"]["message"]
    );
    Ok(())
}

/// A request on one server's client, with the check cluster's own helper (10 s).
async fn request(client: &async_nats::Client, subject: &str, body: Value) -> Result<Value> {
    Ok(cluster::request(client, subject, &body, Duration::from_secs(10)).await?)
}

/// Puts through `leader`'s own subject (bounded) until it has purged its log beyond
/// `index`, so that a node behind `index` can only catch up by a snapshot.
async fn fill_until_purged(
    cluster: &CheckCluster,
    client: &async_nats::Client,
    leader: u64,
    index: u64,
) -> Result<u64> {
    const MAX_PUTS: usize = 4000;
    let subject = format!("concord.node.{leader}.kv.put");
    for i in 0..MAX_PUTS {
        let reply = request(
            client,
            &subject,
            json!({"key": format!("fill-{}", i % 50), "value": i}),
        )
        .await?;
        ensure!(reply["ok"] == true, "fill put {i} failed: {reply}");
        if i % 50 == 49 {
            let purged = cluster.status(leader).await?["purged_index"]
                .as_u64()
                .unwrap_or(0);
            if purged > index {
                return Ok(purged);
            }
        }
    }
    bail!("node {leader} did not purge beyond {index} within {MAX_PUTS} puts")
}

/// Sends node `to` the hand-off request its leader `leader` of `term` sends when it shuts
/// down (unsigned: the cluster has no `cluster.secret`); fails unless `to` campaigns.
async fn ask_to_campaign(
    client: &async_nats::Client,
    to: u64,
    leader: u64,
    term: u64,
) -> Result<()> {
    let request = RpcRequest {
        format: RPC_FORMAT,
        cluster_name: CLUSTER.to_string(),
        cluster_id: None,
        from: leader,
        to,
        body: ElectRequest { leader, term },
    };
    let subject = Subjects::new("concord", CLUSTER).raft_elect(to);
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject, wire::encode(&request)?.into()),
    )
    .await
    .context("no answer to the hand-off request")??;
    match wire::decode::<RpcReply<bool, String>>(&reply.payload)? {
        RpcReply::Ok(true) => Ok(()),
        other => bail!(
            "node {to} did not campaign when asked by leader {leader} of term {term}: {other:?}"
        ),
    }
}
