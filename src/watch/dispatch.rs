//! The two paths into a watch's task besides its own timers: the dispatcher, which follows
//! the applied revision and wakes the watches an event concerns (a write to a key nobody
//! watches costs one lookup per prefix watched), and the acknowledgement router, one
//! subscription for every watch of the node.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use futures::StreamExt;

use super::Watches;

/// Follows the applied revision until the node stops.
pub async fn run_dispatcher(w: Arc<Watches>) {
    let view = w.ctx.consensus.view.clone();
    let mut revision = view.watch_revision();
    let mut seen = *revision.borrow_and_update();
    loop {
        tokio::select! {
            _ = w.cancel.cancelled() => return,
            changed = revision.changed() => if changed.is_err() { return },
        }
        let now = *revision.borrow_and_update();
        if now <= seen {
            // A snapshot install moved the store elsewhere: every watch looks again.
            seen = now;
            wake_all(&w);
            continue;
        }
        match view.history_tail().since(seen + 1) {
            Some(since) => {
                let r = w.registry();
                for e in since.batches.iter().flat_map(|b| b.iter()) {
                    if e.revision > seen {
                        r.wake_matching(&e.key);
                    }
                }
            }
            // Fell behind the tail: the watches read for themselves.
            None => wake_all(&w),
        }
        seen = now;
    }
}

fn wake_all(w: &Watches) {
    for s in w.registry().by_id.values() {
        s.wake.notify_one();
    }
}

/// Routes acknowledgements (`<ack prefix>.<watch id>.<seq>`) to their watches.
pub async fn run_acks(w: Arc<Watches>) -> Result<(), async_nats::SubscribeError> {
    let mut sub = w
        .ctx
        .cluster
        .bulk
        .subscribe(format!("{}.>", w.ack_prefix))
        .await?;
    loop {
        let msg = tokio::select! {
            _ = w.cancel.cancelled() => return Ok(()),
            m = sub.next() => match m { Some(m) => m, None => return Ok(()) },
        };
        let Some(rest) = msg
            .subject
            .as_str()
            .strip_prefix(w.ack_prefix.as_str())
            .and_then(|r| r.strip_prefix('.'))
        else {
            continue;
        };
        let Some((id, seq)) = rest.rsplit_once('.') else {
            continue;
        };
        let (Ok(seq), Some(shared)) = (seq.parse::<u64>(), w.find(id)) else {
            continue;
        };
        if shared.acked.fetch_max(seq, Relaxed) < seq {
            shared.wake.notify_one();
        }
    }
}
