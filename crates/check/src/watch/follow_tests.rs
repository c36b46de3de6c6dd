//! The watcher ([`super::follow`]) against a scripted watch server on a real `nats-server`:
//! it acknowledges messages, resumes from an end's `resume_revision`, treats 3 ×
//! `progress_ms` of silence as an end and resumes past what it fully saw, moves to the next
//! node on `cluster_not_ready`, and stops once it has fully seen its target; and the
//! checker's drop rule turns what it recorded into the change log exactly.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use super::check::{accepted, stream_problems};
use super::follow::{follow, Control, Spec};
use super::StreamEnd;
use concord_harness::nats_server::{self, NatsServer};

fn event(rev: u64) -> Value {
    json!({"type": "put", "key": "watch/0", "value": format!("v{rev}"), "revision": rev,
           "create_revision": 1, "version": rev, "lease": 0})
}

/// What a scripted stream sends after the create: messages `(events, store_revision)`, then
/// an end `(code, resume_revision)` or silence.
struct Script {
    messages: Vec<(Vec<u64>, u64)>,
    end: Option<(&'static str, u64)>,
}

/// Serves `P.node.<node>.watch.create` on `client`: each create is recorded as
/// `(node, start_revision)` and answered by the next of `replies` (`Ok(script)` or
/// `Err(code)`); every message waits for the ack of the one before it.
async fn serve(
    client: async_nats::Client,
    node: u64,
    replies: Vec<Result<Script, &'static str>>,
    creates: Arc<Mutex<Vec<(u64, u64)>>>,
) {
    let Ok(mut sub) = client
        .subscribe(format!("concord.node.{node}.watch.create"))
        .await
    else {
        return;
    };
    for (i, reply) in replies.into_iter().enumerate() {
        let Some(req) = sub.next().await else { return };
        let body: Value = serde_json::from_slice(&req.payload).unwrap_or_default();
        let start = body["start_revision"].as_u64().unwrap_or(0);
        creates.lock().unwrap().push((node, start));
        let (Some(reply_to), Some(deliver)) = (req.reply, body["deliver"].as_str()) else {
            return;
        };
        let script = match reply {
            Err(code) => {
                let r = json!({"ok": false, "error": {"code": code, "message": "scripted"}});
                let _ = client.publish(reply_to, r.to_string().into()).await;
                // Flushed: the client is dropped when the script runs out.
                let _ = client.flush().await;
                continue;
            }
            Ok(script) => script,
        };
        let id = format!("n{node}-w{i}");
        let r = json!({"ok": true, "watch_id": id, "node": node, "store_revision": 0,
                       "compact_revision": 0, "progress_ms": 100});
        let _ = client.publish(reply_to, r.to_string().into()).await;
        for (seq, (revs, store)) in script.messages.iter().enumerate() {
            let m = json!({"watch_id": id, "seq": seq + 1, "store_revision": store,
                           "events": revs.iter().map(|r| event(*r)).collect::<Vec<_>>()});
            let ack = client.request(deliver.to_string(), m.to_string().into());
            if tokio::time::timeout(Duration::from_secs(2), ack)
                .await
                .is_err()
            {
                return;
            }
        }
        if let Some((code, resume)) = script.end {
            let end = json!({"watch_id": id, "end": {"code": code, "message": "scripted",
                                                    "resume_revision": resume}});
            let _ = client
                .publish(deliver.to_string(), end.to_string().into())
                .await;
        }
    }
}

/// The test's `nats-server` and its directory, gone also when the test panics.
struct Server(NatsServer, std::path::PathBuf);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_resumes_through_ends_silence_and_refusals() {
    let dir = std::env::temp_dir().join(format!("watch-follow-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = nats_server::find().expect("nats-server (set CONCORD_TEST_NATS_SERVER)");
    let server = Server(NatsServer::start(&binary, &dir).await.unwrap(), dir);
    let url = server.0.url();
    let connect = || async_nats::connect(url.as_str());
    let (c1, c2, watcher) = (
        connect().await.unwrap(),
        connect().await.unwrap(),
        connect().await.unwrap(),
    );
    let creates = Arc::new(Mutex::new(Vec::new()));
    // Node 1: revisions 3-5, then no_leader with resume_revision 5 (5 delivered again);
    // then 5-6 and silence; then cluster_not_ready, so node 2 serves 7 and 8.
    let node1 = vec![
        Ok(Script {
            messages: vec![(vec![3, 4], 4), (vec![5], 5)],
            end: Some(("no_leader", 5)),
        }),
        Ok(Script {
            messages: vec![(vec![5, 6], 6), (vec![], 6)],
            end: None,
        }),
        Err("cluster_not_ready"),
    ];
    let node2 = vec![Ok(Script {
        messages: vec![(vec![7], 7), (vec![8], 8)],
        end: None,
    })];
    tokio::spawn(serve(c1, 1, node1, creates.clone()));
    tokio::spawn(serve(c2, 2, node2, creates.clone()));
    let control = Arc::new(Control {
        target: AtomicU64::new(8),
        give_up: AtomicBool::new(false),
    });
    let spec = Spec {
        name: "w".into(),
        subjects: "concord".into(),
        watch_prefix: "watch/".into(),
        nodes: vec![(1, watcher.clone()), (2, watcher)],
        start_revision: 3,
        window: 16,
        clock: Instant::now(),
    };
    let following = tokio::spawn(follow(spec, control.clone()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !following.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = following.is_finished();
    control
        .give_up
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let log = following.await.unwrap();
    assert!(stopped, "still following after 20 s: {log:#?}");
    assert_eq!(
        *creates.lock().unwrap(),
        vec![(1, 3), (1, 5), (1, 7), (2, 7)],
        "creates (node, start)"
    );
    let ends: Vec<_> = log.streams.iter().map(|s| s.end.clone()).collect();
    assert!(
        matches!(&ends[0], Some(StreamEnd::End { code, resume_revision: 5, .. }) if code == "no_leader")
    );
    assert_eq!(ends[1], Some(StreamEnd::Silence));
    assert_eq!(ends[2], Some(StreamEnd::Stopped));
    assert_eq!(log.refused.get("cluster_not_ready"), Some(&1));
    assert!(
        stream_problems(&log).is_empty(),
        "{:?}",
        stream_problems(&log)
    );
    let a = accepted(&log);
    let revisions: Vec<u64> = a
        .events
        .iter()
        .filter_map(|e| e["revision"].as_u64())
        .collect();
    assert_eq!(revisions, vec![3, 4, 5, 6, 7, 8]);
    assert_eq!((a.received, a.dropped, a.fully_seen), (7, 1, 8));
    drop(server);
}
