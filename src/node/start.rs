//! The first stage of a node's life: what it stands on before Raft exists. Reads the
//! cluster secret, brings up the metrics listener (so `/healthz` answers while the node
//! starts), connects to NATS, checks the configured value size against the server's max
//! payload, and opens the fjall store and its state view.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Error;
use crate::config::Config;
use crate::observe::{self, http::Endpoints, NatsLink, Observer, Stamped};
use crate::raft::inbox::Inbox;
use crate::raft::network::PAYLOAD_HEADROOM;
use crate::signing::{Rejections, Signer};
use crate::store::{self, StateView, Store};
use crate::subjects::Subjects;

/// What the node has opened before Raft: handed on to [`super::wiring`].
pub(super) struct Opened {
    pub signer: Option<Signer>,
    /// Cancels every background task at shutdown (after Raft stopped).
    pub cancel: CancellationToken,
    /// Tracks every background task of the node: shutdown waits for them.
    pub tracker: TaskTracker,
    pub endpoints: Option<Arc<Endpoints>>,
    pub observer: Arc<Observer>,
    /// Telemetry events to publish, when `telemetry.enabled`.
    pub events: Option<tokio::sync::mpsc::Receiver<Stamped>>,
    /// Client requests, forwarded requests and telemetry.
    pub client: async_nats::Client,
    /// Client replies over 4 KiB only (`api::server`): a send queue of their own, so Raft's
    /// heartbeats and appends never wait behind a large scan page (issue #20, item 7).
    pub bulk_client: async_nats::Client,
    /// Outbound node-to-node requests (forwarded requests, control requests) and their
    /// (verified) replies, on the client connection: up before Raft, so the startup prefix
    /// check is signed too.
    pub inbox: Arc<Inbox>,
    /// Node-to-node messages dropped as unsigned, forged or for another cluster.
    pub rejections: Arc<Rejections>,
    pub max_payload: usize,
    /// Largest log entry: a NATS message less the RPC envelope.
    pub max_entry_bytes: usize,
    pub subjects: Subjects,
    pub admin_token: Option<String>,
    pub store: Store,
    /// No Raft state on disk yet: a new node.
    pub pristine: bool,
    pub view: Arc<StateView>,
}

pub(super) async fn open(config: &Config) -> Result<Opened, Error> {
    let me = config.node.id;
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
        Some((observer.clone(), NatsLink::Client)),
    )
    .await?;
    observer.nats_connection(NatsLink::Client, true);
    // Same settings and credentials as the first: only what flows on it differs.
    let bulk_client = crate::nats::connect_observed(
        &config.nats,
        &format!("concord-{me}-bulk"),
        Duration::from_secs(10),
        Some((observer.clone(), NatsLink::Bulk)),
    )
    .await?;
    observer.nats_connection(NatsLink::Bulk, true);
    let rejections = Arc::new(Rejections::default());
    let inbox = Inbox::start(
        client.clone(),
        signer.clone(),
        rejections.clone(),
        cancel.clone(),
        &tracker,
    )
    .await?;
    observer
        .metrics
        .storage_max_bytes
        .set(config.storage.max_bytes as f64);
    // Both connections reach the same servers: the smaller max payload bounds everything.
    let max_payload = client
        .server_info()
        .max_payload
        .min(bulk_client.server_info().max_payload);
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
    let (store, pristine, view) = open_store(config).await?;
    Ok(Opened {
        signer,
        cancel,
        tracker,
        endpoints,
        observer,
        events,
        client,
        bulk_client,
        inbox,
        rejections,
        max_payload,
        max_entry_bytes,
        subjects,
        admin_token,
        store,
        pristine,
        view,
    })
}

/// Opens fjall (off the runtime: it reads and may recover its journal), refuses a data dir
/// the cluster removed, and empties what an earlier run left in `backups/`.
async fn open_store(config: &Config) -> Result<(Store, bool, Arc<StateView>), Error> {
    let me = config.node.id;
    let dir = config.data_dir.clone();
    let (cache, fsync) = (config.storage.cache_size_mib, config.storage.fsync);
    metrics::gauge!(crate::observe::metrics::STORAGE_FSYNC).set(if fsync { 1.0 } else { 0.0 });
    if !fsync {
        // Said at every start (and in `admin.status`): an operator must never run it unknowingly.
        tracing::warn!(
            "storage.fsync = false: writes are acknowledged before they reach the disk; \
             a power cut or kernel crash on a quorum of nodes can lose acknowledged writes. \
             Use it only to measure the cost of fsync."
        );
    }
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
    crate::api::admin::backup::clear_backups(&config.data_dir);
    let view = StateView::open(store.clone())?;
    Ok((store, pristine, view))
}

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
