//! One watcher over the raw wire protocol: creates a watch of the prefix on a node
//! (`P.node.<id>.watch.create`, delivering to an inbox it subscribed to first), acknowledges
//! every message, and when the stream ends (an end message, 3 × `progress_ms` of silence, a
//! lost message, or one it cannot read) creates the next one: from the end's
//! `resume_revision`, else from the last revision it fully saw + 1. Creates are retried with
//! backoff while the node is down or refuses (`busy`, `cluster_not_ready`: the latter moves
//! it to the next node, as the contract says, and so do creates unanswered for longer than
//! a fault is held); each new stream tries the home node first. Records everything ([`WatcherLog`]); drops
//! nothing (the drop rule is the checker's, [`super::check::accepted`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use super::{Message, Stream, StreamEnd, WatcherLog};

/// How long a create may take before it counts as unanswered.
const CREATE_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff between refused creates: from the first, doubling to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_millis(800));
/// Unanswered creates in a row (about 10 s) after which the watcher tries the next node.
const MAX_UNANSWERED: u32 = 4;
/// How often a stream waiting for messages looks at the stop flags.
const TICK: Duration = Duration::from_millis(200);

/// When a watcher stops: once it has fully seen `target` (0: not set yet), or at once when
/// `give_up` is set.
#[derive(Debug, Default)]
pub struct Control {
    pub target: AtomicU64,
    pub give_up: AtomicBool,
}

impl Control {
    fn done(&self, next: u64) -> bool {
        let target = self.target.load(Ordering::Relaxed);
        self.give_up.load(Ordering::Relaxed) || (target > 0 && next > target)
    }
}

/// Who follows what, where.
pub struct Spec {
    pub name: String,
    /// The cluster's subject prefix (`concord`).
    pub subjects: String,
    /// The key prefix watched.
    pub watch_prefix: String,
    /// Nodes to create watches on, each with a connection to its own NATS server; the
    /// first is home.
    pub nodes: Vec<(u64, async_nats::Client)>,
    pub start_revision: u64,
    pub window: u32,
    /// The workload's clock (event times are ns since it).
    pub clock: Instant,
}

/// What one stream came to: how it ended, and where the next one starts.
struct Ended {
    end: StreamEnd,
    resume: u64,
}

/// Follows `spec.watch_prefix` until `control` says stop; returns what it recorded.
pub async fn follow(spec: Spec, control: Arc<Control>) -> WatcherLog {
    let mut log = WatcherLog {
        name: spec.name.clone(),
        home: spec.nodes.first().map_or(0, |n| n.0),
        start_revision: spec.start_revision,
        ..WatcherLog::default()
    };
    // The first revision not fully seen.
    let mut next = spec.start_revision;
    let mut from = spec.start_revision;
    while !control.done(next) && !spec.nodes.is_empty() {
        let Some((stream, sub, silence)) = create(&spec, &mut log, from, &control, next).await
        else {
            break;
        };
        let (node, client) = spec
            .nodes
            .iter()
            .find(|n| n.0 == stream.node)
            .unwrap_or(&spec.nodes[0]);
        let mut stream = stream;
        let ended = read(client, (sub, silence), &mut stream, &mut next, &control).await;
        if !matches!(ended.end, StreamEnd::End { .. }) {
            // Free the node's watch: it may still be alive (a stop, a silence that was a
            // pause). Best effort: the node ends an unacknowledged watch by itself anyway.
            let (subject, body) = (
                format!("{}.node.{node}.watch.cancel", spec.subjects),
                json!({"watch_id": stream.watch_id}).to_string(),
            );
            let client = client.clone();
            tokio::spawn(async move {
                let cancel = client.request(subject, body.into());
                let _ = tokio::time::timeout(Duration::from_secs(1), cancel).await;
            });
        }
        from = ended.resume;
        stream.end = Some(ended.end);
        log.streams.push(stream);
    }
    log
}

/// Creates a watch from `from`, trying the home node first and retrying with backoff;
/// `None` once `control` says stop, or on a refusal no retry can mend.
async fn create(
    spec: &Spec,
    log: &mut WatcherLog,
    from: u64,
    control: &Control,
    next: u64,
) -> Option<(Stream, async_nats::Subscriber, Duration)> {
    let mut i = 0;
    let mut backoff = BACKOFF.0;
    let mut unanswered = 0;
    while !control.done(next) {
        let (node, client) = &spec.nodes[i % spec.nodes.len()];
        let inbox = client.new_inbox();
        let code = match client.subscribe(inbox.clone()).await {
            Err(_) => "no_connection".to_string(),
            Ok(sub) => {
                let body = json!({
                    "prefix": spec.watch_prefix, "start_revision": from, "deliver": inbox,
                    "window": spec.window, "timeout_ms": CREATE_TIMEOUT.as_millis() as u64,
                });
                let subject = format!("{}.node.{node}.watch.create", spec.subjects);
                let asked = client.request(subject, body.to_string().into());
                let reply = tokio::time::timeout(CREATE_TIMEOUT + TICK, asked).await;
                match reply.ok().and_then(Result::ok) {
                    None => "no_reply".to_string(),
                    Some(m) => match serde_json::from_slice::<Value>(&m.payload) {
                        Ok(r) if r["ok"] == true => {
                            let stream = Stream {
                                watch_id: r["watch_id"].as_str().unwrap_or("").to_string(),
                                node: r["node"].as_u64().unwrap_or(*node),
                                start_revision: from,
                                created: spec.clock.elapsed().as_nanos() as u64,
                                messages: Vec::new(),
                                end: None,
                            };
                            // The contract's silence limit: 3 × the node's progress interval.
                            let progress = r["progress_ms"].as_u64().unwrap_or(1000).max(1);
                            return Some((stream, sub, Duration::from_millis(3 * progress)));
                        }
                        Ok(r) => r["error"]["code"]
                            .as_str()
                            .or(r["code"].as_str())
                            .unwrap_or("unreadable")
                            .to_string(),
                        Err(_) => "unreadable".to_string(),
                    },
                }
            }
        };
        *log.refused.entry(code.clone()).or_default() += 1;
        unanswered = if code == "no_reply" {
            unanswered + 1
        } else {
            0
        };
        match code.as_str() {
            // A node that skipped the revisions by a snapshot: another may have them.
            "cluster_not_ready" => i += 1,
            // A node down for longer than any fault is held: follow on another meanwhile.
            "no_reply" if unanswered >= MAX_UNANSWERED => {
                unanswered = 0;
                i += 1;
            }
            "no_reply" | "no_connection" | "busy" | "timeout" | "not_leader" => {}
            // `compacted`, `bad_request`, `unauthorized`: no retry mends them.
            _ => return None,
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF.1);
        // Back home after a round of the others.
        if i % spec.nodes.len() == 0 {
            i = 0;
        }
    }
    None
}

/// Reads `stream`'s messages until it ends, acknowledging each; moves `next` past every
/// complete message.
async fn read(
    client: &async_nats::Client,
    (mut sub, silence): (async_nats::Subscriber, Duration),
    stream: &mut Stream,
    next: &mut u64,
    control: &Control,
) -> Ended {
    let mut last_heard = Instant::now();
    loop {
        if control.done(*next) {
            return Ended {
                end: StreamEnd::Stopped,
                resume: *next,
            };
        }
        if last_heard.elapsed() >= silence {
            return Ended {
                end: StreamEnd::Silence,
                resume: *next,
            };
        }
        let m = match tokio::time::timeout(TICK, sub.next()).await {
            Err(_) => continue,
            Ok(None) => {
                return Ended {
                    end: StreamEnd::Malformed {
                        text: "the subscription closed".into(),
                    },
                    resume: *next,
                }
            }
            Ok(Some(m)) => m,
        };
        last_heard = Instant::now();
        match take(stream, &m.payload, *next) {
            Ok(Some(ended)) => return ended,
            Ok(None) => {}
            Err(end) => return Ended { end, resume: *next },
        }
        if let Some(reply) = m.reply {
            let _ = client.publish(reply, "{}".into()).await;
        }
        if let Some(last) = stream.messages.last().filter(|m| !m.fragment) {
            *next = (*next).max(last.store_revision + 1);
        }
    }
}

/// One delivered payload into `stream`: `Ok(None)` for a message recorded, `Ok(Some)` for
/// the end message, `Err` for a payload that ends the stream on the watcher's side.
fn take(stream: &mut Stream, payload: &[u8], next: u64) -> Result<Option<Ended>, StreamEnd> {
    let malformed = || StreamEnd::Malformed {
        text: String::from_utf8_lossy(payload).chars().take(300).collect(),
    };
    let v: Value = serde_json::from_slice(payload).map_err(|_| malformed())?;
    if let Some(end) = v.get("end") {
        let code = end["code"].as_str().ok_or_else(malformed)?.to_string();
        let resume_revision = end["resume_revision"].as_u64().unwrap_or(0);
        return Ok(Some(Ended {
            resume: if resume_revision > 0 {
                resume_revision
            } else {
                next
            },
            end: StreamEnd::End {
                code,
                resume_revision,
                message: end["message"].as_str().unwrap_or("").to_string(),
            },
        }));
    }
    let (Some(seq), Some(events), Some(store_revision)) = (
        v["seq"].as_u64(),
        v["events"].as_array(),
        v["store_revision"].as_u64(),
    ) else {
        return Err(malformed());
    };
    let expected = stream.messages.len() as u64 + 1;
    if seq != expected {
        return Err(StreamEnd::SeqGap { expected, got: seq });
    }
    stream.messages.push(Message {
        seq,
        events: events.clone(),
        store_revision,
        fragment: v["fragment"] == true,
    });
    Ok(None)
}
