//! `concord check`: start a cluster, run the workload with the nemesis, heal, read every key
//! once more, check the history, and give a verdict.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bank::{self, check::BankVerdict};
use crate::exactly_once::{self, ExactlyOnce, Probe};
use crate::gaps::{self, GapSummary};
use crate::history;
use crate::lease::check::LeaseVerdict;
use crate::linearizable::{self, Limits, Verdict as Linearizability};
use crate::lock::check::LockVerdict;
use crate::nemesis::{Fault, FaultRecord, Nemesis, Timing};
use crate::retry::RetryPolicy;
use crate::watch::{self, check::WatchVerdict, follow::Control};
use crate::workload::{self, CasCounts, Counts, Recorder, Workload, WorkloadConfig};
use concord_harness::mesh::{CheckCluster, Spec};

pub mod coord;

#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Time given to each nemesis in `faults`.
    pub duration: Duration,
    /// Instead of `duration`: each nemesis runs until it has hit the leader this many times.
    pub leader_faults: Option<usize>,
    /// Kill and partition hit the leader every round (default: every other round).
    pub leader_only: bool,
    /// How long a kill, pause or partition is held before it heals.
    pub hold: Duration,
    /// The leader-kill nemesis's cadence.
    pub kill_every: Duration,
    /// The Raft timings the nodes run with.
    pub timings: Timings,
    pub faults: Vec<Fault>,
    /// What the clients do: the register workload, or the one with compare-and-swap.
    pub workload: Workload,
    pub clients: usize,
    pub keys: usize,
    /// Deadline of one attempt of a workload operation (sent as `timeout_ms`).
    pub op_timeout: Duration,
    /// Retry an attempt that timed out or was turned away, with the same request id
    /// (default); off, an operation is one attempt and a timeout is final.
    pub retry: bool,
    /// Deadline of one workload operation over all its attempts (with `retry`).
    pub op_deadline: Duration,
    pub bin: PathBuf,
    pub nats_server: PathBuf,
    pub workdir: PathBuf,
    /// Extra environment for every node (e.g. `CONCORD_FAILPOINTS`).
    pub node_env: Vec<(String, String)>,
    pub netns: bool,
    pub seed: u64,
}

#[derive(Debug, Serialize)]
pub struct SuiteVerdict {
    /// Linearizable, no acknowledged write lost, none applied twice, every fault recovered
    /// from in time.
    pub valid: bool,
    pub checker: String,
    pub workload: Workload,
    pub ops: Counts,
    /// Compare-and-swap writes by outcome (all 0 in the register workload).
    pub cas: CasCounts,
    /// The bank workload's checks and counts (only with `--workload bank`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bank: Option<BankVerdict>,
    /// The watch workload's checks and counts (only with `--workload watch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchVerdict>,
    /// The lease workload's (only with `--workload lease`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseVerdict>,
    /// The lock workload's (only with `--workload lock`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockVerdict>,
    pub faults: Vec<FaultRecord>,
    pub keys_checked: usize,
    pub lost_writes: Vec<String>,
    /// No write applied twice, by the store's revisions (`None` when a probe failed; the
    /// reason is in `problems`).
    pub exactly_once: Option<ExactlyOnce>,
    /// Whether the workload retried (with request ids), and its operation deadline.
    pub retry: bool,
    pub op_deadline_ms: u64,
    pub max_recovery_ms: Option<u64>,
    /// Per nemesis: write gap and time to a new leader around the faults on the leader.
    pub failover: Vec<GapSummary>,
    pub timings: Timings,
    pub problems: Vec<String>,
    pub explanation: Option<String>,
    pub history: PathBuf,
    pub netns: bool,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cluster(#[from] concord_harness::mesh::Error),
    #[error("workload: {0}")]
    Workload(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Which Raft timings the suite's nodes run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Timings {
    /// The suite's own, short ones (see [`node_timings`]): faults heal quickly.
    Suite,
    /// The node's shipped defaults (`raft.*` of the config), as a deployment runs them: the
    /// failover figures measured with these are the ones a user sees.
    Shipped,
}

impl Timings {
    pub fn parse(s: &str) -> Option<Timings> {
        match s {
            "suite" => Some(Timings::Suite),
            "shipped" => Some(Timings::Shipped),
            _ => None,
        }
    }
}

/// nats-server's client ping interval for `timings`: the shipped pings with the shipped
/// timings (a paused node is dropped just after Raft could replace it), 1 s with the
/// suite's slower elections.
pub fn client_ping_interval(timings: Timings) -> Option<String> {
    match timings {
        Timings::Suite => None,
        Timings::Shipped => Some("250ms".into()),
    }
}

/// Node environment for `timings`: the suite's elections within about a second, or nothing
/// (the shipped defaults). Both take snapshots often, so snapshot installs are exercised.
pub fn node_timings(timings: Timings) -> Vec<(String, String)> {
    let suite: &[(&str, &str)] = match timings {
        Timings::Suite => &[
            ("CONCORD_RAFT__HEARTBEAT_INTERVAL_MS", "100"),
            ("CONCORD_RAFT__ELECTION_TIMEOUT_MIN_MS", "800"),
            ("CONCORD_RAFT__ELECTION_TIMEOUT_MAX_MS", "1600"),
        ],
        Timings::Shipped => &[],
    };
    suite
        .iter()
        .chain(&[("CONCORD_RAFT__SNAPSHOT_EVERY", "2000")])
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Starts the cluster, runs the workload while every nemesis in `opts.faults` takes its turn,
/// stops the workload, reads every key once more and checks the history.
pub async fn run(opts: CheckOptions, progress: impl Fn(&str)) -> Result<SuiteVerdict, Error> {
    let started = Instant::now();
    let mut cluster = start_cluster(&opts, &progress).await?;
    let netns = cluster.netns();
    let wl = workload_config(&opts, cluster.all_client_urls());
    let mut problems = Vec::new();
    let run = (&opts, &wl, started);
    let mut c = match opts.workload {
        Workload::Bank => run_bank(&mut cluster, run, &mut problems, &progress).await?,
        Workload::Watch => run_watch(&mut cluster, run, &mut problems, &progress).await?,
        Workload::Lease => coord::lease(&mut cluster, run, &mut problems, &progress).await?,
        Workload::Lock => coord::lock(&mut cluster, run, &mut problems, &progress).await?,
        _ => run_registers(&mut cluster, run, &mut problems, &progress).await?,
    };
    let max_recovery_ms = c.faults.iter().filter_map(|f| f.recovery_ms).max();
    let failover = gaps::summarize(&c.faults);
    let valid = c.consistent
        && c.lost.is_empty()
        && c.exactly_once
            .as_ref()
            .map_or(!c.exactly_once_required, ExactlyOnce::holds)
        && problems.iter().all(|p| p.contains("skipped"));
    if !valid {
        keep_log_tails(&cluster, &opts.workdir);
    }
    cluster.shutdown().await;
    Ok(SuiteVerdict {
        valid,
        checker: std::mem::take(&mut c.checker),
        workload: opts.workload,
        ops: c.ops,
        cas: c.cas,
        bank: c.bank,
        watch: c.watch,
        lease: c.lease,
        lock: c.lock,
        faults: c.faults,
        keys_checked: c.keys_checked,
        lost_writes: c.lost,
        exactly_once: c.exactly_once,
        retry: opts.retry,
        op_deadline_ms: opts.op_deadline.as_millis() as u64,
        max_recovery_ms,
        failover,
        timings: opts.timings,
        problems,
        explanation: c.explanation,
        history: c.history,
        netns,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What one workload's run came to, for the verdict.
pub(crate) struct Checked {
    /// The checker passed (linearizable; for the bank, no violation).
    pub consistent: bool,
    pub checker: String,
    pub explanation: Option<String>,
    pub keys_checked: usize,
    pub lost: Vec<String>,
    pub exactly_once: Option<ExactlyOnce>,
    /// Whether a missing exactly-once check fails the run (the lease and lock workloads
    /// do not count revisions).
    pub exactly_once_required: bool,
    pub ops: Counts,
    pub cas: CasCounts,
    pub bank: Option<BankVerdict>,
    pub watch: Option<WatchVerdict>,
    pub lease: Option<LeaseVerdict>,
    pub lock: Option<LockVerdict>,
    pub faults: Vec<FaultRecord>,
    pub history: PathBuf,
}

/// A run's options, workload configuration and start.
pub(crate) type RunOf<'a> = (&'a CheckOptions, &'a WorkloadConfig, Instant);

/// The faults while the workload runs, then quiet, then the workload stopped and awaited.
pub(crate) async fn faults_under_load<E: std::fmt::Display>(
    cluster: &mut CheckCluster,
    (opts, _, started): RunOf<'_>,
    (stop, load): (Arc<AtomicBool>, tokio::task::JoinHandle<Result<(), E>>),
    problems: &mut Vec<String>,
    progress: &impl Fn(&str),
) -> Result<Vec<FaultRecord>, Error> {
    let timing = Timing {
        hold: opts.hold,
        pause: opts.hold,
        quiet: Duration::from_secs(2),
        recovery_limit: Duration::from_secs(20),
        kill_every: opts.kill_every,
    };
    let faults = inject_faults(cluster, opts, timing, started, problems, progress).await?;
    tokio::time::sleep(timing.quiet).await;
    stop.store(true, Ordering::Relaxed);
    match load.await {
        Ok(Ok(())) => Ok(faults),
        Ok(Err(e)) => Err(Error::Workload(e.to_string())),
        Err(e) => Err(Error::Workload(e.to_string())),
    }
}

/// The register and compare-and-swap workloads: per-key linearizability, lost writes and
/// exactly-once by revisions.
async fn run_registers(
    cluster: &mut CheckCluster,
    run: RunOf<'_>,
    problems: &mut Vec<String>,
    progress: &impl Fn(&str),
) -> Result<Checked, Error> {
    let (opts, wl, _) = run;
    let before = probe(wl, "before the workload", problems).await;
    let recorder = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(workload::run(wl.clone(), recorder.clone(), stop.clone()));
    let mut faults = faults_under_load(cluster, run, (stop, load), problems, progress).await?;
    progress("workload stopped; final reads");
    let finals =
        match workload::final_reads(wl, &recorder, 10_000_000, Duration::from_secs(30)).await {
            Ok(f) => f,
            Err(e) => {
                problems.push(e);
                Vec::new()
            }
        };
    let after = probe(wl, "after the workload", problems).await;
    let history = recorder.history();
    let history_path = opts.workdir.join("history.jsonl");
    std::fs::write(&history_path, history::to_lines(&history))?;
    let outside_writes = faults.iter().map(|f| f.probe_writes).sum();
    let exactly_once = before.zip(after).map(|(b, a)| {
        let a = Probe {
            outside_writes,
            ..a
        };
        exactly_once::check(&history, b, a)
    });
    progress(&format!("checking {} events", history.len()));
    let (checker, explanation, keys_checked) = check_history(&history);
    measure_faults(&mut faults, &history, |at| recorder.time_of(at));
    Ok(Checked {
        consistent: checker == "linearizable",
        checker,
        explanation,
        keys_checked,
        lost: workload::lost_writes(&history, &finals),
        exactly_once,
        exactly_once_required: true,
        ops: workload::count(&history),
        cas: workload::count_cas(&history),
        bank: None,
        watch: None,
        lease: None,
        lock: None,
        faults,
        history: history_path,
    })
}

/// The bank workload: accounts created before the first probe, transfers and reads under
/// the faults, a final read, and the bank checker ([`bank::check`]).
async fn run_bank(
    cluster: &mut CheckCluster,
    run: RunOf<'_>,
    problems: &mut Vec<String>,
    progress: &impl Fn(&str),
) -> Result<Checked, Error> {
    let (opts, wl, _) = run;
    let setup = bank::client::create_accounts(wl, Duration::from_secs(30))
        .await
        .map_err(Error::Workload)?;
    let before = probe(wl, "before the workload", problems).await;
    let recorder = bank::client::BankRecorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(bank::client::run(
        wl.clone(),
        recorder.clone(),
        stop.clone(),
    ));
    let mut faults = faults_under_load(cluster, run, (stop, load), problems, progress).await?;
    progress("workload stopped; final read");
    let finals =
        match bank::client::final_read(wl, &recorder, 10_000_000, Duration::from_secs(30)).await {
            Ok(f) => Some(f),
            Err(e) => {
                problems.push(e);
                None
            }
        };
    let after = probe(wl, "after the workload", problems).await;
    let history = recorder.history();
    let history_path = opts.workdir.join("history.jsonl");
    std::fs::write(&history_path, bank::to_lines(&history))?;
    progress(&format!("checking {} events", history.len()));
    let verdict = bank::check::check(&setup, &history, finals.as_deref());
    let outside_writes = faults.iter().map(|f| f.probe_writes).sum();
    let exactly_once = before.zip(after).map(|(b, a)| {
        let a = Probe {
            outside_writes,
            ..a
        };
        bank::check::exactly_once(&verdict, b, a)
    });
    let events = bank::as_register_events(&history);
    measure_faults(&mut faults, &events, |at| recorder.time_of(at));
    let explanation = (!verdict.violations.is_empty()).then(|| verdict.violations.join("\n"));
    Ok(Checked {
        consistent: verdict.holds(),
        checker: if verdict.holds() {
            "bank: consistent".into()
        } else {
            format!(
                "bank: NOT consistent ({} violations)",
                verdict.violation_count
            )
        },
        explanation,
        keys_checked: setup.accounts.len(),
        lost: Vec::new(),
        exactly_once,
        exactly_once_required: true,
        ops: workload::count(&events),
        cas: CasCounts::default(),
        bank: Some(verdict),
        watch: None,
        lease: None,
        lock: None,
        faults,
        history: history_path,
    })
}

/// The watch workload: once every node serves watches, the start revision by a scan, one
/// watcher per node and the writers
/// under the faults, then the final revision by a scan, the watchers followed up to it, the
/// truth (a fresh watch from the start), and the watch checker ([`watch::check`]).
async fn run_watch(
    cluster: &mut CheckCluster,
    run: RunOf<'_>,
    problems: &mut Vec<String>,
    progress: &impl Fn(&str),
) -> Result<Checked, Error> {
    let (opts, wl, _) = run;
    let ids = cluster.ids();
    let scan = Duration::from_secs(30);
    watch::client::wait_watchable(wl, &ids, Duration::from_secs(60))
        .await
        .map_err(Error::Workload)?;
    let start_revision = watch::client::store_revision(wl, scan)
        .await
        .map_err(Error::Workload)?
        + 1;
    let before = probe(wl, "before the workload", problems).await;
    let recorder = watch::client::PutRecorder::new();
    let control = Arc::new(Control::default());
    let watchers =
        watch::client::start_watchers(wl, &ids, start_revision, recorder.start, control.clone())
            .await
            .map_err(Error::Workload)?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(watch::client::run_writers(
        wl.clone(),
        recorder.clone(),
        stop.clone(),
    ));
    let mut faults = faults_under_load(cluster, run, (stop, load), problems, progress).await?;
    progress("workload stopped; the watchers catch up, then the truth");
    let mut h = watch::WatchHistory {
        start_revision,
        ..Default::default()
    };
    match watch::client::store_revision(wl, scan).await {
        Ok(rev) => {
            h.final_revision = Some(rev);
            control.target.store(rev.max(1), Ordering::Relaxed);
        }
        Err(e) => problems.push(e),
    }
    let catch_up = Duration::from_secs(60);
    h.watchers = watch::client::finish(watchers, &control, catch_up).await;
    if let Some(rev) = h.final_revision {
        let span = (start_revision, rev);
        match watch::client::truth(wl, &ids, span, recorder.start, catch_up).await {
            Ok(t) => h.truth = Some(t),
            Err(e) => problems.push(e),
        }
    }
    let after = probe(wl, "after the workload", problems).await;
    h.puts = recorder.puts();
    let history_path = opts.workdir.join("watch-history.json");
    std::fs::write(&history_path, serde_json::to_vec(&h).unwrap_or_default())?;
    progress(&format!(
        "checking {} puts and {} watchers",
        h.puts.len(),
        h.watchers.len()
    ));
    let verdict = watch::check::check(&h);
    let outside_writes = faults.iter().map(|f| f.probe_writes).sum();
    let exactly_once = watch_exactly_once(&h, &verdict, (before, after, outside_writes), problems);
    let events = watch::client::as_register_events(&h.puts);
    measure_faults(&mut faults, &events, |at| recorder.time_of(at));
    let explanation = (!verdict.violations.is_empty()).then(|| verdict.violations.join("\n"));
    Ok(Checked {
        consistent: verdict.holds(),
        checker: if verdict.holds() {
            "watch: every watcher saw the change log".into()
        } else {
            format!(
                "watch: NOT consistent ({} violations)",
                verdict.violation_count
            )
        },
        explanation,
        keys_checked: opts.keys,
        lost: Vec::new(),
        exactly_once,
        exactly_once_required: true,
        ops: workload::count(&events),
        cas: CasCounts::default(),
        bank: None,
        watch: Some(verdict),
        lease: None,
        lock: None,
        faults,
        history: history_path,
    })
}

/// The watch workload's exactly-once check, from the probes `(before, after, outside
/// writes)`: the applied puts come from the truth, so without all of it there is nothing to
/// count (said in `problems`).
fn watch_exactly_once(
    h: &watch::WatchHistory,
    verdict: &WatchVerdict,
    (before, after, outside_writes): (Option<Probe>, Option<Probe>, u64),
    problems: &mut Vec<String>,
) -> Option<ExactlyOnce> {
    let complete = h
        .final_revision
        .is_some_and(|f| verdict.truth_revision >= f);
    if !complete {
        problems
            .push("exactly once not checked: the truth did not reach the final revision".into());
    }
    before.zip(after).filter(|_| complete).map(|(b, a)| {
        let a = Probe {
            outside_writes,
            ..a
        };
        watch::check::exactly_once(verdict, b, a)
    })
}

/// The workload's configuration: its clients spread over `urls`, one per NATS server.
fn workload_config(opts: &CheckOptions, urls: Vec<String>) -> WorkloadConfig {
    WorkloadConfig {
        workload: opts.workload,
        urls,
        prefix: "concord".into(),
        clients: opts.clients.max(1),
        keys: opts.keys.max(1),
        policy: RetryPolicy {
            retry: opts.retry,
            ..RetryPolicy::retrying(opts.op_timeout, opts.op_deadline)
        },
    }
}

/// Each fault's write gap and longest write wait, from the history (`time_of`: an instant
/// as a history time).
pub(crate) fn measure_faults(
    faults: &mut [FaultRecord],
    history: &[history::Event],
    time_of: impl Fn(Instant) -> u64,
) {
    let (acks, waits) = (gaps::write_acks(history), gaps::write_waits(history));
    for f in faults {
        if let (Some(from), Some(to)) = (f.injected, f.writable) {
            let (from, to) = (time_of(from), time_of(to));
            f.write_gap_ms = gaps::gap_around(&acks, from, to);
            f.write_wait_ms = gaps::wait_around(&waits, from, to);
        }
    }
}

/// The store's revision by a probe put ([`workload::revision_probe`]); a failure goes to
/// `problems`, which fails the verdict.
pub(crate) async fn probe(
    wl: &WorkloadConfig,
    when: &str,
    problems: &mut Vec<String>,
) -> Option<Probe> {
    match workload::revision_probe(wl, Duration::from_secs(30)).await {
        Ok((revision, unknown_attempts)) => Some(Probe {
            revision,
            unknown_attempts,
            outside_writes: 0,
        }),
        Err(e) => {
            problems.push(format!("{e} ({when})"));
            None
        }
    }
}

/// Creates the work directory and starts the cluster, its nodes with the suite's timings and
/// `opts.node_env`; reports how it is networked and its leader.
async fn start_cluster(
    opts: &CheckOptions,
    progress: &impl Fn(&str),
) -> Result<CheckCluster, Error> {
    std::fs::create_dir_all(&opts.workdir)?;
    let mut env = node_timings(opts.timings);
    env.extend(opts.node_env.iter().cloned());
    let cluster = CheckCluster::start(Spec {
        bin: opts.bin.clone(),
        nats_server: opts.nats_server.clone(),
        workdir: opts.workdir.clone(),
        node_env: env,
        use_netns: opts.netns,
        client_ping_interval: client_ping_interval(opts.timings),
    })
    .await?;
    progress(&format!(
        "cluster up ({}), leader {:?}",
        if cluster.netns() {
            "one network namespace per node"
        } else {
            "loopback, no partitions"
        },
        cluster.leader().await
    ));
    Ok(cluster)
}

/// On a failed run: the last 200 log lines of each node, as `n<id>.tail.log` in `workdir`.
fn keep_log_tails(cluster: &CheckCluster, workdir: &Path) {
    for id in cluster.ids() {
        let _ = std::fs::write(
            workdir.join(format!("n{id}.tail.log")),
            cluster.log_tail(id, 200),
        );
    }
}

/// Each nemesis of `opts.faults` in turn, for `opts.duration` (at least one fault each) or
/// until it hit the leader `opts.leader_faults` times; what did not recover in time goes to
/// `problems`.
async fn inject_faults(
    cluster: &mut CheckCluster,
    opts: &CheckOptions,
    timing: Timing,
    started: Instant,
    problems: &mut Vec<String>,
    progress: &impl Fn(&str),
) -> Result<Vec<FaultRecord>, Error> {
    let mut nemesis = Nemesis::new(timing, started, opts.seed);
    nemesis.leader_only = opts.leader_only;
    let mut faults: Vec<FaultRecord> = Vec::new();
    for fault in &opts.faults {
        let mut last_kill: Option<Instant> = None;
        if *fault == Fault::Partition && !cluster.netns() {
            problems.push("partition nemesis skipped: network namespaces unavailable (needs root and `ip netns`)".into());
            continue;
        }
        let phase_end = Instant::now() + opts.duration;
        // Bounded: a round that finds no leader still counts towards the limit.
        let rounds = opts.leader_faults.map_or(usize::MAX, |n| 4 * n + 4);
        for _ in 0..rounds {
            match last_kill {
                // The next leader killed on the cadence, not after a quiet time.
                Some(at) => tokio::time::sleep_until((at + timing.kill_every).into()).await,
                None => tokio::time::sleep(timing.quiet).await,
            }
            let this: Vec<&FaultRecord> = faults.iter().filter(|f| f.fault == *fault).collect();
            let done = match opts.leader_faults {
                Some(n) => this.iter().filter(|f| f.was_leader).count() >= n,
                None if *fault == Fault::LeaderKill => {
                    Instant::now() + timing.kill_every > phase_end && !this.is_empty()
                }
                None => Instant::now() + timing.hold + timing.quiet > phase_end && !this.is_empty(),
            };
            if done {
                break;
            }
            let record = nemesis.cycle(cluster, *fault).await?;
            if *fault == Fault::LeaderKill {
                last_kill = record.injected;
            }
            progress(&describe(&record));
            if record.recovery_ms.is_none() {
                problems.push(format!(
                    "the cluster did not serve writes within {:?} after {:?} healed",
                    timing.recovery_limit, record.fault
                ));
            }
            faults.push(record);
            if opts.leader_faults.is_none() && Instant::now() >= phase_end {
                break;
            }
        }
    }
    Ok(faults)
}

/// One progress line for a fault.
fn describe(record: &FaultRecord) -> String {
    let ms = |v: Option<u64>, none: &str| {
        v.map(|ms| format!("{ms} ms"))
            .unwrap_or_else(|| none.into())
    };
    format!(
        "{:?} node {:?} (leader: {}) held {} ms, new leader after {}, writable again after {}",
        record.fault,
        record.node,
        record.was_leader,
        record.held_ms,
        ms(record.new_leader_ms, "-"),
        ms(record.recovery_ms, "NEVER"),
    )
}

/// The checker's verdict as text, its explanation, and how many keys it checked.
fn check_history(history: &[history::Event]) -> (String, Option<String>, usize) {
    match linearizable::check(history, &Limits::default()) {
        Ok(report) => {
            let explanation = report
                .keys
                .iter()
                .filter_map(|k| k.explanation.clone())
                .collect::<Vec<_>>()
                .join("\n");
            let verdict = match report.verdict {
                Linearizability::Linearizable => "linearizable",
                Linearizability::NotLinearizable => "NOT linearizable",
                Linearizability::Unknown => "unknown (the checker gave up: counted as a failure)",
            };
            (
                verdict.to_string(),
                (!explanation.is_empty()).then_some(explanation),
                report.keys.len(),
            )
        }
        Err(e) => (format!("malformed history: {e}"), None, 0),
    }
}
