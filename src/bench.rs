//! `concord bench`: a closed-loop load generator over the wire protocol. Each client sends
//! one request, waits for the reply, and sends the next; the summary gives throughput,
//! latency percentiles and errors by code.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::subjects::{KvOp, Subjects};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub clients: usize,
    pub duration: Duration,
    pub ops: Option<u64>,
    /// Weights of put, get and delete.
    pub mix: (u32, u32, u32),
    pub keys: u64,
    pub value_size: usize,
    pub stale: bool,
    pub timeout: Duration,
    /// Send to a local echo responder instead of the cluster: the NATS round-trip floor.
    pub echo: bool,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub clients: usize,
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub latency_us: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
}

/// Parses `put=50,get=45,delete=5`.
pub fn parse_mix(s: &str) -> Result<(u32, u32, u32), String> {
    let (mut p, mut g, mut d) = (0, 0, 0);
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (name, w) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' is not op=weight"))?;
        let w: u32 = w
            .trim()
            .parse()
            .map_err(|_| format!("weight '{w}' is not a number"))?;
        match name.trim() {
            "put" => p = w,
            "get" => g = w,
            "delete" => d = w,
            other => return Err(format!("unknown op '{other}' (put, get, delete)")),
        }
    }
    if p + g + d == 0 {
        return Err("the mix has no weight".into());
    }
    Ok((p, g, d))
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
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

/// Answers every request on `subject` with `{"ok":true}` at once: what a reply costs when
/// there is no work behind it.
async fn echo_responder(
    nats: async_nats::Client,
    subject: String,
) -> Option<tokio::task::JoinHandle<()>> {
    use futures::StreamExt;
    let mut sub = nats.subscribe(subject).await.ok()?;
    let _ = nats.flush().await;
    Some(tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = nats
                    .publish(reply, br#"{"ok":true}"#.as_slice().into())
                    .await;
            }
        }
    }))
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
    Ok(summarize(1, lat, BTreeMap::new(), seconds))
}

fn summarize(
    clients: usize,
    mut lat: Vec<u64>,
    errors: BTreeMap<String, u64>,
    seconds: f64,
) -> Summary {
    lat.sort_unstable();
    let mut latency_us = BTreeMap::new();
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
        latency_us.insert(name.to_string(), percentile(&lat, q));
    }
    latency_us.insert("max".into(), lat.last().copied().unwrap_or(0));
    let ops = lat.len() as u64;
    Summary {
        clients,
        ops,
        seconds,
        ops_per_sec: ops as f64 / seconds.max(1e-9),
        latency_us,
        errors,
    }
}

pub async fn run(
    nats: async_nats::Client,
    prefix: &str,
    cfg: BenchConfig,
    progress: bool,
) -> Summary {
    let subjects = Subjects::new(prefix, "-");
    let echo_subject = format!("{prefix}.bench.echo.{}", uuid::Uuid::new_v4().simple());
    let echo = if cfg.echo {
        echo_responder(nats.clone(), echo_subject.clone()).await
    } else {
        None
    };
    let value = json!("x".repeat(cfg.value_size.saturating_sub(2))).to_string();
    let done = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..cfg.clients {
        let (nats, subjects, cfg, value) =
            (nats.clone(), subjects.clone(), cfg.clone(), value.clone());
        let echo_subject = echo_subject.clone();
        let (done, issued, completed) = (done.clone(), issued.clone(), completed.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((c as u64 + 1) * 0x1000_0001);
            let total = cfg.mix.0 + cfg.mix.1 + cfg.mix.2;
            loop {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(max) = cfg.ops {
                    if issued.fetch_add(1, Ordering::Relaxed) >= max {
                        break;
                    }
                }
                let key = format!("bench:{}", next_rand(&mut rng) % cfg.keys.max(1));
                let pick = (next_rand(&mut rng) % total as u64) as u32;
                let (op, body) = if pick < cfg.mix.0 {
                    (KvOp::Put, format!(r#"{{"key":"{key}","value":{value}}}"#))
                } else if pick < cfg.mix.0 + cfg.mix.1 {
                    let c = if cfg.stale { "stale" } else { "linearizable" };
                    (
                        KvOp::Get,
                        format!(r#"{{"key":"{key}","consistency":"{c}"}}"#),
                    )
                } else {
                    (KvOp::Delete, format!(r#"{{"key":"{key}"}}"#))
                };
                let t0 = Instant::now();
                let req = async_nats::Request::new()
                    .payload(body.into_bytes().into())
                    .timeout(Some(cfg.timeout));
                let subject = if cfg.echo {
                    echo_subject.clone()
                } else {
                    subjects.kv(op)
                };
                match nats.send_request(subject, req).await {
                    Ok(reply) => {
                        let us = t0.elapsed().as_micros() as u64;
                        if reply.payload.starts_with(br#"{"ok":true"#) {
                            lat.push(us);
                        } else {
                            let v: serde_json::Value =
                                serde_json::from_slice(&reply.payload).unwrap_or_default();
                            let code = v["error"]["code"]
                                .as_str()
                                .unwrap_or("unreadable")
                                .to_string();
                            // A get of a key not yet written is a served read, not a failure.
                            if code == "not_found" {
                                lat.push(us);
                            } else {
                                *errors.entry(code).or_default() += 1;
                            }
                        }
                    }
                    Err(e) => *errors.entry(format!("nats_{:?}", e.kind())).or_default() += 1,
                }
                completed.fetch_add(1, Ordering::Relaxed);
            }
            (lat, errors)
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
    if let Some(e) = echo {
        e.abort();
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for (l, e) in results.into_iter().flatten() {
        lat.extend(l);
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    summarize(cfg.clients, lat, errors, seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_rejects() {
        assert_eq!(parse_mix("put=50,get=45,delete=5"), Ok((50, 45, 5)));
        assert_eq!(parse_mix("get=1"), Ok((0, 1, 0)));
        assert!(parse_mix("put=x").is_err());
        assert!(parse_mix("scan=1").is_err());
        assert!(parse_mix("put=0").is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 51);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
