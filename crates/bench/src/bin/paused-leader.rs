//! `paused-leader`: what clients see while the Raft leader is SIGSTOPped (issue #21, item 5).
//!
//! It starts a 3-node cluster of the given `concord` binary (release build) on its own
//! `nats-server` (crates/harness, with the shipped Raft timings, not the tests' faster ones),
//! runs `--clients` closed-loop clients doing linearizable gets and puts through the queue
//! group subjects `P.kv.get|put` with a per-request timeout, and then, `--pauses` times:
//! waits for a stable leader, SIGSTOPs it for `--pause-secs`, SIGCONTs it and watches
//! `--after-secs` more. For each pause it reports the time to the first success after the
//! stop, when a new leader was agreed, when nats-server dropped the paused node's
//! connection, the share of requests answered `ok` before and after the new leader (and
//! after the resume), and one line per second.
//!
//! `--soak-secs N` instead runs N seconds of load with no fault and reports every NATS
//! disconnect (nats-server's log and the nodes' own): the check that ping settings do not
//! drop a node that is only busy.
//!
//! ```text
//! paused-leader --bin target/release/concord [--nats-config FILE] [--clients 16]
//!     [--timeout-ms 1000] [--pauses 5] [--pause-secs 10] [--after-secs 5]
//!     [--retry-reads-ms MS] [--soak-secs N] [--raft HEARTBEAT,MIN,MAX] [--json]
//! ```
//!
//! `--nats-config` adds that nats-server config (e.g. compose/nats/nats.conf's ping
//! settings) to the server's; `--retry-reads-ms` makes each get time out after MS and retry
//! through the node subjects `P.node.<id>.kv.get` of the nodes in turn (option c: the
//! client steering around a node that cannot answer); `--raft 50,300,600` runs other Raft
//! timings (heartbeat, election timeout min and max, in ms) than the shipped ones. Needs `nats-server` (PATH or
//! `CONCORD_TEST_NATS_SERVER`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use concord_harness::cluster::{Cluster, ClusterOptions};
use concord_wire::subjects::{KvOp, Subjects};
use serde::Serialize;

/// What every measured cluster runs: the shipped Raft timings (the harness's defaults are
/// the tests' faster ones).
const RAFT_ENV: [(&str, &str); 3] = [
    ("CONCORD_RAFT__HEARTBEAT_INTERVAL_MS", "150"),
    ("CONCORD_RAFT__ELECTION_TIMEOUT_MIN_MS", "1000"),
    ("CONCORD_RAFT__ELECTION_TIMEOUT_MAX_MS", "2000"),
];
const NODES: u64 = 3;
/// Keys the clients spread over (written once before the first pause).
const KEYS: u64 = 256;
/// How often the watcher polls the leader and the NATS monitor during a pause.
const WATCH_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
struct Args {
    bin: PathBuf,
    nats_config: Option<PathBuf>,
    clients: usize,
    timeout: Duration,
    pauses: usize,
    pause: Duration,
    after: Duration,
    retry_reads: Option<Duration>,
    soak: Option<Duration>,
    json: bool,
    /// `--raft HEARTBEAT,MIN,MAX` (ms): other Raft timings than the shipped ones.
    raft: Option<[String; 3]>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        bin: PathBuf::new(),
        nats_config: None,
        clients: 16,
        timeout: Duration::from_millis(1000),
        pauses: 5,
        pause: Duration::from_secs(10),
        after: Duration::from_secs(5),
        retry_reads: None,
        soak: None,
        json: false,
        raft: None,
    };
    let mut it = std::env::args().skip(1);
    let ms = |v: Option<String>, f: &str| -> Result<Duration> {
        let v = v.with_context(|| format!("{f} needs a value"))?;
        Ok(Duration::from_millis(
            v.parse().with_context(|| format!("{f} {v}"))?,
        ))
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--bin" => a.bin = it.next().context("--bin needs a path")?.into(),
            "--nats-config" => a.nats_config = Some(it.next().context("--nats-config")?.into()),
            "--clients" => a.clients = it.next().context("--clients")?.parse()?,
            "--timeout-ms" => a.timeout = ms(it.next(), "--timeout-ms")?,
            "--pauses" => a.pauses = it.next().context("--pauses")?.parse()?,
            "--pause-secs" => a.pause = ms(it.next().map(|s| s + "000"), "--pause-secs")?,
            "--after-secs" => a.after = ms(it.next().map(|s| s + "000"), "--after-secs")?,
            "--retry-reads-ms" => a.retry_reads = Some(ms(it.next(), "--retry-reads-ms")?),
            "--soak-secs" => a.soak = Some(ms(it.next().map(|s| s + "000"), "--soak-secs")?),
            "--json" => a.json = true,
            "--raft" => {
                let v = it.next().context("--raft HEARTBEAT,MIN,MAX")?;
                let parts: Vec<String> = v.split(',').map(str::to_string).collect();
                a.raft = Some(
                    parts
                        .try_into()
                        .map_err(|_| anyhow::anyhow!("--raft {v}"))?,
                );
            }
            "-h" | "--help" => {
                println!("see the doc comment of crates/bench/src/bin/paused-leader.rs");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if a.bin.as_os_str().is_empty() {
        bail!("--bin <path of the concord binary> is required");
    }
    Ok(a)
}

/// One request's fate.
#[derive(Debug, Clone, Copy)]
struct Rec {
    start: Instant,
    end: Instant,
    ok: bool,
}

type Log = Arc<Mutex<Vec<Rec>>>;

/// One client's closed loop: alternating linearizable gets and puts until `stop`.
async fn client_loop(
    nats: async_nats::Client,
    subjects: Subjects,
    n: usize,
    args: Args,
    stop: Arc<AtomicBool>,
    log: Log,
) {
    let mut i = n as u64;
    while !stop.load(Ordering::Relaxed) {
        i = i.wrapping_add(7);
        let key = format!("pl:{}", i % KEYS);
        let start = Instant::now();
        let ok = if i.is_multiple_of(2) {
            let body = format!(r#"{{"key":"{key}","consistency":"linearizable"}}"#);
            get(&nats, &subjects, body.into(), &args, i).await
        } else {
            let body = format!(r#"{{"key":"{key}","value":"v{i}"}}"#);
            let subject = subjects.kv(KvOp::Put);
            request(&nats, subject, body.into(), args.timeout).await
        };
        let rec = Rec {
            start,
            end: Instant::now(),
            ok,
        };
        log.lock().unwrap_or_else(|p| p.into_inner()).push(rec);
        if !ok {
            // A refusal comes back at once; do not spin on it.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A get through the queue group; with `--retry-reads-ms`, a short first attempt and then
/// the node subjects in turn, within the same overall timeout.
async fn get(nats: &async_nats::Client, s: &Subjects, body: Bytes, a: &Args, i: u64) -> bool {
    let Some(attempt) = a.retry_reads else {
        return request(nats, s.kv(KvOp::Get), body, a.timeout).await;
    };
    let deadline = Instant::now() + a.timeout;
    if request(nats, s.kv(KvOp::Get), body.clone(), attempt).await {
        return true;
    }
    for k in 0..NODES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let id = 1 + (i + k) % NODES;
        if request(
            nats,
            s.node_kv(id, KvOp::Get),
            body.clone(),
            attempt.min(left),
        )
        .await
        {
            return true;
        }
    }
    false
}

/// One request; `ok` for a `{"ok":true…}` reply or `not_found` (a served read).
async fn request(nats: &async_nats::Client, subject: String, body: Bytes, t: Duration) -> bool {
    let req = async_nats::Request::new().payload(body).timeout(Some(t));
    match nats.send_request(subject, req).await {
        Ok(reply) => {
            reply.payload.starts_with(br#"{"ok":true"#)
                || serde_json::from_slice::<serde_json::Value>(&reply.payload)
                    .is_ok_and(|v| v["error"]["code"] == "not_found")
        }
        Err(_) => false,
    }
}

/// One pause as measured: times in seconds since the SIGSTOP.
#[derive(Debug, Serialize)]
struct PauseReport {
    leader: u64,
    new_leader: Option<u64>,
    first_ok_s: Option<f64>,
    new_leader_s: Option<f64>,
    conn_dropped_s: Option<f64>,
    /// Share of requests started in each phase that were answered ok.
    ok_before_new_leader: f64,
    ok_after_new_leader: f64,
    ok_after_resume: f64,
    /// After the resume: when the old leader held one `P.kv.*` subscription again.
    old_leader_single_sub_s: Option<f64>,
    /// Why nats-server closed the paused node's connections, if it did.
    closed: Vec<String>,
    per_second: Vec<(u64, u64)>,
}

/// What the watcher saw during one pause.
#[derive(Default)]
struct Seen {
    new_leader: Option<(u64, Instant)>,
    conn_dropped: Option<Instant>,
    single_sub: Option<Instant>,
}

/// Polls the survivors and the NATS monitor until `until`.
async fn watch(cluster: &Cluster, leader: u64, until: Instant, seen: &mut Seen, resumed: bool) {
    while Instant::now() < until {
        if seen.new_leader.is_none() && !resumed {
            if let Ok(Some(l)) = cluster.agreed_leader().await {
                if l != leader {
                    seen.new_leader = Some((l, Instant::now()));
                }
            }
        }
        if let Ok(subs) = cluster.kv_queue_subscriptions().await {
            let mine = subs.get(&format!("concord-{leader}")).copied();
            if !resumed && seen.conn_dropped.is_none() && mine.is_none() {
                seen.conn_dropped = Some(Instant::now());
            }
            if resumed && seen.single_sub.is_none() && mine == Some(1) {
                seen.single_sub = Some(Instant::now());
            }
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

fn share(recs: &[Rec], from: Instant, to: Instant) -> f64 {
    let phase: Vec<_> = recs
        .iter()
        .filter(|r| r.start >= from && r.start < to)
        .collect();
    if phase.is_empty() {
        return f64::NAN;
    }
    phase.iter().filter(|r| r.ok).count() as f64 / phase.len() as f64
}

async fn one_pause(cluster: &Cluster, args: &Args, log: &Log) -> Result<PauseReport> {
    let leader = cluster.wait_stable(Duration::from_secs(60)).await?;
    // Steady state first: every client's loop runs against a settled leader.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cid_before = cluster
        .closed_connections()
        .await?
        .iter()
        .map(|c| c.cid)
        .max();
    cluster.pause(leader).await?;
    // After `kill -STOP` returned: a request answered after this was not answered by it.
    let t0 = Instant::now();
    let mut seen = Seen::default();
    watch(cluster, leader, t0 + args.pause, &mut seen, false).await;
    let t_resume = Instant::now();
    cluster.resume(leader).await?;
    watch(cluster, leader, t_resume + args.after, &mut seen, true).await;
    let t_end = Instant::now();
    let own = format!("concord-{leader}");
    let closed = cluster.closed_connections().await?;
    let closed: Vec<String> = closed
        .iter()
        .filter(|c| Some(c.cid) > cid_before)
        .filter(|c| c.name == own || c.name.starts_with(&format!("{own}-")))
        .map(|c| format!("{}: {}", c.name, c.reason))
        .collect();
    let recs: Vec<Rec> = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let secs = |t: Instant| t.duration_since(t0).as_secs_f64();
    let first_ok = recs
        .iter()
        .filter(|r| r.ok && r.start >= t0)
        .map(|r| r.end)
        .min();
    let t_new = seen.new_leader.map_or(t_resume, |(_, t)| t);
    // Requests still running at the resume may be answered by the woken node: the pause
    // phase ends one timeout before it.
    let pause_end = t_resume.checked_sub(args.timeout).unwrap_or(t_resume);
    let mut per_second = Vec::new();
    let mut s = 0;
    while t0 + Duration::from_secs(s + 1) <= t_end {
        let (a, b) = (t0 + Duration::from_secs(s), t0 + Duration::from_secs(s + 1));
        let phase = recs.iter().filter(|r| r.start >= a && r.start < b);
        let (ok, all) = phase.fold((0, 0), |(o, n), r| (o + r.ok as u64, n + 1));
        per_second.push((ok, all));
        s += 1;
    }
    Ok(PauseReport {
        leader,
        new_leader: seen.new_leader.map(|(l, _)| l),
        first_ok_s: first_ok.map(secs),
        new_leader_s: seen.new_leader.map(|(_, t)| secs(t)),
        conn_dropped_s: seen.conn_dropped.map(secs),
        ok_before_new_leader: share(&recs, t0, t_new),
        ok_after_new_leader: share(&recs, t_new, pause_end.max(t_new)),
        ok_after_resume: share(&recs, t_resume, t_end),
        old_leader_single_sub_s: seen.single_sub.map(secs),
        closed,
        per_second,
    })
}

fn print_pause(i: usize, r: &PauseReport) {
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    println!(
        "pause {i}: leader {} -> {:?}; first ok {} s, new leader {} s, conn dropped {} s, \
         old leader back to 1 sub {} s; ok share: before new leader {:.2}, after {:.2}, after resume {:.2}",
        r.leader,
        r.new_leader,
        f(r.first_ok_s),
        f(r.new_leader_s),
        f(r.conn_dropped_s),
        f(r.old_leader_single_sub_s),
        r.ok_before_new_leader,
        r.ok_after_new_leader,
        r.ok_after_resume
    );
    println!("  closed by nats-server: {:?}", r.closed);
    let line: Vec<String> = r
        .per_second
        .iter()
        .map(|(ok, all)| format!("{ok}/{all}"))
        .collect();
    println!("  per second (ok/sent): {}", line.join(" "));
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(|a, b| a.total_cmp(b));
    (!v.is_empty()).then(|| v[v.len() / 2])
}

fn print_summary(reports: &[PauseReport]) {
    let col = |f: &dyn Fn(&PauseReport) -> Option<f64>| {
        let v: Vec<f64> = reports.iter().filter_map(f).collect();
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!(
            "median {:.2} (min {min:.2}, max {max:.2}, n {})",
            median(v.clone()).unwrap_or(f64::NAN),
            v.len()
        )
    };
    println!("summary over {} pauses:", reports.len());
    println!("  first ok after stop (s):     {}", col(&|r| r.first_ok_s));
    println!(
        "  new leader agreed (s):       {}",
        col(&|r| r.new_leader_s)
    );
    println!(
        "  paused conn dropped (s):     {}",
        col(&|r| r.conn_dropped_s)
    );
    println!(
        "  ok share before new leader:  {}",
        col(&|r| Some(r.ok_before_new_leader))
    );
    println!(
        "  ok share after new leader:   {}",
        col(&|r| Some(r.ok_after_new_leader))
    );
    println!(
        "  ok share after resume:       {}",
        col(&|r| Some(r.ok_after_resume))
    );
}

async fn start_cluster(args: &Args) -> Result<Cluster> {
    let mut conf = String::from("# paused-leader: the monitor, for /connz\nhttp_port: -1\n");
    if let Some(path) = &args.nats_config {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
        conf.push_str(&text);
    }
    let mut opts = ClusterOptions::default()
        .bin(&args.bin)
        .nats_server_config(conf);
    for (i, (k, v)) in RAFT_ENV.into_iter().enumerate() {
        opts = opts.env(k, args.raft.as_ref().map_or(v, |r| r[i].as_str()));
    }
    let cluster = Cluster::start_with(NODES, opts).await?;
    cluster.wait_stable(Duration::from_secs(60)).await?;
    Ok(cluster)
}

/// Counts of disconnects over a soak: connections nats-server closed (by reason) and the
/// nodes' own log lines.
async fn disconnects(cluster: &Cluster) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for c in cluster.closed_connections().await.unwrap_or_default() {
        *out.entry(format!("nats-server closed {}: {}", c.name, c.reason))
            .or_default() += 1;
    }
    for id in cluster.ids() {
        let log = cluster.log(id);
        let lost = log.matches("NATS connection lost").count();
        out.insert(format!("node {id}: NATS connection lost"), lost);
    }
    out
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let cluster = start_cluster(&args).await?;
    let subjects = Subjects::new(cluster.prefix(), "-");
    let nats = cluster.connect().await?;
    for k in 0..KEYS {
        let body = format!(r#"{{"key":"pl:{k}","value":"init"}}"#);
        request(
            &nats,
            subjects.kv(KvOp::Put),
            body.into(),
            Duration::from_secs(5),
        )
        .await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let log: Log = Arc::default();
    let mut tasks = Vec::new();
    for n in 0..args.clients {
        let client = cluster.connect().await?;
        let (s, a, st, l) = (subjects.clone(), args.clone(), stop.clone(), log.clone());
        tasks.push(tokio::spawn(client_loop(client, s, n, a, st, l)));
    }
    if let Some(soak) = args.soak {
        let before = disconnects(&cluster).await;
        let term_before = cluster
            .status(cluster.wait_stable(Duration::from_secs(60)).await?)
            .await?["term"]
            .as_u64();
        let t0 = Instant::now();
        tokio::time::sleep(soak).await;
        let recs = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let ok = recs.iter().filter(|r| r.ok).count();
        println!(
            "soak {:?} at {} clients: {ok} ok of {} ({:.0} ok/s)",
            soak,
            args.clients,
            recs.len(),
            ok as f64 / t0.elapsed().as_secs_f64()
        );
        let leader = cluster.wait_stable(Duration::from_secs(60)).await?;
        let term_after = cluster.status(leader).await?["term"].as_u64();
        println!(
            "  term: {term_before:?} before, {term_after:?} after (a change means an election)"
        );
        let after = disconnects(&cluster).await;
        let closed: usize = after
            .iter()
            .filter(|(k, _)| k.starts_with("nats-server closed"))
            .map(|(k, v)| v - before.get(k).copied().unwrap_or(0))
            .sum();
        println!("  connections closed by nats-server during the soak: {closed}");
        for (k, v) in &after {
            println!(
                "  {k}: {} during the soak",
                v - before.get(k).copied().unwrap_or(0)
            );
        }
    } else {
        let mut reports = Vec::new();
        for i in 0..args.pauses {
            let r = one_pause(&cluster, &args, &log).await?;
            if !args.json {
                print_pause(i + 1, &r);
            }
            reports.push(r);
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&reports)?);
        } else {
            print_summary(&reports);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
