//! Watch over the wire (issue #24, DESIGN.md "Watch"): every field of the create request,
//! the messages (events, progress notices, fragments, acknowledgements and the window),
//! every end code a single cluster can show here (`cancelled`, `slow_consumer`,
//! `node_stopping`, `compacted`), against a real 3-node cluster.

mod common;

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use common::{Cluster, ClusterOptions};
use futures::StreamExt;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

/// A cluster at log format 2 with short watch timers.
async fn cluster() -> Result<Cluster> {
    let opts = ClusterOptions::default()
        .env("CONCORD_WATCH__PROGRESS_MS", 300)
        .env("CONCORD_WATCH__ACK_TIMEOUT_MS", 1500);
    Cluster::start_format_2(3, opts).await
}

/// A watcher: its own deliver subject, what arrived, and whether it acknowledges.
struct Watcher {
    client: async_nats::Client,
    sub: async_nats::Subscriber,
    pub created: Value,
    pub ack: bool,
    seq: u64,
}

/// One message as it arrived: its body and its ack address.
struct Got {
    body: Value,
    reply: Option<async_nats::Subject>,
}

impl Watcher {
    /// Creates a watch with `body` (its `deliver` filled in) on `subject`.
    async fn create(c: &Cluster, subject_suffix: &str, mut body: Value) -> Result<Watcher> {
        let client = c.connect().await?;
        let deliver = client.new_inbox();
        let sub = client.subscribe(deliver.clone()).await?;
        // The server has the subscription before the create goes out on another connection.
        client.flush().await?;
        body["deliver"] = json!(deliver);
        let created = c.request(subject_suffix, body).await?;
        Ok(Watcher {
            client,
            sub,
            created,
            ack: true,
            seq: 0,
        })
    }

    fn id(&self) -> &str {
        self.created["watch_id"].as_str().unwrap_or_default()
    }

    /// The next message within `WAIT`, acknowledged when `ack`.
    async fn next(&mut self) -> Result<Got> {
        let msg = tokio::time::timeout(WAIT, self.sub.next())
            .await
            .context("no watch message in time")?
            .context("subscription closed")?;
        let body: Value = serde_json::from_slice(&msg.payload)?;
        ensure!(
            body["watch_id"] == self.id(),
            "another watch's message: {body}"
        );
        if let Some(seq) = body["seq"].as_u64() {
            ensure!(seq == self.seq + 1, "seq {seq} after {}: {body}", self.seq);
            self.seq = seq;
        }
        if self.ack {
            if let Some(reply) = &msg.reply {
                self.client
                    .publish(reply.clone(), Bytes::from_static(b"{}"))
                    .await?;
            }
        }
        Ok(Got {
            body,
            reply: msg.reply,
        })
    }

    /// Events until one at `revision` or later arrived (progress notices skipped).
    async fn events_through(&mut self, revision: u64) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        loop {
            let got = self.next().await?;
            if got.body.get("end").is_some() {
                bail!("the watch ended: {}", got.body);
            }
            out.extend(got.body["events"].as_array().cloned().unwrap_or_default());
            if got.body["store_revision"].as_u64() >= Some(revision) {
                return Ok(out);
            }
        }
    }

    /// The end message, skipping what comes before it.
    async fn end(&mut self) -> Result<Value> {
        for _ in 0..1000 {
            let got = self.next().await?;
            if got.body.get("end").is_some() {
                ensure!(got.reply.is_none(), "an end needs no ack: {}", got.body);
                return Ok(got.body["end"].clone());
            }
        }
        bail!("no end message")
    }
}

async fn put(c: &Cluster, key: &str, value: Value) -> Result<u64> {
    let r = c
        .request("kv.put", json!({"key": key, "value": value}))
        .await?;
    r["revision"].as_u64().with_context(|| format!("put: {r}"))
}

fn summary(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {}",
                e["type"], e["key"], e["revision"], e["value"]
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_every_change_in_order_with_its_fields() -> Result<()> {
    let c = cluster().await?;
    let r = fields_body(&c).await;
    c.fail_on_err(r)
}

async fn fields_body(c: &Cluster) -> Result<()> {
    let r1 = put(c, "cfg/a", json!(1)).await?;
    let mut all = Watcher::create(
        c,
        "watch.create",
        json!({"prefix": "cfg/", "prev_value": true, "start_revision": r1 + 1}),
    )
    .await?;
    let created = all.created.clone();
    ensure!(
        created["ok"] == true && created["store_revision"].as_u64().is_some(),
        "{created}"
    );
    ensure!(
        created["compact_revision"] == 0 && created["progress_ms"] == 300,
        "{created}"
    );
    ensure!(created["node"].as_u64().is_some(), "{created}");
    let mut past = Watcher::create(
        c,
        "watch.create",
        json!({"prefix": "cfg/", "start_revision": r1}),
    )
    .await?;
    let mut key_only = Watcher::create(
        c,
        "node.2.watch.create",
        json!({"key": "cfg/b", "types": ["delete"], "keys_only": true, "start_revision": r1 + 1}),
    )
    .await?;
    ensure!(
        key_only.created["node"] == 2,
        "a node subject is served there: {}",
        key_only.created
    );

    let r2 = put(c, "cfg/a", json!({"v": 2})).await?;
    let r3 = put(c, "cfg/b", json!("x")).await?;
    put(c, "other/z", json!(0)).await?;
    let txn =
        json!({"success": [{"put": {"key": "cfg/c", "value": 3}}, {"delete": {"key": "cfg/b"}}]});
    let r4 = c.request("kv.txn", txn).await?["revision"]
        .as_u64()
        .context("txn")?;
    let del = c.request("kv.delete", json!({"prefix": "cfg/"})).await?;
    let r5 = del["revision"].as_u64().context("prefix delete")?;

    let events = all.events_through(r5).await?;
    let expect = vec![
        format!("\"put\" \"cfg/a\" {r2} {{\"v\":2}}"),
        format!("\"put\" \"cfg/b\" {r3} \"x\""),
        format!("\"delete\" \"cfg/b\" {r4} null"),
        format!("\"put\" \"cfg/c\" {r4} 3"),
        format!("\"delete\" \"cfg/a\" {r5} null"),
        format!("\"delete\" \"cfg/c\" {r5} null"),
    ];
    let mut got = summary(&events);
    // One revision's events may come in any order; compare revisions in order.
    got[2..4].sort();
    ensure!(got == expect, "events:\n{got:#?}\nexpected:\n{expect:#?}");
    let first = &events[0];
    ensure!(
        first["prev_value"] == 1
            && first["version"] == 2
            && first["create_revision"] == r1
            && first["lease"] == 0,
        "a put's metadata and previous value: {first}"
    );
    let b_put = &events[1];
    ensure!(
        b_put.get("prev_value").is_none() && b_put["version"] == 1,
        "a creation has no previous value: {b_put}"
    );
    let del_a = events
        .iter()
        .find(|e| e["key"] == "cfg/a" && e["type"] == "delete")
        .context("a deleted")?;
    ensure!(
        del_a["prev_value"] == json!({"v": 2}) && del_a["version"] == 0,
        "a delete: {del_a}"
    );

    let from_past = past.events_through(r5).await?;
    ensure!(
        from_past[0]["revision"] == r1 && from_past.len() == events.len() + 1,
        "from a past revision: {from_past:?}"
    );

    let only = key_only.events_through(r4).await?;
    ensure!(
        only.len() == 1
            && only[0]["type"] == "delete"
            && only[0]["key"] == "cfg/b"
            && only[0].get("value").is_none(),
        "a key, deletes only, keys only: {only:?}"
    );

    // Idle: progress notices carry the store revision and no events.
    let notice = all.next().await?;
    ensure!(
        notice.body["events"] == json!([]) && notice.body["store_revision"].as_u64() >= Some(r5),
        "{}",
        notice.body
    );
    ensure!(
        notice.reply.is_some(),
        "a progress notice is acknowledged too"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_window_cancel_and_ends() -> Result<()> {
    let c = cluster().await?;
    let r = refusals_body(&c).await;
    c.fail_on_err(r)
}

async fn refusals_body(c: &Cluster) -> Result<()> {
    for (body, code) in [
        (
            json!({"prefix": "a", "deliver": "concord.x"}),
            "bad_request",
        ),
        (json!({"prefix": "a", "deliver": "$SYS.x"}), "bad_request"),
        (json!({"prefix": "a"}), "bad_request"),
        (
            json!({"key": "a", "prefix": "a", "deliver": "x"}),
            "bad_request",
        ),
        (
            json!({"prefix": "a", "deliver": "x", "window": 0}),
            "bad_request",
        ),
        (
            json!({"prefix": "a", "deliver": "x", "types": ["nope"]}),
            "bad_request",
        ),
        (json!({"key": "", "deliver": "x"}), "invalid_key"),
    ] {
        let r = c.request("watch.create", body.clone()).await?;
        ensure!(
            r["ok"] == false && r["error"]["code"] == code,
            "{body} -> {r}"
        );
    }
    let r = c
        .node_request(1, "watch.cancel", json!({"watch_id": "nope"}))
        .await?;
    ensure!(r["error"]["code"] == "not_found", "{r}");

    // The window: two messages unacknowledged, then nothing until an ack.
    let start = put(c, "w/0", json!(0)).await?;
    for i in 1..6 {
        put(c, &format!("w/{i}"), json!(i)).await?;
    }
    let mut slow = Watcher::create(
        c,
        "node.1.watch.create",
        json!({"prefix": "w/", "start_revision": start, "window": 2}),
    )
    .await?;
    slow.ack = false;
    let m1 = slow.next().await?;
    let m2 = slow.next().await?;
    ensure!(
        m1.body["seq"] == 1 && m2.body["seq"] == 2,
        "{} {}",
        m1.body,
        m2.body
    );
    // Unacknowledged past watch.ack_timeout_ms: slow_consumer, resuming at the first
    // revision not acknowledged.
    let end = slow.end().await?;
    ensure!(
        end["code"] == "slow_consumer" && end["resume_revision"] == start,
        "{end}"
    );

    // Cancel: the end says so, and resumes where acknowledgements stopped.
    let mut w = Watcher::create(
        c,
        "node.3.watch.create",
        json!({"prefix": "w/", "start_revision": start}),
    )
    .await?;
    let events = w.events_through(start + 5).await?;
    ensure!(events.len() == 6, "{events:?}");
    let r = c
        .node_request(3, "watch.cancel", json!({"watch_id": w.id()}))
        .await?;
    ensure!(r["ok"] == true, "{r}");
    let end = w.end().await?;
    ensure!(
        end["code"] == "cancelled" && end["resume_revision"].as_u64() > Some(start + 5),
        "{end}"
    );

    // Compacted: a start at or below the compact revision is refused, with the revision.
    let admin = c
        .request("admin.compact", json!({"revision": start + 2}))
        .await?;
    ensure!(admin["compact_revision"] == start + 2, "{admin}");
    // Each node refuses once it has applied the compaction (a lagging one still holds it).
    for id in 1..=3 {
        common::wait_until(WAIT, "every node applied the compaction", || async move {
            let s = c.status(id).await?;
            Ok(s["compact_revision"].as_u64() >= Some(start + 2))
        })
        .await?;
    }
    let r = c
        .request(
            "watch.create",
            json!({"prefix": "w/", "start_revision": start + 2, "deliver": "x.y"}),
        )
        .await?;
    ensure!(
        r["error"]["code"] == "compacted" && r["error"]["compact_revision"] == start + 2,
        "{r}"
    );
    let mut after = Watcher::create(
        c,
        "watch.create",
        json!({"prefix": "w/", "start_revision": start + 3}),
    )
    .await?;
    let events = after.events_through(start + 5).await?;
    ensure!(
        events.len() == 3 && events[0]["revision"] == start + 3,
        "{events:?}"
    );

    // A node that stops ends its watches with node_stopping.
    let mut on2 = Watcher::create(c, "node.2.watch.create", json!({"prefix": "w/"})).await?;
    c.stop(2).await?;
    let end = on2.end().await?;
    ensure!(end["code"] == "node_stopping", "{end}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_comes_from_disk_and_large_revisions_in_fragments() -> Result<()> {
    let c = cluster().await?;
    let r = backlog_body(&c).await;
    c.fail_on_err(r)
}

async fn backlog_body(c: &Cluster) -> Result<()> {
    let start = put(c, "big/0", json!(0)).await?;
    // 20 values of 40 KB: one prefix delete makes a revision over a message's budget.
    let large = "x".repeat(40_000);
    for i in 1..=20 {
        put(c, &format!("big/{i:02}"), json!(large)).await?;
    }
    let del = c.request("kv.delete", json!({"prefix": "big/"})).await?;
    let last = del["revision"].as_u64().context("delete")?;
    // Node 3 restarts: what it applied before is read back from its disk.
    c.stop(3).await?;
    c.start_node(3).await?;
    let c3 = c;
    common::wait_until(WAIT, "node 3 serves watches again", || async move {
        let r = c3
            .node_request(
                3,
                "watch.create",
                json!({"prefix": "zz/", "deliver": "nobody.home"}),
            )
            .await;
        Ok(r.is_ok_and(|r| r["ok"] == true))
    })
    .await?;
    let mut w = Watcher::create(
        c,
        "node.3.watch.create",
        json!({"prefix": "big/", "start_revision": start, "prev_value": true}),
    )
    .await?;
    let mut puts = 0;
    let mut deletes = 0;
    let mut fragments = 0;
    loop {
        let got = w.next().await?;
        let b = &got.body;
        if b.get("end").is_some() {
            bail!("ended: {b}");
        }
        for e in b["events"].as_array().into_iter().flatten() {
            match e["type"].as_str() {
                Some("put") => puts += 1,
                Some("delete") => deletes += 1,
                _ => bail!("unexpected event {e}"),
            }
        }
        if b["fragment"] == true {
            fragments += 1;
            ensure!(
                b["store_revision"] == last,
                "a fragment belongs to its revision: {b}"
            );
        }
        if b["store_revision"].as_u64() >= Some(last) && b["fragment"] != true {
            break;
        }
    }
    ensure!(
        puts == 21 && deletes == 21,
        "{puts} puts, {deletes} deletes"
    );
    ensure!(
        fragments >= 2,
        "the 800 KB delete came in fragments ({fragments})"
    );
    Ok(())
}
