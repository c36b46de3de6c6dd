//! Issue #20 items 8 and 9, over the real wire: a node without `cluster.secret` decodes Raft
//! RPCs from anyone who can publish on its raft subject, so the decoder itself must hold.
//! The test is that publisher: a raw `async_nats` client sends hand-built append-entries
//! envelopes to a real node and checks that it refuses each one with a reply, stays up and
//! still serves.
//!
//! - An entry holding a `Command::Batch` nested 80,000 deep (about 1 MB, under NATS's
//!   default max payload). Before batches were kept one level deep, the recursive decode
//!   overflowed the node's stack and the process aborted.
//! - Length prefixes of 2^60: for the entry list and for a key string. The bounded decoder
//!   refuses them without allocating for what they claim.
//!
//! Every wait is bounded by a deadline.

mod common;

use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Result};
use common::{error_code, wait_until, Cluster, ClusterOptions};
use concord::command::{Command, LogCommand, NESTED_BATCH};
use concord::raft::types::TypeConfig;
use concord::raft::wire::{self, RpcReply, RpcRequest, RPC_FORMAT};
use openraft::raft::AppendEntriesRequest;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use serde_json::{json, Value};

const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Levels of the nested batch: 12 bytes each (variant tag u32 + length u64).
const DEPTH: usize = 80_000;
/// What a length prefix claims in the oversized envelopes.
const HUGE: u64 = 1 << 60;

/// `Command::Batch`'s variant index and bincode's fixed-width encoding of it.
const BATCH_TAG: [u8; 4] = 3u32.to_le_bytes();
const PUT_TAG: [u8; 4] = 1u32.to_le_bytes();

/// An append-entries envelope addressed to `to` whose one entry holds `command`, encoded;
/// `leader_commit` is `None`, so the command's bytes are followed by exactly one 0 byte.
fn envelope(c: &Cluster, to: u64, command: Option<Command>) -> Result<Vec<u8>> {
    let entries = command
        .map(|cmd| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, to), 1),
            payload: EntryPayload::Normal(LogCommand::new(cmd)),
        })
        .into_iter()
        .collect();
    let body = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(1, to),
        prev_log_id: None,
        entries,
        leader_commit: None,
    };
    Ok(wire::encode(&RpcRequest {
        format: RPC_FORMAT,
        cluster_name: c.cluster_name().to_string(),
        cluster_id: None,
        from: to,
        to,
        body,
    })?)
}

/// Replaces the `len` bytes just before the trailing `leader_commit` byte of `bytes`, after
/// checking they are `expected`: how each hostile envelope is spliced from a real one.
fn splice(mut bytes: Vec<u8>, expected: &[u8], with: &[u8]) -> Result<Vec<u8>> {
    let end = bytes.len() - 1;
    let start = end - expected.len();
    ensure!(
        &bytes[start..end] == expected && bytes[end] == 0,
        "the envelope's tail is not where the splice expects it"
    );
    bytes.splice(start..end, with.iter().copied());
    Ok(bytes)
}

/// An entry whose command is a batch nested `DEPTH` deep, the innermost one empty.
fn nested_batch(c: &Cluster, to: u64) -> Result<Vec<u8>> {
    let empty_batch: Vec<u8> = [&BATCH_TAG[..], &0u64.to_le_bytes()].concat();
    let one_part: Vec<u8> = [&BATCH_TAG[..], &1u64.to_le_bytes()].concat();
    let mut nested = one_part.repeat(DEPTH);
    nested.extend_from_slice(&empty_batch);
    splice(
        envelope(c, to, Some(Command::Batch(vec![])))?,
        &empty_batch,
        &nested,
    )
}

/// An entry list that claims 2^60 entries, and a put whose key claims 2^60 bytes.
fn huge_prefixes(c: &Cluster, to: u64) -> Result<Vec<Vec<u8>>> {
    let entries = splice(
        envelope(c, to, None)?,
        &0u64.to_le_bytes(),
        &HUGE.to_le_bytes(),
    )?;
    let put = Command::Put {
        key: String::new(),
        value: String::new(),
    };
    let empty_put: Vec<u8> = [&PUT_TAG[..], &[0u8; 16]].concat();
    let claimed: Vec<u8> = [&PUT_TAG[..], &HUGE.to_le_bytes(), &[0u8; 8]].concat();
    let key = splice(envelope(c, to, Some(put))?, &empty_put, &claimed)?;
    Ok(vec![entries, key])
}

/// Publishes `payload` on node `id`'s append subject and returns the refusal it answers with.
async fn send_append(c: &Cluster, id: u64, payload: Vec<u8>) -> Result<String> {
    let subject = format!("{}.raft.{}.{id}.append", c.prefix(), c.cluster_name());
    let nats = c.connect().await?;
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        nats.request(subject, payload.into()),
    )
    .await
    .map_err(|_| anyhow!("node {id} did not answer the append within 10 s"))?
    .map_err(|e| anyhow!("node {id} did not answer the append: {e}"))?;
    match wire::decode::<RpcReply<(), ()>>(&reply.payload)? {
        RpcReply::Refused(why) => Ok(why),
        other => bail!("expected a refusal, got {other:?}"),
    }
}

/// The node is alive and serving: a put and a get through the cluster's subjects. The
/// first put is retried for a while: a new leader subscribes to them only once it leads.
async fn still_serving(c: &Cluster, id: u64, key: &str) -> Result<()> {
    ensure!(c.is_running(id), "node {id} exited:\n{}", c.log(id));
    wait_until(Duration::from_secs(15), "a put to succeed", || async {
        let put = c
            .request_timeout(
                "kv.put",
                json!({"key": key, "value": 1}),
                Duration::from_secs(2),
            )
            .await;
        Ok(matches!(put, Ok(ref v) if error_code(v).is_none()))
    })
    .await?;
    let got: Value = c.request("kv.get", json!({"key": key})).await?;
    ensure!(got["value"] == json!(1), "get after the attack: {got}");
    ensure!(c.is_running(id), "node {id} exited:\n{}", c.log(id));
    Ok(())
}

/// Issue #20 item 8: a batch nested 80,000 deep in an append-entries RPC is refused at
/// decode with a reply naming the nesting, and the node keeps serving. Before the fix the
/// decoder recursed once per level and the node died of a stack overflow (SIGABRT), so no
/// reply came and `still_serving` failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_batch_is_refused_not_a_crash() -> Result<()> {
    let c = Cluster::start_with(1, ClusterOptions::default()).await?;
    let r = nested_body(&c).await;
    c.fail_on_err(r)
}

async fn nested_body(c: &Cluster) -> Result<()> {
    let id = c.wait_for_leader(LEADER_TIMEOUT).await?;
    still_serving(c, id, "before").await?;
    let payload = nested_batch(c, id)?;
    ensure!(
        payload.len() > DEPTH * 12,
        "payload of {} bytes",
        payload.len()
    );
    let why = send_append(c, id, payload).await?;
    ensure!(
        why.contains(NESTED_BATCH),
        "refused for another reason: {why}"
    );
    still_serving(c, id, "after-nested").await
}

/// Issue #20 items 8 and 9: length prefixes claiming 2^60 entries or a 2^60-byte key are
/// refused at once (within the 10 s reply deadline, where allocating what they claim would
/// abort the node), and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_length_prefixes_are_refused_without_allocating() -> Result<()> {
    let c = Cluster::start_with(1, ClusterOptions::default()).await?;
    let r = huge_body(&c).await;
    c.fail_on_err(r)
}

async fn huge_body(c: &Cluster) -> Result<()> {
    let id = c.wait_for_leader(LEADER_TIMEOUT).await?;
    still_serving(c, id, "before").await?;
    for payload in huge_prefixes(c, id)? {
        let why = send_append(c, id, payload).await?;
        ensure!(
            why.contains("undecodable raft rpc"),
            "refused for another reason: {why}"
        );
    }
    still_serving(c, id, "after-huge").await
}
