//! One logical operation of the workload over the wire, as a retrying client performs it:
//! the same request (a write with the same `request_id` and body) resent after an outcome
//! that allows it, with a short deadline per attempt and a small backoff, through the
//! process's next NATS server when one does not answer, until an attempt succeeds, one is
//! refused outright, or the operation's deadline passes. With retries off, one attempt.
//!
//! Sits between the workload (which records one invoke and one completion per logical
//! operation) and NATS; it records nothing itself and never judges correctness.

use std::time::{Duration, Instant};

use async_nats::RequestErrorKind;
use serde_json::{json, Value};

use crate::history::{Attempts, Func};
use concord_wire::ErrorKind;

/// How a client retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Resend after an unknown or retryable outcome; off: one attempt, as before ids.
    pub retry: bool,
    /// Deadline of one attempt, sent as `timeout_ms`; the NATS request waits
    /// [`RetryPolicy::grace`] more.
    pub attempt_timeout: Duration,
    /// Deadline of the whole operation over all its attempts.
    pub op_deadline: Duration,
    /// First backoff, doubled per retry up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// One attempt with deadline `timeout`, as before request ids: a timeout is final.
    pub fn once(timeout: Duration) -> RetryPolicy {
        RetryPolicy {
            retry: false,
            ..RetryPolicy::retrying(timeout, timeout)
        }
    }

    /// Retries with `attempt_timeout` per attempt within `op_deadline`, backing off from
    /// 20 ms doubling to 200 ms: short, since most refusals (`cluster_not_ready` during an
    /// election) end within a few hundred ms.
    pub fn retrying(attempt_timeout: Duration, op_deadline: Duration) -> RetryPolicy {
        RetryPolicy {
            retry: true,
            attempt_timeout,
            op_deadline,
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
        }
    }

    /// How much longer than `timeout_ms` a client waits for the reply, since the node
    /// answers `timeout` itself when it can: a little when it can retry elsewhere, the
    /// suite's former 500 ms when it cannot.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(if self.retry { 250 } else { 500 })
    }
}

/// Below this much time left, no new attempt is started: it could not finish.
const MIN_ATTEMPT: Duration = Duration::from_millis(50);

/// The final outcome of a logical operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// An attempt succeeded: what a read saw (`null` for absent), the reply for a write.
    Ok(Value),
    /// Certainly did not take effect: every attempt was refused or not delivered.
    Fail,
    /// Unknown: an attempt may have taken effect and none was acknowledged.
    Info,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Done(Outcome),
    /// Did not take effect; may be resent (`busy`, `cluster_not_ready`, no responders).
    Refused {
        rotate: bool,
    },
    /// May have taken effect; may be resent (`timeout`, no answer in time, a lost
    /// connection).
    Unknown,
    /// Refused for good (`bad_request`, `invalid_key`, …).
    Rejected,
    /// May have taken effect, and resending would not tell (`internal`, an unknown code or
    /// an unreadable reply): the operation ends unknown.
    Broken,
}

/// One operation to perform: its function, key, and for a write the value, request id and
/// condition (`if_revision`: a compare-and-swap). With `txn`, a transaction instead
/// (`P.kv.txn` with that body; `key`, `value` and `if_revision` unused), performed as a
/// write: its reply is the outcome.
pub struct Request<'a> {
    pub prefix: &'a str,
    pub f: Func,
    pub key: &'a str,
    pub value: &'a Value,
    pub request_id: Option<&'a str>,
    pub if_revision: Option<u64>,
    pub txn: Option<&'a Value>,
}

impl Request<'_> {
    fn subject_and_body(&self, timeout_ms: u64) -> (String, Value) {
        let mut body = json!({"key": self.key, "timeout_ms": timeout_ms});
        let op = match (self.txn, self.f) {
            (Some(txn), _) => {
                body = txn.clone();
                body["timeout_ms"] = json!(timeout_ms);
                "txn"
            }
            (None, Func::Read) => "get",
            (None, Func::Write) => {
                body["value"] = self.value.clone();
                "put"
            }
            (None, Func::Delete) => "delete",
        };
        if let Some(id) = self.request_id {
            body["request_id"] = json!(id);
        }
        if let Some(rev) = self.if_revision {
            body["if_revision"] = json!(rev);
        }
        (format!("{}.kv.{op}", self.prefix), body)
    }
}

/// Performs `req` through `servers` (the first attempt on `servers[home % len]`), retrying
/// as `policy` says. Returns the outcome and how the attempts went.
pub async fn perform(
    servers: &[async_nats::Client],
    home: usize,
    policy: &RetryPolicy,
    req: &Request<'_>,
) -> (Outcome, Attempts) {
    let started = Instant::now();
    let deadline = started + policy.op_deadline.max(policy.attempt_timeout);
    let mut attempts = Attempts {
        request_id: req.request_id.map(str::to_owned),
        ..Attempts::default()
    };
    let n = servers.len().max(1);
    let mut server = home % n;
    // Servers whose node did not answer during this operation: skipped while another is
    // left, so a retry does not come back to a dead or paused node (NATS hands a request to
    // a subscriber on the client's own server first) after another said `cluster_not_ready`.
    let mut silent = vec![false; n];
    let mut backoff = policy.backoff_min;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let this = if policy.retry {
            policy.attempt_timeout.min(left)
        } else {
            policy.attempt_timeout
        };
        let nats = &servers[server];
        attempts.sent += 1;
        let (step, revision) = attempt(nats, req, this, policy.grace()).await;
        let rotate = match step {
            Step::Done(outcome) => {
                // A read's revision, a write's, or the key's current one of a `conflict`.
                attempts.revision = revision;
                match &outcome {
                    Outcome::Ok(reply) if req.f != Func::Read => {
                        attempts.deleted = reply["deleted"].as_bool();
                    }
                    Outcome::Fail => attempts.conflict = true,
                    _ => {}
                }
                return (outcome, attempts);
            }
            Step::Rejected => return (settle(&attempts), attempts),
            Step::Broken => {
                attempts.unknown += 1;
                return (Outcome::Info, attempts);
            }
            Step::Unknown => {
                attempts.unknown += 1;
                silent[server] = true;
                true
            }
            Step::Refused { rotate } => rotate,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if !policy.retry || left < backoff + MIN_ATTEMPT {
            return (settle(&attempts), attempts);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(policy.backoff_max);
        if rotate {
            server = next_server(server, &mut silent);
        }
    }
}

/// The server after `from` whose node has not been silent, or if all have, the next one
/// (forgetting which were: a restarted node answers again).
fn next_server(from: usize, silent: &mut [bool]) -> usize {
    let n = silent.len();
    match (1..=n).map(|d| (from + d) % n).find(|&i| !silent[i]) {
        Some(i) => i,
        None => {
            silent.iter_mut().for_each(|s| *s = false);
            (from + 1) % n
        }
    }
}

/// The outcome when no attempt succeeded: `fail` only if none of them may have applied.
fn settle(attempts: &Attempts) -> Outcome {
    if attempts.unknown == 0 {
        Outcome::Fail
    } else {
        Outcome::Info
    }
}

/// One request with deadline `timeout` (`timeout_ms`; NATS waits `grace` more), and the
/// revision its reply carries (`revision`, or a conflict's `error.revision`).
async fn attempt(
    nats: &async_nats::Client,
    req: &Request<'_>,
    timeout: Duration,
    grace: Duration,
) -> (Step, Option<u64>) {
    let timeout_ms = (timeout.as_millis() as u64).max(1);
    let (subject, body) = req.subject_and_body(timeout_ms);
    let request = async_nats::Request::new()
        .payload(body.to_string().into())
        .timeout(Some(Duration::from_millis(timeout_ms) + grace));
    match nats.send_request(subject, request).await {
        Ok(reply) => match serde_json::from_slice::<Value>(&reply.payload) {
            Ok(v) => {
                let revision = v["revision"]
                    .as_u64()
                    .or_else(|| v["error"]["revision"].as_u64());
                (classify(req.f, req.if_revision.is_some(), &v), revision)
            }
            Err(_) => (Step::Broken, None),
        },
        // Nobody subscribed: the request was not delivered; another server may have a node.
        Err(e) if e.kind() == RequestErrorKind::NoResponders => {
            (Step::Refused { rotate: true }, None)
        }
        // No answer in time, or the connection went: the node may have acted on it.
        Err(_) => (Step::Unknown, None),
    }
}

/// What a reply means, by DESIGN.md's table of error codes; `cas`: the request carried
/// `if_revision`.
fn classify(f: Func, cas: bool, reply: &Value) -> Step {
    if reply["ok"] == json!(true) {
        return Step::Done(Outcome::Ok(match f {
            Func::Read => reply["value"].clone(),
            _ => reply.clone(),
        }));
    }
    let code: Option<ErrorKind> = serde_json::from_value(reply["error"]["code"].clone()).ok();
    match code {
        // A read of an absent key observed "absent".
        Some(ErrorKind::NotFound) if f == Func::Read => Step::Done(Outcome::Ok(Value::Null)),
        // Overloaded: the same node is as good as any.
        Some(ErrorKind::Busy) => Step::Refused { rotate: false },
        // This node knows no leader (a minority side, an election): another may.
        Some(ErrorKind::ClusterNotReady) => Step::Refused { rotate: true },
        Some(ErrorKind::Timeout) => Step::Unknown,
        // The condition did not hold when the write applied: certainly nothing written, and
        // a resend with the same id gets the same reply.
        Some(ErrorKind::Conflict) if cas && reply["error"]["reason"] == "revision" => {
            Step::Done(Outcome::Fail)
        }
        Some(
            ErrorKind::BadRequest
            | ErrorKind::InvalidKey
            | ErrorKind::ValueTooLarge
            | ErrorKind::Unauthorized
            | ErrorKind::NoSpace
            | ErrorKind::NotFound
            | ErrorKind::Compacted,
        ) => Step::Rejected,
        // `internal`, another `conflict` (the id known with another body: the workload never
        // sends one, so the server is wrong), or a code this build does not know.
        Some(ErrorKind::Internal | ErrorKind::Conflict) | None => Step::Broken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: &str) -> Value {
        json!({"ok": false, "error": {"code": code, "message": "x"}})
    }

    #[test]
    fn replies_are_classified_by_the_design_table() {
        let ok = classify(
            Func::Read,
            false,
            &json!({"ok": true, "value": 3, "revision": 1}),
        );
        assert_eq!(ok, Step::Done(Outcome::Ok(json!(3))));
        let put = json!({"ok": true, "revision": 7});
        assert_eq!(
            classify(Func::Write, false, &put),
            Step::Done(Outcome::Ok(put.clone()))
        );
        assert_eq!(
            classify(Func::Read, false, &error("not_found")),
            Step::Done(Outcome::Ok(Value::Null))
        );
        assert_eq!(
            classify(Func::Write, false, &error("cluster_not_ready")),
            Step::Refused { rotate: true }
        );
        assert_eq!(
            classify(Func::Write, false, &error("busy")),
            Step::Refused { rotate: false }
        );
        assert_eq!(
            classify(Func::Write, false, &error("timeout")),
            Step::Unknown
        );
        assert_eq!(
            classify(Func::Write, false, &error("bad_request")),
            Step::Rejected
        );
        assert_eq!(
            classify(Func::Write, false, &error("internal")),
            Step::Broken
        );
        assert_eq!(
            classify(Func::Write, false, &error("conflict")),
            Step::Broken
        );
        assert_eq!(
            classify(Func::Write, false, &json!({"weird": 1})),
            Step::Broken
        );
        let conflict = json!({"ok": false, "error": {"code": "conflict", "reason": "revision",
                              "revision": 4, "message": "x"}});
        assert_eq!(
            classify(Func::Write, true, &conflict),
            Step::Done(Outcome::Fail)
        );
        // Without a condition, or for another reason, the server is wrong: unknown.
        assert_eq!(classify(Func::Write, false, &conflict), Step::Broken);
        let other = json!({"ok": false, "error": {"code": "conflict", "reason": "request_id"}});
        assert_eq!(classify(Func::Write, true, &other), Step::Broken);
    }

    #[test]
    fn retries_skip_servers_that_were_silent() {
        let mut silent = vec![true, false, false];
        assert_eq!(next_server(0, &mut silent), 1);
        assert_eq!(next_server(1, &mut silent), 2);
        // Not back to the silent server 0 while 1 is left.
        assert_eq!(next_server(2, &mut silent), 1);
        let mut all = vec![true, true, true];
        assert_eq!(next_server(2, &mut all), 0);
        assert_eq!(all, vec![false; 3]);
        let mut one = vec![false];
        assert_eq!(next_server(0, &mut one), 0);
    }

    #[test]
    fn a_refusal_after_an_unknown_attempt_is_unknown() {
        let mut a = Attempts {
            sent: 2,
            ..Attempts::default()
        };
        assert_eq!(settle(&a), Outcome::Fail);
        a.unknown = 1;
        assert_eq!(settle(&a), Outcome::Info);
    }

    #[test]
    fn a_write_carries_its_id_and_the_same_body_on_every_attempt() {
        let value = json!(5);
        let req = Request {
            prefix: "concord",
            f: Func::Write,
            key: "k1",
            value: &value,
            request_id: Some("6f1c9a2e-0000-4000-8000-000000000000"),
            if_revision: None,
            txn: None,
        };
        let (subject, body) = req.subject_and_body(1000);
        assert_eq!(subject, "concord.kv.put");
        assert_eq!(
            body,
            json!({"key": "k1", "value": 5, "timeout_ms": 1000,
                   "request_id": "6f1c9a2e-0000-4000-8000-000000000000"})
        );
        let (_, again) = req.subject_and_body(300);
        assert_eq!(again["timeout_ms"], 300);
        assert_eq!(again["request_id"], body["request_id"]);
        assert_eq!(again["value"], body["value"]);
    }
}
