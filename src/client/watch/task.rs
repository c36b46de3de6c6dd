//! The task behind a [`super::WatchStream`]: it owns the server-side watch (its inbox
//! subscription, its acknowledgements) and replaces it when it ends or falls silent.
//!
//! Each server-side watch gets a fresh inbox, subscribed before the create is sent, so that
//! nothing of an old watch can reach a new one. A message is acknowledged once its events are
//! in the stream's buffer: a consumer that stops reading stops the acknowledgements, the node
//! stops sending when the window is full and ends the watch `slow_consumer`, and the stream
//! resumes from where the consumer's buffer ends. Resumes back off (25 ms doubling to 400 ms)
//! and go on until the stream is dropped; only the ends of [`cursor::after_end`] and final
//! create errors stop it.

use std::sync::Arc;

use async_nats::Subscriber;
use concord_wire::watch::{CancelRequest, CreateReply, Delivery};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::cursor::{self, AfterEnd, Cursor, Step};
use super::{Item, Resumed, Watch};
use crate::client::{retry, Client, ClientError};

/// A server-side watch this stream follows.
pub(super) struct Live {
    sub: Subscriber,
    pub(super) watch_id: String,
    pub(super) node: u64,
    pub(super) store_revision: u64,
    progress_ms: u64,
}

/// How following one server-side watch ended.
enum Outcome {
    /// The stream was dropped.
    Closed,
    /// Replace the watch; the reason, for [`Resumed`].
    Resume(String),
    Finish(Option<ClientError>),
}

pub(super) struct Task {
    pub(super) client: Client,
    pub(super) spec: Watch,
    pub(super) cursor: Cursor,
    pub(super) tx: mpsc::Sender<Item>,
    pub(super) resumed: tokio::sync::watch::Sender<Resumed>,
    pub(super) current: Arc<std::sync::Mutex<Option<(u64, String)>>>,
}

impl Task {
    /// Creates a server-side watch at the cursor's next revision (none for a stream's first
    /// create without a start), retrying refusals with backoff until `deadline` (forever
    /// when `None`, as long as the stream is not dropped).
    pub(super) async fn create(&mut self, deadline: Option<Instant>) -> Result<Live, ClientError> {
        let mut attempt = 0u32;
        loop {
            let err = match self.create_once(deadline).await {
                Ok(live) => {
                    self.cursor.restart();
                    self.cursor.start_after(live.1.store_revision);
                    let (sub, reply) = live;
                    let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
                    *current = Some((reply.node, reply.watch_id.clone()));
                    return Ok(Live {
                        sub,
                        watch_id: reply.watch_id,
                        node: reply.node,
                        store_revision: reply.store_revision,
                        progress_ms: reply.progress_ms,
                    });
                }
                Err(e) => e,
            };
            let pause = retry::backoff(attempt, retry::jitter());
            let out_of_time = deadline.is_some_and(|d| Instant::now() + pause >= d);
            if !cursor::create_retryable(&err) || out_of_time {
                return Err(err);
            }
            tokio::select! {
                _ = self.tx.closed() => return Err(err),
                _ = tokio::time::sleep(pause) => {}
            }
            attempt = attempt.saturating_add(1);
        }
    }

    async fn create_once(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(Subscriber, CreateReply), ClientError> {
        let nats = self.client.nats();
        let deliver = nats.new_inbox();
        let sub = nats
            .subscribe(deliver.clone())
            .await
            .map_err(|e| ClientError::Nats(format!("subscribing to the watch inbox: {e}")))?;
        let next = self.cursor.next_revision();
        let body = self
            .spec
            .request(deliver, (next > 0).then_some(next), &self.client);
        let body = serde_json::to_value(&body).map_err(|e| ClientError::Decode(e.to_string()))?;
        let subject = match self.spec.node {
            Some(id) => self.client.subjects().node_watch(id, "create"),
            None => self.client.subjects().watch_create(),
        };
        let total = self.client.timeout();
        let left = deadline.map_or(total, |d| d.saturating_duration_since(Instant::now()));
        let timeout = retry::Retry::Refused.attempt_timeout(total, left.min(total));
        let reply = self.client.call_once(subject, &body, timeout).await?;
        let reply: CreateReply = serde_json::from_value(reply)
            .map_err(|e| ClientError::Decode(format!("watch.create reply: {e}")))?;
        Ok((sub, reply))
    }

    /// Follows `live`, replacing it whenever it ends, until the stream is over.
    pub(super) async fn run(mut self, mut live: Live) {
        loop {
            match self.follow(&mut live).await {
                Outcome::Closed => {
                    self.cancel_best_effort(&live).await;
                    return;
                }
                Outcome::Finish(err) => {
                    if let Some(e) = err {
                        let _ = self.tx.send(Item::Failed(e)).await;
                    }
                    return;
                }
                Outcome::Resume(reason) => {
                    // The old watch may live on (a silent node that is only slow): end it.
                    self.cancel_best_effort(&live).await;
                    let start_revision = self.cursor.next_revision();
                    match self.create(None).await {
                        Ok(l) => live = l,
                        Err(e) => {
                            let _ = self.tx.send(Item::Failed(e)).await;
                            return;
                        }
                    }
                    self.resumed.send_modify(|r| {
                        r.count += 1;
                        r.reason = reason;
                        r.start_revision = start_revision;
                        r.node = live.node;
                    });
                }
            }
        }
    }

    async fn follow(&mut self, live: &mut Live) -> Outcome {
        let silence = cursor::silence_limit(live.progress_ms);
        loop {
            let next = tokio::select! {
                _ = self.tx.closed() => return Outcome::Closed,
                next = tokio::time::timeout(silence, live.sub.next()) => next,
            };
            let msg = match next {
                Err(_) => {
                    return Outcome::Resume(format!(
                        "node {} silent for {} ms",
                        live.node,
                        silence.as_millis()
                    ))
                }
                Ok(None) => return Outcome::Resume("the watch inbox closed".into()),
                Ok(Some(m)) => m,
            };
            // Anything unreadable on our own inbox is not from the watch: skip it.
            let Ok(delivery) = serde_json::from_slice::<Delivery>(&msg.payload) else {
                continue;
            };
            let message = match delivery {
                Delivery::End(e) if e.watch_id == live.watch_id => {
                    return match cursor::after_end(&e.end) {
                        AfterEnd::Resume => Outcome::Resume(format!(
                            "node {} ended the watch: {}",
                            live.node, e.end.code
                        )),
                        AfterEnd::Finish(err) => Outcome::Finish(err),
                    }
                }
                Delivery::Message(m) if m.watch_id == live.watch_id => m,
                _ => continue,
            };
            let store_revision = message.store_revision;
            match self.cursor.on_message(message) {
                Step::Gap { expected, got } => {
                    return Outcome::Resume(format!(
                        "message {expected} of the watch was lost (got {got})"
                    ))
                }
                Step::Repeat => {}
                Step::Deliver(events) => {
                    let batch = Item::Batch {
                        events,
                        next_revision: self.cursor.next_revision(),
                        store_revision,
                    };
                    if self.tx.send(batch).await.is_err() {
                        return Outcome::Closed;
                    }
                }
            }
            if let Some(reply) = msg.reply {
                // A lost ack is repaired by the next one (they are cumulative) or ends the
                // watch `slow_consumer`, which the stream resumes.
                let _ = self.client.nats().publish(reply, "{}".into()).await;
            }
        }
    }

    /// Sends the cancel without waiting for the answer: the watch is of no more use to us,
    /// and a node that does not get it ends the watch when its acks stop.
    async fn cancel_best_effort(&self, live: &Live) {
        let body = CancelRequest {
            watch_id: live.watch_id.clone(),
            token: self.client.token.clone(),
        };
        if let Ok(payload) = serde_json::to_vec(&body) {
            let subject = self.client.subjects().node_watch(live.node, "cancel");
            let _ = self.client.nats().publish(subject, payload.into()).await;
        }
    }
}
