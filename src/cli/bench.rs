//! `concord bench`: the load generator (`concord-bench`) against what `--target` names.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{client_token, load_config, out, Global};
use concord::client::Client;

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
    /// Operation weights: put, get, delete, and the counters `cas` (read + write if the
    /// revision held, retry from what the refusal reported, until it applies: one op is one successful
    /// update; concord and etcd) and `incr` (`P.kv.incr` by 1; concord only). Counters live
    /// under `bench:ctr:N`; contend with e.g. `--mix cas=100 --keys 10 --clients 64`.
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
    /// `--target concord`: every put and delete carries a fresh `request_id` (a UUID v4), as
    /// writes from `concord::Client` and the CLI do; compare runs with and without it for
    /// the cost of exactly-once writes. Requests are still sent once (no retries).
    #[arg(long)]
    pub ids: bool,
    /// Watch fan-out (`concord`, `natskv`): N watchers of the prefix the puts write under
    /// are in place before the first put and follow it (Concord: `P.watch.create` through
    /// the create queue group, every message acknowledged; NATS KV: `watch("bench.>")`).
    /// The summary adds, per (put, watcher), the time from the put's acknowledgement to its
    /// event's arrival (p50, p99), per put until every watcher had it, events delivered per
    /// second (all watchers) and deliveries missing. Compare the puts' rate with a run
    /// without watchers, e.g. `--mix put=100 --clients 16 --watchers 100`.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub watchers: usize,
    /// `--watchers`: NATS connections the watchers share (watcher i on connection i mod N),
    /// besides the puts' own.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub watch_conns: usize,
    /// Lease keepalives beside puts (`concord`, `etcd`): the puts run once without leases,
    /// then N leases of --lease-ttl are granted and each renewed every --keepalive-every
    /// (spread evenly over the period) while the same puts run again; then they are
    /// revoked. The summary is the puts with leases, plus puts/s without them, the
    /// keepalives' latency, their rate achieved vs. asked, and those answered not_found (a
    /// lease lost). E.g. `--leases 10000 --keepalive-every 1s --clients 64`.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub leases: usize,
    /// `--leases`: how often each lease is renewed.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub keepalive_every: Duration,
    /// `--leases`: the leases' TTL; `--lock-handoff`: the TTL of a lock claim's lease.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// `--leases`: keepalives in flight at most (the schedule waits when they are).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub keepalive_inflight: usize,
    /// Lock hand-off (`concord`, `etcd`): --clients clients (at least 2) contend for one
    /// lock; each acquires it (waiting), writes one fenced put, releases. Reports the
    /// hand-off latency (from a release being sent to the next grant arriving, p50/p99) and
    /// hand-offs/s, e.g. `--lock-handoff --clients 2`.
    #[arg(long)]
    pub lock_handoff: bool,
}

/// `concord bench`: connects to what `--target` names (NATS only for the targets that use
/// it), runs the closed loop, prints the summary.
pub async fn run(global: &Global, args: BenchArgs) -> anyhow::Result<i32> {
    use concord_bench::Target;
    let mix = concord_bench::parse_mix(&args.mix).map_err(|e| anyhow::anyhow!("--mix: {e}"))?;
    let stale = match args.consistency.as_str() {
        "linearizable" => false,
        "stale" => true,
        other => anyhow::bail!("--consistency: '{other}' is not linearizable or stale"),
    };
    let cpu_pids = match &args.cpu_pids {
        Some(p) => {
            concord_bench::cpu::parse_pids(p).map_err(|e| anyhow::anyhow!("--cpu-pids: {e}"))?
        }
        None => Vec::new(),
    };
    let timeout = Duration::from_millis(global.timeout_ms);
    if args.target == "fsync" {
        let n = args.ops.unwrap_or(2000) as usize;
        let s = concord_bench::fsync_floor(&args.fsync_dir, n)?;
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
    let mut watch_conns = Vec::new();
    if args.watchers > 0 && matches!(args.target.as_str(), "concord" | "natskv") {
        for _ in 0..args.watch_conns.max(1) {
            watch_conns.push(nats().await?);
        }
    }
    let cfg = concord_bench::BenchConfig {
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
        ids: args.ids,
        watchers: args.watchers,
        watch_conns,
        leases: args.leases,
        keepalive_every: args.keepalive_every,
        lease_ttl: args.lease_ttl,
        keepalive_inflight: args.keepalive_inflight.max(1),
        lock_handoff: args.lock_handoff,
    };
    let s = concord_bench::run(target, cfg, !global.json).await?;
    let v = serde_json::to_value(&s)?;
    Ok(out(global, v, || summary_line(&s)))
}

/// The human-readable summary of a run.
fn summary_line(s: &concord_bench::Summary) -> String {
    let mut line = format!(
        "{} ops in {:.1}s: {:.0} ops/s | latency us p50 {} p90 {} p99 {} p99.9 {} max {} | errors {:?}",
        s.ops, s.seconds, s.ops_per_sec, s.latency_us["p50"], s.latency_us["p90"],
        s.latency_us["p99"], s.latency_us["p999"], s.latency_us["max"], s.errors
    );
    if s.conflicts > 0 {
        let per = s.conflicts as f64 / s.ops.max(1) as f64;
        line.push_str(&format!(
            " | conflicts {} ({per:.2} per update)",
            s.conflicts
        ));
    }
    if let (Some(c), Some(per)) = (s.cpu_seconds, s.cpu_seconds_per_10k_ops) {
        line.push_str(&format!(" | cpu {c:.2} s, {per:.3} s per 10k ops"));
    }
    if let Some(l) = &s.leases {
        let b = &l.puts_without_leases;
        line.push_str(&format!(
            "\nleases: {} granted in {:.1}s | puts/s {:.0} without, {:.0} with ({:.2} kept) | \
             keepalives {:.0}/s of {:.0}/s asked, us p50 {} p99 {} max {} | not_found {} \
             ({} leases lost) | late {} (max lag {:.0} ms) | errors {:?} | revoked {}",
            l.granted,
            l.grant_seconds,
            b.ops_per_sec,
            s.ops_per_sec,
            l.puts_kept,
            l.keepalives_per_sec,
            l.keepalives_asked_per_sec,
            l.keepalive_latency_us["p50"],
            l.keepalive_latency_us["p99"],
            l.keepalive_latency_us["max"],
            l.not_found,
            l.leases_lost,
            l.late,
            l.max_lag_ms,
            l.keepalive_errors,
            l.revoked
        ));
    }
    if let Some(l) = &s.lock {
        line.push_str(&format!(
            "\nlock '{}': {} clients, {} cycles, {} hand-offs ({:.0}/s, {} to the same client), \
             {} waits ended, {} overlaps | us p50/p99: acquire {}/{}, fenced put {}/{}, \
             release {}/{} (the line above: hand-off latency)",
            l.name,
            l.clients,
            l.cycles,
            l.handoffs,
            l.handoffs_per_sec,
            l.self_handoffs,
            l.waits_ended,
            l.overlaps,
            l.acquire_us["p50"],
            l.acquire_us["p99"],
            l.fenced_put_us["p50"],
            l.fenced_put_us["p99"],
            l.release_us["p50"],
            l.release_us["p99"]
        ));
    }
    if let Some(w) = &s.watch {
        line.push_str(&format!(
            "\nwatch: {} watchers {:?} | {} deliveries of {} puts, {} missing, {:.0} events/s | \
             put->watcher us p50 {} p99 {} max {} | put->all watchers us p50 {} p99 {} \
             ({} incomplete) | ends {:?}",
            w.watchers,
            w.by_node,
            w.deliveries,
            w.puts_acked,
            w.missing,
            w.delivered_per_sec,
            w.delivery_us["p50"],
            w.delivery_us["p99"],
            w.delivery_us["max"],
            w.all_watchers_us["p50"],
            w.all_watchers_us["p99"],
            w.incomplete_puts,
            w.ends
        ));
    }
    line
}
