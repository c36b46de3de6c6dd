//! One Concord node: wires NATS, the fjall store, Raft and the request servers, and owns
//! the shutdown order (stop intake and answer what is in flight, hand leadership off,
//! `raft.shutdown()`, persist fjall, drain NATS).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, ServerState};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::api::{self, validate::Limits, Ctx};
use crate::command::{Command, LogCommand};
use crate::config::Config;
use crate::observe::{self, http::Endpoints, probe::Probe, Observer};
use crate::raft::inbox::Inbox;
use crate::raft::network::{Network, PAYLOAD_HEADROOM};
use crate::raft::service::{LeaderContact, RaftService};
use crate::raft::types::Raft;
use crate::signing::{Rejections, Signer};
use crate::store::{self, LogStore, StateMachine, StateView, Store};
use crate::subjects::{AdminOp, Subjects};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Nats(#[from] crate::nats::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Raft(#[from] crate::raft::Error),
    #[error("NATS subscription failed: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("{0}")]
    OtherCluster(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// What answered `P.admin.status` when this node started.
#[derive(Debug, serde::Deserialize)]
struct PeerStatus {
    node: u64,
    cluster_name: String,
    cluster_id: Option<Uuid>,
    #[serde(default)]
    members: Option<PeerMembers>,
}

#[derive(Debug, serde::Deserialize)]
struct PeerMembers {
    voters: Vec<u64>,
    learners: Vec<u64>,
}

pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let me = config.node.id;
    tracing::info!(node = me, config = %config.redacted(), "starting");
    // Read first: a missing secret file fails before anything is opened.
    let signer = config
        .cluster_secret()
        .map_err(|e| Error::Config(e.to_string()))?
        .map(|secret| Signer::new(secret.as_bytes()));
    if signer.is_some() {
        tracing::info!("cluster.secret set: raft rpcs, forwarded requests and their replies are signed and verified");
    }
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    // The metrics listener comes up first, so `/healthz` answers while the node starts.
    let endpoints = match config.metrics_listen() {
        Some(addr) => Some(serve_metrics(addr, cancel.clone(), &tracker).await?),
        None => None,
    };
    let (observer, events) = Observer::new(me, &config.telemetry);
    for id in config.initial_members() {
        if id != me {
            // Peer series exist from the start, before the first RPC.
            let _ = observer.metrics.peer(id);
        }
    }
    let client = crate::nats::connect_observed(
        &config.nats,
        &format!("concord-{me}"),
        Duration::from_secs(10),
        Some(observer.clone()),
    )
    .await?;
    observer.nats_connection(true);
    observer
        .metrics
        .storage_max_bytes
        .set(config.storage.max_bytes as f64);
    let max_payload = client.server_info().max_payload;
    let max_entry_bytes = max_payload.saturating_sub(PAYLOAD_HEADROOM);
    if config.limits.max_value_bytes > max_entry_bytes {
        return Err(Error::Config(format!(
            "limits.max_value_bytes ({}) must stay below the NATS server's max payload ({max_payload}) less {PAYLOAD_HEADROOM} bytes of headroom",
            config.limits.max_value_bytes
        )));
    }
    let subjects = Subjects::new(&config.nats.subject_prefix, &config.cluster.name);
    let admin_token = config
        .admin_token()
        .map_err(|e| Error::Config(e.to_string()))?;
    if config.auth.enabled && admin_token.is_none() {
        tracing::warn!(
            "auth is on without auth.admin_token: only admin-role tokens can administer this node"
        );
    }

    let dir = config.data_dir.clone();
    let (cache, fsync) = (config.storage.cache_size_mib, config.storage.fsync);
    let store = tokio::task::spawn_blocking(move || Store::open(&dir, cache, fsync))
        .await
        .map_err(|e| store::Error::Io(std::io::Error::other(e)))??;
    if let Some(note) = store.removed_note()? {
        return Err(Error::Config(format!(
            "node {me} was removed from the cluster ({note}); its data dir {} may not serve again: \
             wipe it, start the node with cluster.join = true and run `concord cluster add {me}`",
            config.data_dir.display()
        )));
    }
    let pristine = store.is_pristine()?;
    api::backup::clear_backups(&config.data_dir);
    let view = StateView::open(store.clone())?;

    let live_cluster = check_prefix(
        &client,
        &subjects,
        &config,
        admin_token.as_deref(),
        view.cluster_id(),
        pristine,
    )
    .await?;

    let rejections = Arc::new(Rejections::default());
    if let Some(rx) = events {
        tracker.spawn(observe::publish::run(
            observer.clone(),
            rx,
            client.clone(),
            subjects.clone(),
            cancel.clone(),
        ));
    }

    let inbox = Inbox::start(
        client.clone(),
        signer.clone(),
        rejections.clone(),
        cancel.clone(),
        &tracker,
    )
    .await?;

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
    let log_store = LogStore::with_observer(store.clone(), network.append_observer());
    let raft = crate::raft::start(
        &config,
        max_payload,
        network.clone(),
        log_store,
        StateMachine::new(view.clone(), observer.clone()),
    )
    .await?;
    network.set_raft_metrics(raft.metrics());

    let contact = Arc::new(LeaderContact::default());

    let service = Arc::new(RaftService {
        client: client.clone(),
        subjects: subjects.clone(),
        me,
        cluster_name: config.cluster.name.clone(),
        raft: raft.clone(),
        view: view.clone(),
        contact: contact.clone(),
        hold_votes: (pristine && (live_cluster || config.cluster.join)).into(),
        signer: signer.clone(),
        rejections: rejections.clone(),
    });
    tracker.spawn(log_failure(
        "raft rpc service",
        service.clone().run(cancel.clone(), tracker.clone()),
    ));

    let removed = CancellationToken::new();
    let ctx = Arc::new(Ctx {
        me,
        cluster_name: config.cluster.name.clone(),
        raft: raft.clone(),
        proposer: api::propose::Proposer::start(
            raft.clone(),
            max_entry_bytes,
            config.limits.max_in_flight,
        ),
        read_index: api::read_index::ReadIndex::start(raft.clone()),
        view: view.clone(),
        client: client.clone(),
        subjects: subjects.clone(),
        limits: Limits {
            max_value_bytes: config.limits.max_value_bytes,
            max_entry_bytes,
            max_scan_limit: config.limits.max_scan_limit,
            max_data_bytes: config.storage.max_bytes,
        },
        default_timeout: config.limits.default_timeout(),
        stale_window: config.raft.election_timeout_min(),
        contact: contact.clone(),
        max_payload,
        auth: crate::auth::Authorizer::new(config.auth.enabled, admin_token.as_deref()),
        signer,
        rejections,
        inbox,
        observer: observer.clone(),
        removed: removed.clone(),
    });
    // Client intake (cluster and node subjects, and every request task) stops first at
    // shutdown, while Raft and its RPCs keep running for the requests in flight.
    let intake = cancel.child_token();
    let intake_tracker = TaskTracker::new();
    tracker.spawn(api::membership::watch_removal(
        ctx.clone(),
        admin_token.clone(),
        (config.raft.election_timeout_max() * 3).max(Duration::from_secs(3)),
        cancel.clone(),
    ));
    let server = api::server::Server::new(ctx, config.limits.max_in_flight);
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
    tracker.spawn(observe::raft_watch::watch(
        raft.clone(),
        observer.clone(),
        cancel.clone(),
    ));
    let probe = Arc::new(Probe {
        me,
        raft: raft.clone(),
        view: view.clone(),
        contact: contact.clone(),
        observer: observer.clone(),
        contact_window: config.raft.election_timeout_min(),
    });
    if let Some(e) = &endpoints {
        let _ = e.probe.set(probe.clone());
    }
    tracker.spawn(observe::probe::status_loop(
        probe,
        config.telemetry.status_interval(),
        cancel.clone(),
    ));
    tracker.spawn(ensure_cluster_id(
        raft.clone(),
        view.clone(),
        cancel.clone(),
    ));

    if pristine && config.cluster.join {
        tracing::info!(
            "cluster.join: waiting to be added (`concord cluster add {me}` against the running cluster)"
        );
    } else if pristine && config.is_bootstrapper() {
        if live_cluster {
            tracing::warn!(
                "a live cluster answers on prefix '{}': not initializing a new one; this node waits to be added (`concord cluster add {me}`)",
                subjects.prefix()
            );
        } else {
            bootstrap(&raft, &config.initial_members()).await?;
        }
    } else if pristine {
        tracing::info!("empty data directory: waiting to be contacted by the cluster");
    }
    tracing::info!(node = me, prefix = subjects.prefix(), "node ready");

    let was_removed = tokio::select! {
        _ = shutdown => false,
        _ = removed.cancelled() => true,
    };
    if was_removed {
        // The request that removed this node is still in flight: the intake waits for it.
        let note = format!(
            "removed at {} while term {} was current",
            crate::auth::tokens::rfc3339(crate::auth::tokens::now_ms()),
            raft.metrics().borrow().current_term
        );
        if let Err(e) = store.mark_removed(&note) {
            tracing::error!(error = %e, "could not mark the data dir as removed");
        }
    }
    let stopping = std::time::Instant::now();
    tracing::info!("shutting down: taking no new requests, answering those in flight");
    // 1. Intake: the subscriptions drain, so NATS routes new requests to the other nodes.
    intake.cancel();
    intake_tracker.close();
    if tokio::time::timeout(IN_FLIGHT_WAIT, intake_tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after {} s; stopping anyway",
            IN_FLIGHT_WAIT.as_secs()
        );
    }
    // 2. A leader hands off to a caught-up follower, so the cluster does not wait out an
    //    election timeout.
    let handoff_wait = config.raft.election_timeout_max().min(HANDOFF_WAIT_MAX);
    match crate::raft::handoff::hand_off(&raft, &network, handoff_wait).await {
        crate::raft::handoff::Outcome::NotLeader | crate::raft::handoff::Outcome::SoleVoter => {}
        crate::raft::handoff::Outcome::HandedTo { node, after } => {
            tracing::info!(
                to = node,
                ms = after.as_millis() as u64,
                "leadership handed off"
            )
        }
        other => tracing::warn!(
            outcome = ?other,
            "leadership not handed off; the cluster elects a leader after an election timeout"
        ),
    }
    // 3. Raft, then everything else, then the store and NATS.
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(TASKS_WAIT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks still running; stopping anyway");
    }
    drop(server);
    drop(service);
    // Flushed so that a restart has nothing to re-apply from the log.
    let persist = tokio::task::spawn_blocking(move || {
        if let Err(e) = view.flush() {
            tracing::warn!(error = %e, "state-machine flush");
        }
        store.db.persist(fjall::PersistMode::SyncAll)
    })
    .await;
    if let Ok(Err(e)) = persist {
        tracing::error!(error = %e, "final fsync failed");
    }
    let _ = tokio::time::timeout(TASKS_WAIT, client.drain()).await;
    tracing::info!(ms = stopping.elapsed().as_millis() as u64, "stopped");
    Ok(())
}

/// Shutdown bounds: requests in flight, the leadership hand-off (an election timeout at
/// most: past that the followers elect a leader by themselves), and background tasks and
/// the NATS drain.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(5);
const HANDOFF_WAIT_MAX: Duration = Duration::from_secs(5);
const TASKS_WAIT: Duration = Duration::from_secs(2);

/// Installs the metrics recorder, binds `metrics.listen` and serves it until cancelled.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<Arc<Endpoints>, Error> {
    let handle = observe::metrics::install().map_err(Error::Config)?;
    let listener = observe::http::bind(addr).await.map_err(Error::Config)?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    let endpoints = Arc::new(Endpoints {
        handle: handle.clone(),
        probe: std::sync::OnceLock::new(),
    });
    tracker.spawn(observe::http::serve(
        listener,
        endpoints.clone(),
        cancel.clone(),
        tracker.clone(),
    ));
    tracker.spawn(observe::metrics::upkeep(handle, cancel));
    Ok(endpoints)
}

async fn log_failure<E: std::fmt::Display>(
    what: &'static str,
    fut: impl std::future::Future<Output = Result<(), E>>,
) {
    if let Err(e) = fut.await {
        tracing::error!(error = %e, "{what} failed");
    }
}

/// Asks `P.admin.status` who serves this prefix. Refuses to start if another cluster does;
/// returns whether a live member of this cluster answered.
async fn check_prefix(
    client: &Client,
    subjects: &Subjects,
    config: &Config,
    admin_token: Option<&str>,
    my_cluster_id: Option<Uuid>,
    pristine: bool,
) -> Result<bool, Error> {
    let mut req = async_nats::Request::new()
        .payload("{}".into())
        .timeout(Some(Duration::from_millis(1500)));
    if let Some(t) = admin_token {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Authorization", format!("Bearer {t}").as_str());
        req = req.headers(h);
    }
    let reply = match client
        .send_request(subjects.admin(AdminOp::Status), req)
        .await
    {
        Ok(m) => m,
        Err(e) if e.kind() == RequestErrorKind::NoResponders => return Ok(false),
        Err(e) => {
            tracing::warn!(error = %e, "no answer on {}; assuming no cluster", subjects.admin(AdminOp::Status));
            return Ok(false);
        }
    };
    if is_unauthorized(&reply.payload) {
        if config.auth.enabled {
            tracing::warn!(
                "a node with auth answers on '{}' and refuses this node's credential; assuming it is this cluster (set auth.admin_token to the cluster's admin credential to check)",
                subjects.admin(AdminOp::Status)
            );
            return Ok(true);
        }
        return Err(Error::OtherCluster(format!(
            "a cluster with auth on answers on subject prefix '{}', and this node has auth off; \
             give this cluster its own nats.subject_prefix, or turn auth on with its admin credential",
            subjects.prefix()
        )));
    }
    let Ok(peer) = serde_json::from_slice::<PeerStatus>(&reply.payload) else {
        return Err(Error::OtherCluster(format!(
            "something that is not a Concord node answers on '{}'; give this cluster its own nats.subject_prefix",
            subjects.admin(AdminOp::Status)
        )));
    };
    let other = peer.cluster_name != config.cluster.name
        || matches!((peer.cluster_id, my_cluster_id), (Some(a), Some(b)) if a != b);
    if other {
        return Err(Error::OtherCluster(format!(
            "another cluster ('{}', id {}) already answers on subject prefix '{}' (its node {}); \
             this node belongs to '{}' (id {}). Give each cluster its own nats.subject_prefix",
            peer.cluster_name,
            peer.cluster_id
                .map(|u| u.to_string())
                .unwrap_or_else(|| "unknown".into()),
            subjects.prefix(),
            peer.node,
            config.cluster.name,
            my_cluster_id
                .map(|u| u.to_string())
                .unwrap_or_else(|| "not yet assigned".into()),
        )));
    }
    // A node the cluster removed while it could not be told must not rejoin with its old
    // state: it would campaign and answer clients without ever reaching a leader.
    if let (false, Some(m), Some(_)) = (pristine, &peer.members, my_cluster_id) {
        let me = config.node.id;
        if !m.voters.contains(&me) && !m.learners.contains(&me) {
            return Err(Error::Config(format!(
                "this cluster's members are voters {:?} and learners {:?} (says node {}); node {me} is not among them. \
                 If it was removed, wipe {} and add it again with cluster.join = true and `concord cluster add {me}`",
                m.voters,
                m.learners,
                peer.node,
                config.data_dir.display()
            )));
        }
    }
    Ok(true)
}

fn is_unauthorized(payload: &[u8]) -> bool {
    api::codec::reply_code(payload) == Err(crate::error::ErrorKind::Unauthorized)
}

async fn bootstrap(raft: &Raft, members: &BTreeSet<u64>) -> Result<(), Error> {
    let nodes: BTreeMap<u64, BasicNode> = members
        .iter()
        .map(|&id| (id, BasicNode::default()))
        .collect();
    match raft.initialize(nodes).await {
        Ok(()) => {
            tracing::info!(?members, "initialized a new cluster");
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(RaftError::APIError(e)) => {
            Err(Error::Config(format!("cannot initialize the cluster: {e}")))
        }
        Err(RaftError::Fatal(e)) => Err(Error::Raft(e.into())),
    }
}

/// A leader that finds no cluster id commits a fresh one; the state machine keeps only the
/// first, so racing leaders agree.
async fn ensure_cluster_id(raft: Raft, view: Arc<StateView>, cancel: CancellationToken) {
    let mut metrics = raft.metrics();
    loop {
        let leader = metrics.borrow_and_update().state == ServerState::Leader;
        if view.cluster_id().is_some() {
            return;
        }
        if leader {
            let cmd = LogCommand::new(Command::SetClusterId { id: Uuid::new_v4() });
            match raft.client_write(cmd).await {
                Ok(r) => {
                    tracing::info!(outcome = ?r.data, "cluster id committed");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "committing the cluster id failed; will retry")
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
