//! The Prometheus metrics of a node: every name in one place, described and registered at
//! start (so a dashboard shows zeros, not gaps), kept as handles so the hot path pays an
//! atomic add, not a registry lookup.
//!
//! The `metrics` recorder is process-global by design: [`install`] sets it once, before any
//! handle is made. Without it (unit tests, client commands) every handle is a no-op.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::error::ErrorKind;
use crate::subjects::{AdminOp, KvOp, RaftRpc};

pub const BUILD_INFO: &str = "concord_build_info";
pub const REQUESTS: &str = "concord_requests_total";
pub const REQUEST_DURATION: &str = "concord_request_duration_seconds";
pub const AUTH_FAILURES: &str = "concord_auth_failures_total";
/// Writes refused as `conflict`, by operation and `reason` (counted where answered).
pub const CONFLICTS: &str = "concord_conflicts_total";
pub const RAFT_TERM: &str = "concord_raft_term";
pub const RAFT_STATE: &str = "concord_raft_state";
pub const RAFT_LEADER_ID: &str = "concord_raft_leader_id";
pub const RAFT_COMMIT_INDEX: &str = "concord_raft_commit_index";
pub const RAFT_APPLIED_INDEX: &str = "concord_raft_applied_index";
pub const RAFT_LAST_LOG_INDEX: &str = "concord_raft_last_log_index";
pub const RAFT_LEADER_CHANGES: &str = "concord_raft_leader_changes_total";
pub const RAFT_VOTERS: &str = "concord_raft_voters";
pub const RAFT_LEARNERS: &str = "concord_raft_learners";
pub const RAFT_REPLICATION_LAG: &str = "concord_raft_replication_lag";
pub const RAFT_RPC_DURATION: &str = "concord_raft_rpc_duration_seconds";
pub const RAFT_RPC_ERRORS: &str = "concord_raft_rpc_errors_total";
/// Counted in `signing::Rejections::record`.
pub const RAFT_RPC_REJECTED: &str = "concord_raft_rpc_rejected_total";
pub const RAFT_COMMIT_NOTICES_SKIPPED: &str = "concord_raft_commit_notices_skipped_total";
pub const RAFT_EARLY_APPENDS: &str = "concord_raft_early_appends_total";
pub const RAFT_APPENDS_ANSWERED_EARLY: &str = "concord_raft_appends_answered_early_total";
pub const SNAPSHOTS: &str = "concord_snapshots_total";
pub const SNAPSHOT_SIZE: &str = "concord_snapshot_size_bytes";
pub const SNAPSHOT_DURATION: &str = "concord_snapshot_duration_seconds";
pub const APPLY_DURATION: &str = "concord_apply_duration_seconds";
pub const STORAGE_KEYS: &str = "concord_storage_keys";
pub const STORAGE_BYTES: &str = "concord_storage_bytes";
pub const STORAGE_DATA_BYTES: &str = "concord_storage_data_bytes";
pub const STORAGE_MAX_BYTES: &str = "concord_storage_max_bytes";
pub const STORAGE_FSYNC: &str = "concord_storage_fsync";
pub const REVISION: &str = "concord_revision";
/// This node's reading of cluster time, in seconds (`store::clock`).
pub const CLUSTER_TIME: &str = "concord_cluster_time_seconds";
/// The log format the cluster writes, as applied on this node (1 until the format switch).
pub const LOG_FORMAT: &str = "concord_log_format";
/// The idempotency table (exactly-once writes), as applied on this node.
pub const IDEMPOTENCY_ENTRIES: &str = "concord_idempotency_entries";
pub const IDEMPOTENCY_WINDOW: &str = "concord_idempotency_window_seconds";
pub const IDEMPOTENCY_OLDEST_LEFT: &str = "concord_idempotency_oldest_left_seconds";
pub const IDEMPOTENCY_REPLAYS: &str = "concord_idempotency_replays_total";
pub const IDEMPOTENCY_CONFLICTS: &str = "concord_idempotency_conflicts_total";
pub const NATS_CONNECTED: &str = "concord_nats_connected";
pub const NATS_RECONNECTS: &str = "concord_nats_reconnects_total";
pub const TELEMETRY_EVENTS: &str = "concord_telemetry_events_total";

/// Histogram buckets (seconds) of every `_seconds` metric: 100 µs to 10 s.
pub const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The handle of the recorder [`install`] set.
static INSTALLED: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls get the same handle)
/// and returns the handle that renders it. Call before any [`Metrics`] is made.
pub fn install() -> Result<PrometheusHandle, String> {
    if let Some(h) = INSTALLED.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|_| "another metrics recorder is installed in this process".to_string())?;
    Ok(INSTALLED.get_or_init(|| handle).clone())
}

/// Drains histogram samples into their buckets every few seconds. Rendering does it too,
/// but without a scraper the samples would pile up in memory.
pub async fn upkeep(handle: PrometheusHandle, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// A client request as the metrics count it (`op` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqOp {
    Kv(KvOp),
    Status,
    Members,
    TokenCreate,
    TokenRevoke,
    TokenList,
}

impl ReqOp {
    pub const ALL: [ReqOp; 19] = [
        ReqOp::Kv(KvOp::Put),
        ReqOp::Kv(KvOp::Get),
        ReqOp::Kv(KvOp::Delete),
        ReqOp::Kv(KvOp::Scan),
        ReqOp::Status,
        ReqOp::Members,
        ReqOp::TokenCreate,
        ReqOp::TokenRevoke,
        ReqOp::TokenList,
        ReqOp::Kv(KvOp::Incr),
        ReqOp::Kv(KvOp::Txn),
        ReqOp::Kv(KvOp::Touch),
        ReqOp::Kv(KvOp::LeaseGrant),
        ReqOp::Kv(KvOp::LeaseKeepalive),
        ReqOp::Kv(KvOp::LeaseRevoke),
        ReqOp::Kv(KvOp::LeaseGet),
        ReqOp::Kv(KvOp::LeaseList),
        ReqOp::Kv(KvOp::LockAcquire),
        ReqOp::Kv(KvOp::LockRelease),
    ];

    /// The counted operation of an admin request; `None` for the ones outside the contract's
    /// `op` set (the admin snapshot and membership changes).
    pub fn of_admin(op: AdminOp) -> Option<ReqOp> {
        match op {
            AdminOp::Status => Some(ReqOp::Status),
            AdminOp::Members => Some(ReqOp::Members),
            AdminOp::TokenCreate => Some(ReqOp::TokenCreate),
            AdminOp::TokenRevoke => Some(ReqOp::TokenRevoke),
            AdminOp::TokenList => Some(ReqOp::TokenList),
            AdminOp::Snapshot
            | AdminOp::Backup
            | AdminOp::BackupChunk
            | AdminOp::MemberAdd
            | AdminOp::MemberPromote
            | AdminOp::MemberRemove
            | AdminOp::MemberRemoved
            | AdminOp::Compact => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ReqOp::Kv(op) => op.as_str(),
            ReqOp::Status => "status",
            ReqOp::Members => "members",
            ReqOp::TokenCreate => "token_create",
            ReqOp::TokenRevoke => "token_revoke",
            ReqOp::TokenList => "token_list",
        }
    }

    fn index(self) -> usize {
        match self {
            ReqOp::Kv(KvOp::Put) => 0,
            ReqOp::Kv(KvOp::Get) => 1,
            ReqOp::Kv(KvOp::Delete) => 2,
            ReqOp::Kv(KvOp::Scan) => 3,
            ReqOp::Status => 4,
            ReqOp::Members => 5,
            ReqOp::TokenCreate => 6,
            ReqOp::TokenRevoke => 7,
            ReqOp::TokenList => 8,
            ReqOp::Kv(KvOp::Incr) => 9,
            ReqOp::Kv(KvOp::Txn) => 10,
            ReqOp::Kv(KvOp::Touch) => 11,
            ReqOp::Kv(KvOp::LeaseGrant) => 12,
            ReqOp::Kv(KvOp::LeaseKeepalive) => 13,
            ReqOp::Kv(KvOp::LeaseRevoke) => 14,
            ReqOp::Kv(KvOp::LeaseGet) => 15,
            ReqOp::Kv(KvOp::LeaseList) => 16,
            ReqOp::Kv(KvOp::LockAcquire) => 17,
            ReqOp::Kv(KvOp::LockRelease) => 18,
        }
    }
}

/// Every error code, in the order of the `result` label after `ok`.
const ERROR_KINDS: [ErrorKind; ErrorKind::ALL.len()] = ErrorKind::ALL;

fn result_index(result: Result<(), ErrorKind>) -> usize {
    match result {
        Ok(()) => 0,
        // Every code is in `ALL`: the fallback is never taken.
        Err(kind) => 1 + ERROR_KINDS.iter().position(|k| *k == kind).unwrap_or(0),
    }
}

/// `concord_raft_state{state}` values.
pub const RAFT_STATES: [&str; 5] = ["leader", "follower", "candidate", "learner", "shutdown"];

/// Why a Raft RPC failed (`kind` label), after openraft's error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcFailure {
    Unreachable,
    Timeout,
    Remote,
    Network,
    PayloadTooLarge,
}

impl RpcFailure {
    const ALL: [RpcFailure; 5] = [
        RpcFailure::Unreachable,
        RpcFailure::Timeout,
        RpcFailure::Remote,
        RpcFailure::Network,
        RpcFailure::PayloadTooLarge,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RpcFailure::Unreachable => "unreachable",
            RpcFailure::Timeout => "timeout",
            RpcFailure::Remote => "remote",
            RpcFailure::Network => "network",
            RpcFailure::PayloadTooLarge => "payload_too_large",
        }
    }
}

const RPCS: [RaftRpc; 3] = [RaftRpc::Append, RaftRpc::Vote, RaftRpc::Snapshot];

fn rpc_index(rpc: RaftRpc) -> usize {
    match rpc {
        RaftRpc::Append => 0,
        RaftRpc::Vote => 1,
        RaftRpc::Snapshot => 2,
    }
}

/// Snapshot kinds (`kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    Created,
    Installed,
}

impl SnapshotKind {
    pub fn label(self) -> &'static str {
        match self {
            SnapshotKind::Created => "created",
            SnapshotKind::Installed => "installed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The metrics of one peer: replication lag and the RPCs sent to it.
pub struct PeerMetrics {
    pub lag: Gauge,
    rpc_duration: [Histogram; 3],
    rpc_errors: [[Counter; 5]; 3],
    /// Appends that only told the peer a newer commit index, not sent: the next append
    /// carries it.
    pub commit_notices_skipped: Counter,
    /// Appends sent before the leader's fsync: accepted, refused.
    early_appends: [Counter; 2],
    /// openraft appends not sent: an early append's `Success` answered them.
    pub answered_early: Counter,
}

impl PeerMetrics {
    fn register(peer: u64) -> PeerMetrics {
        let p = peer.to_string();
        PeerMetrics {
            lag: gauge!(RAFT_REPLICATION_LAG, "peer" => p.clone()),
            rpc_duration: RPCS.map(
                |rpc| histogram!(RAFT_RPC_DURATION, "rpc" => rpc.as_str(), "peer" => p.clone()),
            ),
            rpc_errors: RPCS.map(|rpc| {
                RpcFailure::ALL.map(|kind| {
                    counter!(RAFT_RPC_ERRORS, "rpc" => rpc.as_str(), "peer" => p.clone(), "kind" => kind.label())
                })
            }),
            commit_notices_skipped: counter!(RAFT_COMMIT_NOTICES_SKIPPED, "peer" => p.clone()),
            early_appends: ["accepted", "refused"]
                .map(|r| counter!(RAFT_EARLY_APPENDS, "peer" => p.clone(), "result" => r)),
            answered_early: counter!(RAFT_APPENDS_ANSWERED_EARLY, "peer" => p.clone()),
        }
    }

    pub fn early_append_done(&self, accepted: bool) {
        self.early_appends[usize::from(!accepted)].increment(1);
    }

    pub fn rpc_done(&self, rpc: RaftRpc, seconds: f64, failure: Option<RpcFailure>) {
        let i = rpc_index(rpc);
        self.rpc_duration[i].record(seconds);
        if let Some(f) = failure {
            self.rpc_errors[i][f as usize].increment(1);
        }
    }
}

/// The writes that can answer `conflict`, and the reasons counted (DESIGN.md's; any other
/// counts as `other`, so the label stays bounded).
const CONFLICT_OPS: [KvOp; 6] = [
    KvOp::Put,
    KvOp::Delete,
    KvOp::Incr,
    KvOp::Txn,
    KvOp::LeaseGrant,
    KvOp::LockAcquire,
];
const CONFLICT_REASONS: [&str; 9] = [
    "revision",
    "request_id",
    "bound",
    "not_integer",
    "fence",
    "lock_held",
    "lock_wait",
    "lease_exists",
    "other",
];

/// Handles of every series, made once per node.
pub struct Metrics {
    requests: [[Counter; ERROR_KINDS.len() + 1]; ReqOp::ALL.len()],
    request_duration: [Histogram; ReqOp::ALL.len()],
    auth_failures: [Counter; ReqOp::ALL.len()],
    conflicts: [[Counter; CONFLICT_REASONS.len()]; CONFLICT_OPS.len()],
    pub raft_term: Gauge,
    pub raft_state: [Gauge; 5],
    pub raft_leader_id: Gauge,
    pub raft_commit_index: Gauge,
    pub raft_applied_index: Gauge,
    pub raft_last_log_index: Gauge,
    pub raft_leader_changes: Counter,
    pub raft_voters: Gauge,
    pub raft_learners: Gauge,
    snapshots: [Counter; 2],
    snapshot_size: [Gauge; 2],
    snapshot_duration: [Histogram; 2],
    pub apply_duration: Histogram,
    pub storage_keys: Gauge,
    pub storage_bytes: Gauge,
    pub storage_data_bytes: Gauge,
    pub storage_max_bytes: Gauge,
    pub revision: Gauge,
    pub cluster_time: Gauge,
    pub log_format: Gauge,
    pub idempotency_entries: Gauge,
    pub idempotency_window: Gauge,
    pub idempotency_oldest_left: Gauge,
    pub idempotency_replays: Counter,
    pub idempotency_conflicts: Counter,
    pub nats_connected: Gauge,
    pub nats_reconnects: Counter,
    pub telemetry_published: Counter,
    pub telemetry_dropped: Counter,
    /// std `Mutex`: held only to look up or add a peer.
    peers: Mutex<BTreeMap<u64, Arc<PeerMetrics>>>,
}

impl Metrics {
    /// Describes and registers every series (with zero values).
    pub fn register() -> Metrics {
        describe();
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        for reason in ["unsigned", "forged"] {
            for direction in ["request", "reply"] {
                let _ = counter!(RAFT_RPC_REJECTED, "reason" => reason, "direction" => direction);
            }
        }
        let ops = ReqOp::ALL;
        Metrics {
            requests: ops.map(|op| {
                std::array::from_fn(|i| {
                    let result = match i {
                        0 => "ok",
                        _ => ERROR_KINDS[i - 1].as_str(),
                    };
                    counter!(REQUESTS, "op" => op.label(), "result" => result)
                })
            }),
            request_duration: ops.map(|op| histogram!(REQUEST_DURATION, "op" => op.label())),
            auth_failures: ops.map(|op| counter!(AUTH_FAILURES, "op" => op.label())),
            conflicts: CONFLICT_OPS.map(|op| {
                CONFLICT_REASONS
                    .map(|reason| counter!(CONFLICTS, "op" => op.as_str(), "reason" => reason))
            }),
            raft_term: gauge!(RAFT_TERM),
            raft_state: RAFT_STATES.map(|s| gauge!(RAFT_STATE, "state" => s)),
            raft_leader_id: gauge!(RAFT_LEADER_ID),
            raft_commit_index: gauge!(RAFT_COMMIT_INDEX),
            raft_applied_index: gauge!(RAFT_APPLIED_INDEX),
            raft_last_log_index: gauge!(RAFT_LAST_LOG_INDEX),
            raft_leader_changes: counter!(RAFT_LEADER_CHANGES),
            raft_voters: gauge!(RAFT_VOTERS),
            raft_learners: gauge!(RAFT_LEARNERS),
            snapshots: [SnapshotKind::Created, SnapshotKind::Installed]
                .map(|k| counter!(SNAPSHOTS, "kind" => k.label())),
            snapshot_size: [SnapshotKind::Created, SnapshotKind::Installed]
                .map(|k| gauge!(SNAPSHOT_SIZE, "kind" => k.label())),
            snapshot_duration: [SnapshotKind::Created, SnapshotKind::Installed]
                .map(|k| histogram!(SNAPSHOT_DURATION, "kind" => k.label())),
            apply_duration: histogram!(APPLY_DURATION),
            storage_keys: gauge!(STORAGE_KEYS),
            storage_bytes: gauge!(STORAGE_BYTES),
            storage_data_bytes: gauge!(STORAGE_DATA_BYTES),
            storage_max_bytes: gauge!(STORAGE_MAX_BYTES),
            revision: gauge!(REVISION),
            cluster_time: gauge!(CLUSTER_TIME),
            log_format: gauge!(LOG_FORMAT),
            idempotency_entries: gauge!(IDEMPOTENCY_ENTRIES),
            idempotency_window: gauge!(IDEMPOTENCY_WINDOW),
            idempotency_oldest_left: gauge!(IDEMPOTENCY_OLDEST_LEFT),
            idempotency_replays: counter!(IDEMPOTENCY_REPLAYS),
            idempotency_conflicts: counter!(IDEMPOTENCY_CONFLICTS),
            nats_connected: gauge!(NATS_CONNECTED),
            nats_reconnects: counter!(NATS_RECONNECTS),
            telemetry_published: counter!(TELEMETRY_EVENTS, "result" => "published"),
            telemetry_dropped: counter!(TELEMETRY_EVENTS, "result" => "dropped"),
            peers: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn request_done(&self, op: ReqOp, result: Result<(), ErrorKind>, seconds: f64) {
        let i = op.index();
        self.requests[i][result_index(result)].increment(1);
        self.request_duration[i].record(seconds);
        if result == Err(ErrorKind::Unauthorized) {
            self.auth_failures[i].increment(1);
        }
    }

    /// A write answered `conflict` for `reason`.
    pub fn conflict(&self, op: KvOp, reason: &str) {
        let Some(o) = CONFLICT_OPS.iter().position(|x| *x == op) else {
            return;
        };
        let r = CONFLICT_REASONS
            .iter()
            .position(|x| *x == reason)
            .unwrap_or(CONFLICT_REASONS.len() - 1);
        self.conflicts[o][r].increment(1);
    }

    pub fn snapshot(&self, kind: SnapshotKind, size_bytes: u64, seconds: f64) {
        let i = kind.index();
        self.snapshots[i].increment(1);
        self.snapshot_size[i].set(size_bytes as f64);
        self.snapshot_duration[i].record(seconds);
    }

    /// The metrics of `peer`, registered on first use.
    pub fn peer(&self, peer: u64) -> Arc<PeerMetrics> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .entry(peer)
            .or_insert_with(|| Arc::new(PeerMetrics::register(peer)))
            .clone()
    }

    /// Peers registered so far.
    pub fn peers(&self) -> Vec<(u64, Arc<PeerMetrics>)> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.iter().map(|(id, m)| (*id, m.clone())).collect()
    }
}

/// `# HELP` lines: what each metric means.
fn describe() {
    describe_requests_and_raft();
    describe_snapshots_storage_and_nats();
}

fn describe_requests_and_raft() {
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the build.");
    describe_counter!(
        REQUESTS,
        "Client requests answered by this node, by operation and result (ok or the error code). \
         A request forwarded to the leader counts on the node that answered the client."
    );
    describe_histogram!(
        REQUEST_DURATION,
        "Time from a request's arrival to its reply, by operation."
    );
    describe_counter!(
        AUTH_FAILURES,
        "Client requests answered unauthorized, by operation."
    );
    describe_gauge!(RAFT_TERM, "Current Raft term.");
    describe_gauge!(
        RAFT_STATE,
        "1 for this node's Raft role (leader, follower, candidate, learner, shutdown), else 0."
    );
    describe_gauge!(
        RAFT_LEADER_ID,
        "Id of the leader this node knows; 0 when none."
    );
    describe_gauge!(RAFT_COMMIT_INDEX, "Highest log index known committed.");
    describe_gauge!(
        RAFT_APPLIED_INDEX,
        "Highest log index applied to the state machine."
    );
    describe_gauge!(RAFT_LAST_LOG_INDEX, "Highest log index in this node's log.");
    describe_counter!(
        RAFT_LEADER_CHANGES,
        "Times this node saw the leader change to a new known leader."
    );
    describe_gauge!(RAFT_VOTERS, "Voters in the membership this node knows.");
    describe_gauge!(RAFT_LEARNERS, "Learners in the membership this node knows.");
    describe_gauge!(
        RAFT_REPLICATION_LAG,
        "On the leader: log entries a peer is behind (last log index - matched index); 0 elsewhere."
    );
    describe_histogram!(
        RAFT_RPC_DURATION,
        "Round trip of Raft RPCs this node sent, by rpc (append, vote, snapshot) and peer."
    );
    describe_counter!(
        RAFT_RPC_ERRORS,
        "Failed Raft RPCs this node sent, by rpc, peer and kind (unreachable, timeout, remote, \
         network, payload_too_large)."
    );
    describe_counter!(
        RAFT_COMMIT_NOTICES_SKIPPED,
        "Appends that only told a peer a newer commit index, not sent because entries already \
         waiting for the peer carry it, by peer."
    );
    describe_counter!(
        RAFT_EARLY_APPENDS,
        "Appends sent to a peer before the leader's own fsync completed, by peer and by the \
         peer's answer (accepted, refused)."
    );
    describe_counter!(
        RAFT_APPENDS_ANSWERED_EARLY,
        "Appends not sent to a peer because it had already accepted their entries in an early \
         append, by peer."
    );
    describe_counter!(
        RAFT_RPC_REJECTED,
        "Raft RPCs, RPC replies and forwarded requests dropped as unsigned or forged \
         (cluster.secret), by reason and direction."
    );
}

fn describe_snapshots_storage_and_nats() {
    describe_gauge!(
        IDEMPOTENCY_ENTRIES,
        "Request ids the idempotency table holds (exactly-once writes)."
    );
    describe_gauge!(
        IDEMPOTENCY_WINDOW,
        "How long a request id is remembered, in cluster time (idempotency.window_ms)."
    );
    describe_gauge!(
        IDEMPOTENCY_OLDEST_LEFT,
        "Cluster time the oldest held request id has left; far below the window means the \
         table is full (idempotency.max_entries) and ids are forgotten early."
    );
    describe_counter!(
        IDEMPOTENCY_REPLAYS,
        "Retried writes answered from the idempotency table (applied once, answered again)."
    );
    describe_counter!(
        CONFLICTS,
        "Writes refused as conflict, by op and reason (revision, request_id, bound, \
         not_integer): a condition that did not hold at apply; nothing was written."
    );
    describe_counter!(
        IDEMPOTENCY_CONFLICTS,
        "Writes refused as conflict (request_id): an id reused with another command."
    );
    describe_counter!(
        SNAPSHOTS,
        "Snapshots built (created) or received (installed)."
    );
    describe_gauge!(SNAPSHOT_SIZE, "Size of the last snapshot of each kind.");
    describe_histogram!(
        SNAPSHOT_DURATION,
        "Time to build (created) or install (installed) a snapshot."
    );
    describe_histogram!(
        APPLY_DURATION,
        "Time to apply one batch of committed entries to the state machine."
    );
    describe_gauge!(STORAGE_KEYS, "Keys in the state machine.");
    describe_gauge!(STORAGE_BYTES, "Disk space of the node's fjall database.");
    describe_gauge!(
        STORAGE_DATA_BYTES,
        "Live data size: key and stored value bytes of every live key (what the quota counts)."
    );
    describe_gauge!(
        STORAGE_MAX_BYTES,
        "The storage quota, storage.max_bytes (0: no quota)."
    );
    describe_gauge!(
        STORAGE_FSYNC,
        "1 when storage.fsync is on; 0 means acknowledged writes can be lost to a power cut."
    );
    describe_gauge!(
        REVISION,
        "Revision of the last write applied to the state machine."
    );
    describe_gauge!(
        NATS_CONNECTED,
        "1 while the node's NATS connection is up, else 0."
    );
    describe_counter!(
        NATS_RECONNECTS,
        "Times the NATS connection came back after a loss."
    );
    describe_counter!(
        TELEMETRY_EVENTS,
        "Telemetry events published, or dropped because the publishing queue was full."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_result_has_its_own_slot() {
        assert_eq!(result_index(Ok(())), 0);
        let mut seen: Vec<usize> = ERROR_KINDS.iter().map(|k| result_index(Err(*k))).collect();
        seen.sort();
        assert_eq!(seen, (1..=ERROR_KINDS.len()).collect::<Vec<_>>());
        // `conflict` and `compacted` are counted as themselves, not as `internal`.
        let internal = result_index(Err(ErrorKind::Internal));
        assert_ne!(result_index(Err(ErrorKind::Conflict)), internal);
        assert_eq!(result_index(Err(ErrorKind::Compacted)), ERROR_KINDS.len());
        let labels: Vec<&str> = ReqOp::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(
            labels,
            [
                "put",
                "get",
                "delete",
                "scan",
                "status",
                "members",
                "token_create",
                "token_revoke",
                "token_list",
                "incr",
                "txn",
                "touch",
                "lease_grant",
                "lease_keepalive",
                "lease_revoke",
                "lease_get",
                "lease_list",
                "lock_acquire",
                "lock_release"
            ]
        );
        for (i, op) in ReqOp::ALL.iter().enumerate() {
            assert_eq!(op.index(), i);
        }
    }
}
