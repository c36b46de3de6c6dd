//! The `natskv` target: NATS JetStream KV through async-nats's `jetstream::kv`. Put is a
//! JetStream publish acknowledged once the stream's replicas have stored it; get is a
//! direct get (`$JS.API.DIRECT.GET`, answered by any replica of the bucket's stream, which
//! is NATS KV's read path when the stream allows direct gets — async-nats creates KV
//! buckets with `allow_direct: true`); delete writes a delete marker.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream::StorageType};
use bytes::Bytes;

use super::{snake_case, Driver, Op, OpResult};

#[derive(Clone)]
pub struct NatsKvHandle {
    store: kv::Store,
    value_size: usize,
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
    Ok(NatsKvHandle { store, value_size })
}

impl Driver for NatsKvHandle {
    /// The key, and for a put its value.
    type Request = (String, Bytes);

    /// KV keys allow only `[-/_=.a-zA-Z0-9]`, so `bench:N` becomes `bench_N` (one subject
    /// token, like the other targets' one key segment).
    fn prepare(&self, op: Op, key: u64) -> (String, Bytes) {
        let value = match op {
            Op::Put => Bytes::from(super::fresh_value(self.value_size)),
            Op::Get | Op::Delete | Op::Cas | Op::Incr => Bytes::new(),
        };
        (format!("bench_{key}"), value)
    }

    async fn execute(&mut self, op: Op, (key, value): (String, Bytes)) -> OpResult {
        let code = |kind: String| format!("natskv_{}", snake_case(&kind));
        match op {
            Op::Put => self.store.put(key, value).await.map(drop).map_err(|e| {
                // An ack error wraps the publish error that says why (timed out, ...).
                use std::error::Error;
                let why = e
                    .source()
                    .and_then(|s| s.downcast_ref::<jetstream::context::PublishError>())
                    .map(|p| format!("{:?}", p.kind()));
                match why {
                    Some(why) => code(format!("{:?}{why}", e.kind())),
                    None => code(format!("{:?}", e.kind())),
                }
            }),
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
