//! Replies to outbound Raft RPCs: one long-lived wildcard subscription on a private inbox
//! (`<inbox>.*`) and a map of waiting calls, id → (request MAC, waiting caller).
//!
//! [`network`](super::network) sends each RPC with the reply subject `<inbox>.<id>`. With
//! `cluster.secret` set, the request's MAC covers that reply subject too, and a reply is
//! handed to its caller only if its MAC is the reply MAC bound to the request's MAC. A
//! forged or unsigned reply is counted and ignored: the caller keeps waiting for the genuine
//! one until its own timeout. Because every request names a fresh reply subject, no two
//! requests share a MAC, so an old reply can never be replayed as the answer to a new one.
//!
//! NATS's "no responders" status (503, sent by the server to the reply subject when nobody
//! subscribes to the RPC subject) completes a call at once, so a dead peer is still reported
//! as unreachable without waiting for the timeout. The server's status carries no MAC: a
//! forged one can fail one call early, which openraft treats like a lost message (it backs
//! off and retries); it can never make a reply's content be accepted.
//!
//! Never: hold the waiting-calls lock across an `.await`, or block the dispatch loop on a
//! caller (each caller gets its reply through a oneshot).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, HeaderMap, Message, PublishErrorKind, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::signing::{self, Direction, Mac, Rejections, Signer};
use crate::subjects::last_token;

/// Why a call got no usable reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no responders")]
    NoResponders,
    #[error("no verified reply within {0:?}")]
    TimedOut(Duration),
    #[error("message exceeds the NATS max payload")]
    TooLarge,
    #[error("publishing the request failed: {0}")]
    Publish(async_nats::PublishError),
    #[error("the RPC inbox is closed")]
    Closed,
}

/// A call waiting for its reply.
struct WaitingCall {
    /// The request's MAC when signing; the reply must be bound to it.
    mac: Option<Mac>,
    reply: oneshot::Sender<Message>,
}

pub struct Inbox {
    client: Client,
    /// `<inbox>`; replies come to `<inbox>.<id>`.
    prefix: String,
    next_id: AtomicU64,
    // std `Mutex`: never held across `.await`.
    waiting: Mutex<HashMap<u64, WaitingCall>>,
    signer: Option<Signer>,
    rejections: Arc<Rejections>,
}

/// Removes a call from the waiting map when it ends in any way (reply, timeout, or the
/// caller's future being dropped by openraft).
struct Registered<'a> {
    inbox: &'a Inbox,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.inbox.waiting_calls().remove(&self.id);
    }
}

impl Inbox {
    /// Subscribes to a fresh private inbox and starts the dispatch loop, which ends on
    /// `cancel` (waiting calls then end at once).
    pub async fn start(
        client: Client,
        signer: Option<Signer>,
        rejections: Arc<Rejections>,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Arc<Inbox>, async_nats::SubscribeError> {
        let prefix = client.new_inbox();
        let mut sub = client.subscribe(format!("{prefix}.*")).await?;
        let inbox = Arc::new(Inbox {
            client,
            prefix,
            next_id: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            signer,
            rejections,
        });
        let this = inbox.clone();
        tracker.spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = cancel.cancelled() => break,
                    m = sub.next() => match m { Some(m) => m, None => break },
                };
                this.dispatch(msg);
            }
            let _ = sub.unsubscribe().await;
            // Wake every waiting caller at once instead of letting each time out.
            this.waiting_calls().clear();
        });
        Ok(inbox)
    }

    /// Sends `payload` to `subject` and waits up to `timeout` for a reply that verifies.
    /// A reply with a NATS status other than "no responders" is returned as is.
    pub async fn request(
        &self,
        subject: String,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, CallError> {
        self.request_with_headers(subject, None, &[], payload, timeout)
            .await
    }

    /// Like [`Inbox::request`], with headers; the values of the `signed` ones are covered by
    /// the MAC (in that order, an absent header as empty).
    pub async fn request_with_headers(
        &self,
        subject: String,
        headers: Option<HeaderMap>,
        signed: &[&str],
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let reply_to = format!("{}.{id}", self.prefix);
        let mac = self.signer.as_ref().map(|s| {
            let mut extra: Vec<&[u8]> = vec![reply_to.as_bytes()];
            extra.extend(
                signed
                    .iter()
                    .map(|name| header_bytes(headers.as_ref(), name)),
            );
            s.request_mac(&subject, &extra, &payload)
        });
        let (tx, rx) = oneshot::channel();
        // Registered before publishing: the reply may arrive before `publish` returns.
        self.waiting_calls()
            .insert(id, WaitingCall { mac, reply: tx });
        let _registered = Registered { inbox: self, id };
        let call = async {
            let headers = match (&mac, headers) {
                (Some(mac), Some(mut h)) => {
                    h.insert(signing::HEADER_MAC, signing::to_hex(mac).as_str());
                    Some(h)
                }
                (Some(mac), None) => Some(signing::mac_header(mac)),
                (None, h) => h,
            };
            let published = match headers {
                Some(h) => {
                    self.client
                        .publish_with_reply_and_headers(subject, reply_to, h, payload)
                        .await
                }
                None => {
                    self.client
                        .publish_with_reply(subject, reply_to, payload)
                        .await
                }
            };
            if let Err(e) = published {
                return Err(match e.kind() {
                    PublishErrorKind::MaxPayloadExceeded => CallError::TooLarge,
                    _ => CallError::Publish(e),
                });
            }
            let msg = rx.await.map_err(|_| CallError::Closed)?;
            if msg.status == Some(StatusCode::NO_RESPONDERS) {
                return Err(CallError::NoResponders);
            }
            Ok(msg)
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or(Err(CallError::TimedOut(timeout)))
    }

    /// Hands a message on the inbox to its caller if it verifies; counts and drops a forged
    /// or unsigned one (the caller keeps waiting), and drops a late one silently.
    fn dispatch(&self, msg: Message) {
        let Some(id) = last_token(&msg.subject).parse::<u64>().ok() else {
            tracing::debug!(subject = %msg.subject, "message on the rpc inbox without a call id");
            return;
        };
        let no_responders = msg.status == Some(StatusCode::NO_RESPONDERS);
        if let (Some(signer), false) = (&self.signer, no_responders) {
            // Copy the MAC out: verifying happens outside the lock.
            let mac = match self.waiting_calls().get(&id) {
                Some(p) => p.mac,
                None => {
                    tracing::debug!(id, "reply after its call ended; dropped");
                    return;
                }
            };
            if let Some(mac) = mac {
                if let Err(why) = signer.verify_reply(&mac, &msg.payload, signing::header_of(&msg))
                {
                    self.rejections
                        .record(Direction::Reply, why, &msg.subject, None);
                    return;
                }
            }
        }
        match self.waiting_calls().remove(&id) {
            // The caller may have given up in between; nothing to do then.
            Some(p) => {
                let _ = p.reply.send(msg);
            }
            None => tracing::debug!(id, "reply after its call ended; dropped"),
        }
    }

    fn waiting_calls(&self) -> std::sync::MutexGuard<'_, HashMap<u64, WaitingCall>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A header's value as bytes for a MAC; an absent header counts as empty.
pub fn header_bytes<'a>(headers: Option<&'a HeaderMap>, name: &str) -> &'a [u8] {
    headers
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().as_bytes())
        .unwrap_or(b"")
}
