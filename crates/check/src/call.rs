//! Requests of the lease and lock workloads over the wire: one attempt ([`attempt`]) and one
//! logical operation retried with the same body, and so the same `request_id` ([`perform`]),
//! through `timeout`, no reply, `busy`, `cluster_not_ready` and no responders, rotating
//! servers on the ones a node may not answer. Records nothing and never judges.

use std::time::{Duration, Instant};

use async_nats::RequestErrorKind;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// How long past `timeout_ms` the client waits for the node's own `timeout` reply.
const GRACE: Duration = Duration::from_millis(250);
/// First backoff between attempts, doubled up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// What one request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Ok(Value),
    /// An error reply: its code, its `reason` (`conflict`), and the whole `error` object.
    Err {
        code: String,
        reason: Option<String>,
        error: Value,
    },
    /// No reply in time, or a lost connection: the request may have taken effect.
    NoReply,
    /// Nobody subscribed: not delivered.
    NoResponders,
}

impl Reply {
    /// Whether a resend may help, and whether this attempt may have taken effect.
    fn retry(&self) -> Option<bool> {
        match self {
            Reply::Ok(_) => None,
            Reply::NoReply => Some(true),
            Reply::NoResponders => Some(false),
            Reply::Err { code, .. } => match code.as_str() {
                "timeout" => Some(true),
                "busy" | "cluster_not_ready" => Some(false),
                _ => None,
            },
        }
    }
}

/// How a logical operation ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Outcome {
    Ok {
        reply: Value,
    },
    /// Certainly refused by the server with this code (`reason` for a `conflict`).
    Refused {
        code: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        error: Value,
    },
    /// No attempt answered for certain, and one may have taken effect (`last`: the last
    /// attempt's code, or `no_reply`).
    Unknown {
        last: String,
    },
    /// No attempt was delivered or taken (`busy`, `cluster_not_ready`, no responders).
    NotTaken {
        last: String,
    },
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok { .. })
    }

    /// The code of a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            Outcome::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn reply(&self) -> Option<&Value> {
        match self {
            Outcome::Ok { reply } => Some(reply),
            _ => None,
        }
    }
}

/// Every attempt of an operation, for the checkers that look at them (a retried acquire).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tries {
    pub sent: u32,
    /// Replies of the attempts, in order, as `ok` or the error code (`no_reply`,
    /// `no_responders`).
    pub codes: Vec<String>,
    /// The `ok` replies (several when a retry answered too).
    pub oks: Vec<Value>,
}

pub async fn connect(urls: &[String]) -> Result<Vec<async_nats::Client>, String> {
    let mut conns = Vec::new();
    for url in urls {
        let c = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url.as_str())
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        conns.push(c);
    }
    Ok(conns)
}

/// One request on `subject` with `timeout_ms` set to `timeout`.
pub async fn attempt(
    nats: &async_nats::Client,
    subject: &str,
    body: &Value,
    timeout: Duration,
) -> Reply {
    let mut body = body.clone();
    let ms = (timeout.as_millis() as u64).max(1);
    body["timeout_ms"] = json!(ms);
    let request = async_nats::Request::new()
        .payload(body.to_string().into())
        .timeout(Some(Duration::from_millis(ms) + GRACE));
    match nats.send_request(subject.to_string(), request).await {
        Ok(m) => match serde_json::from_slice::<Value>(&m.payload) {
            Ok(v) if v["ok"] == true => Reply::Ok(v),
            Ok(v) => Reply::Err {
                code: v["error"]["code"].as_str().unwrap_or("unreadable").into(),
                reason: v["error"]["reason"].as_str().map(str::to_owned),
                error: v["error"].clone(),
            },
            Err(e) => Reply::Err {
                code: "unreadable".into(),
                reason: None,
                error: json!(e.to_string()),
            },
        },
        Err(e) if e.kind() == RequestErrorKind::NoResponders => Reply::NoResponders,
        Err(_) => Reply::NoReply,
    }
}

/// One logical operation: `body` on `subject` (the same body every time, so a write's
/// `request_id` with it), first on `servers[home % len]`, each attempt with deadline
/// `timeout`, retried within `deadline`.
pub async fn perform(
    servers: &[async_nats::Client],
    home: usize,
    (subject, body): (&str, &Value),
    timeout: Duration,
    deadline: Duration,
) -> (Outcome, Tries) {
    let until = Instant::now() + deadline.max(timeout);
    let n = servers.len().max(1);
    let mut server = home % n;
    let mut tries = Tries::default();
    let mut may_have_applied = false;
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(nats) = servers.get(server) else {
            return (
                Outcome::NotTaken {
                    last: "no server".into(),
                },
                tries,
            );
        };
        tries.sent += 1;
        let reply = attempt(nats, subject, body, timeout).await;
        tries.codes.push(match &reply {
            Reply::Ok(_) => "ok".into(),
            Reply::Err { code, .. } => code.clone(),
            Reply::NoReply => "no_reply".into(),
            Reply::NoResponders => "no_responders".into(),
        });
        let Some(applied) = reply.retry() else {
            let outcome = match reply {
                Reply::Ok(v) => {
                    tries.oks.push(v.clone());
                    Outcome::Ok { reply: v }
                }
                Reply::Err {
                    code,
                    reason,
                    error,
                } => Outcome::Refused {
                    code,
                    reason,
                    error,
                },
                // Retryable ones do not get here.
                Reply::NoReply | Reply::NoResponders => Outcome::Unknown {
                    last: "no_reply".into(),
                },
            };
            return (outcome, tries);
        };
        may_have_applied |= applied;
        // A node that did not answer may be dead or paused: try the next server.
        let rotate = !matches!(&reply, Reply::Err { code, .. } if code == "busy");
        if Instant::now() + backoff + Duration::from_millis(50) >= until {
            let last = tries.codes.last().cloned().unwrap_or_default();
            let outcome = if may_have_applied {
                Outcome::Unknown { last }
            } else {
                Outcome::NotTaken { last }
            };
            return (outcome, tries);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        if rotate {
            server = (server + 1) % n;
        }
    }
}

/// A fresh request id.
pub fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `P.<op>` under the cluster's subject prefix, e.g. `subject("concord", "lease.grant")`.
pub fn subject(prefix: &str, op: &str) -> String {
    format!("{prefix}.{op}")
}

/// The workload's clock: nanoseconds since it started.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_nanos() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
