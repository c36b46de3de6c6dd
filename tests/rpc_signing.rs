//! Signed Raft RPCs (`cluster.secret`) on a real 3-node cluster: real `nats-server`, real
//! `concord serve` processes. The test itself plays the attacker: a NATS client that can
//! publish anywhere but does not know the secret.
//!
//! - A forged append-entries RPC (unsigned, or signed with another key) gets no reply and
//!   changes nothing on the follower, and the follower counts it.
//! - A forged reply published onto the leader's RPC inbox is counted and ignored: the leader
//!   keeps its term and its leadership.
//! - A node restarted with the wrong secret campaigns on its own without inflating the
//!   cluster's term, and the cluster keeps taking writes.
//! - With the same secret everywhere, the cluster works: writes, reads, a leader kill and
//!   re-election, and not one message is rejected.
//!
//! Every wait polls a condition against a deadline; the only fixed wait is the bounded
//! "no reply within 1 s" window after the follower has already counted the forgeries.

mod common;

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use common::{error_code, to_bytes, Cluster, ClusterOptions};
use concord::client::Client;
use concord::command::{Command, LogCommand};
use concord::raft::types::TypeConfig;
use concord::raft::wire::{self, RpcReply, RpcRequest, RPC_FORMAT};
use concord::signing::{self, Signer};
use futures::StreamExt;
use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use serde_json::{json, Value};

const SECRET: &str = "rpc-signing-test-secret-A";
const OTHER_SECRET: &str = "rpc-signing-test-secret-B";
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

fn signed(secret: &str) -> ClusterOptions {
    ClusterOptions::default().env("CONCORD_CLUSTER__SECRET", secret)
}

// ----- the tests -------------------------------------------------------------------------

/// Proves that a follower drops append-entries RPCs that are unsigned, signed with another
/// key, or carry a malformed MAC, before acting on them: no reply comes back, its term, log
/// and data stay as they were, and its rejection counters rise by exactly one per forgery.
/// As a control, the very same envelope with a valid MAC is acted on (the follower adopts
/// the forged term), so the forgeries were well-formed and would have mattered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_append_entries_are_dropped_unanswered() -> Result<()> {
    let cluster = Cluster::start_with(3, signed(SECRET)).await?;
    let r = forged_append_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn forged_append_body(cluster: &Cluster) -> Result<()> {
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    put_on(cluster, leader, "k", json!("v1")).await?;
    let commit = u(&cluster.status(leader).await?, "commit_index")?;
    cluster.wait_all_applied(commit, CATCH_UP_TIMEOUT).await?;
    let follower = other_than(cluster, &[leader])?;

    let before = cluster.status(follower).await?;
    let leader_before = cluster.status(leader).await?;
    let term = u(&before, "term")?;
    let last = u(&before, "last_log_index")?;
    let cluster_id = before["cluster_id"]
        .as_str()
        .ok_or_else(|| anyhow!("follower status without cluster_id: {before}"))?
        .parse()?;
    let (unsigned0, forged0) = rejected(&before)?;

    // A real-looking append from "the leader" in a much higher term: it extends the
    // follower's log with a Put and commits it.
    let forged_term = term + 5;
    let next = LogId::new(CommittedLeaderId::new(forged_term, leader), last + 1);
    let body = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(forged_term, leader),
        prev_log_id: Some(LogId::new(CommittedLeaderId::new(term, leader), last)),
        entries: vec![Entry {
            log_id: next,
            payload: EntryPayload::Normal(LogCommand::new(Command::Put {
                key: "forged".into(),
                value: "\"evil\"".into(),
            })),
        }],
        leader_commit: Some(next),
    };
    let envelope = RpcRequest {
        format: RPC_FORMAT,
        cluster_name: cluster.cluster_name().to_string(),
        cluster_id: Some(cluster_id),
        from: leader,
        to: follower,
        body,
    };
    let payload = bytes::Bytes::from(wire::encode(&envelope)?);
    let subject = raft_subject(cluster, follower, "append");

    let nats = cluster.connect().await?;
    let inbox = nats.new_inbox();
    let mut replies = nats.subscribe(format!("{inbox}.*")).await?;
    nats.flush().await?;

    // 1. No MAC at all.
    nats.publish_with_reply(
        subject.clone(),
        format!("{inbox}.unsigned"),
        payload.clone(),
    )
    .await?;
    // 2. A MAC over exactly the right subject, reply subject and body, with another key.
    let reply_to = format!("{inbox}.other-key");
    let wrong = Signer::new(OTHER_SECRET.as_bytes());
    let mac = wrong.request_mac(&subject, &[reply_to.as_bytes()], &payload);
    nats.publish_with_reply_and_headers(
        subject.clone(),
        reply_to,
        signing::mac_header(&mac),
        payload.clone(),
    )
    .await?;
    // 3. A header that is not a MAC.
    let mut junk = async_nats::HeaderMap::new();
    junk.insert(signing::HEADER_MAC, "not-a-mac");
    nats.publish_with_reply_and_headers(
        subject.clone(),
        format!("{inbox}.junk"),
        junk,
        payload.clone(),
    )
    .await?;
    nats.flush().await?;

    let what = format!("node {follower} to count 1 unsigned and 2 forged raft rpcs");
    cluster
        .wait_until(Duration::from_secs(10), &what, || async {
            let (unsigned, forged) = rejected(&cluster.status(follower).await?)?;
            Ok(unsigned > unsigned0 && forged >= forged0 + 2)
        })
        .await?;
    // The counters rose, so the follower is done with all three: a reply would be on its
    // way by now. Give it a bounded second to show up.
    if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(1), replies.next()).await {
        bail!("a forged rpc was answered on {}", msg.subject);
    }

    let after = cluster.status(follower).await?;
    let (unsigned, forged) = rejected(&after)?;
    ensure!(
        (unsigned, forged) == (unsigned0 + 1, forged0 + 2),
        "rejections went from {:?} to {:?}, expected +1 unsigned and +2 forged",
        (unsigned0, forged0),
        (unsigned, forged)
    );
    for field in ["term", "last_log_index", "last_applied", "revision"] {
        ensure!(
            after[field] == before[field],
            "follower {field} changed from {} to {}",
            before[field],
            after[field]
        );
    }
    ensure!(
        after["leader"] == json!(leader),
        "follower {follower} follows {} now, not {leader}",
        after["leader"]
    );
    let leader_after = cluster.status(leader).await?;
    ensure!(
        leader_after["role"] == json!("leader") && leader_after["term"] == leader_before["term"],
        "leader {leader} changed: before {leader_before}, after {leader_after}"
    );
    ensure!(
        stale_get(cluster, follower, "forged").await?.is_none(),
        "the forged put is visible on node {follower}"
    );
    ensure!(
        stale_get(cluster, follower, "k").await? == Some(json!("v1")),
        "k changed on node {follower}"
    );

    // Control: the same envelope with a valid MAC is acted on.
    let reply_to = format!("{inbox}.control");
    let mac =
        Signer::new(SECRET.as_bytes()).request_mac(&subject, &[reply_to.as_bytes()], &payload);
    nats.publish_with_reply_and_headers(subject, reply_to, signing::mac_header(&mac), payload)
        .await?;
    let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
        .await
        .context("no reply to the correctly signed control rpc")?
        .ok_or_else(|| anyhow!("reply subscription closed"))?;
    ensure!(
        reply.subject.ends_with(".control"),
        "unexpected reply on {}",
        reply.subject
    );
    let decoded: RpcReply<AppendEntriesResponse<u64>, RaftError<u64>> =
        wire::decode(&reply.payload)?;
    ensure!(
        matches!(decoded, RpcReply::Ok(_)),
        "the control rpc was not processed: {decoded:?}"
    );
    let control = cluster.status(follower).await?;
    ensure!(
        u(&control, "term")? >= forged_term,
        "the signed control rpc did not move node {follower} to term {forged_term}: {control}"
    );
    eprintln!(
        "control: node {follower} answered {decoded:?} and moved to term {}",
        control["term"]
    );
    Ok(())
}

/// Proves that the leader ignores forged replies to its own RPCs: with one follower frozen
/// (SIGSTOP), the test reads the leader's append RPCs to it, learns the reply subjects, and
/// answers each first with a forgery claiming a vote 100 terms higher (which would make the
/// leader step down if believed): unsigned, signed with another key, or carrying the
/// request's own MAC. The leader counts them and stays leader in the same term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replies_on_the_leader_inbox_are_ignored() -> Result<()> {
    let cluster = Cluster::start_with(3, signed(SECRET)).await?;
    let r = forged_reply_body(&cluster).await;
    // Never leave a node frozen behind a failed assertion (Drop kills it either way).
    cluster.fail_on_err(r)
}

async fn forged_reply_body(cluster: &Cluster) -> Result<()> {
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let follower = other_than(cluster, &[leader])?;
    let other = other_than(cluster, &[leader, follower])?;
    let before = cluster.status(leader).await?;
    let term = u(&before, "term")?;
    let (unsigned0, forged0) = rejected(&before)?;

    let nats = cluster.connect().await?;
    let mut rpcs = nats
        .subscribe(format!(
            "{}.raft.{}.{follower}.*",
            cluster.prefix(),
            cluster.cluster_name()
        ))
        .await?;
    nats.flush().await?;
    cluster.pause(follower).await?;

    let step_down = RpcReply::<AppendEntriesResponse<u64>, RaftError<u64>>::Ok(
        AppendEntriesResponse::HigherVote(Vote::new_committed(term + 100, follower)),
    );
    let forged_body = bytes::Bytes::from(wire::encode(&step_down)?);
    let wrong = Signer::new(OTHER_SECRET.as_bytes());
    let mut sent = [0u64; 3];
    let mut poll = tokio::time::interval(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(30);
    let (unsigned, forged) = loop {
        ensure!(
            Instant::now() < deadline,
            "the leader did not count 3 unsigned and 3 forged replies within 30 s \
             (forgeries sent: {sent:?})"
        );
        tokio::select! {
            msg = rpcs.next() => {
                let msg = msg.ok_or_else(|| anyhow!("rpc subscription closed"))?;
                let Some(reply_to) = msg.reply.clone() else { continue };
                let kind = (sent.iter().sum::<u64>() % 3) as usize;
                match kind {
                    0 => nats.publish(reply_to, forged_body.clone()).await?,
                    1 => {
                        let req_mac = wrong.request_mac(&msg.subject, &[reply_to.as_bytes()], &msg.payload);
                        let mac = wrong.reply_mac(&req_mac, &forged_body);
                        nats.publish_with_headers(reply_to, signing::mac_header(&mac), forged_body.clone()).await?
                    }
                    _ => {
                        // Echo the request's own (genuine) MAC as the reply's.
                        let headers = msg.headers.clone().unwrap_or_default();
                        nats.publish_with_headers(reply_to, headers, forged_body.clone()).await?
                    }
                }
                sent[kind] += 1;
            }
            _ = poll.tick() => {
                let (unsigned, forged) = rejected(&cluster.status(leader).await?)?;
                if unsigned >= unsigned0 + 3 && forged >= forged0 + 3 {
                    break (unsigned, forged);
                }
            }
        }
    };
    eprintln!(
        "forged replies sent (unsigned, other key, echoed mac): {sent:?}; the leader rejected \
         {} unsigned and {} forged",
        unsigned - unsigned0,
        forged - forged0
    );
    // A forgery that arrives after its call timed out is dropped uncounted, never more.
    ensure!(
        unsigned - unsigned0 <= sent[0] && forged - forged0 <= sent[1] + sent[2],
        "the leader counted more rejections than forgeries were sent"
    );

    let after = cluster.status(leader).await?;
    ensure!(
        after["role"] == json!("leader") && u(&after, "term")? == term,
        "leader {leader} (term {term}) changed after forged replies: {after}"
    );
    let o = cluster.status(other).await?;
    ensure!(
        o["leader"] == json!(leader) && u(&o, "term")? == term,
        "node {other} no longer follows {leader} in term {term}: {o}"
    );
    // The leader still works: a write commits with the other follower.
    put_on(cluster, leader, "after-forgery", json!(1)).await?;

    cluster.resume(follower).await?;
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    Ok(())
}

/// Proves that a member restarted with the wrong secret can neither join nor disrupt: its
/// data is kept, it hears nothing it can verify, campaigns, and its term runs ahead of the
/// cluster's, but the other two drop its vote requests (and count them), keep their leader
/// and term, and keep committing writes, none of which reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_wrong_secret_cannot_join_or_disrupt() -> Result<()> {
    let cluster = Cluster::start_with(3, signed(SECRET)).await?;
    let r = wrong_secret_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn wrong_secret_body(cluster: &Cluster) -> Result<()> {
    let first = cluster.wait_stable(LEADER_TIMEOUT).await?;
    put_on(cluster, first, "before", json!("restart")).await?;
    let commit = u(&cluster.status(first).await?, "commit_index")?;
    cluster.wait_all_applied(commit, CATCH_UP_TIMEOUT).await?;

    cluster.stop(3).await?;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    let term = u(&cluster.status(leader).await?, "term")?;
    for id in [1, 2] {
        let s = cluster.status(id).await?;
        ensure!(
            s["leader"] == json!(leader) && u(&s, "term")? == term,
            "node {id} not settled on leader {leader} in term {term}: {s}"
        );
    }
    let before: Vec<(u64, u64)> = {
        let mut v = Vec::new();
        for id in [1, 2] {
            v.push(rejected(&cluster.status(id).await?)?);
        }
        v
    };

    cluster.set_node_env(3, "CONCORD_CLUSTER__SECRET", OTHER_SECRET)?;
    cluster.start_node(3).await?;
    let started = Instant::now();

    // Node 3 campaigns at least twice (its term passes the cluster's by 2), the cluster
    // drops its vote requests, and it drops the leader's appends.
    let what = "node 3 to campaign past the cluster's term while nodes 1-2 reject its rpcs";
    cluster
        .wait_until(Duration::from_secs(60), what, || async {
            let s3 = cluster.status(3).await?;
            let (_, forged3) = rejected(&s3)?;
            let mut cluster_rejected = true;
            for (i, id) in [1u64, 2].into_iter().enumerate() {
                let (_, forged) = rejected(&cluster.status(id).await?)?;
                cluster_rejected &= forged > before[i].1;
            }
            Ok(u(&s3, "term")? >= term + 2 && forged3 >= 1 && cluster_rejected)
        })
        .await?;
    let s3 = cluster.status(3).await?;
    eprintln!(
        "after {:?}: node 3 is {} in term {} (cluster term {term}), rejected {}",
        started.elapsed(),
        s3["role"],
        s3["term"],
        s3["security"]
    );

    for id in [1, 2] {
        let s = cluster.status(id).await?;
        ensure!(
            s["leader"] == json!(leader) && u(&s, "term")? == term,
            "node {id} moved off leader {leader} / term {term}: {s}"
        );
    }
    ensure!(
        s3["role"] != json!("leader") && s3["leader"] != json!(3),
        "node 3 thinks it leads: {s3}"
    );

    // Writes through either good node still commit.
    put_on(cluster, 1, "via-1", json!(1)).await?;
    put_on(cluster, 2, "via-2", json!(2)).await?;
    let s = cluster.status(leader).await?;
    let s3 = cluster.status(3).await?;
    ensure!(
        u(&s3, "last_log_index")? < u(&s, "last_log_index")?,
        "node 3 received the cluster's entries: {s3} vs leader {s}"
    );
    for id in [1, 2] {
        let s = cluster.status(id).await?;
        ensure!(
            s["leader"] == json!(leader) && u(&s, "term")? == term,
            "node {id} moved off leader {leader} / term {term} after the writes: {s}"
        );
    }
    Ok(())
}

/// Proves that with the same secret on every node the cluster works as usual: writes and
/// linearizable reads, a leader SIGKILL and re-election, the killed node's restart and
/// catch-up, identical data everywhere, and not a single rejected RPC or reply on any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_secret_cluster_works_through_leader_kill() -> Result<()> {
    let cluster = Cluster::start_with(3, signed(SECRET)).await?;
    let r = same_secret_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn same_secret_body(cluster: &Cluster) -> Result<()> {
    let old = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let client = Client::from_nats(cluster.client(), cluster.prefix(), Duration::from_secs(5));
    for i in 0..20 {
        put_retry(&client, &format!("a{i}"), json!(i)).await?;
    }
    for i in 0..20 {
        let got = client.get(&format!("a{i}")).await?.map(|v| v.value);
        ensure!(got == Some(json!(i)), "a{i} reads {got:?}");
    }

    let killed_at = Instant::now();
    cluster.kill(old).await?;
    let deadline = killed_at + Duration::from_secs(20);
    let new = loop {
        if let Ok(Some(l)) = cluster.agreed_leader().await {
            if l != old {
                break l;
            }
        }
        ensure!(
            Instant::now() < deadline,
            "no new leader within 20 s of killing {old}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "leader {old} killed; node {new} leads after {:?}",
        killed_at.elapsed()
    );
    for i in 0..20 {
        put_retry(&client, &format!("b{i}"), json!(i)).await?;
    }

    cluster.restart(old).await?;
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    let leader = cluster
        .agreed_leader()
        .await?
        .ok_or_else(|| anyhow!("no agreed leader after the restart"))?;
    let commit = u(&cluster.status(leader).await?, "commit_index")?;
    cluster.wait_all_applied(commit, CATCH_UP_TIMEOUT).await?;
    for i in 0..20 {
        for key in [format!("a{i}"), format!("b{i}")] {
            let got = client.get(&key).await?.map(|v| v.value);
            ensure!(got == Some(json!(i)), "{key} reads {got:?}");
        }
    }
    let mut digests = Vec::new();
    for id in cluster.ids() {
        let s = cluster
            .node_request(id, "admin.status", json!({"digest": true}))
            .await?;
        ensure!(
            s["security"]["rpc_rejected"] == json!(0),
            "node {id} rejected rpcs although every node has the secret: {}",
            s["security"]
        );
        digests.push(s["digest"].clone());
    }
    ensure!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "digests differ: {digests:?}"
    );
    Ok(())
}

// ----- helpers ---------------------------------------------------------------------------

fn u(status: &Value, field: &str) -> Result<u64> {
    status[field]
        .as_u64()
        .ok_or_else(|| anyhow!("status without {field}: {status}"))
}

/// `(unsigned, forged)` rejected RPCs and replies from a status reply.
fn rejected(status: &Value) -> Result<(u64, u64)> {
    let s = &status["security"];
    let get = |k: &str| {
        s[k].as_u64()
            .ok_or_else(|| anyhow!("status without security.{k}: {status}"))
    };
    let (unsigned, forged, total) = (
        get("rpc_rejected_unsigned")?,
        get("rpc_rejected_forged")?,
        get("rpc_rejected")?,
    );
    ensure!(total == unsigned + forged, "security counts disagree: {s}");
    Ok((unsigned, forged))
}

fn raft_subject(cluster: &Cluster, node: u64, rpc: &str) -> String {
    format!(
        "{}.raft.{}.{node}.{rpc}",
        cluster.prefix(),
        cluster.cluster_name()
    )
}

/// The lowest node id not in `not`.
fn other_than(cluster: &Cluster, not: &[u64]) -> Result<u64> {
    cluster
        .ids()
        .into_iter()
        .find(|id| !not.contains(id))
        .ok_or_else(|| anyhow!("no node other than {not:?}"))
}

/// Puts through node `id`'s own subject, retrying "not applied" answers for up to 20 s.
async fn put_on(cluster: &Cluster, id: u64, key: &str, value: Value) -> Result<u64> {
    let subject = cluster.subject(&format!("node.{id}.kv.put"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = cluster
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
            matches!(error_code(&reply), Some("cluster_not_ready" | "busy")),
            "put {key} on node {id} failed: {reply}"
        );
        ensure!(
            Instant::now() < deadline,
            "put {key} on node {id} not accepted within 20 s: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Puts through the cluster subject, retrying any failure for up to 20 s (the value is the
/// same each time, so a retried write of unknown outcome is harmless here).
async fn put_retry(client: &Client, key: &str, value: Value) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.put(key, &value).await {
            Ok(rev) => return Ok(rev),
            Err(e) if Instant::now() < deadline => {
                eprintln!("put {key}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("put {key} for 20 s")),
        }
    }
}

/// A stale read on node `id` itself: `None` for `not_found`.
async fn stale_get(cluster: &Cluster, id: u64, key: &str) -> Result<Option<Value>> {
    let subject = cluster.subject(&format!("node.{id}.kv.get"));
    let reply = cluster
        .request_raw(
            &subject,
            None,
            to_bytes(&json!({"key": key, "consistency": "stale"})),
            Duration::from_secs(10),
        )
        .await?;
    if reply["ok"] == json!(true) {
        return Ok(Some(reply["value"].clone()));
    }
    match error_code(&reply) {
        Some("not_found") => Ok(None),
        _ => bail!("stale get of {key} on node {id}: {reply}"),
    }
}

/// Forwarded client requests are signed too: a request marked forwarded that reaches the
/// leader unsigned or with a wrong MAC is refused (`unauthorized`) and counted, nothing is
/// written; a forged reply published onto a follower's forwarding inbox (the leader paused,
/// so only the forgery can arrive first) is ignored, and the client gets the leader's real
/// answer once it resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_requests_and_their_replies_are_signed() -> Result<()> {
    let cluster = Cluster::start_with(3, signed(SECRET)).await?;
    let r = forwarded_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn forwarded_body(cluster: &Cluster) -> Result<()> {
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let follower = other_than(cluster, &[leader])?;
    // The normal path: a write through the follower is forwarded and signed.
    put_on(cluster, follower, "fwd-ok", json!(1)).await?;

    // Forged "forwarded" requests straight to the leader's node subject.
    let before = rejected(&cluster.status(leader).await?)?;
    let subject = cluster.subject(&format!("node.{leader}.kv.put"));
    let body = to_bytes(&json!({"key": "fwd-forged", "value": "x"}));
    let wrong = Signer::new(OTHER_SECRET.as_bytes());
    for mac in [
        None,
        Some(signing::to_hex(&wrong.request_mac(&subject, &[], b"x"))),
    ] {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Concord-Forwarded", follower.to_string().as_str());
        if let Some(m) = &mac {
            h.insert(signing::HEADER_MAC, m.as_str());
        }
        let reply = cluster
            .request_raw(&subject, Some(h), body.clone(), Duration::from_secs(5))
            .await?;
        ensure!(
            error_code(&reply) == Some("unauthorized"),
            "forged forwarded put answered {reply}"
        );
    }
    let after = rejected(&cluster.status(leader).await?)?;
    ensure!(
        after.0 == before.0 + 1 && after.1 == before.1 + 1,
        "leader counted {before:?} -> {after:?}, expected one more unsigned and one more forged"
    );
    let got = cluster
        .request(
            &format!("node.{leader}.kv.get"),
            json!({"key": "fwd-forged"}),
        )
        .await?;
    ensure!(
        error_code(&got) == Some("not_found"),
        "forged write applied: {got}"
    );

    // A forged reply onto the follower's inbox while the leader is paused.
    let nats = cluster.connect().await?;
    let mut spy = nats.subscribe(subject.clone()).await?;
    nats.flush().await?;
    let before = rejected(&cluster.status(follower).await?)?;
    let (put, inbox) = common::forwarding::put_forwarded_to_paused_leader(
        cluster,
        &mut spy,
        leader,
        follower,
        json!({"key": "fwd-real", "value": 7, "timeout_ms": 8000}),
        Duration::from_secs(9),
    )
    .await?;
    let fake = to_bytes(&json!({"ok": true, "revision": 999_999}));
    nats.publish(inbox.clone(), fake.clone()).await?;
    let mut h = async_nats::HeaderMap::new();
    h.insert(
        signing::HEADER_MAC,
        signing::to_hex(&wrong.reply_mac(&[0; 32], &fake)).as_str(),
    );
    nats.publish_with_headers(inbox, h, fake).await?;
    nats.flush().await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = rejected(&cluster.status(follower).await?)?;
        if now.0 > before.0 && now.1 > before.1 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "follower did not reject the forged replies: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.resume(leader).await?;
    let reply = put.await??;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    ensure!(
        reply["ok"] == json!(true),
        "the forwarded put failed: {reply}"
    );
    let revision = u(&reply, "revision")?;
    ensure!(
        revision != 999_999,
        "the client got the forged reply: {reply}"
    );
    let got = cluster
        .request(
            &format!("node.{follower}.kv.get"),
            json!({"key": "fwd-real"}),
        )
        .await?;
    ensure!(
        got["value"] == json!(7) && got["revision"] == json!(revision),
        "fwd-real reads {got}"
    );
    Ok(())
}
