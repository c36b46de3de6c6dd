//! Watches (DESIGN.md "Watch"): streams of the change log over NATS, served by any voter or
//! learner from its own applied state, never forwarded.
//!
//! ```text
//! P.watch.create, P.node.<id>.watch.* ─▶ serve (decode, auth, start) ─▶ stream task per watch
//! apply ─▶ change log tail ─▶ dispatch: wakes the watches whose key or prefix matches
//! stream task ─▶ deliver subject (messages, each with an ack address) ─▶ acks ─▶ stream task
//! retention (leader) ─▶ Compact entry; every node removes compacted chunks
//! ```
//!
//! - [`request`]: the create and cancel bodies, checked;
//! - [`serve`]: the subscriptions and the create and cancel handlers;
//! - [`stream`]: one watch's task: read from its next revision, send within the window,
//!   progress notices, the end;
//! - [`batch`]: events cut into messages; [`message`]: their JSON;
//! - [`dispatch`]: which watches an applied event concerns, and the acknowledgements;
//! - [`retention`]: the leader's compaction by `history.*`, and each node's removal.
//!
//! A slow watcher costs the others nothing: each reads at its own pace, from the shared
//! in-memory tail while it keeps up and from disk once it falls behind it.

pub mod batch;
pub mod dispatch;
pub mod message;
pub mod request;
pub mod retention;
pub mod serve;
pub mod stream;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::Ctx;
use crate::config::WatchConfig;
use crate::store::history::KeyFilter;

/// The watches of one node.
pub struct Watches {
    pub ctx: Arc<Ctx>,
    pub config: WatchConfig,
    /// A node that heard from no leader for this long ends its watches (`no_leader`).
    pub no_leader_after: Duration,
    /// Subject prefix of the acknowledgement addresses: `<prefix>.<watch id>.<seq>`.
    pub ack_prefix: String,
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    /// Random per process, so that ids are not reused across restarts.
    epoch: String,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
}

/// What a watch shares with the dispatcher, the acknowledgement router and `cancel`.
pub struct Shared {
    pub id: String,
    pub filter: KeyFilter,
    /// Highest `seq` acknowledged.
    pub acked: AtomicU64,
    /// Woken when an event it matches is applied, or an acknowledgement arrives.
    pub wake: Notify,
    /// Ends the watch: a cancel request, or the node stopping.
    pub stop: CancellationToken,
    pub cancelled: AtomicBool,
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<String, Arc<Shared>>,
    keys: HashMap<String, Vec<Arc<Shared>>>,
    prefixes: BTreeMap<String, Vec<Arc<Shared>>>,
}

impl Registry {
    fn add(&mut self, w: Arc<Shared>) {
        let list = match &w.filter {
            KeyFilter::Key(k) => self.keys.entry(k.clone()).or_default(),
            KeyFilter::Prefix(p) => self.prefixes.entry(p.clone()).or_default(),
        };
        list.push(w.clone());
        self.by_id.insert(w.id.clone(), w);
    }

    fn remove(&mut self, id: &str) {
        let Some(w) = self.by_id.remove(id) else {
            return;
        };
        let drop_from = |map_list: &mut Vec<Arc<Shared>>| map_list.retain(|x| x.id != id);
        match &w.filter {
            KeyFilter::Key(k) => {
                if let Some(list) = self.keys.get_mut(k) {
                    drop_from(list);
                    if list.is_empty() {
                        self.keys.remove(k);
                    }
                }
            }
            KeyFilter::Prefix(p) => {
                if let Some(list) = self.prefixes.get_mut(p) {
                    drop_from(list);
                    if list.is_empty() {
                        self.prefixes.remove(p);
                    }
                }
            }
        }
    }

    /// Wakes every watch of `key`: one lookup for the key, one per prefix of it that some
    /// watch names.
    fn wake_matching(&self, key: &str) {
        if let Some(list) = self.keys.get(key) {
            list.iter().for_each(|w| w.wake.notify_one());
        }
        if self.prefixes.is_empty() {
            return;
        }
        let ends = key.char_indices().map(|(i, _)| i).chain([key.len()]);
        for end in ends {
            if let Some(list) = self.prefixes.get(&key[..end]) {
                list.iter().for_each(|w| w.wake.notify_one());
            }
        }
    }
}

impl Watches {
    pub fn new(
        ctx: Arc<Ctx>,
        config: WatchConfig,
        no_leader_after: Duration,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Arc<Watches> {
        let ack_prefix = format!("{}.w{}", ctx.cluster.bulk.new_inbox(), ctx.cluster.me);
        Arc::new(Watches {
            ctx,
            config,
            no_leader_after,
            ack_prefix,
            registry: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            epoch: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            cancel,
            tracker,
        })
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new watch's shared part, registered; `None` past `watch.max_watches`.
    fn register(&self, filter: KeyFilter) -> Option<(Arc<Shared>, usize)> {
        let mut r = self.registry();
        if r.by_id.len() >= self.config.max_watches {
            return None;
        }
        let n = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shared = Arc::new(Shared {
            id: format!("{}-{}-{n}", self.ctx.cluster.me, self.epoch),
            filter,
            acked: AtomicU64::new(0),
            wake: Notify::new(),
            stop: self.cancel.child_token(),
            cancelled: AtomicBool::new(false),
        });
        r.add(shared.clone());
        Some((shared, r.by_id.len()))
    }

    /// Forgets a watch that ended; how many remain.
    fn unregister(&self, id: &str) -> usize {
        let mut r = self.registry();
        r.remove(id);
        r.by_id.len()
    }

    fn find(&self, id: &str) -> Option<Arc<Shared>> {
        self.registry().by_id.get(id).cloned()
    }

    pub fn count(&self) -> usize {
        self.registry().by_id.len()
    }
}
