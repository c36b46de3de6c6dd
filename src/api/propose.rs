//! Group commit on the leader: client writes that arrive while earlier ones are in flight
//! are proposed together as one `Command::Batch` log entry, so many writes share one log
//! append, one fsync and one replication round. Each write still takes its own revision.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::command::{Applied, Command, LogCommand};
use crate::raft::types::{Raft, RaftMetrics};
use crate::store::StateView;

/// Batches proposed at once: the next batch gathers while this one is in flight. openraft
/// 0.9 flushes appends one after the other, so a second batch in flight only splits the
/// queue into smaller entries: measured (3 nodes, 64 clients) 2 in flight gave 12–13k
/// puts/s, 8 gave 9.5–10k, 1 gave 14–16k.
const BATCHES_IN_FLIGHT: usize = 1;
/// Commands per batch, at most.
const MAX_BATCH: usize = 512;
/// How long a batch still waits for openraft's answer once this node no longer leads the
/// term it was proposed in. openraft 0.9 answers a proposal only when its entry applies or
/// is truncated; a former leader that catches up by installing a snapshot does neither, so
/// without this bound the batch would wait forever.
const ORPHAN_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub enum ProposeError {
    /// Not appended, or truncated before commit: it will never apply; retry elsewhere.
    NotLeader,
    /// Raft refused or stopped; the outcome is unknown.
    Failed(String),
    /// This node lost its leadership while the write was in flight and no answer came: the
    /// new leader may still have committed it.
    Unknown(String),
    /// This node lost its leadership while a resendable write (one with a request id) was in
    /// flight: it may still apply, and the caller sends it to the new leader, whose
    /// idempotency table answers a copy that did.
    LeadershipLost,
}

/// One client write waiting in the queue to join a batch, with the channel its outcome goes to.
struct QueuedWrite {
    command: Command,
    size: usize,
    /// Answered [`ProposeError::LeadershipLost`] at once when the leadership goes.
    resendable: bool,
    reply: Reply,
}

/// Where a queued write's outcome goes.
type Reply = oneshot::Sender<Result<Applied, ProposeError>>;

#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<QueuedWrite>,
}

impl Proposer {
    /// Starts the batching task on the node's `tracker`; it stops when `cancel` fires.
    /// `max_batch_bytes` keeps one entry inside a NATS message.
    pub fn start(
        raft: Raft,
        view: Arc<StateView>,
        max_batch_bytes: usize,
        queue: usize,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Proposer {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let leading = watch_leadership(&raft, tracker, cancel.clone());
        let batcher = Batcher {
            raft,
            view,
            max_batch_bytes,
            leading,
            tracker: tracker.clone(),
        };
        tracker.spawn(batcher.run(rx, cancel));
        Proposer { tx }
    }

    pub async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        self.propose_resendable(command, false).await
    }

    /// [`Self::propose`]; a `resendable` write is answered
    /// [`ProposeError::LeadershipLost`] as soon as this node stops leading while it is in
    /// flight, instead of waiting for an answer that may never come.
    pub async fn propose_resendable(
        &self,
        command: Command,
        resendable: bool,
    ) -> Result<Applied, ProposeError> {
        let (reply, rx) = oneshot::channel();
        let size = command.approximate_size();
        self.tx
            .send(QueuedWrite {
                command,
                size,
                resendable,
                reply,
            })
            .await
            .map_err(|_| ProposeError::Failed("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| ProposeError::Failed("the node is shutting down".into()))?
    }
}

/// The term this node leads, `None` while it leads none.
type Leading = watch::Receiver<Option<u64>>;

/// A watch of the term this node leads. Raft's own metrics change with every append and
/// commit; this one only when leadership does, so a batch in flight waits on it for free.
fn watch_leadership(raft: &Raft, tracker: &TaskTracker, cancel: CancellationToken) -> Leading {
    let mut metrics = raft.metrics();
    let leading = |m: &RaftMetrics| (m.state == ServerState::Leader).then_some(m.current_term);
    let (tx, rx) = watch::channel(leading(&metrics.borrow_and_update()));
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = metrics.changed() => if r.is_err() { break },
            }
            let now = leading(&metrics.borrow_and_update());
            tx.send_if_modified(|was| std::mem::replace(was, now) != now);
        }
        // Raft stopped: no term is led any more.
        tx.send_replace(None);
    });
    rx
}

/// The batching task: gathers queued writes into batches and proposes each on a task of
/// its own.
struct Batcher {
    raft: Raft,
    /// The applied log format and this node's cluster time: what each entry is written in
    /// and stamped with.
    view: Arc<StateView>,
    max_batch_bytes: usize,
    leading: Leading,
    tracker: TaskTracker,
}

impl Batcher {
    async fn run(self, mut rx: mpsc::Receiver<QueuedWrite>, cancel: CancellationToken) {
        let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        let mut carry: Option<QueuedWrite> = None;
        loop {
            // Wait for a slot first: writes pile up in the channel meanwhile and form the
            // batch.
            let slot = tokio::select! {
                _ = cancel.cancelled() => return,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
            };
            let first = match carry.take() {
                Some(w) => w,
                None => tokio::select! {
                    _ = cancel.cancelled() => return,
                    w = rx.recv() => match w {
                        Some(w) => w,
                        None => return,
                    },
                },
            };
            let (batch, next) = self.gather(first, &mut rx);
            carry = next;
            self.tracker.spawn(propose_batch(
                self.raft.clone(),
                self.view.clone(),
                batch,
                slot,
                self.leading.clone(),
            ));
        }
    }

    /// Adds what is queued to `first` until the batch is full; returns the batch and the
    /// write that did not fit.
    fn gather(
        &self,
        first: QueuedWrite,
        rx: &mut mpsc::Receiver<QueuedWrite>,
    ) -> (Vec<QueuedWrite>, Option<QueuedWrite>) {
        let mut bytes = first.size;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) if bytes + w.size <= self.max_batch_bytes => {
                    bytes += w.size;
                    batch.push(w);
                }
                Ok(w) => return (batch, Some(w)),
                Err(_) => break,
            }
        }
        (batch, None)
    }
}

/// The batch as one command (a `Command::Batch` unless it holds one write), with the reply
/// channels left behind (`None` once answered) and which writes are resendable; `None` for
/// an empty batch.
fn into_entry(batch: Vec<QueuedWrite>) -> Option<(Command, Vec<Option<Reply>>, Vec<bool>)> {
    let mut replies = Vec::with_capacity(batch.len());
    let mut commands = Vec::with_capacity(batch.len());
    let mut resendable = Vec::with_capacity(batch.len());
    for w in batch {
        replies.push(Some(w.reply));
        resendable.push(w.resendable);
        commands.push(w.command);
    }
    let command = match commands.len() {
        0 => return None,
        1 => commands.pop()?,
        _ => Command::Batch(commands),
    };
    Some((command, replies, resendable))
}

/// Once the leadership is lost: answers the resendable writes at once (they go to the new
/// leader); the rest wait for an answer. Whether any reply is still waiting.
fn release_resendable(replies: &mut [Option<Reply>], resendable: &[bool]) -> bool {
    for (reply, resend) in replies.iter_mut().zip(resendable) {
        if *resend {
            if let Some(reply) = reply.take() {
                let _ = reply.send(Err(ProposeError::LeadershipLost));
            }
        }
    }
    replies.iter().any(Option::is_some)
}

/// Proposes one batch and answers its writers. The slot is given back when openraft
/// answers, or as soon as this node stops leading the term the batch was proposed in: an
/// answer that may never come must not hold up the writes of a later leadership.
async fn propose_batch(
    raft: Raft,
    view: Arc<StateView>,
    batch: Vec<QueuedWrite>,
    slot: OwnedSemaphorePermit,
    mut leading: Leading,
) {
    let single = batch.len() == 1;
    let Some((command, mut replies, resendable)) = into_entry(batch) else {
        return;
    };
    // Not leading now: client_write answers ForwardToLeader at once.
    let term = leading.borrow().unwrap_or_default();
    // Format 2 only once the switch applied here; stamped at the last moment, so that the
    // stamps of successive batches follow their order in the log.
    let envelope = LogCommand::for_cluster(command, view.cluster_format(), || {
        view.clock().stamp(view.applied_cluster_time())
    });
    let write = raft.client_write(envelope);
    tokio::pin!(write);
    let answer = tokio::select! {
        answer = &mut write => Some(answer),
        _ = leading.wait_for(|now| *now != Some(term)) => None,
    };
    drop(slot);
    let answer = match answer {
        Some(answer) => answer,
        None => {
            if !release_resendable(&mut replies, &resendable) {
                return;
            }
            match tokio::time::timeout(ORPHAN_WAIT, write).await {
                Ok(answer) => answer,
                Err(_) => {
                    tracing::warn!(
                        term,
                        writes = replies.len(),
                        "no answer for a batch proposed before this node lost its leadership"
                    );
                    let e = ProposeError::Unknown(format!(
                        "this node stopped leading term {term} while the write was in flight; \
                     it may have been committed by the new leader"
                    ));
                    for reply in replies.into_iter().flatten() {
                        let _ = reply.send(Err(e.clone()));
                    }
                    return;
                }
            }
        }
    };
    let result = match answer {
        Ok(resp) => Ok(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            Err(ProposeError::NotLeader)
        }
        Err(RaftError::APIError(e)) => Err(ProposeError::Failed(e.to_string())),
        Err(RaftError::Fatal(e)) => Err(ProposeError::Failed(format!("raft stopped: {e}"))),
    };
    match result {
        Ok(Applied::Batch(outcomes)) if !single && outcomes.len() == replies.len() => {
            for (reply, o) in replies.into_iter().zip(outcomes) {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(o));
                }
            }
        }
        Ok(outcome) if single => {
            for reply in replies.into_iter().flatten() {
                let _ = reply.send(Ok(outcome.clone()));
            }
        }
        Ok(other) => {
            let e = ProposeError::Failed(format!(
                "batch outcome does not match its commands: {other:?}"
            ));
            for reply in replies.into_iter().flatten() {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for reply in replies.into_iter().flatten() {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
