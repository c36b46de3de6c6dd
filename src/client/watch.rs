//! Watches for [`Client`]: [`Client::watch`] and [`Client::watch_with`] (a [`Watch`]
//! builder) give a [`WatchStream`] of the change log's events under a prefix or for one key,
//! in revision order, each revision once; [`Client::list_watch`] lists a prefix and watches
//! it from there (DESIGN.md "List then watch").
//!
//! The stream resumes by itself: when its watch ends (`slow_consumer`, `no_leader`,
//! `node_stopping`, `cluster_not_ready`), falls silent for 3 progress intervals (a killed
//! node sends no end), or loses a message, it creates a new one at the revision it expects
//! next, on any node (or, pinned with [`Watch::node`], on the same node once it is back),
//! retrying refusals with backoff. It ends only with [`ClientError::Compacted`] (the
//! revisions it needs are gone: list again), `unauthorized`, `cancelled`, or when dropped
//! (which cancels the server-side watch, best effort). The protocol work is in
//! `watch/task.rs`, the bookkeeping (what was delivered, what to do with an end) in
//! `watch/cursor.rs`.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use concord_wire::watch::{CancelRequest, CreateRequest, MAX_WINDOW};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Client, ClientError, ScanItem};
use crate::error::bad_request;

mod cursor;
mod task;

pub use concord_wire::watch::{Event as WatchEvent, EventType};

/// How many messages a stream buffers ahead of its consumer. A consumer that falls further
/// behind stops the acknowledgements, so that the node holds the backlog (in its change
/// log), not this process.
const BUFFER: usize = 32;

/// What a watch asks for; see [`Client::watch_with`].
#[derive(Debug, Clone)]
pub struct Watch {
    key: Option<String>,
    prefix: Option<String>,
    from: Option<u64>,
    prev_value: bool,
    types: Option<Vec<EventType>>,
    keys_only: bool,
    window: Option<u32>,
    node: Option<u64>,
}

impl Watch {
    /// Every key under `prefix` (`""`: every key).
    pub fn prefix(prefix: impl Into<String>) -> Watch {
        Watch::new(None, Some(prefix.into()))
    }

    /// One key.
    pub fn key(key: impl Into<String>) -> Watch {
        Watch::new(Some(key.into()), None)
    }

    fn new(key: Option<String>, prefix: Option<String>) -> Watch {
        Watch {
            key,
            prefix,
            from: None,
            prev_value: false,
            types: None,
            keys_only: false,
            window: None,
            node: None,
        }
    }

    /// The first revision to deliver (default: the serving node's next revision; 0 is the
    /// default too).
    pub fn from(mut self, revision: u64) -> Watch {
        self.from = (revision > 0).then_some(revision);
        self
    }

    /// Events carry the key's value before their revision.
    pub fn prev_value(mut self, yes: bool) -> Watch {
        self.prev_value = yes;
        self
    }

    /// Only events of these types (default: every type).
    pub fn types(mut self, types: &[EventType]) -> Watch {
        self.types = Some(types.to_vec());
        self
    }

    /// Events without `value` and `prev_value`.
    pub fn keys_only(mut self, yes: bool) -> Watch {
        self.keys_only = yes;
        self
    }

    /// At most `n` unacknowledged messages in flight (1..=1024; the node's default is 64).
    pub fn window(mut self, n: u32) -> Watch {
        self.window = Some(n);
        self
    }

    /// Served by node `id` only (`P.node.<id>.watch.create`); resumes wait for it to come
    /// back instead of moving to another node.
    pub fn node(mut self, id: u64) -> Watch {
        self.node = Some(id);
        self
    }

    fn check(&self) -> Result<(), ClientError> {
        if let Some(w) = self.window {
            if w == 0 || w > MAX_WINDOW {
                return Err(ClientError::Server(bad_request(format!(
                    "window {w} is out of range: 1..={MAX_WINDOW}"
                ))));
            }
        }
        if self.types.as_ref().is_some_and(Vec::is_empty) {
            return Err(ClientError::Server(bad_request(
                "types is empty: name at least one of put, delete, expire",
            )));
        }
        Ok(())
    }

    fn request(&self, deliver: String, start: Option<u64>, client: &Client) -> CreateRequest {
        CreateRequest {
            key: self.key.clone(),
            prefix: self.prefix.clone(),
            start_revision: start,
            prev_value: self.prev_value,
            types: self.types.clone(),
            keys_only: self.keys_only,
            deliver,
            window: self.window,
            token: client.token.clone(),
            timeout_ms: None,
        }
    }
}

/// A stream's resumes so far (see [`WatchStream::resumes_watch`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resumed {
    /// How many times the stream replaced its server-side watch.
    pub count: u64,
    /// Why it did the last time (e.g. "node 2 ended the watch: node_stopping").
    pub reason: String,
    /// Where the last new watch started.
    pub start_revision: u64,
    /// The node serving the last new watch.
    pub node: u64,
}

/// What the task hands the stream.
enum Item {
    /// One message's events (none for a progress notice); once they are yielded, every
    /// revision below `next_revision` has been.
    Batch {
        events: Vec<WatchEvent>,
        next_revision: u64,
        store_revision: u64,
    },
    Failed(ClientError),
}

/// The events of a watch, in revision order, each revision once (see the module doc).
/// Dropping it ends the server-side watch.
pub struct WatchStream {
    rx: mpsc::Receiver<Item>,
    /// The current batch's events not yet yielded, and where the stream stands after them.
    pending: VecDeque<WatchEvent>,
    pending_next: u64,
    next_revision: u64,
    store_revision: u64,
    resumed: tokio::sync::watch::Receiver<Resumed>,
    client: Client,
    current: Arc<std::sync::Mutex<Option<(u64, String)>>>,
}

impl WatchStream {
    /// The next revision the stream expects: every revision below it has been yielded
    /// completely, so a new watch from here (e.g. after a restart of the program) repeats
    /// nothing and misses nothing.
    pub fn next_revision(&self) -> u64 {
        self.next_revision
    }

    /// The store revision of the newest message yielded from, progress notices included.
    pub fn store_revision(&self) -> u64 {
        self.store_revision
    }

    /// How many times the stream replaced its server-side watch.
    pub fn resumes(&self) -> u64 {
        self.resumed.borrow().count
    }

    /// The resumes as they happen (`changed()` wakes on each), e.g. to report them.
    pub fn resumes_watch(&self) -> tokio::sync::watch::Receiver<Resumed> {
        self.resumed.clone()
    }

    /// The node serving the stream's current watch.
    pub fn node(&self) -> Option<u64> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.as_ref().map(|(node, _)| *node)
    }

    /// Ends the stream and cancels its server-side watch, waiting (up to the client's
    /// timeout) for the node to confirm: unlike a drop, the cancel has reached the node
    /// when this returns `Ok`.
    pub async fn cancel(self) -> Result<(), ClientError> {
        let current = {
            let c = self.current.lock().unwrap_or_else(|p| p.into_inner());
            c.clone()
        };
        let client = self.client.clone();
        drop(self);
        let Some((node, watch_id)) = current else {
            return Ok(());
        };
        let body = CancelRequest {
            watch_id,
            token: client.token.clone(),
        };
        let body = serde_json::to_value(&body).map_err(|e| ClientError::Decode(e.to_string()))?;
        let subject = client.subjects().node_watch(node, "cancel");
        match client.call_once(subject, &body, client.timeout()).await {
            // The task's own cancel may have got there first.
            Ok(_) => Ok(()),
            Err(ClientError::Server(e)) if e.code == crate::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl futures::Stream for WatchStream {
    type Item = Result<WatchEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                // The batch's last event completes its revisions: advance with it, so that
                // `next_revision` is right as soon as the consumer holds the event.
                if self.pending.is_empty() {
                    self.next_revision = self.next_revision.max(self.pending_next);
                }
                return Poll::Ready(Some(Ok(e)));
            }
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Item::Failed(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Item::Batch {
                    events,
                    next_revision,
                    store_revision,
                })) => {
                    self.store_revision = self.store_revision.max(store_revision);
                    if events.is_empty() {
                        self.next_revision = self.next_revision.max(next_revision);
                    }
                    self.pending = events.into();
                    self.pending_next = next_revision;
                }
            }
        }
    }
}

impl Client {
    /// Every change under `prefix` from revision `from` (default: the next one), as a
    /// stream; see [`Watch`] for the other options.
    pub async fn watch(&self, prefix: &str, from: Option<u64>) -> Result<WatchStream, ClientError> {
        self.watch_with(Watch::prefix(prefix).from(from.unwrap_or(0)))
            .await
    }

    /// A watch as `watch` describes it. Returns once the first server-side watch exists
    /// (refusals are retried within the client's timeout): a write acknowledged after this
    /// returns is in the stream. `bad_request`, `unauthorized` and
    /// [`ClientError::Compacted`] come back here.
    pub async fn watch_with(&self, watch: Watch) -> Result<WatchStream, ClientError> {
        self.start_watch(watch, HashMap::new()).await
    }

    /// List then watch: every key under `prefix` (all pages, linearizable), the first
    /// page's `store_revision`, and a stream of every change after the list: it starts at
    /// that revision + 1 and drops an event not newer than its key's listed revision, so
    /// that each change is seen exactly once, in the list or in the stream.
    pub async fn list_watch(
        &self,
        prefix: &str,
    ) -> Result<(Vec<ScanItem>, u64, WatchStream), ClientError> {
        let (items, store_revision) = self.scan_pages(prefix).await?;
        let listed = items.iter().map(|i| (i.key.clone(), i.revision)).collect();
        let watch = Watch::prefix(prefix).from(store_revision.saturating_add(1));
        let stream = self.start_watch(watch, listed).await?;
        Ok((items, store_revision, stream))
    }

    async fn start_watch(
        &self,
        watch: Watch,
        listed: HashMap<String, u64>,
    ) -> Result<WatchStream, ClientError> {
        watch.check()?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let (resumed_tx, resumed) = tokio::sync::watch::channel(Resumed::default());
        let current = Arc::new(std::sync::Mutex::new(None));
        let from = watch.from.unwrap_or(0);
        let mut task = task::Task {
            client: self.clone(),
            spec: watch,
            cursor: cursor::Cursor::new(from).with_listed(listed),
            tx,
            resumed: resumed_tx,
            current: current.clone(),
        };
        let deadline = Instant::now() + self.timeout.max(Duration::from_millis(100));
        let live = task.create(Some(deadline)).await?;
        let next_revision = task.cursor.next_revision();
        let store_revision = live.store_revision;
        tokio::spawn(task.run(live));
        Ok(WatchStream {
            rx,
            pending: VecDeque::new(),
            pending_next: next_revision,
            next_revision,
            store_revision,
            resumed,
            client: self.clone(),
            current,
        })
    }
}
