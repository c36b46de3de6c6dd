//! Issue #20, hardening of the forwarding path (a follower relaying a request to the
//! leader's node subject). Each test plays the attacker with a raw NATS client (never
//! `concord::Client`) against a real 3-node cluster with `cluster.secret` set: it forges a
//! "no responders" status, replays a captured forwarded request, or signs one for another
//! cluster. Every wait is bounded by a deadline.

mod common;

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use async_nats::HeaderMap;
use common::{error_code, to_bytes, wait_until, Cluster, ClusterOptions};
use concord::signing::{self, Signer};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "forwarding-hardening-secret";
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

fn signed() -> ClusterOptions {
    ClusterOptions::default().env("CONCORD_CLUSTER__SECRET", SECRET)
}

fn u(v: &Value, field: &str) -> Result<u64> {
    v[field]
        .as_u64()
        .ok_or_else(|| anyhow!("no {field} in {v}"))
}

fn other_than(c: &Cluster, not: u64) -> Result<u64> {
    c.ids()
        .into_iter()
        .find(|id| *id != not)
        .ok_or_else(|| anyhow!("no node other than {not}"))
}

/// A put through node `id`'s own subject; retries `cluster_not_ready` for up to 20 s.
async fn put_on(c: &Cluster, id: u64, key: &str, value: Value) -> Result<u64> {
    let subject = c.subject(&format!("node.{id}.kv.put"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = c
            .request_raw(
                &subject,
                None,
                to_bytes(&json!({"key": key, "value": value})),
                Duration::from_secs(10),
            )
            .await
            .with_context(|| format!("put {key} on node {id}"))?;
        if reply["ok"] == json!(true) {
            return u(&reply, "revision");
        }
        ensure!(
            error_code(&reply) == Some("cluster_not_ready") && Instant::now() < deadline,
            "put {key} on node {id}: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A linearizable get on the leader: (value, revision), or `None` if absent.
async fn get_on(c: &Cluster, id: u64, key: &str) -> Result<Option<(Value, u64)>> {
    let v = c
        .request(&format!("node.{id}.kv.get"), json!({"key": key}))
        .await?;
    if error_code(&v) == Some("not_found") {
        return Ok(None);
    }
    ensure!(v["ok"] == json!(true), "get {key}: {v}");
    Ok(Some((v["value"].clone(), u(&v, "revision")?)))
}

fn security(status: &Value, field: &str) -> Result<u64> {
    status["security"][field]
        .as_u64()
        .ok_or_else(|| anyhow!("status without security.{field}: {status}"))
}

/// Publishes a NATS "no responders" status (`HPUB` with a `NATS/1.0 503` header line) on
/// `subject`, by speaking the client protocol on a TCP socket: what the NATS server sends
/// when nobody subscribes, and what anyone who learns a reply subject can send too.
async fn forge_no_responders(nats_url: &str, subject: &str) -> Result<()> {
    let addr = nats_url
        .trim_start_matches("nats://")
        .trim_end_matches('/')
        .to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr).await?;
    let header = "NATS/1.0 503\r\n\r\n";
    let frame = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true}}\r\n\
         HPUB {subject} {n} {n}\r\n{header}\r\nPING\r\n",
        n = header.len()
    );
    sock.write_all(frame.as_bytes()).await?;
    // The server answers PONG once it processed everything before the PING.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("PONG") {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, sock.read(&mut buf))
            .await
            .context("no PONG from nats-server")??;
        ensure!(
            n > 0,
            "nats-server closed the socket: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        ensure!(
            !String::from_utf8_lossy(&seen).contains("-ERR"),
            "nats-server refused the forged status: {:?}",
            String::from_utf8_lossy(&seen)
        );
    }
    Ok(())
}

/// Issue #20 item 4: a forged "no responders" status on a follower's forwarding inbox,
/// while the leader (paused) holds the forwarded put, does not make the follower send the
/// put again: it applies exactly once (the revision advances by one), and the client gets
/// `timeout` (may have been applied), the honest answer. Before the fix the follower
/// re-sent it and the leader applied it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_no_responders_does_not_apply_a_forwarded_write_twice() -> Result<()> {
    let c = Cluster::start_with(3, signed()).await?;
    let r = no_responders_body(&c).await;
    c.fail_on_err(r)
}

async fn no_responders_body(c: &Cluster) -> Result<()> {
    let leader = c.wait_stable(LEADER_TIMEOUT).await?;
    let follower = other_than(c, leader)?;
    let base = put_on(c, leader, "base", json!(0)).await?;

    let spy_nats = c.connect().await?;
    let mut spy = spy_nats
        .subscribe(c.subject(&format!("node.{leader}.kv.put")))
        .await?;
    spy_nats.flush().await?;
    let (put, inbox) = common::forwarding::put_forwarded_to_paused_leader(
        c,
        &mut spy,
        leader,
        follower,
        json!({"key": "once", "value": 1, "timeout_ms": 8000}),
        Duration::from_secs(10),
    )
    .await?;
    forge_no_responders(c.nats_url(), &inbox).await?;
    c.resume(leader).await?;

    let reply = put.await??;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    // The put reached the leader once: it is applied, once, whatever the client was told.
    let applied = wait_until(Duration::from_secs(15), "the put to apply", || async {
        Ok(get_on(c, leader, "once").await?.is_some())
    })
    .await;
    applied?;
    let after = put_on(c, leader, "after", json!(2)).await?;
    let (value, revision) = get_on(c, leader, "once")
        .await?
        .ok_or_else(|| anyhow!("once vanished"))?;
    ensure!(
        value == json!(1) && revision == base + 1 && after == base + 2,
        "the forwarded put applied more than once: base revision {base}, 'once' at {revision}, \
         the next put at {after} (client got {reply})"
    );
    match error_code(&reply) {
        Some("timeout") => Ok(()),
        // The genuine answer may win the race against the forgery; then it is the truth.
        None if reply["ok"] == json!(true) && reply["revision"] == json!(revision) => Ok(()),
        _ => bail!("the client was told {reply}, the put applied at {revision}"),
    }
}

/// Issue #20 item 8: a request that fits the NATS max payload as the client sent it but
/// not with the headers forwarding adds is answered `value_too_large` at once. Before the
/// fix the follower retried it every 20 ms until its deadline and answered
/// `cluster_not_ready` then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_too_large_is_refused_at_once() -> Result<()> {
    let c = Cluster::start_with(3, signed()).await?;
    let r = too_large_body(&c).await;
    c.fail_on_err(r)
}

async fn too_large_body(c: &Cluster) -> Result<()> {
    const TIMEOUT_MS: u64 = 6000;
    let leader = c.wait_stable(LEADER_TIMEOUT).await?;
    let follower = other_than(c, leader)?;
    put_on(c, follower, "warm", json!(0)).await?;
    let nats = c.connect().await?;
    let max = nats.server_info().max_payload;
    let body = to_bytes(&json!({"key": "big", "value": 1, "timeout_ms": TIMEOUT_MS}));
    // The client's own message is 64 bytes under the limit: the forwarding headers
    // (sender, cluster id, term, nonce, deadline, MAC) do not fit in that.
    let filler =
        max - body.len() - 64 - "Authorization: Bearer \r\n".len() - "NATS/1.0\r\n\r\n".len();
    let mut h = HeaderMap::new();
    h.insert(
        "Authorization",
        format!("Bearer {}", "x".repeat(filler)).as_str(),
    );
    let started = Instant::now();
    let reply = c
        .request_raw(
            &c.subject(&format!("node.{follower}.kv.put")),
            Some(h),
            body,
            Duration::from_millis(TIMEOUT_MS + 2000),
        )
        .await?;
    let took = started.elapsed();
    ensure!(
        error_code(&reply) == Some("value_too_large"),
        "a forward that cannot fit answered {reply} after {took:?}"
    );
    ensure!(
        took < Duration::from_millis(TIMEOUT_MS / 3),
        "answered after {took:?}: it waited for its deadline ({TIMEOUT_MS} ms)"
    );
    ensure!(get_on(c, leader, "big").await?.is_none(), "big was written");
    Ok(())
}

/// Issue #20 item 8: a signed forwarded put, captured on the leader's node subject and
/// re-published byte for byte (subject, reply subject, headers, body) after a later write
/// of the same key, is refused (`cluster_not_ready`, counted as replayed) and changes
/// nothing. Before the fix its MAC still verified and the old value came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_forwarded_put_is_refused() -> Result<()> {
    let c = Cluster::start_with(3, signed()).await?;
    let r = replay_body(&c).await;
    c.fail_on_err(r)
}

async fn replay_body(c: &Cluster) -> Result<()> {
    let leader = c.wait_stable(LEADER_TIMEOUT).await?;
    let follower = other_than(c, leader)?;
    let nats = c.connect().await?;
    let mut spy = nats
        .subscribe(c.subject(&format!("node.{leader}.kv.put")))
        .await?;
    nats.flush().await?;
    put_on(c, follower, "r", json!("first")).await?;
    let captured = tokio::time::timeout(Duration::from_secs(5), spy.next())
        .await
        .context("no forwarded put seen")?
        .ok_or_else(|| anyhow!("spy subscription closed"))?;
    let second = put_on(c, leader, "r", json!("second")).await?;
    let before = c.status(leader).await?;

    let reply_to = captured
        .reply
        .clone()
        .ok_or_else(|| anyhow!("captured put without a reply subject"))?;
    // The replay's answer goes to the follower's inbox, where the test listens too.
    let mut answers = nats.subscribe(reply_to.clone()).await?;
    nats.flush().await?;
    nats.publish_with_reply_and_headers(
        captured.subject.clone(),
        reply_to,
        captured.headers.clone().unwrap_or_default(),
        captured.payload.clone(),
    )
    .await?;
    nats.flush().await?;
    let answer = tokio::time::timeout(Duration::from_secs(5), answers.next())
        .await
        .context("no answer to the replay")?
        .ok_or_else(|| anyhow!("answer subscription closed"))?;
    let answer: Value = serde_json::from_slice(&answer.payload)?;
    ensure!(
        error_code(&answer) == Some("cluster_not_ready"),
        "the replayed put was answered {answer}"
    );
    let now = get_on(c, leader, "r").await?;
    ensure!(
        now == Some((json!("second"), second)),
        "the replay changed r: {now:?}, expected (\"second\", {second})"
    );
    let after = c.status(leader).await?;
    ensure!(
        security(&after, "rpc_rejected_replayed")?
            == security(&before, "rpc_rejected_replayed")? + 1,
        "replay not counted: {} -> {}",
        before["security"],
        after["security"]
    );
    Ok(())
}

/// Issue #20 item 8: a forwarded put signed with the cluster's secret (the test knows it,
/// as a node of another cluster sharing it would) but naming another cluster id is refused
/// `unauthorized` and counted; the same request naming this cluster's id is served, so the
/// MAC was right. Before the fix the cluster id was neither sent nor checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_request_of_another_cluster_is_refused() -> Result<()> {
    let c = Cluster::start_with(3, signed()).await?;
    let r = other_cluster_body(&c).await;
    c.fail_on_err(r)
}

async fn other_cluster_body(c: &Cluster) -> Result<()> {
    let leader = c.wait_stable(LEADER_TIMEOUT).await?;
    let follower = other_than(c, leader)?;
    let status = c.status(leader).await?;
    let ours = status["cluster_id"]
        .as_str()
        .ok_or_else(|| anyhow!("no cluster_id: {status}"))?
        .to_string();
    let term = u(&status, "term")?;
    let nats = c.connect().await?;
    let signer = Signer::new(SECRET.as_bytes());
    let subject = c.subject(&format!("node.{leader}.kv.put"));
    let send = |cluster_id: String, seq: u64, key: &'static str| {
        let (nats, signer, subject) = (nats.clone(), signer.clone(), subject.clone());
        async move {
            let body = to_bytes(&json!({"key": key, "value": 1, "timeout_ms": 3000}));
            let reply_to = nats.new_inbox();
            let mut h = HeaderMap::new();
            h.insert("Concord-Forwarded", follower.to_string().as_str());
            h.insert("Concord-Timeout-Ms", "3000");
            h.insert("Concord-Cluster-Id", cluster_id.as_str());
            h.insert("Concord-Term", term.to_string().as_str());
            let nonce = format!("{:016x}-{seq}", 0xfeed_u64);
            h.insert("Concord-Nonce", nonce.as_str());
            // The MAC's parts: the reply subject, then the signed headers in their order
            // (sender, deadline, credential, cluster id, term, nonce).
            let (from, term) = (follower.to_string(), term.to_string());
            let signed: Vec<&[u8]> = vec![
                reply_to.as_bytes(),
                from.as_bytes(),
                b"3000",
                b"",
                cluster_id.as_bytes(),
                term.as_bytes(),
                nonce.as_bytes(),
            ];
            let mac = signer.request_mac(&subject, &signed, &body);
            h.insert(signing::HEADER_MAC, signing::to_hex(&mac).as_str());
            let mut sub = nats.subscribe(reply_to.clone()).await?;
            nats.publish_with_reply_and_headers(subject, reply_to, h, body)
                .await?;
            let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .context("no answer")?
                .ok_or_else(|| anyhow!("subscription closed"))?;
            Ok::<Value, anyhow::Error>(serde_json::from_slice(&m.payload)?)
        }
    };
    let before = c.status(leader).await?;
    let other = uuid::Uuid::new_v4().to_string();
    let refused = send(other, 1, "alien").await?;
    ensure!(
        error_code(&refused) == Some("unauthorized"),
        "a forwarded put of another cluster answered {refused}"
    );
    let after = c.status(leader).await?;
    ensure!(
        security(&after, "rpc_rejected_other_cluster")?
            == security(&before, "rpc_rejected_other_cluster")? + 1,
        "not counted: {} -> {}",
        before["security"],
        after["security"]
    );
    ensure!(
        get_on(c, leader, "alien").await?.is_none(),
        "alien was written"
    );
    // The control: the very same request with this cluster's id is served.
    let served = send(ours, 2, "native").await?;
    ensure!(
        served["ok"] == json!(true),
        "the control request was refused: {served}"
    );
    Ok(())
}
