//! The `etcd` target's leases and locks (issue 25), over etcd's v3 gRPC API.
//!
//! Leases: `LeaseGrant`, `LeaseRevoke`, and keepalives on `LeaseKeepAlive` streams, each
//! carrying the keepalives of many leases as etcd's own Go client does (one stream per
//! client for all its leases). etcd answers a stream's requests one at a time, in order, so
//! each stream's replies are matched to its requests by lease id, first in first out; and
//! so there are as many streams as keepalives in flight (`--keepalive-inflight`, at most
//! [`MAX_KEEPALIVE_STREAMS`]), as Concord gets that many independent requests: a stream
//! would otherwise queue keepalives behind each other. `etcd-client` binds a stream to one lease; its
//! `pub-response-field` feature makes its keeper's fields public, so that a keeper of any
//! lease can be made on an open stream. A reply with TTL 0 is etcd's "lease not found".
//!
//! Locks: etcd's lock service (v3lock `Lock`, `Unlock`), each client on a lease of its own
//! that outlives the run (granted at the start, revoked at the end). etcd has no fencing
//! token; the fenced put is the Txn etcd's docs give for writing under a lock: put only if
//! the lock's key still exists (its `version` > 0).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, LeaseClient, LeaseKeeper, LockOptions, Txn, TxnOp};
use tokio::sync::oneshot;

use crate::lease_bench::{Leases, Renewal};
use crate::lock_bench::Locker;
use crate::OpResult;

/// Keepalive streams at most: as many etcd clients, each renewing its share of the leases.
pub(crate) const MAX_KEEPALIVE_STREAMS: usize = 256;

/// Keepalives waiting for their reply, by lease id, oldest first.
type Waiting = Arc<Mutex<HashMap<i64, VecDeque<oneshot::Sender<Renewal>>>>>;

struct Stream {
    /// The stream's first lease's keeper: its sender (a cheap clone) goes into a keeper of
    /// any other lease.
    keeper: LeaseKeeper,
    waiting: Waiting,
}

#[derive(Clone)]
pub(crate) struct EtcdLeases {
    lease: LeaseClient,
    /// Opened on the first keepalive's lease, once leases exist.
    streams: Arc<tokio::sync::OnceCell<Vec<Stream>>>,
    /// How many streams to open.
    width: usize,
    /// The stream of the next keepalive: round-robin, so that each has its share in flight.
    next: Arc<AtomicUsize>,
    timeout: Duration,
}

impl EtcdLeases {
    /// Keepalives go over `streams` streams (1..=[`MAX_KEEPALIVE_STREAMS`]).
    pub(crate) fn new(client: &Client, timeout: Duration, streams: usize) -> EtcdLeases {
        EtcdLeases {
            lease: client.lease_client(),
            streams: Arc::new(tokio::sync::OnceCell::new()),
            width: streams.clamp(1, MAX_KEEPALIVE_STREAMS),
            next: Arc::default(),
            timeout,
        }
    }

    /// The streams, each opened with a keepalive of `id` (etcd-client opens a stream only
    /// with a first request, and waits for its reply).
    async fn open(&self, id: i64) -> Result<Vec<Stream>, String> {
        let mut streams = Vec::with_capacity(self.width);
        for _ in 0..self.width {
            let (keeper, mut replies) = self
                .lease
                .clone()
                .keep_alive(id)
                .await
                .map_err(|e| crate::etcd::error_code(&e))?;
            let waiting: Waiting = Arc::default();
            let w = waiting.clone();
            tokio::spawn(async move {
                while let Ok(Some(r)) = replies.message().await {
                    let renewal = if r.ttl() > 0 {
                        Renewal::Renewed
                    } else {
                        Renewal::Lost
                    };
                    let next = w
                        .lock()
                        .ok()
                        .and_then(|mut w| w.get_mut(&r.id()).and_then(VecDeque::pop_front));
                    if let Some(tx) = next {
                        // The keepalive's caller may have given up (timeout): nothing to do.
                        let _ = tx.send(renewal);
                    }
                }
            });
            streams.push(Stream { keeper, waiting });
        }
        Ok(streams)
    }
}

impl Leases for EtcdLeases {
    async fn grant(&self, ttl: Duration) -> Result<i64, String> {
        let secs = ttl.as_secs().max(1) as i64;
        let r = self.lease.clone().grant(secs, None).await;
        r.map(|r| r.id()).map_err(|e| crate::etcd::error_code(&e))
    }

    async fn keepalive(&self, id: i64) -> Renewal {
        let streams = match self.streams.get_or_try_init(|| self.open(id)).await {
            Ok(s) => s,
            Err(code) => return Renewal::Failed(code),
        };
        let stream = &streams[self.next.fetch_add(1, Ordering::Relaxed) % streams.len()];
        let (tx, rx) = oneshot::channel();
        match stream.waiting.lock() {
            Ok(mut w) => w.entry(id).or_default().push_back(tx),
            Err(_) => return Renewal::Failed("keepalive_state_poisoned".into()),
        }
        let mut keeper = LeaseKeeper {
            id,
            sender: stream.keeper.sender.clone(),
        };
        if keeper.keep_alive().await.is_err() {
            return Renewal::Failed("etcd_keepalive_stream_closed".into());
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Renewal::Failed("etcd_keepalive_stream_closed".into()),
            Err(_) => Renewal::Failed("etcd_keepalive_timed_out".into()),
        }
    }

    async fn revoke(&self, id: i64) -> Result<(), String> {
        let r = self.lease.clone().revoke(id).await;
        r.map(drop).map_err(|e| crate::etcd::error_code(&e))
    }
}

/// One contending client of etcd's lock service.
pub(crate) struct EtcdLocker {
    client: Client,
    name: String,
    lease: i64,
    value_size: usize,
}

impl EtcdLocker {
    /// A client with a lease of `ttl` of its own for its lock keys.
    pub(crate) async fn new(
        client: &Client,
        name: &str,
        ttl: Duration,
        value_size: usize,
    ) -> Result<EtcdLocker, String> {
        let lease = EtcdLeases::new(client, Duration::from_secs(5), 1)
            .grant(ttl)
            .await?;
        Ok(EtcdLocker {
            client: client.clone(),
            name: name.to_string(),
            lease,
            value_size,
        })
    }

    /// The client's lease, to revoke after the run.
    pub(crate) fn lease(&self) -> i64 {
        self.lease
    }
}

impl Locker for EtcdLocker {
    /// The lock's key, which exists while this client holds the lock.
    type Hold = Vec<u8>;

    async fn acquire(&mut self) -> Result<Vec<u8>, String> {
        let opts = LockOptions::new().with_lease(self.lease);
        let r = self
            .client
            .lock_client()
            .lock(self.name.as_str(), Some(opts))
            .await;
        r.map(|r| r.key().to_vec())
            .map_err(|e| crate::etcd::error_code(&e))
    }

    async fn fenced_put(&mut self, key: &Vec<u8>) -> OpResult {
        let value = crate::fresh_value(self.value_size);
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Greater, 0)])
            .and_then([TxnOp::put(format!("bench:lock:{}", self.name), value, None)]);
        match self.client.kv_client().txn(txn).await {
            Ok(r) if r.succeeded() => Ok(()),
            Ok(_) => Err("etcd_lock_key_gone".into()),
            Err(e) => Err(crate::etcd::error_code(&e)),
        }
    }

    async fn release(&mut self, key: Vec<u8>) -> OpResult {
        let r = self.client.lock_client().unlock(key).await;
        r.map(drop).map_err(|e| crate::etcd::error_code(&e))
    }
}
