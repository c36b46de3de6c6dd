//! One watch's task: from its next revision, read what the change log holds (the shared
//! tail, or disk when it fell behind), send it as messages while the window has room, send
//! a progress notice when idle, and end the watch when DESIGN.md says so.
//!
//! `next` is the first revision not yet sent; `acked_through` the last revision whose every
//! message was acknowledged, so `resume_revision` is `acked_through + 1`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::ServerState;
use tokio::time::Instant;

use super::batch::{self, Built};
use super::message;
use super::request::Spec;
use super::{Shared, Watches};
use crate::auth::{Credential, Role};
use crate::store::history::serve::Changes;
use crate::store::StateView;

/// Bytes of events read from disk at a time by a watch that fell behind.
const DISK_BUDGET: usize = 1 << 20;

/// How a watch ended: its code and a message naming why.
pub struct End {
    pub code: &'static str,
    pub message: String,
}

fn end(code: &'static str, message: impl Into<String>) -> End {
    End {
        code,
        message: message.into(),
    }
}

struct Sent {
    seq: u64,
    at: Instant,
    /// The last revision complete once this message is acknowledged.
    through: u64,
}

struct Stream {
    w: Arc<Watches>,
    shared: Arc<Shared>,
    spec: Arc<Spec>,
    next: u64,
    seq: u64,
    inflight: VecDeque<Sent>,
    acked_through: u64,
    started: Instant,
    last_sent: Instant,
    last_check: Instant,
    messages: u64,
    events: u64,
}

/// Serves a watch from revision `start` until it ends, then sends the end message.
pub async fn run(w: Arc<Watches>, shared: Arc<Shared>, spec: Spec, start: u64) {
    let now = Instant::now();
    let mut s = Stream {
        w: w.clone(),
        shared: shared.clone(),
        spec: Arc::new(spec),
        next: start,
        seq: 0,
        inflight: VecDeque::new(),
        acked_through: start.saturating_sub(1),
        started: now,
        last_sent: now,
        last_check: now,
        messages: 0,
        events: 0,
    };
    let ended = s.serve().await;
    s.absorb_acks();
    let resume = s.acked_through + 1;
    let body = message::end(&shared.id, ended.code, &ended.message, resume);
    let bulk = &w.ctx.cluster.bulk;
    if let Err(e) = bulk
        .publish(s.spec.deliver.clone(), Bytes::from(body))
        .await
    {
        tracing::debug!(watch = %shared.id, "end message not sent: {e}");
    }
    let left = w.unregister(&shared.id);
    tracing::debug!(watch = %shared.id, code = ended.code, resume, "watch ended");
    w.ctx
        .observer
        .watch_ended(ended.code, left, s.messages, s.events);
}

impl Stream {
    fn view(&self) -> &Arc<StateView> {
        &self.w.ctx.consensus.view
    }

    async fn serve(&mut self) -> End {
        let progress = self.w.config.progress();
        loop {
            self.absorb_acks();
            if let Some(ended) = self.check() {
                return ended;
            }
            let room = self.inflight.len() < self.spec.window;
            if room && self.next <= self.view().revision() {
                if let Err(ended) = self.fill().await {
                    return ended;
                }
            }
            let idle = self.last_sent.elapsed() >= progress;
            if idle && self.inflight.len() < self.spec.window && self.next > self.view().revision()
            {
                if let Err(ended) = self.send(Vec::new(), 0, self.next - 1, false).await {
                    return ended;
                }
            }
            let deadline = self.deadline();
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.shared.stop.cancelled() => {}
            }
        }
    }

    /// When the task must look again by itself: the next progress notice or check, or the
    /// oldest message's acknowledgement deadline.
    fn deadline(&self) -> Instant {
        let progress = self.w.config.progress();
        let mut at = (self.last_sent + progress).min(self.last_check + progress);
        if let Some(oldest) = self.inflight.front() {
            at = at.min(oldest.at + self.w.config.ack_timeout());
        }
        at.max(Instant::now() + Duration::from_millis(1))
    }

    fn absorb_acks(&mut self) {
        let acked = self.shared.acked.load(Relaxed);
        while let Some(sent) = self.inflight.front() {
            if sent.seq > acked {
                break;
            }
            self.acked_through = self.acked_through.max(sent.through);
            self.inflight.pop_front();
        }
    }

    /// Why the watch must end now, if it must.
    fn check(&mut self) -> Option<End> {
        if self.shared.stop.is_cancelled() {
            return Some(match self.shared.cancelled.load(Relaxed) {
                true => end("cancelled", "the watch was cancelled"),
                false => end(
                    "node_stopping",
                    "this node is stopping: resume on another node",
                ),
            });
        }
        let ack_timeout = self.w.config.ack_timeout();
        if let Some(oldest) = self.inflight.front() {
            if oldest.at.elapsed() >= ack_timeout {
                return Some(end(
                    "slow_consumer",
                    format!(
                        "message {} was not acknowledged within {} ms",
                        oldest.seq,
                        ack_timeout.as_millis()
                    ),
                ));
            }
        }
        if self.last_check.elapsed() < self.w.config.progress() {
            return None;
        }
        self.last_check = Instant::now();
        let ctx = &self.w.ctx;
        let cred = Credential::of(self.spec.token.as_deref(), None);
        if let Err(e) = ctx
            .security
            .auth
            .check(ctx.consensus.view.tokens(), cred, Role::Read)
        {
            return Some(end("unauthorized", e.message));
        }
        self.leaderless().map(|ms| {
            end(
                "no_leader",
                format!("this node has heard from no leader for {ms} ms: resume on another node"),
            )
        })
    }

    /// How long this node has been without a leader, when that is past the limit.
    fn leaderless(&self) -> Option<u128> {
        let limit = self.w.no_leader_after.as_millis();
        let consensus = &self.w.ctx.consensus;
        let m = consensus.raft.metrics();
        let m = m.borrow();
        let ms = match m.state {
            ServerState::Leader => u128::from(m.millis_since_quorum_ack.unwrap_or(u64::MAX)),
            _ => match consensus.contact.last_heard().since() {
                Some(d) => d.as_millis(),
                None => self.started.elapsed().as_millis(),
            },
        };
        (ms > limit).then_some(ms)
    }

    /// Sends what the change log holds from `next` on, as far as the window allows.
    async fn fill(&mut self) -> Result<(), End> {
        let view = self.view().clone();
        let room = self.spec.window - self.inflight.len();
        let must_send = self.inflight.is_empty();
        let (next, spec) = (self.next, self.spec.clone());
        // Memory only: built here. Disk (a backlog, or previous values): on the blocking pool.
        let in_memory = !spec.wants_prev() && view.history_tail().first() <= next;
        let built = if in_memory {
            build(&view, &spec, next, room, must_send)?
        } else {
            tokio::task::spawn_blocking(move || build(&view, &spec, next, room, must_send))
                .await
                .map_err(|e| {
                    end(
                        "node_stopping",
                        format!("reading the change log failed: {e}"),
                    )
                })??
        };
        for out in built.messages {
            self.send(out.events, out.count, out.store_revision, out.fragment)
                .await?;
        }
        self.next = self.next.max(built.next);
        Ok(())
    }

    async fn send(
        &mut self,
        events: Vec<u8>,
        count: usize,
        store_revision: u64,
        fragment: bool,
    ) -> Result<(), End> {
        self.seq += 1;
        let id = &self.shared.id;
        let body = message::message(id, self.seq, &events, store_revision, fragment);
        let reply = format!("{}.{id}.{}", self.w.ack_prefix, self.seq);
        let bulk = &self.w.ctx.cluster.bulk;
        bulk.publish_with_reply(self.spec.deliver.clone(), reply, Bytes::from(body))
            .await
            .map_err(|e| {
                end(
                    "node_stopping",
                    format!("publishing to the watcher failed: {e}"),
                )
            })?;
        let now = Instant::now();
        self.inflight.push_back(Sent {
            seq: self.seq,
            at: now,
            through: if fragment {
                store_revision - 1
            } else {
                store_revision
            },
        });
        self.last_sent = now;
        self.messages += 1;
        self.events += count as u64;
        self.w.ctx.observer.watch_sent(count);
        Ok(())
    }
}

fn build(
    view: &StateView,
    spec: &Spec,
    next: u64,
    room: usize,
    must_send: bool,
) -> Result<Built, End> {
    let storage = |e: crate::store::Error| {
        end(
            "cluster_not_ready",
            format!("this node could not read its change log ({e}): resume on another node"),
        )
    };
    match view.changes_since(next, DISK_BUDGET).map_err(storage)? {
        Changes::Compacted(c) => Err(end(
            "compacted",
            format!("revision {next} is compacted (compact revision {c}): list again, then watch from the list's revision"),
        )),
        Changes::NotHeld(start) => Err(end(
            "cluster_not_ready",
            format!("this node's change log starts at revision {start} (it installed a snapshot): resume on another node"),
        )),
        Changes::Events { batches, last } => {
            let mut prev = |e: &crate::store::history::ChangeEvent| {
                view.record_at(&e.key, e.prev_revision).ok().flatten()
            };
            let events = batches.iter().flat_map(|b| b.iter());
            Ok(batch::build(events, (next, last), spec, room, must_send, &mut prev))
        }
    }
}
