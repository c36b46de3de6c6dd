//! The `natskv` target: NATS JetStream KV through async-nats's `jetstream::kv`. Put is a
//! JetStream publish acknowledged once the stream's replicas have stored it; get is a
//! direct get (`$JS.API.DIRECT.GET`, answered by any replica of the bucket's stream, which
//! is NATS KV's read path when the stream allows direct gets — async-nats creates KV
//! buckets with `allow_direct: true`); delete writes a delete marker.
//!
//! With `--watchers N`, keys are `bench.N` instead of `bench_N` (a subject hierarchy, so a
//! watch of `bench.>` covers them), each watcher is `Store::watch("bench.>")` (an ordered
//! push consumer delivering new entries only), and every put's acknowledged sequence (the
//! entry's revision) goes to the fan-out [`Tracker`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream::StorageType};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{snake_case, Driver, Op, OpResult};
use crate::fanout::{Tracker, WatcherStats};

/// What the watchers watch: every key the puts of a watch run write.
const WATCH_FILTER: &str = "bench.>";
/// Watches created at once (each creates an ordered consumer).
const CREATE_CONCURRENCY: usize = 16;

#[derive(Clone)]
pub struct NatsKvHandle {
    store: kv::Store,
    value_size: usize,
    /// Set for a watch run: keys `bench.N`, and each put's sequence is recorded.
    tracker: Option<Arc<Tracker>>,
}

impl NatsKvHandle {
    pub(crate) fn with_tracker(mut self, tracker: Arc<Tracker>) -> NatsKvHandle {
        self.tracker = Some(tracker);
        self
    }
}

/// Opens the bucket, creating it (history 1, `replicas` copies, file storage) if missing.
/// An existing bucket is used as it is; its settings are printed so a run shows what it
/// measured.
pub async fn open(
    nats: async_nats::Client,
    bucket: &str,
    replicas: usize,
    value_size: usize,
    timeout: Duration,
    verbose: bool,
) -> anyhow::Result<NatsKvHandle> {
    let mut js = jetstream::new(nats);
    js.set_timeout(timeout);
    let store = match js.get_key_value(bucket).await {
        Ok(s) => s,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: bucket.to_string(),
                history: 1,
                num_replicas: replicas,
                storage: StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot create KV bucket '{bucket}': {e}"))?,
    };
    let cfg = &store.stream.cached_info().config;
    if verbose {
        eprintln!(
            "natskv: bucket {bucket} (stream {}): replicas {}, storage {:?}, history {}, allow_direct {}",
            cfg.name, cfg.num_replicas, cfg.storage, cfg.max_messages_per_subject, cfg.allow_direct
        );
    }
    Ok(NatsKvHandle {
        store,
        value_size,
        tracker: None,
    })
}

/// Starts `n` watchers of the bucket's `bench.>` over `conns` (watcher i on connection i
/// mod len); returns the first revision they can deliver (the stream's last sequence + 1,
/// read before the first put) and their tasks, which end when `stop` turns true.
pub(crate) async fn start_watchers(
    conns: &[async_nats::Client],
    bucket: &str,
    n: usize,
    tracker: Arc<Tracker>,
    stop: watch::Receiver<bool>,
    timeout: Duration,
) -> anyhow::Result<(u64, Vec<JoinHandle<WatcherStats>>)> {
    anyhow::ensure!(!conns.is_empty(), "no NATS connection for the watchers");
    let mut stores = Vec::new();
    for c in conns {
        let mut js = jetstream::new(c.clone());
        js.set_timeout(timeout);
        let store = js
            .get_key_value(bucket)
            .await
            .map_err(|e| anyhow::anyhow!("KV bucket '{bucket}': {e}"))?;
        stores.push(store);
    }
    let mut stream = stores[0].stream.clone();
    let last = stream
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("KV bucket '{bucket}': stream info: {e}"))?
        .state
        .last_sequence;
    tracker.set_base(last + 1);
    let watches: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            async move { store.watch(WATCH_FILTER).await }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    let mut tasks = Vec::new();
    for w in watches {
        let w = w.map_err(|e| anyhow::anyhow!("KV watch of {WATCH_FILTER}: {e}"))?;
        tasks.push(tokio::spawn(follow(w, tracker.clone(), stop.clone())));
    }
    Ok((last + 1, tasks))
}

/// Records each entry's revision as it arrives, until `stop` or the watch's first error.
async fn follow(
    mut w: kv::Watch,
    tracker: Arc<Tracker>,
    mut stop: watch::Receiver<bool>,
) -> WatcherStats {
    let mut st = WatcherStats::default();
    loop {
        tokio::select! {
            biased;
            e = w.next() => match e {
                Some(Ok(entry)) => {
                    let at = tracker.now_us();
                    st.messages += 1;
                    tracker.arrive(entry.revision, at, &mut st);
                }
                Some(Err(e)) => {
                    st.end = Some(format!("natskv_watch_{}", snake_case(&format!("{:?}", e.kind()))));
                    return st;
                }
                None => {
                    st.end = Some("natskv_watch_closed".into());
                    return st;
                }
            },
            r = stop.changed() => if r.is_err() || *stop.borrow() {
                st.end = Some("cancelled".into());
                return st;
            },
        }
    }
}

impl NatsKvHandle {
    /// A put; in a watch run its sequence is recorded as acknowledged now.
    async fn put(&self, key: String, value: Bytes) -> OpResult {
        let code = |kind: String| format!("natskv_{}", snake_case(&kind));
        match self.store.put(key, value).await {
            Ok(seq) => {
                if let Some(t) = &self.tracker {
                    t.ack(seq);
                }
                Ok(())
            }
            Err(e) => {
                // An ack error wraps the publish error that says why (timed out, ...).
                use std::error::Error;
                let why = e
                    .source()
                    .and_then(|s| s.downcast_ref::<jetstream::context::PublishError>())
                    .map(|p| format!("{:?}", p.kind()));
                match why {
                    Some(why) => Err(code(format!("{:?}{why}", e.kind()))),
                    None => Err(code(format!("{:?}", e.kind()))),
                }
            }
        }
    }
}

impl Driver for NatsKvHandle {
    /// The key, and for a put its value.
    type Request = (String, Bytes);

    /// KV keys allow only `[-/_=.a-zA-Z0-9]`, so `bench:N` becomes `bench_N` (one subject
    /// token, like the other targets' one key segment), or `bench.N` in a watch run.
    fn prepare(&self, op: Op, key: u64) -> (String, Bytes) {
        let value = match op {
            Op::Put => Bytes::from(super::fresh_value(self.value_size)),
            Op::Get | Op::Delete | Op::Cas | Op::Incr => Bytes::new(),
        };
        let sep = if self.tracker.is_some() { '.' } else { '_' };
        (format!("bench{sep}{key}"), value)
    }

    async fn execute(&mut self, op: Op, (key, value): (String, Bytes)) -> OpResult {
        let code = |kind: String| format!("natskv_{}", snake_case(&kind));
        match op {
            Op::Put => self.put(key, value).await,
            // A missing key (`None`) is a served read, as for the other targets.
            Op::Get => self
                .store
                .get(key)
                .await
                .map(drop)
                .map_err(|e| code(format!("{:?}", e.kind()))),
            Op::Delete => self
                .store
                .delete(key)
                .await
                .map_err(|e| code(format!("{:?}", e.kind()))),
            // check_ops refuses counters for this target before the run starts.
            Op::Cas | Op::Incr => Err("natskv_no_counters".into()),
        }
    }
}
