//! Wiring a node's parts once the store and NATS are open: the RPC inbox, the log store and
//! the Raft network, Raft itself, the inbound RPC service, the request context and the
//! servers, and the background tasks (telemetry, removal watch, status loop, cluster id).
//! Every task is spawned on the node's `TaskTracker`; client intake has a tracker of its own
//! because shutdown stops it first.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::health::Probe;
use super::start::Opened;
use super::{bootstrap, log_failure, Error};
use crate::api::contact::ContactWindow;
use crate::api::{self, validate::Limits, Ctx};
use crate::config::Config;
use crate::observe::{self, Observer};
use crate::raft::inbox::Inbox;
use crate::raft::network::Network;
use crate::raft::service::{LeaderContact, RaftService};
use crate::raft::types::Raft;
use crate::signing::Rejections;
use crate::store::{LogStore, StateMachine, StateView, Store};

/// A running node: what [`super::shutdown`] takes down, in its order.
pub(super) struct Running {
    pub raft: Raft,
    pub network: Network,
    pub service: Arc<RaftService>,
    pub server: Arc<api::server::Server>,
    /// Client intake: cluster and node subjects, and every request task.
    pub intake: CancellationToken,
    pub intake_tracker: TaskTracker,
    /// Cancelled when this node learns it was removed from the cluster.
    pub removed: CancellationToken,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    pub store: Store,
    pub view: Arc<StateView>,
    pub client: async_nats::Client,
    /// Large client replies' connection (see [`Opened::bulk_client`]), drained after the
    /// client one.
    pub bulk_client: async_nats::Client,
}

/// Raft and what it talks through.
struct RaftParts {
    raft: Raft,
    network: Network,
    /// The node's inbox, on the client connection: Raft RPCs, forwarded and control requests.
    inbox: Arc<Inbox>,
    rejections: Arc<Rejections>,
}

pub(super) async fn wire(
    config: &Config,
    mut opened: Opened,
    live_cluster: bool,
) -> Result<Running, Error> {
    if let Some(rx) = opened.events.take() {
        opened.tracker.spawn(observe::publish::run(
            opened.observer.clone(),
            rx,
            opened.client.clone(),
            opened.subjects.clone(),
            opened.cancel.clone(),
        ));
    }
    let RaftParts {
        raft,
        network,
        inbox,
        rejections,
    } = start_raft(config, &opened).await?;
    let (cancel, tracker) = (opened.cancel.clone(), opened.tracker.clone());

    let (service, contact) = serve_raft(config, &opened, &raft, &rejections, live_cluster);

    let removed = CancellationToken::new();
    let ctx = request_context(
        config,
        &opened,
        &raft,
        inbox,
        rejections,
        contact.clone(),
        &removed,
    );
    // Client intake (cluster and node subjects, and every request task) stops first at
    // shutdown, while Raft and its RPCs keep running for the requests in flight.
    let intake = cancel.child_token();
    let intake_tracker = TaskTracker::new();
    tracker.spawn(api::admin::membership::watch_removal(
        ctx.clone(),
        opened.admin_token.clone(),
        (config.raft.election_timeout_max() * 3).max(Duration::from_secs(3)),
        cancel.clone(),
    ));
    spawn_format_tasks(&ctx, &opened, config);
    spawn_watches(config, &ctx, &intake, &intake_tracker);
    intake_tracker.spawn(api::expiry::run(
        ctx.clone(),
        std::time::Duration::from_millis(config.lease.check_ms),
        intake.clone(),
    ));
    let server = api::server::Server::new(
        ctx,
        config.limits.max_in_flight,
        config.limits.max_admin_in_flight,
    );
    intake_tracker.spawn(log_failure(
        "node subjects",
        server
            .clone()
            .serve_node_subjects(intake.clone(), intake_tracker.clone()),
    ));
    intake_tracker.spawn(
        server
            .clone()
            .serve_cluster_subjects(intake.clone(), intake_tracker.clone()),
    );
    spawn_watchers(config, &opened, &raft, contact);
    Ok(Running {
        raft,
        network,
        service,
        server,
        intake,
        intake_tracker,
        removed,
        cancel,
        tracker,
        store: opened.store,
        view: opened.view,
        client: opened.client,
        bulk_client: opened.bulk_client,
    })
}

/// What every request handler shares, grouped by what it is for (see [`Ctx`]).
fn request_context(
    config: &Config,
    opened: &Opened,
    raft: &Raft,
    inbox: Arc<Inbox>,
    rejections: Arc<Rejections>,
    contact: Arc<LeaderContact>,
    removed: &CancellationToken,
) -> Arc<Ctx> {
    let me = config.node.id;
    let (cancel, tracker) = (&opened.cancel, &opened.tracker);
    Arc::new(Ctx {
        cluster: api::Cluster {
            me,
            name: config.cluster.name.clone(),
            subjects: opened.subjects.clone(),
            client: opened.client.clone(),
            bulk: opened.bulk_client.clone(),
            inbox,
        },
        consensus: api::Consensus {
            raft: raft.clone(),
            proposer: api::propose::Proposer::start(
                raft.clone(),
                opened.view.clone(),
                opened.max_entry_bytes,
                config.limits.max_in_flight,
                tracker,
                cancel.clone(),
            ),
            read_index: api::read_index::ReadIndex::start(raft.clone(), tracker, cancel.clone()),
            view: opened.view.clone(),
            contact: ContactWindow::new(
                contact,
                config.raft.election_timeout_min(),
                config.raft.heartbeat_interval(),
            )
            .deposed_after(config.raft.election_timeout_max() * 2),
        },
        security: api::Security {
            auth: crate::auth::Authorizer::new(config.auth.enabled, opened.admin_token.as_deref()),
            signer: opened.signer.clone(),
            rejections,
            forwarding: api::forwarded::Forwarding::new(),
        },
        limits: api::RequestLimits {
            sizes: Limits {
                max_value_bytes: config.limits.max_value_bytes,
                max_entry_bytes: opened.max_entry_bytes,
                max_scan_limit: config.limits.max_scan_limit,
                max_txn_ops: config.limits.max_txn_ops,
                max_delete_keys: config.limits.max_delete_keys,
                max_data_bytes: config.storage.max_bytes,
            },
            default_timeout: config.limits.default_timeout(),
            max_timeout: config.limits.max_timeout(),
            max_payload: opened.max_payload,
        },
        observer: opened.observer.clone(),
        lifecycle: api::Lifecycle {
            removed: removed.clone(),
            cancel: cancel.clone(),
            tracker: tracker.clone(),
        },
        workers: api::workers::Workers::start(),
    })
}

/// The log store and the Raft network (which sends a leader's appends early, before
/// openraft asks, through the node's inbox), then Raft itself.
async fn start_raft(config: &Config, opened: &Opened) -> Result<RaftParts, Error> {
    let me = config.node.id;
    let (subjects, observer) = (&opened.subjects, &opened.observer);
    let (view, max_payload) = (&opened.view, opened.max_payload);
    let tracker = &opened.tracker;
    // One inbox for Raft RPCs, forwarded requests and control requests, on the client
    // connection; only large client replies go out on the bulk connection.
    let (inbox, rejections) = (opened.inbox.clone(), opened.rejections.clone());

    let transport = crate::raft::rpc::Transport {
        inbox: inbox.clone(),
        subjects: subjects.clone(),
        me,
        cluster_name: config.cluster.name.clone(),
        cluster_id: view.watch_cluster_id(),
        max_payload,
        observer: observer.clone(),
    };
    let early_ttl = config.raft.election_timeout_min();
    let network = Network::new(transport, early_ttl, tracker.clone());
    let log_store = LogStore::with_observer(opened.store.clone(), network.append_observer())
        .with_clock(view.clock().clone());
    let raft = crate::raft::start(
        config,
        max_payload,
        network.clone(),
        log_store,
        StateMachine::new(view.clone(), observer.clone()),
    )
    .await?;
    network.set_raft_metrics(raft.metrics());
    Ok(RaftParts {
        raft,
        network,
        inbox,
        rejections,
    })
}

/// The leader's format switch (`api::admin::format_switch`) and the clock's floor saver.
fn spawn_format_tasks(ctx: &Arc<api::Ctx>, opened: &Opened, config: &Config) {
    let (cancel, tracker) = (&opened.cancel, &opened.tracker);
    let token = opened.admin_token.clone();
    tracker.spawn(api::admin::format_switch::run(
        ctx.clone(),
        token,
        cancel.clone(),
    ));
    tracker.spawn(api::admin::cluster_settings::run(
        ctx.clone(),
        config.idempotency.settings(),
        cancel.clone(),
    ));
    tracker.spawn(save_clock_floor(opened.view.clone(), cancel.clone()));
}

/// Watches and the change log's retention. They stop with the client intake: every watch
/// then ends with `node_stopping` while the NATS connection still carries its end message.
fn spawn_watches(
    config: &Config,
    ctx: &Arc<api::Ctx>,
    intake: &CancellationToken,
    tracker: &TaskTracker,
) {
    let watches = crate::watch::Watches::new(
        ctx.clone(),
        config.watch.clone(),
        config.raft.election_timeout_max() * 3,
        intake.clone(),
        tracker.clone(),
    );
    tracker.spawn(log_failure(
        "watch subjects",
        crate::watch::serve::run(watches.clone()),
    ));
    tracker.spawn(log_failure(
        "watch acknowledgements",
        crate::watch::dispatch::run_acks(watches.clone()),
    ));
    tracker.spawn(crate::watch::dispatch::run_dispatcher(watches.clone()));
    tracker.spawn(crate::watch::retention::run(
        watches,
        config.history.clone(),
    ));
}

/// How often a node saves its cluster-time reading: a restart resumes at most this much
/// behind the reading it had.
const CLOCK_FLOOR_EVERY: Duration = Duration::from_millis(500);

/// Saves the node's cluster-time reading now and then (`store::clock`).
async fn save_clock_floor(view: Arc<StateView>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(CLOCK_FLOOR_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let saved = {
            let view = view.clone();
            tokio::task::spawn_blocking(move || view.save_clock_floor()).await
        };
        if let Ok(Err(e)) = saved {
            tracing::warn!("could not save the cluster-time floor: {e}");
        }
    }
}

/// Background tasks that watch Raft: role and term metrics, the readiness probe and its
/// status loop, and the first leader's cluster id.
fn spawn_watchers(config: &Config, opened: &Opened, raft: &Raft, contact: Arc<LeaderContact>) {
    let (cancel, tracker) = (&opened.cancel, &opened.tracker);
    let observer: &Arc<Observer> = &opened.observer;
    tracker.spawn(observe::raft_watch::watch(
        raft.clone(),
        observer.clone(),
        cancel.clone(),
    ));
    let probe = Arc::new(Probe {
        me: config.node.id,
        raft: raft.clone(),
        view: opened.view.clone(),
        contact: ContactWindow::new(
            contact,
            config.raft.election_timeout_min(),
            config.raft.heartbeat_interval(),
        ),
        observer: observer.clone(),
    });
    if let Some(e) = &opened.endpoints {
        let _ = e
            .probe
            .set(probe.clone() as Arc<dyn crate::observe::http::Health>);
    }
    tracker.spawn(super::health::status_loop(
        probe,
        config.telemetry.status_interval(),
        cancel.clone(),
    ));
    tracker.spawn(bootstrap::ensure_cluster_id(
        raft.clone(),
        opened.view.clone(),
        cancel.clone(),
    ));
}

/// The Raft RPC service on this node's subjects, and the election watchdog beside it; the
/// service's record of when the leader was last heard from.
fn serve_raft(
    config: &Config,
    opened: &Opened,
    raft: &crate::raft::types::Raft,
    rejections: &Arc<crate::signing::Rejections>,
    live_cluster: bool,
) -> (Arc<RaftService>, Arc<LeaderContact>) {
    let me = config.node.id;
    let (cancel, tracker) = (opened.cancel.clone(), opened.tracker.clone());
    let contact = Arc::new(LeaderContact::default());

    let service = Arc::new(RaftService {
        client: opened.client.clone(),
        subjects: opened.subjects.clone(),
        me,
        cluster_name: config.cluster.name.clone(),
        raft: raft.clone(),
        view: opened.view.clone(),
        contact: contact.clone(),
        hold_votes: (opened.pristine && (live_cluster || config.cluster.join)).into(),
        lease: config.raft.election_timeout_max(),
        signer: opened.signer.clone(),
        rejections: rejections.clone(),
    });
    tracker.spawn(log_failure(
        "raft rpc service",
        service.clone().run(cancel.clone(), tracker.clone()),
    ));
    tracker.spawn(crate::raft::watchdog::run(
        raft.clone(),
        me,
        contact.clone(),
        config.raft.election_timeout_max() * 2 + config.raft.heartbeat_interval() / 2,
        cancel.clone(),
    ));
    (service, contact)
}
