//! The lease and lock workloads' runs (`--workload lease|lock`): once every node serves
//! watches, the start revision; the workload under the faults; then the change log of its
//! prefix read by a fresh watch, and its checker ([`crate::lease::check`],
//! [`crate::lock::check`]).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::call::Clock;
use crate::lease::{self, client::LeaseRun};
use crate::lock::{self, client::LockRun};
use crate::nemesis::{Fault, FaultRecord};
use crate::run::{faults_under_load, node_timings, CheckOptions, Checked, Error, RunOf};
use crate::watch::{self, check::accepted};
use crate::workload::{CasCounts, Counts, WorkloadConfig};
use concord_harness::mesh::CheckCluster;

/// The node's shipped `raft.election_timeout_max_ms` (src/config/schema.rs; this crate
/// cannot link the node library).
pub const SHIPPED_ELECTION_TIMEOUT_MAX_MS: u64 = 400;

/// The nodes' `election_timeout_max` in ms: the last setting of it in their environment
/// (the suite's timings, then `--raft`), else the shipped default.
pub fn election_timeout_max_ms(opts: &CheckOptions) -> u64 {
    node_timings(opts.timings)
        .iter()
        .chain(&opts.node_env)
        .filter(|(k, _)| k == "CONCORD_RAFT__ELECTION_TIMEOUT_MAX_MS")
        .filter_map(|(_, v)| v.parse().ok())
        .next_back()
        .unwrap_or(SHIPPED_ELECTION_TIMEOUT_MAX_MS)
}

/// The windows (ns of `clock`) of the faults of kind `fault`, from the injection until
/// writes were served again (or now, if they never were).
fn windows(faults: &[FaultRecord], fault: Fault, clock: &Clock) -> Vec<(u64, u64)> {
    faults
        .iter()
        .filter(|f| f.fault == fault)
        .filter_map(|f| {
            let from = f.injected?;
            Some((
                clock.of(from),
                clock.of(f.writable.unwrap_or_else(Instant::now)),
            ))
        })
        .collect()
}

/// Every node serves watches; the first revision of the run.
async fn start_revision(wl: &WorkloadConfig, ids: &[u64]) -> Result<u64, Error> {
    watch::client::wait_watchable(wl, ids, Duration::from_secs(60))
        .await
        .map_err(Error::Workload)?;
    let rev = watch::client::store_revision(wl, Duration::from_secs(30))
        .await
        .map_err(Error::Workload)?;
    Ok(rev + 1)
}

/// The change log of `prefix` from `start` to the store's revision now, by a fresh watch;
/// `None` (said in `problems`) when it could not be read in full.
async fn change_log(
    wl: &WorkloadConfig,
    ids: &[u64],
    (prefix, start): (&str, u64),
    clock: &Clock,
    problems: &mut Vec<String>,
) -> Option<Vec<serde_json::Value>> {
    let end = match watch::client::store_revision(wl, Duration::from_secs(30)).await {
        Ok(r) => r,
        Err(e) => {
            problems.push(e);
            return None;
        }
    };
    let span = (start, end);
    match watch::client::change_log(wl, ids, prefix, span, clock.start, Duration::from_secs(60))
        .await
    {
        Ok(log) => {
            let a = accepted(&log);
            if a.fully_seen >= end {
                return Some(a.events);
            }
            problems.push(format!(
                "the change log of {prefix} was read only up to revision {} of {end}",
                a.fully_seen
            ));
        }
        Err(e) => problems.push(e),
    }
    None
}

/// What both workloads report the same way.
fn checked(
    (consistent, checker, violations): (bool, String, &[String]),
    faults: Vec<FaultRecord>,
    history: std::path::PathBuf,
) -> Checked {
    Checked {
        consistent,
        checker,
        explanation: (!violations.is_empty()).then(|| violations.join("\n")),
        keys_checked: 0,
        lost: Vec::new(),
        exactly_once: None,
        exactly_once_required: false,
        ops: Counts::default(),
        cas: CasCounts::default(),
        bank: None,
        watch: None,
        lease: None,
        lock: None,
        faults,
        history,
    }
}

/// The lease workload ([`crate::lease`]).
pub(crate) async fn lease(
    cluster: &mut CheckCluster,
    run: RunOf<'_>,
    problems: &mut Vec<String>,
    progress: &impl Fn(&str),
) -> Result<Checked, Error> {
    let (opts, wl, _) = run;
    let ids = cluster.ids();
    let start = start_revision(wl, &ids).await?;
    let r = LeaseRun::new(wl.clone(), election_timeout_max_ms(opts))
        .await
        .map_err(Error::Workload)?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(lease::client::run(r.clone(), stop.clone()));
    let faults = faults_under_load(cluster, run, (stop, load), problems, progress).await?;
    progress("workload stopped; the kept lease read, then the change log");
    lease::client::finish_kept(&r, Duration::from_secs(30)).await;
    let log = change_log(wl, &ids, (lease::PREFIX, start), &r.clock, problems).await;
    let mut h = r.history.lock().unwrap_or_else(|e| e.into_inner()).clone();
    h.change_log = log;
    h.outages = windows(&faults, Fault::Restart, &r.clock);
    h.leader_kill = windows(&faults, Fault::LeaderKill, &r.clock);
    let path = opts.workdir.join("lease-history.json");
    std::fs::write(&path, serde_json::to_vec(&h).unwrap_or_default())?;
    let v = lease::check::check(&h);
    let checker = if v.holds() {
        "lease: never early, bounded late, revokes at one revision".to_string()
    } else {
        format!("lease: NOT consistent ({} violations)", v.violation_count)
    };
    let mut c = checked((v.holds(), checker, &v.violations), faults, path);
    c.lease = Some(v);
    Ok(c)
}

/// The lock workload ([`crate::lock`]).
pub(crate) async fn lock(
    cluster: &mut CheckCluster,
    run: RunOf<'_>,
    problems: &mut Vec<String>,
    progress: &impl Fn(&str),
) -> Result<Checked, Error> {
    let (opts, wl, _) = run;
    let ids = cluster.ids();
    let start = start_revision(wl, &ids).await?;
    let r = LockRun::new(wl.clone(), election_timeout_max_ms(opts))
        .await
        .map_err(Error::Workload)?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(lock::client::run(r.clone(), wl.clients, stop.clone()));
    let faults = faults_under_load(cluster, run, (stop, load), problems, progress).await?;
    progress("workload stopped; the change log");
    let log = change_log(wl, &ids, (lock::PREFIX, start), &r.clock, problems).await;
    let mut h = r.history.lock().unwrap_or_else(|e| e.into_inner()).clone();
    h.change_log = log;
    h.outages = windows(&faults, Fault::Restart, &r.clock);
    let path = opts.workdir.join("lock-history.json");
    std::fs::write(&path, serde_json::to_vec(&h).unwrap_or_default())?;
    let v = lock::check::check(&h);
    let checker = if v.holds() {
        "lock: fenced writes never interleave, stale fences refused".to_string()
    } else {
        format!("lock: NOT consistent ({} violations)", v.violation_count)
    };
    let mut c = checked((v.holds(), checker, &v.violations), faults, path);
    c.lock = Some(v);
    Ok(c)
}
