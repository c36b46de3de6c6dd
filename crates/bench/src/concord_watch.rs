//! The `concord` target's watchers, on the raw wire protocol (DESIGN.md "Watch"): each
//! subscribes to an inbox of its own, then sends `P.watch.create` with that `deliver` (the
//! create queue group spreads the watches over the voters and learners), acknowledges every
//! message by replying `{}` to it, and records each event's revision in the [`Tracker`] the
//! moment its message arrives. When the run is over it cancels its watch on the node that
//! serves it (`P.node.<id>.watch.cancel`) and waits, bounded, for the end message, so that no
//! watch outlives the run and loads the next one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::fanout::{Tracker, WatcherStats};
use concord_wire::subjects::Subjects;

/// Watches created at once (each is a subscribe, a flush and a request).
const CREATE_CONCURRENCY: usize = 32;
/// How long a watcher waits for its end message after the cancel was answered.
const END_WAIT: Duration = Duration::from_secs(3);

/// A watch message; only what the bench needs (serde skips the rest).
#[derive(Debug, Deserialize, PartialEq)]
pub(crate) struct Message {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    events: Vec<Event>,
    end: Option<End>,
}

#[derive(Debug, Deserialize, PartialEq)]
struct Event {
    revision: u64,
}

#[derive(Debug, Deserialize, PartialEq)]
struct End {
    code: String,
}

/// A created watch, not yet followed.
struct Created {
    nats: async_nats::Client,
    sub: async_nats::Subscriber,
    watch_id: String,
    node: u64,
    store_revision: u64,
}

/// The watchers of a run.
pub(crate) struct Started {
    /// The first revision any watch delivers: the slots' base.
    pub base: u64,
    pub by_node: BTreeMap<String, u64>,
    pub create_errors: BTreeMap<String, u64>,
    pub tasks: Vec<JoinHandle<WatcherStats>>,
}

/// What every watcher shares.
#[derive(Clone)]
struct Ctx {
    subjects: Subjects,
    headers: Option<async_nats::HeaderMap>,
    timeout: Duration,
    tracker: Arc<Tracker>,
}

/// Creates `n` watches on `watch_prefix` over `conns` (watcher i on connection i mod len),
/// then starts following them; `stop` turns true when the run is over. Fails when no watch
/// could be created.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start(
    conns: &[async_nats::Client],
    prefix: &str,
    token: Option<&str>,
    watch_prefix: &str,
    n: usize,
    tracker: Arc<Tracker>,
    stop: watch::Receiver<bool>,
    timeout: Duration,
) -> anyhow::Result<Started> {
    anyhow::ensure!(!conns.is_empty(), "no NATS connection for the watchers");
    let ctx = Ctx {
        subjects: Subjects::new(prefix, "-"),
        headers: token.map(|t| {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Authorization", format!("Bearer {t}").as_str());
            h
        }),
        timeout,
        tracker,
    };
    let results: Vec<Result<Created, String>> = futures::stream::iter(0..n)
        .map(|i| create(conns[i % conns.len()].clone(), &ctx, watch_prefix))
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    let mut created = Vec::new();
    let mut create_errors = BTreeMap::new();
    for r in results {
        match r {
            Ok(c) => created.push(c),
            Err(code) => *create_errors.entry(code).or_default() += 1,
        }
    }
    anyhow::ensure!(
        !created.is_empty(),
        "no watch could be created on {}: {create_errors:?}",
        ctx.subjects.watch_create()
    );
    let base = created.iter().map(|c| c.store_revision).min().unwrap_or(0) + 1;
    ctx.tracker.set_base(base);
    let mut by_node = BTreeMap::new();
    let mut tasks = Vec::new();
    for c in created {
        *by_node.entry(c.node.to_string()).or_default() += 1;
        tasks.push(tokio::spawn(follow(c, ctx.clone(), stop.clone())));
    }
    Ok(Started {
        base,
        by_node,
        create_errors,
        tasks,
    })
}

/// The create request for a watch of `watch_prefix` delivered to `deliver`.
fn create_body(watch_prefix: &str, deliver: &str) -> Vec<u8> {
    serde_json::json!({"prefix": watch_prefix, "deliver": deliver})
        .to_string()
        .into_bytes()
}

/// A request with the token's header; the reply's JSON, or a short failure code.
async fn request(
    nats: &async_nats::Client,
    ctx: &Ctx,
    subject: String,
    body: Vec<u8>,
) -> Result<serde_json::Value, String> {
    let mut req = async_nats::Request::new()
        .payload(body.into())
        .timeout(Some(ctx.timeout));
    if let Some(h) = &ctx.headers {
        req = req.headers(h.clone());
    }
    let reply = nats
        .send_request(subject, req)
        .await
        .map_err(|e| format!("nats_{:?}", e.kind()))?;
    serde_json::from_slice(&reply.payload).map_err(|_| "unreadable".to_string())
}

/// Subscribes to a fresh inbox (before the create, so the first message finds it), then
/// creates the watch there. Errors are the reply's code or the NATS failure's.
async fn create(
    nats: async_nats::Client,
    ctx: &Ctx,
    watch_prefix: &str,
) -> Result<Created, String> {
    let inbox = nats.new_inbox();
    let sub = nats
        .subscribe(inbox.clone())
        .await
        .map_err(|e| format!("subscribe_{:?}", e.kind()))?;
    nats.flush()
        .await
        .map_err(|e| format!("flush_{:?}", e.kind()))?;
    let subject = ctx.subjects.watch_create();
    let reply = request(&nats, ctx, subject, create_body(watch_prefix, &inbox)).await?;
    if reply["ok"] != true {
        return Err(reply["error"]["code"]
            .as_str()
            .unwrap_or("unreadable")
            .to_string());
    }
    let (Some(watch_id), Some(node), Some(store_revision)) = (
        reply["watch_id"].as_str(),
        reply["node"].as_u64(),
        reply["store_revision"].as_u64(),
    ) else {
        return Err("create_reply_incomplete".into());
    };
    Ok(Created {
        nats,
        sub,
        watch_id: watch_id.to_string(),
        node,
        store_revision,
    })
}

/// Follows one watch until `stop`, then cancels it and waits for its end.
async fn follow(mut c: Created, ctx: Ctx, mut stop: watch::Receiver<bool>) -> WatcherStats {
    let mut st = WatcherStats::default();
    let mut state = (0u64, 0u64); // (last seq, last revision)
    loop {
        tokio::select! {
            biased;
            m = c.sub.next() => match m {
                Some(m) => if on_message(&c.nats, &ctx.tracker, m, &mut st, &mut state).await {
                    return st;
                },
                None => {
                    st.end = Some("subscription_closed".into());
                    return st;
                }
            },
            r = stop.changed() => if r.is_err() || *stop.borrow() { break },
        }
    }
    let subject = ctx.subjects.node_watch(c.node, "cancel");
    let body = serde_json::json!({"watch_id": c.watch_id}).to_string();
    match request(&c.nats, &ctx, subject, body.into_bytes()).await {
        Ok(r) if r["ok"] == true => {}
        Ok(r) => {
            let code = r["error"]["code"].as_str().unwrap_or("unreadable");
            st.end = Some(format!("cancel_{code}"));
            return st;
        }
        Err(code) => {
            st.end = Some(format!("cancel_{code}"));
            return st;
        }
    }
    let deadline = tokio::time::Instant::now() + END_WAIT;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, c.sub.next()).await {
        if on_message(&c.nats, &ctx.tracker, m, &mut st, &mut state).await {
            return st;
        }
    }
    st.end = Some("no_end_after_cancel".into());
    st
}

/// Acknowledges `m` and records its events; true when it was the end message.
async fn on_message(
    nats: &async_nats::Client,
    tracker: &Tracker,
    m: async_nats::Message,
    st: &mut WatcherStats,
    (last_seq, last_revision): &mut (u64, u64),
) -> bool {
    let at = tracker.now_us();
    // Ack at once: the window is the server's flow control, not a measure of this parse.
    if let Some(reply) = m.reply {
        let _ = nats.publish(reply, bytes::Bytes::from_static(b"{}")).await;
    }
    st.messages += 1;
    let msg: Message = match serde_json::from_slice(&m.payload) {
        Ok(msg) => msg,
        Err(_) => {
            st.end = Some("unreadable_message".into());
            return true;
        }
    };
    if let Some(end) = msg.end {
        st.end = Some(end.code);
        return true;
    }
    if msg.seq != *last_seq + 1 {
        st.gaps += 1;
    }
    *last_seq = msg.seq;
    if msg.events.is_empty() {
        st.progress += 1;
    }
    // A revision may span several events (and fragments): count it once.
    for e in msg.events {
        if e.revision != *last_revision {
            tracker.arrive(e.revision, at, st);
            *last_revision = e.revision;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_as_the_contract_has_them() {
        let m: Message = serde_json::from_str(
            r#"{"watch_id":"w1","seq":3,"events":[{"type":"put","key":"bench:1","value":"x",
                "revision":9,"create_revision":9,"version":1,"lease":0}],"store_revision":9}"#,
        )
        .unwrap();
        assert_eq!((m.seq, m.events.len(), m.end.is_none()), (3, 1, true));
        assert_eq!(m.events[0].revision, 9);
        let p: Message =
            serde_json::from_str(r#"{"watch_id":"w1","seq":4,"events":[],"store_revision":9}"#)
                .unwrap();
        assert!(p.events.is_empty() && p.end.is_none());
        let e: Message = serde_json::from_str(
            r#"{"watch_id":"w1","end":{"code":"cancelled","message":"","resume_revision":10}}"#,
        )
        .unwrap();
        assert_eq!(e.end.map(|e| e.code).as_deref(), Some("cancelled"));
    }

    #[test]
    fn the_create_request_names_the_prefix_and_the_inbox() {
        let v: serde_json::Value =
            serde_json::from_slice(&create_body("bench:", "_INBOX.abc")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"prefix":"bench:","deliver":"_INBOX.abc"})
        );
    }
}
