//! Observability of a node: typed events, emitted where they happen, feed the Prometheus
//! [`metrics`] and, with `telemetry.enabled`, are published as JSON on `P.telemetry.<path>`.
//!
//! ```text
//! api::server          request done ──┐                 ┌─▶ metrics (atomic adds)
//! store                apply, snapshot ┤                 │
//! raft::network        rpc done ───────┼─▶ Observer ─────┤
//! raft_watch, health   role, status ───┘                 └─▶ bounded queue ─▶ publish task ─▶ NATS
//! ```
//!
//! Never block or fail the caller: the hot path does atomic adds and a `try_send` of a small
//! value (a full queue drops the event and counts it); serializing and publishing happen in
//! the [`publish`] task. [`http`] serves `/metrics`, `/healthz` and `/readyz`.

pub mod event;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod publish;
pub mod raft_watch;
pub mod sample;
pub mod watch;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use crate::config::TelemetryConfig;
use crate::error::ErrorKind;
pub use event::Event;
pub use metrics::{Metrics, ReqOp, RpcFailure, SnapshotKind};
use sample::{Sampler, Sampling};

/// Events waiting to be published; past this the newest are dropped (and counted).
const QUEUE: usize = 16 * 1024;

/// An event with the time it happened.
pub struct Stamped {
    pub event: Event,
    pub time: SystemTime,
}

/// A node's two NATS connections: requests, Raft RPCs and small replies on one, client
/// replies over 4 KiB on the other, so Raft traffic never queues behind a large scan page or
/// backup chunk (issue #20, item 7), while a put's whole path stays on one connection (a
/// separate connection for Raft cost 5 % of puts/s at 64 clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsLink {
    Client = 0,
    Bulk = 1,
}

/// What emits a node's telemetry; one per node, shared by `Arc`.
pub struct Observer {
    pub node: u64,
    pub metrics: Metrics,
    pub watch: watch::WatchMetrics,
    pub lease: lease::LeaseMetrics,
    /// `None` with telemetry off: no event is made at all.
    queue: Option<mpsc::Sender<Stamped>>,
    api: Sampler,
    apply: Sampler,
    include_keys: bool,
    /// Per [`NatsLink`]: whether that connection is down now.
    nats_down: [AtomicBool; 2],
    /// Snapshots this node has built, for the admin snapshot to wait on.
    snapshots_built: tokio::sync::watch::Sender<u64>,
}

impl Observer {
    /// The observer of node `node` and, with telemetry on, the receiving end of its queue
    /// for [`publish::run`]. The sampling specs were checked by `Config::validate`; an
    /// invalid one here counts as `off`.
    pub fn new(
        node: u64,
        cfg: &TelemetryConfig,
    ) -> (Arc<Observer>, Option<mpsc::Receiver<Stamped>>) {
        let (queue, rx) = if cfg.enabled {
            let (tx, rx) = mpsc::channel(QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let sampler = |spec: &str| Sampler::new(Sampling::parse(spec).unwrap_or(Sampling::Off));
        let observer = Observer {
            node,
            metrics: Metrics::register(),
            watch: watch::WatchMetrics::register(),
            lease: lease::LeaseMetrics::register(),
            queue,
            api: sampler(&cfg.api_events),
            apply: sampler(&cfg.apply_events),
            include_keys: cfg.include_keys,
            nats_down: [AtomicBool::new(false), AtomicBool::new(false)],
            snapshots_built: tokio::sync::watch::channel(0).0,
        };
        (Arc::new(observer), rx)
    }

    /// An observer that publishes nothing (metrics are no-ops without a recorder): for
    /// unit tests and tools.
    pub fn noop() -> Arc<Observer> {
        let off = TelemetryConfig {
            enabled: false,
            ..TelemetryConfig::default()
        };
        Observer::new(0, &off).0
    }

    fn emit(&self, event: Event) {
        let Some(queue) = &self.queue else {
            return;
        };
        let stamped = Stamped {
            event,
            time: SystemTime::now(),
        };
        if queue.try_send(stamped).is_err() {
            self.metrics.telemetry_dropped.increment(1);
        }
    }

    /// A client request this node answered (never one forwarded to it: the forwarding node
    /// counts that). `key` is asked for only when the event is published with keys.
    pub fn request_done(
        &self,
        op: ReqOp,
        result: Result<(), ErrorKind>,
        elapsed: Duration,
        key: impl FnOnce() -> Option<String>,
    ) {
        self.metrics.request_done(op, result, elapsed.as_secs_f64());
        let ReqOp::Kv(kv) = op else {
            return;
        };
        if self.queue.is_some() && self.api.keep() {
            self.emit(Event::Api {
                op: kv,
                duration_us: elapsed.as_micros() as u64,
                error: result.err(),
                key: if self.include_keys { key() } else { None },
            });
        }
    }

    /// Starts recording the apply events of one batch.
    pub fn apply_probe(&self) -> ApplyProbe<'_> {
        ApplyProbe {
            observer: self,
            on: self.queue.is_some() && !self.apply.is_off(),
            events: Vec::new(),
        }
    }

    /// One apply batch done: its duration and the state machine's figures after it.
    pub fn applied(&self, probe: ApplyProbe<'_>, elapsed: Duration, applied: AppliedFigures) {
        self.metrics.apply_duration.record(elapsed.as_secs_f64());
        self.metrics.revision.set(applied.revision as f64);
        self.metrics.storage_keys.set(applied.key_count as f64);
        self.metrics
            .storage_data_bytes
            .set(applied.data_bytes as f64);
        for e in probe.events {
            self.emit(e);
        }
    }

    pub fn snapshot(
        &self,
        kind: SnapshotKind,
        size_bytes: u64,
        index: Option<u64>,
        elapsed: Duration,
    ) {
        self.metrics
            .snapshot(kind, size_bytes, elapsed.as_secs_f64());
        if kind == SnapshotKind::Created {
            self.snapshots_built.send_modify(|n| *n += 1);
        }
        let duration_us = elapsed.as_micros() as u64;
        self.emit(match kind {
            SnapshotKind::Created => Event::SnapshotCreated {
                size_bytes,
                index,
                duration_us,
            },
            SnapshotKind::Installed => Event::SnapshotInstalled {
                size_bytes,
                index,
                duration_us,
            },
        });
    }

    /// Counts the snapshots this node has built.
    pub fn watch_snapshots_built(&self) -> tokio::sync::watch::Receiver<u64> {
        self.snapshots_built.subscribe()
    }

    pub fn state_changed(&self, status: &'static str, term: u64, leader: Option<u64>) {
        self.emit(Event::StateChange {
            status,
            term,
            leader,
        });
    }

    pub fn cluster_status(&self, event: Event) {
        self.emit(event);
    }

    /// One of the node's NATS connections went down (`false`) or came up (`true`); a
    /// comeback after a loss counts as a reconnect. `concord_nats_connected` is 1 only
    /// while both connections (client and bulk) are up.
    pub fn nats_connection(&self, link: NatsLink, connected: bool) {
        let down = &self.nats_down[link as usize];
        if connected {
            if down.swap(false, Ordering::Relaxed) {
                self.metrics.nats_reconnects.increment(1);
                self.emit(Event::NatsConnection { connected });
            }
        } else if !down.swap(true, Ordering::Relaxed) {
            self.emit(Event::NatsConnection { connected });
        }
        let all_up = self.nats_down.iter().all(|d| !d.load(Ordering::Relaxed));
        self.metrics
            .nats_connected
            .set(if all_up { 1.0 } else { 0.0 });
    }
}

/// The state machine's figures after an apply batch.
pub struct AppliedFigures {
    pub revision: u64,
    pub key_count: u64,
    pub data_bytes: u64,
}

/// Collects the apply events of one batch; they are emitted once the batch is committed.
pub struct ApplyProbe<'a> {
    observer: &'a Observer,
    on: bool,
    events: Vec<Event>,
}

impl ApplyProbe<'_> {
    /// Starts timing one command; `None` when its event is not sampled.
    pub fn start(&self) -> Option<Instant> {
        (self.on && self.observer.apply.keep()).then(Instant::now)
    }

    /// Whether keys go into events.
    pub fn include_keys(&self) -> bool {
        self.observer.include_keys
    }

    /// Records one applied command's event.
    pub fn record(
        &mut self,
        started: Instant,
        operation: &'static str,
        index: u64,
        key: Option<String>,
        tags: ApplyTags,
    ) {
        self.events.push(Event::Apply {
            operation,
            index,
            duration_us: started.elapsed().as_micros() as u64,
            key,
            request_id: tags.request_id,
            condition: tags.condition,
        });
    }
}

/// What an applied command's event says of its request id and its condition (see
/// [`Event::Apply`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyTags {
    pub request_id: Option<&'static str>,
    pub condition: Option<&'static str>,
}
