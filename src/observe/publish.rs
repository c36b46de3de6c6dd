//! The telemetry publisher: takes events off the observer's queue, writes their JSON and
//! publishes each on `P.telemetry.<path>`. The only place events are serialized.
//!
//! Subjects are built once; a publish hands the message to the NATS client's own queue. If
//! NATS is slow or away that queue fills, this task waits, and the observer's queue fills
//! and drops (and counts) new events: requests never wait for telemetry.

use std::sync::Arc;

use async_nats::{Client, Subject};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::event::PATHS;
use super::{Observer, Stamped};
use crate::subjects::Subjects;

/// Events taken off the queue per wakeup.
const BATCH: usize = 256;

pub async fn run(
    observer: Arc<Observer>,
    mut rx: mpsc::Receiver<Stamped>,
    client: Client,
    subjects: Subjects,
    cancel: CancellationToken,
) {
    let targets: Vec<Subject> = PATHS
        .iter()
        .map(|p| Subject::from(subjects.telemetry(p)))
        .collect();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            _ = cancel.cancelled() => return,
            n = rx.recv_many(&mut batch, BATCH) => n,
        };
        if n == 0 {
            return;
        }
        for stamped in batch.drain(..) {
            let mut json = Vec::with_capacity(192);
            stamped
                .event
                .write_json(observer.node, stamped.time, &mut json);
            let subject = targets[stamped.event.path_index()].clone();
            match client.publish(subject, Bytes::from(json)).await {
                Ok(()) => observer.metrics.telemetry_published.increment(1),
                Err(e) => {
                    observer.metrics.telemetry_dropped.increment(1);
                    tracing::debug!(error = %e, "telemetry event not published");
                }
            }
        }
    }
}
