//! `concord bench`: a closed-loop load generator over the wire protocol. Each client sends
//! one request, waits for the reply, and sends the next; the summary gives throughput,
//! latency percentiles and errors by code.
//!
//! The same loop drives every target through [`Driver`]: the same key choice (xorshift per
//! client over `--keys`), the same mix, values of the same size, the same latency recording
//! (from just before the request is sent to its answer) and error counting. Targets:
//! `concord` (JSON request-reply on `P.kv.*`), `echo` (the NATS round-trip floor), `natskv`
//! (NATS JetStream KV), `etcd` (etcd v3 gRPC, cargo feature `bench-etcd`).
//!
//! Besides put, get and delete, two counter ops measure read-modify-write under contention
//! (`concord` and `etcd` only): `cas` adds 1 to a counter key by a linearizable read and a
//! write conditional on the revision read, reading again after each conflict until one write
//! applies; `incr` is Concord's `P.kv.incr` (etcd has none: compare it with etcd's `cas`).
//! One op is then one successful update, and the conflicts on the way are counted.
//!
//! With `--watchers N` (`concord` and `natskv`) the puts run with N watchers of their
//! prefix attached, and the summary gains the watch fan-out figures ([`watch_bench`]).
//!
//! With `--leases N` (`concord` and `etcd`) the puts run once without leases and once
//! beside N leases renewed every `--keepalive-every` ([`lease_bench`]); `--lock-handoff`
//! measures lock hand-off between `--clients` contending clients ([`lock_bench`]).
//!
//! It speaks to the cluster only over NATS and never links the node library: the `concord`
//! binary depends on this crate, so this crate cannot depend on it.

mod concord;
mod concord_coord;
mod concord_watch;
mod coord_run;
pub mod cpu;
#[cfg(feature = "bench-etcd")]
mod etcd;
#[cfg(feature = "bench-etcd")]
mod etcd_coord;
mod fanout;
pub mod lease_bench;
pub mod lock_bench;
mod natskv;
pub mod watch_bench;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub clients: usize,
    pub duration: Duration,
    pub ops: Option<u64>,
    /// Weights of the ops.
    pub mix: Mix,
    pub keys: u64,
    pub value_size: usize,
    pub stale: bool,
    pub timeout: Duration,
    /// Put every key of the key space once before the measured run (not measured), so that
    /// gets find data.
    pub preload: bool,
    /// Processes whose CPU time (user + system) over the measured run goes in the summary.
    pub cpu_pids: Vec<u32>,
    /// `concord`: every put and delete carries a fresh `request_id` (the cost of ids).
    pub ids: bool,
    /// Watchers of the puts' prefix attached during the run (0: none).
    pub watchers: usize,
    /// NATS connections the watchers share (empty: the puts' connection).
    pub watch_conns: Vec<async_nats::Client>,
    /// Leases renewed beside the puts (0: no lease run).
    pub leases: usize,
    /// How often each lease is renewed.
    pub keepalive_every: Duration,
    /// The leases' TTL (and a lock claim's, `--lock-handoff`).
    pub lease_ttl: Duration,
    /// Keepalives in flight at most.
    pub keepalive_inflight: usize,
    /// A lock hand-off run instead of the closed loop of ops.
    pub lock_handoff: bool,
}

/// What to load.
pub enum Target {
    /// The cluster's contract subjects `prefix.kv.*`.
    Concord {
        nats: async_nats::Client,
        prefix: String,
        /// Sent as `Authorization: Bearer` on every request (clusters with auth on).
        token: Option<String>,
    },
    /// A responder in this process that answers at once: the NATS round-trip floor.
    Echo {
        nats: async_nats::Client,
        prefix: String,
    },
    /// A NATS JetStream KV bucket, created (history 1, file storage) if missing.
    NatsKv {
        nats: async_nats::Client,
        bucket: String,
        replicas: usize,
    },
    /// An etcd v3 cluster.
    #[cfg(feature = "bench-etcd")]
    Etcd {
        endpoints: Vec<String>,
        conns: usize,
    },
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Concord { .. } => "concord",
            Target::Echo { .. } => "echo",
            Target::NatsKv { .. } => "natskv",
            #[cfg(feature = "bench-etcd")]
            Target::Etcd { .. } => "etcd",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub target: String,
    pub clients: usize,
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub latency_us: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// `cas`: conditional writes refused because another client wrote the key between the
    /// read and the write (each was followed by another try from the state it reported).
    #[serde(skip_serializing_if = "is_zero")]
    pub conflicts: u64,
    /// CPU seconds (user + system) of `--cpu-pids` during the measured run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    /// The same per 10,000 successful operations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_seconds_per_10k_ops: Option<f64>,
    /// `--watchers N`: the fan-out figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<watch_bench::WatchSummary>,
    /// `--leases N`: the puts without leases, and the keepalives' figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leases: Option<lease_bench::LeaseSummary>,
    /// `--lock-handoff`: each step's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<lock_bench::LockSummary>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    Delete,
    /// Read a counter, write it + 1 if its revision has not moved; on a conflict read again.
    Cas,
    /// Concord's `P.kv.incr` of a counter by 1.
    Incr,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Put, Op::Get, Op::Delete, Op::Cas, Op::Incr];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Delete => "delete",
            Op::Cas => "cas",
            Op::Incr => "incr",
        }
    }

    /// `cas` and `incr` work on counters, keys of their own (`bench:ctr:N`), so a put run
    /// before them (random letters under `bench:N`) leaves no value that is not a number.
    fn is_counter(self) -> bool {
        matches!(self, Op::Cas | Op::Incr)
    }
}

/// Retries of one `cas` op before it is counted as the failure `cas_gave_up`: bounds a
/// client's loop on a key it never wins (64 clients on 10 keys need a handful).
pub(crate) const MAX_CAS_ATTEMPTS: u32 = 1000;

/// The key a target uses for key number `key` of `op`.
pub(crate) fn key_name(op: Op, key: u64) -> String {
    if op.is_counter() {
        format!("bench:ctr:{key}")
    } else {
        format!("bench:{key}")
    }
}

/// The weight of each op, in the order of [`Op::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix([u32; 5]);

impl Mix {
    pub fn weight(&self, op: Op) -> u32 {
        self.0[op as usize]
    }

    fn total(&self) -> u32 {
        self.0.iter().sum()
    }

    /// Whether the mix has any of `op`.
    pub fn has(&self, op: Op) -> bool {
        self.weight(op) > 0
    }
}

/// A served operation, or the short code of the failure (`busy`, `nats_TimedOut`,
/// `etcd_unavailable`, `natskv_ack_timed_out`, ...).
pub type OpResult = Result<(), String>;

/// One client's connection to the system under test: all the closed loop needs.
trait Driver: Send + 'static {
    type Request: Send;
    /// Builds the request for `op` on key number `key` (not timed).
    fn prepare(&self, op: Op, key: u64) -> Self::Request;
    /// Sends it and waits for the answer (timed). A `cas` runs its whole loop here: reads
    /// and conditional writes until one applies.
    fn execute(&mut self, op: Op, req: Self::Request) -> impl Future<Output = OpResult> + Send;
    /// Conflicts this client met so far (`cas`).
    fn conflicts(&self) -> u64 {
        0
    }
}

/// `DeadlineExceeded` → `deadline_exceeded`: error kinds as short codes.
fn snake_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for (i, ch) in s.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// The op of `mix` for a draw `pick` in `0..mix.total()`.
fn pick_op(mix: Mix, pick: u32) -> Op {
    let mut below = 0;
    for op in Op::ALL {
        below += mix.weight(op);
        if pick < below {
            return op;
        }
    }
    // Only a draw past the total gets here; the last op with a weight is as good as any.
    Op::ALL
        .into_iter()
        .rev()
        .find(|op| mix.has(*op))
        .unwrap_or(Op::Put)
}

/// Parses `put=50,get=45,delete=5` (ops: put, get, delete, cas, incr).
pub fn parse_mix(s: &str) -> Result<Mix, String> {
    let mut weights = [0u32; 5];
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (name, w) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' is not op=weight"))?;
        let w: u32 = w
            .trim()
            .parse()
            .map_err(|_| format!("weight '{w}' is not a number"))?;
        let op = Op::ALL
            .into_iter()
            .find(|op| op.as_str() == name.trim())
            .ok_or_else(|| format!("unknown op '{}' (put, get, delete, cas, incr)", name.trim()))?;
        weights[op as usize] = w;
    }
    // u64: weights near u32::MAX must not overflow the sum.
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return Err("the mix has no weight".into());
    }
    if total > u64::from(u32::MAX) {
        return Err("the weights add up to more than 4294967295".into());
    }
    Ok(Mix(weights))
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A put's value: `len` random bytes from a 64-letter alphabet, new for every put, so no
/// system stores values it can compress (fjall compresses blobs and deeper tables with LZ4;
/// etcd and NATS KV store values as they are). Valid in a JSON string as it is.
pub(crate) fn fresh_value(len: usize) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(seed());
    }
    /// A random state per thread; xorshift needs it nonzero.
    fn seed() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            | 1
    }
    STATE.with(|cell| {
        let mut state = cell.get();
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let mut bits = next_rand(&mut state);
            // Ten 6-bit letters per draw.
            for _ in 0..10.min(len - out.len()) {
                out.push(ALPHABET[(bits & 63) as usize]);
                bits >>= 6;
            }
        }
        cell.set(state);
        out
    })
}

/// xorshift: cheap, good enough to spread keys; no need for a crypto RNG here.
fn next_rand(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// Appends 4 KiB and fdatasyncs, `n` times, in `dir`: the disk's durability floor.
pub fn fsync_floor(dir: &std::path::Path, n: usize) -> std::io::Result<Summary> {
    use std::io::Write;
    let path = dir.join(format!(".concord-fsync-probe-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let block = vec![0x5au8; 4096];
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t0 = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        lat.push(t0.elapsed().as_micros() as u64);
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(summarize("fsync", 1, lat, BTreeMap::new(), seconds))
}

/// p50, p90, p99, p999 and max of latencies in microseconds.
fn latencies(mut lat: Vec<u64>) -> BTreeMap<String, u64> {
    lat.sort_unstable();
    let mut latency_us = BTreeMap::new();
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
        latency_us.insert(name.to_string(), percentile(&lat, q));
    }
    latency_us.insert("max".into(), lat.last().copied().unwrap_or(0));
    latency_us
}

fn summarize(
    target: &str,
    clients: usize,
    lat: Vec<u64>,
    errors: BTreeMap<String, u64>,
    seconds: f64,
) -> Summary {
    let ops = lat.len() as u64;
    let latency_us = latencies(lat);
    Summary {
        target: target.to_string(),
        clients,
        ops,
        seconds,
        ops_per_sec: ops as f64 / seconds.max(1e-9),
        latency_us,
        errors,
        conflicts: 0,
        cpu_seconds: None,
        cpu_seconds_per_10k_ops: None,
        watch: None,
        leases: None,
        lock: None,
    }
}

/// Runs the closed loop against `target`: connects (and creates the NATS KV bucket if
/// needed), preloads the key space when asked, then `cfg.clients` clients each keep one
/// request in flight until `cfg.duration` or `cfg.ops`.
pub async fn run(target: Target, cfg: BenchConfig, progress: bool) -> anyhow::Result<Summary> {
    let name = target.name();
    check_ops(name, cfg.mix)?;
    if cfg.watchers > 0 {
        return watch_bench::run(target, cfg, progress).await;
    }
    if cfg.lock_handoff || cfg.leases > 0 {
        return coord_run::run(target, cfg, progress).await;
    }
    match target {
        Target::Concord {
            nats,
            prefix,
            token,
        } => {
            let h = concord::ConcordHandle::new(
                nats,
                &prefix,
                None,
                cfg.value_size,
                cfg.stale,
                cfg.timeout,
            )
            .with_token(token.as_deref())
            .with_ids(cfg.ids);
            drive(name, |_| h.clone(), &cfg, progress).await
        }
        Target::Echo { nats, prefix } => {
            let subject = format!("{prefix}.bench.echo.{}", uuid::Uuid::new_v4().simple());
            let responder = concord::echo_responder(nats.clone(), subject.clone()).await?;
            let h = concord::ConcordHandle::new(
                nats,
                &prefix,
                Some(&subject),
                cfg.value_size,
                cfg.stale,
                cfg.timeout,
            );
            let s = drive(name, |_| h.clone(), &cfg, progress).await;
            responder.abort();
            s
        }
        Target::NatsKv {
            nats,
            bucket,
            replicas,
        } => {
            let h = natskv::open(
                nats,
                &bucket,
                replicas,
                cfg.value_size,
                cfg.timeout,
                progress,
            )
            .await?;
            drive(name, |_| h.clone(), &cfg, progress).await
        }
        #[cfg(feature = "bench-etcd")]
        Target::Etcd { endpoints, conns } => {
            let e = etcd::Etcd::connect(
                &endpoints,
                conns.min(cfg.clients),
                cfg.value_size,
                cfg.stale,
                cfg.timeout,
            )
            .await?;
            if progress {
                eprintln!(
                    "etcd: {} client(s) over {} channel(s) to {endpoints:?}",
                    cfg.clients,
                    e.connections()
                );
            }
            drive(name, |c| e.handle(c), &cfg, progress).await
        }
    }
}

/// Refuses a mix with an op that `target` has no request for.
fn check_ops(target: &str, mix: Mix) -> anyhow::Result<()> {
    let counters = mix.has(Op::Cas) || mix.has(Op::Incr);
    match target {
        "concord" => Ok(()),
        "etcd" if mix.has(Op::Incr) => anyhow::bail!(
            "--mix incr: etcd has no increment; its counter is the compare-and-swap loop (--mix cas=100)"
        ),
        "etcd" => Ok(()),
        _ if counters => {
            anyhow::bail!("--mix cas/incr: only the concord and etcd targets have counters")
        }
        _ => Ok(()),
    }
}

/// Puts every key of the key space once, `cfg.clients` at a time; returns the failures.
async fn preload<D: Driver>(mut handle: impl FnMut(usize) -> D, cfg: &BenchConfig) -> u64 {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..cfg.clients {
        let (mut h, next, keys) = (handle(c), next.clone(), cfg.keys);
        tasks.push(tokio::spawn(async move {
            let mut failed = 0u64;
            loop {
                let key = next.fetch_add(1, Ordering::Relaxed);
                if key >= keys {
                    break failed;
                }
                let req = h.prepare(Op::Put, key);
                if h.execute(Op::Put, req).await.is_err() {
                    failed += 1;
                }
            }
        }));
    }
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap_or(0))
        .sum()
}

/// The closed loop, the same for every target.
async fn drive<D: Driver>(
    name: &str,
    mut handle: impl FnMut(usize) -> D,
    cfg: &BenchConfig,
    progress: bool,
) -> anyhow::Result<Summary> {
    if cfg.preload {
        let t0 = Instant::now();
        let failed = preload(&mut handle, cfg).await;
        if progress || failed > 0 {
            eprintln!(
                "preloaded {} keys in {:.1}s ({failed} failed)",
                cfg.keys,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let cpu_before = if cfg.cpu_pids.is_empty() {
        None
    } else {
        Some(cpu::ticks(&cfg.cpu_pids).map_err(|e| anyhow::anyhow!("--cpu-pids: {e}"))?)
    };
    let done = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..cfg.clients {
        let (mut h, cfg) = (handle(c), cfg.clone());
        let (done, issued, completed) = (done.clone(), issued.clone(), completed.clone());
        tasks.push(tokio::spawn(async move {
            client_loop(c, &mut h, &cfg, &done, &issued, &completed).await
        }));
    }
    let ticker = {
        let (done, completed) = (done.clone(), completed.clone());
        tokio::spawn(async move {
            let mut last = 0;
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = completed.load(Ordering::Relaxed);
                if progress {
                    eprintln!(
                        "  {:>6.1}s  {:>8} ops/s  ({} total)",
                        start.elapsed().as_secs_f64(),
                        now - last,
                        now
                    );
                }
                last = now;
            }
        })
    };
    let deadline = tokio::time::sleep(cfg.duration);
    tokio::pin!(deadline);
    let mut handles = futures::future::join_all(tasks);
    let results = tokio::select! {
        r = &mut handles => r,
        _ = &mut deadline => {
            done.store(true, Ordering::Relaxed);
            handles.await
        }
    };
    done.store(true, Ordering::Relaxed);
    ticker.abort();
    let seconds = start.elapsed().as_secs_f64();
    let cpu_ticks = match cpu_before {
        Some(before) => Some(
            cpu::ticks(&cfg.cpu_pids)
                .map_err(|e| anyhow::anyhow!("--cpu-pids after the run: {e}"))?
                .saturating_sub(before),
        ),
        None => None,
    };
    let mut lat = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut conflicts = 0;
    for (l, e, c) in results.into_iter().flatten() {
        lat.extend(l);
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
        conflicts += c;
    }
    let mut s = summarize(name, cfg.clients, lat, errors, seconds);
    s.conflicts = conflicts;
    if let Some(t) = cpu_ticks {
        let secs = cpu::ticks_to_seconds(t);
        s.cpu_seconds = Some(secs);
        s.cpu_seconds_per_10k_ops = (s.ops > 0).then(|| secs * 10_000.0 / s.ops as f64);
    }
    Ok(s)
}

/// One closed-loop client: one request in flight, until `done` or `cfg.ops` requests were
/// issued over all clients. Returns its latencies (us), its errors by code and its conflicts.
async fn client_loop<D: Driver>(
    c: usize,
    h: &mut D,
    cfg: &BenchConfig,
    done: &AtomicBool,
    issued: &AtomicU64,
    completed: &AtomicU64,
) -> (Vec<u64>, BTreeMap<String, u64>, u64) {
    let mut lat = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((c as u64 + 1) * 0x1000_0001);
    // parse_mix refuses an empty mix; max(1) keeps a hand-built one from dividing by 0.
    let total = cfg.mix.total().max(1);
    loop {
        if done.load(Ordering::Relaxed) {
            break;
        }
        if let Some(max) = cfg.ops {
            if issued.fetch_add(1, Ordering::Relaxed) >= max {
                break;
            }
        }
        let key = next_rand(&mut rng) % cfg.keys.max(1);
        let op = pick_op(cfg.mix, (next_rand(&mut rng) % total as u64) as u32);
        let req = h.prepare(op, key);
        let t0 = Instant::now();
        match h.execute(op, req).await {
            Ok(()) => lat.push(t0.elapsed().as_micros() as u64),
            Err(code) => *errors.entry(code).or_default() += 1,
        }
        completed.fetch_add(1, Ordering::Relaxed);
    }
    (lat, errors, h.conflicts())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A run of `duration` with defaults, for the runners' unit tests.
    pub(crate) fn config(duration: Duration) -> BenchConfig {
        BenchConfig {
            clients: 2,
            duration,
            ops: None,
            mix: Mix([1, 0, 0, 0, 0]),
            keys: 10,
            value_size: 10,
            stale: false,
            timeout: Duration::from_secs(5),
            preload: false,
            cpu_pids: Vec::new(),
            ids: false,
            watchers: 0,
            watch_conns: Vec::new(),
            leases: 0,
            keepalive_every: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(10),
            keepalive_inflight: 16,
            lock_handoff: false,
        }
    }

    #[test]
    fn put_values_are_fresh_and_need_no_json_escaping() {
        for len in [0, 1, 9, 10, 11, 100, 65_536] {
            let v = fresh_value(len);
            assert_eq!(v.len(), len);
            assert!(v
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'));
        }
        assert_ne!(fresh_value(100), fresh_value(100));
        // Random letters: LZ4-style matching finds nothing to take out of a 4 KiB value.
        let v = fresh_value(4096);
        let distinct: std::collections::HashSet<&[u8]> = v.windows(8).collect();
        assert!(distinct.len() > 4000, "repeats in a fresh value");
    }

    #[test]
    fn mix_parses_and_rejects() {
        assert_eq!(
            parse_mix("put=50,get=45,delete=5"),
            Ok(Mix([50, 45, 5, 0, 0]))
        );
        assert_eq!(parse_mix("get=1"), Ok(Mix([0, 1, 0, 0, 0])));
        assert_eq!(parse_mix("cas=100"), Ok(Mix([0, 0, 0, 100, 0])));
        assert_eq!(parse_mix("incr=3,get=1"), Ok(Mix([0, 1, 0, 0, 3])));
        assert!(parse_mix("put=x").is_err());
        assert!(parse_mix("scan=1").is_err());
        assert!(parse_mix("put=0").is_err());
        assert!(parse_mix("put=4294967295,get=1").is_err());
    }

    #[test]
    fn counters_only_where_the_target_has_them() {
        let cas = parse_mix("cas=1").unwrap();
        let incr = parse_mix("incr=1").unwrap();
        let put = parse_mix("put=1").unwrap();
        assert!(check_ops("concord", cas).is_ok());
        assert!(check_ops("concord", incr).is_ok());
        assert!(check_ops("etcd", cas).is_ok());
        let e = check_ops("etcd", incr).unwrap_err().to_string();
        assert!(e.contains("cas=100"), "{e}");
        for t in ["echo", "natskv"] {
            assert!(check_ops(t, cas).is_err());
            assert!(check_ops(t, incr).is_err());
            assert!(check_ops(t, put).is_ok());
        }
    }

    #[test]
    fn counters_have_keys_of_their_own() {
        assert_eq!(key_name(Op::Put, 3), "bench:3");
        assert_eq!(key_name(Op::Get, 3), "bench:3");
        assert_eq!(key_name(Op::Cas, 3), "bench:ctr:3");
        assert_eq!(key_name(Op::Incr, 3), "bench:ctr:3");
    }

    #[test]
    fn codes_in_snake_case() {
        assert_eq!(snake_case("DeadlineExceeded"), "deadline_exceeded");
        assert_eq!(snake_case("Unavailable"), "unavailable");
        assert_eq!(snake_case("AckTimedOut"), "ack_timed_out");
        assert_eq!(snake_case(""), "");
    }

    #[test]
    fn mix_picks_ops_by_weight() {
        let mix = Mix([50, 45, 5, 0, 0]);
        assert_eq!(pick_op(mix, 0), Op::Put);
        assert_eq!(pick_op(mix, 49), Op::Put);
        assert_eq!(pick_op(mix, 50), Op::Get);
        assert_eq!(pick_op(mix, 94), Op::Get);
        assert_eq!(pick_op(mix, 95), Op::Delete);
        assert_eq!(pick_op(Mix([0, 1, 0, 0, 0]), 0), Op::Get);
        assert_eq!(pick_op(Mix([0, 0, 0, 0, 1]), 0), Op::Incr);
        // Past the total: the last op with a weight.
        assert_eq!(pick_op(Mix([0, 0, 0, 2, 0]), 7), Op::Cas);
        let counts = (0..100).fold([0; 5], |mut c, p| {
            c[pick_op(Mix([10, 60, 0, 20, 10]), p) as usize] += 1;
            c
        });
        assert_eq!(counts, [10, 60, 0, 20, 10]);
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 51);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
