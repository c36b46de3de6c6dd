//! Issue #20 item 2 and two points of item 8: a node's own control requests (the removal
//! watch, the startup prefix check, the ping before a membership change, the removal
//! notice) are signed with `cluster.secret`, carry no admin token, and believe only
//! verified replies; node-to-node requests name their cluster id (`Concord-Cluster-Id`)
//! and a wrong one is refused and counted; a node whose `auth.enabled` differs from the
//! cluster's refuses to start.
//!
//! The test plays the attacker through a raw `async_nats` client that can publish and
//! subscribe anywhere. Every wait is bounded by a deadline.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Result};
use async_nats::HeaderMap;
use common::{error_code, to_bytes, wait_until, Cluster, ClusterOptions};
use concord::raft::types::NodeId;
use concord::raft::wire::{self, RpcReply, RpcRequest, RPC_FORMAT};
use concord::signing::{self, Signer};
use futures::StreamExt;
use openraft::raft::{VoteRequest, VoteResponse};
use openraft::Vote;
use serde_json::{json, Value};

const SECRET: &str = "control-signing-test-secret";
const ADMIN: &str = "control-test-admin-token";
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Three nodes with `cluster.secret`, auth on and a bootstrap admin token: the token the
/// nodes sent along with their control requests before the fix.
fn secured() -> ClusterOptions {
    ClusterOptions::default()
        .env("CONCORD_CLUSTER__SECRET", SECRET)
        .env("CONCORD_AUTH__ENABLED", "true")
        .env("CONCORD_AUTH__ADMIN_TOKEN", ADMIN)
        .admin_token(ADMIN)
}

/// One request a node sent, as a raw subscriber saw it.
#[derive(Debug, Clone)]
struct Seen {
    subject: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn of(msg: &async_nats::Message) -> Seen {
        let headers = msg
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
            .collect();
        Seen {
            subject: msg.subject.to_string(),
            headers,
        }
    }

    fn has(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn seen(log: &Log) -> Vec<Seen> {
    log.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Records every message on `subject` into `log` while `recording` says so, and answers
/// each with `answer` when given.
async fn spy(
    c: &Cluster,
    subject: String,
    log: Log,
    recording: Arc<std::sync::atomic::AtomicBool>,
    answer: Option<Value>,
) -> Result<tokio::task::JoinHandle<()>> {
    let client = c.connect().await?;
    let mut sub = client.subscribe(subject).await?;
    client.flush().await?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if !recording.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Seen::of(&msg));
            if let (Some(a), Some(reply)) = (&answer, msg.reply.clone()) {
                let _ = client.publish(reply, to_bytes(a)).await;
            }
        }
    }))
}

fn rejected(status: &Value, field: &str) -> Result<u64> {
    status["security"][field]
        .as_u64()
        .ok_or_else(|| anyhow!("status without security.{field}: {status}"))
}

fn others(c: &Cluster, but: NodeId) -> Vec<NodeId> {
    c.ids().into_iter().filter(|&i| i != but).collect()
}

/// Item 2: a node cut off from its leader runs its removal watch; an attacker answers
/// `P.admin.members` (and the leader's own subject) with a membership that leaves it out.
/// The node counts the forged replies and keeps running; restarted, it starts normally.
/// Before the fix the node believed the first reply, marked its data dir removed and
/// stopped, and every later start was refused. Its requests also carried the admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_membership_does_not_remove_a_node() -> Result<()> {
    let c = Cluster::start_with(3, secured()).await?;
    let r = forged_membership_body(&c).await;
    c.fail_on_err(r)
}

async fn forged_membership_body(c: &Cluster) -> Result<()> {
    let leader = c.wait_stable(LEADER_TIMEOUT).await?;
    let x = c.a_follower(leader)?;
    let rest = others(c, x);
    let forged = json!({
        "ok": true, "leader": leader, "term": 1000,
        "voters": rest, "learners": [], "last_log_index": 1, "nodes": [],
    });
    let log: Log = Arc::default();
    let on = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let spies = [
        spy(
            c,
            c.subject("admin.members"),
            log.clone(),
            on.clone(),
            Some(forged.clone()),
        )
        .await?,
        spy(
            c,
            c.subject("node.*.admin.members"),
            log.clone(),
            on.clone(),
            Some(forged),
        )
        .await?,
    ];
    let before = rejected(&c.status(x).await?, "rpc_rejected")?;
    // Node x loses its leader: its removal watch fires after the quiet window.
    for &o in &rest {
        c.pause(o).await?;
    }
    wait_until(
        Duration::from_secs(40),
        "node x to count forged membership replies while it keeps running",
        || async {
            let status = c.status(x).await.map_err(|e| {
                anyhow!(
                    "node {x} stopped answering (removed by a forged reply?): {e}\n{}",
                    c.log(x)
                )
            })?;
            Ok(rejected(&status, "rpc_rejected")? >= before + 2 && seen(&log).len() >= 2)
        },
    )
    .await?;
    ensure!(c.is_running(x), "node {x} stopped");
    ensure!(
        !c.log(x).contains("removed from the cluster"),
        "node {x} believed the forgery"
    );
    for s in seen(&log) {
        ensure!(
            !s.has("Authorization"),
            "a node sent its admin token: {s:?}"
        );
        ensure!(s.has("Concord-Mac"), "an unsigned control request: {s:?}");
    }
    on.store(false, std::sync::atomic::Ordering::SeqCst);
    spies.iter().for_each(|s| s.abort());
    for &o in &rest {
        c.resume(o).await?;
    }
    // Nothing was persisted: the node starts again and rejoins.
    c.restart(x).await?;
    c.wait_stable(LEADER_TIMEOUT).await?;
    ensure!(c.is_running(x), "node {x} did not start again");
    Ok(())
}

/// Item 2: the startup prefix check, the leader's ping before a membership change and its
/// removal notice carry no `Authorization` when the cluster has a secret, and are signed
/// and name the cluster id. Before the fix each of them sent the admin token to whoever
/// subscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_control_requests_carry_no_token() -> Result<()> {
    let c = Cluster::start_with(3, secured()).await?;
    let r = no_token_body(&c).await;
    c.fail_on_err(r)
}

async fn no_token_body(c: &Cluster) -> Result<()> {
    let leader = c.wait_stable(LEADER_TIMEOUT).await?;
    let g = c.a_follower(leader)?;
    let log: Log = Arc::default();
    let on = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let spies = [
        spy(c, c.subject("admin.status"), log.clone(), on.clone(), None).await?,
        spy(
            c,
            c.subject("node.*.admin.member.removed"),
            log.clone(),
            on.clone(),
            None,
        )
        .await?,
    ];
    // The startup prefix check.
    c.restart(g).await?;
    c.wait_stable(LEADER_TIMEOUT).await?;
    // The ping and the removal notice. The fixture itself uses `P.node.<id>.admin.status`
    // (and waits for "no responders" there): that spy lives only while the change runs.
    let pings = spy(c, c.subject("node.*.admin.status"), log.clone(), on, None).await?;
    let removed = c
        .request_raw(
            &c.subject("admin.member.remove"),
            c.admin_headers(),
            to_bytes(&json!({ "id": g })),
            Duration::from_secs(10),
        )
        .await;
    pings.abort();
    let removed = removed?;
    ensure!(
        removed["ok"] == json!(true),
        "member.remove failed: {removed}"
    );
    c.wait_exit(g, Duration::from_secs(20)).await?;
    spies.iter().for_each(|s| s.abort());
    let all = seen(&log);
    let count = |suffix: &str| all.iter().filter(|s| s.subject.ends_with(suffix)).count();
    ensure!(
        all.iter().any(|s| s.subject == c.subject("admin.status")),
        "no prefix check seen: {all:?}"
    );
    ensure!(
        count(".member.removed") >= 1,
        "no removal notice seen: {all:?}"
    );
    ensure!(
        all.iter()
            .any(|s| s.subject.starts_with(&c.subject("node."))
                && s.subject.ends_with(".admin.status")),
        "no ping seen: {all:?}"
    );
    for s in &all {
        ensure!(!s.has("Authorization"), "a node sent a token: {s:?}");
        ensure!(s.has("Concord-Mac"), "an unsigned control request: {s:?}");
        ensure!(
            s.has("Concord-Cluster-Id"),
            "a control request without its cluster id: {s:?}"
        );
    }
    Ok(())
}

/// A signed request from "node `from`" with the given headers (the MAC covers the reply
/// subject and the forwarding headers, as the nodes sign); the reply's payload.
async fn signed_request(
    c: &Cluster,
    subject: String,
    mut headers: HeaderMap,
    signed_headers: &[&str],
    body: Vec<u8>,
) -> Result<bytes::Bytes> {
    let client = c.connect().await?;
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await?;
    let mut extra: Vec<Vec<u8>> = vec![inbox.clone().into_bytes()];
    for name in signed_headers {
        extra.push(
            headers
                .get(*name)
                .map(|v| v.as_str().as_bytes().to_vec())
                .unwrap_or_default(),
        );
    }
    let parts: Vec<&[u8]> = extra.iter().map(|v| v.as_slice()).collect();
    let mac = Signer::new(SECRET.as_bytes()).request_mac(&subject, &parts, &body);
    headers.insert(signing::HEADER_MAC, signing::to_hex(&mac).as_str());
    client
        .publish_with_reply_and_headers(subject, inbox, headers, body.into())
        .await?;
    client.flush().await?;
    match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
        Ok(Some(m)) => Ok(m.payload),
        Ok(None) => bail!("inbox closed"),
        Err(_) => bail!("no reply within 5 s"),
    }
}

/// Item 8: a Raft RPC and a control request that name another cluster id are refused and
/// counted (`security.rpc_rejected_other_cluster`, and in `rpc_rejected`), though signed
/// with the right secret. Before the fix the RPC was refused without being counted, and the
/// control request was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cluster_id_is_refused_and_counted() -> Result<()> {
    let c = Cluster::start_with(3, secured()).await?;
    let r = wrong_cluster_body(&c).await;
    c.fail_on_err(r)
}

async fn wrong_cluster_body(c: &Cluster) -> Result<()> {
    let leader = c.wait_stable(LEADER_TIMEOUT).await?;
    let f = c.a_follower(leader)?;
    let status = c.status(f).await?;
    let total0 = rejected(&status, "rpc_rejected")?;
    let wrong = uuid::Uuid::new_v4();

    // A vote request in an envelope of another cluster id (header and envelope agree).
    let envelope = RpcRequest {
        format: RPC_FORMAT,
        cluster_name: c.cluster_name().to_string(),
        cluster_id: Some(wrong),
        from: leader,
        to: f,
        body: VoteRequest::<NodeId>::new(Vote::new(0, leader), None),
    };
    let mut h = HeaderMap::new();
    h.insert(
        concord::subjects::HEADER_CLUSTER_ID,
        wrong.to_string().as_str(),
    );
    let subject = c.subject(&format!("raft.{}.{f}.vote", c.cluster_name()));
    let reply = signed_request(c, subject, h, &[], wire::encode(&envelope)?).await?;
    match wire::decode::<RpcReply<VoteResponse<NodeId>, ()>>(&reply)? {
        RpcReply::Refused(why) => ensure!(why.contains(&wrong.to_string()), "refusal: {why}"),
        _ => bail!("a vote for cluster id {wrong} was not refused"),
    }

    // A control request (status, as a starting node sends it) naming another cluster id.
    let mut h = HeaderMap::new();
    h.insert("Concord-Forwarded", leader.to_string().as_str());
    h.insert(
        concord::subjects::HEADER_CLUSTER_ID,
        wrong.to_string().as_str(),
    );
    let signed = concord::api::route::SIGNED_FORWARD_HEADERS;
    let subject = c.subject(&format!("node.{f}.admin.status"));
    let reply = signed_request(c, subject, h, &signed, b"{}".to_vec()).await?;
    let reply: Value = serde_json::from_slice(&reply)?;
    ensure!(
        error_code(&reply) == Some("unauthorized"),
        "status answered: {reply}"
    );

    let status = c.status(f).await?;
    ensure!(
        rejected(&status, "rpc_rejected_other_cluster")? >= 2,
        "not counted: {status}"
    );
    ensure!(
        rejected(&status, "rpc_rejected")? >= total0 + 2,
        "not counted: {status}"
    );
    ensure!(
        c.log(f).contains(&format!("for cluster id {wrong}")),
        "the first wrong cluster id was not logged naming it"
    );
    Ok(())
}

/// Item 8: a node whose `auth.enabled` differs from the cluster's refuses to start, with an
/// error naming both settings; set back, it starts (nothing was recorded). Before the fix
/// it started and served without tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_mismatch_refuses_start() -> Result<()> {
    let c = Cluster::start_with(3, secured()).await?;
    let r = auth_mismatch_body(&c).await;
    c.fail_on_err(r)
}

async fn auth_mismatch_body(c: &Cluster) -> Result<()> {
    let leader = c.wait_stable(LEADER_TIMEOUT).await?;
    let f = c.a_follower(leader)?;
    c.stop(f).await?;
    c.set_node_env(f, "CONCORD_AUTH__ENABLED", "false")?;
    let exit = c.run_node_until_exit(f, Duration::from_secs(30)).await?;
    ensure!(
        !exit.success(),
        "node {f} with auth off started in a cluster with auth on"
    );
    ensure!(
        c.log(f)
            .contains("auth.enabled is false on this node but true on the cluster"),
        "the refusal does not name both settings:\n{}",
        c.log(f)
    );
    c.set_node_env(f, "CONCORD_AUTH__ENABLED", "true")?;
    c.start_node(f).await?;
    c.wait_stable(LEADER_TIMEOUT).await?;
    Ok(())
}
