//! Watches under faults, on a real three-node cluster over the raw wire protocol: a watcher
//! that stops acknowledging is ended `slow_consumer` within `watch.ack_timeout_ms` and its
//! resume loses nothing; a watch from a compacted revision is refused `compacted`, and one
//! left behind by a compaction is ended `compacted`; a node cut off from the leader (the
//! other two SIGSTOPped) ends its watches `no_leader` within three election timeouts, and
//! the resume after healing loses nothing.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{to_bytes, Cluster, ClusterOptions};
use futures::StreamExt;
use serde_json::{json, Value};

/// The suite's short Raft timings: elections within 0.8–1.6 s.
const ELECTION_MAX_MS: u64 = 1600;
const TIMINGS: [(&str, u64); 3] = [
    ("CONCORD_RAFT__HEARTBEAT_INTERVAL_MS", 100),
    ("CONCORD_RAFT__ELECTION_TIMEOUT_MIN_MS", 800),
    ("CONCORD_RAFT__ELECTION_TIMEOUT_MAX_MS", ELECTION_MAX_MS),
];
/// Room for timers and a machine busy compiling, on top of a contract's bound.
const SLACK: Duration = Duration::from_secs(3);

fn options() -> ClusterOptions {
    TIMINGS
        .iter()
        .fold(ClusterOptions::default(), |o, (k, v)| o.env(*k, v))
}

/// A watch as its test follows it: the subscription its messages arrive on.
struct Watch {
    client: async_nats::Client,
    sub: async_nats::Subscriber,
    reply: Value,
}

/// What arrived on a watch: a message (acknowledged or not), or the end.
enum Got {
    Message(Value),
    End(Value),
}

impl Watch {
    /// Creates a watch of `prefix` on node `node` from `start` with `extra` fields; the
    /// create's reply is in `reply` whatever it says.
    async fn create(
        cluster: &Cluster,
        node: u64,
        prefix: &str,
        start: u64,
        extra: Value,
    ) -> Result<Watch> {
        let client = cluster.client();
        let inbox = client.new_inbox();
        // Subscribed before the create: the first message may follow the reply at once.
        let sub = client.subscribe(inbox.clone()).await?;
        let mut body = json!({"prefix": prefix, "start_revision": start, "deliver": inbox});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let reply = cluster.node_request(node, "watch.create", body).await?;
        Ok(Watch { client, sub, reply })
    }

    fn ok(self) -> Result<Watch> {
        ensure!(self.reply["ok"] == true, "watch.create: {}", self.reply);
        Ok(self)
    }

    /// The next message or end within `within`, acknowledged when `ack`.
    async fn next(&mut self, within: Duration, ack: bool) -> Result<Got> {
        let m = tokio::time::timeout(within, self.sub.next())
            .await
            .with_context(|| format!("nothing on the watch within {within:?}"))?
            .context("the watch's subscription closed")?;
        let v: Value = serde_json::from_slice(&m.payload)?;
        if v.get("end").is_some() {
            ensure!(m.reply.is_none(), "an end message with an ack address: {v}");
            return Ok(Got::End(v["end"].clone()));
        }
        let reply = m
            .reply
            .with_context(|| format!("a message without an ack address: {v}"))?;
        if ack {
            self.client.publish(reply, "{}".into()).await?;
        }
        Ok(Got::Message(v))
    }

    /// Acknowledges every message until one covers `revision`; returns the events, each
    /// revision checked to come once and in order.
    async fn read_until(&mut self, revision: u64, within: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + within;
        let mut events: Vec<Value> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left, true).await? {
                Got::End(end) => bail!("the watch ended before revision {revision}: {end}"),
                Got::Message(m) => {
                    events.extend(m["events"].as_array().cloned().unwrap_or_default());
                    let covered = m["store_revision"].as_u64().unwrap_or(0);
                    if covered >= revision && m["fragment"] != true {
                        return Ok(events);
                    }
                }
            }
        }
    }

    /// Reads until the end message, acknowledging when `ack`; returns the end and when it
    /// came.
    async fn read_to_end(&mut self, within: Duration, ack: bool) -> Result<(Value, Instant)> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Got::End(end) = self.next(left, ack).await? {
                return Ok((end, Instant::now()));
            }
        }
    }
}

/// Puts `n` values `<tag>-<i>` into `<prefix><i % 2>`; their revisions.
async fn puts(cluster: &Cluster, prefix: &str, tag: &str, n: usize) -> Result<Vec<u64>> {
    let mut revisions = Vec::new();
    for i in 0..n {
        let body = json!({"key": format!("{prefix}{}", i % 2), "value": format!("{tag}-{i}")});
        let r = cluster.request("kv.put", body).await?;
        revisions.push(
            r["revision"]
                .as_u64()
                .with_context(|| format!("put: {r}"))?,
        );
    }
    Ok(revisions)
}

/// `events`' revisions, checked to be exactly `expected` (each once, in order).
fn assert_revisions(events: &[Value], expected: &[u64]) -> Result<()> {
    let got: Vec<u64> = events
        .iter()
        .filter_map(|e| e["revision"].as_u64())
        .collect();
    ensure!(
        got == expected,
        "revisions {got:?}, expected {expected:?}: {events:?}"
    );
    Ok(())
}

/// (a) With `watch.ack_timeout_ms` 1500: a watcher that acknowledges its first message and
/// then nothing is ended `slow_consumer` about 1.5 s after the first message it left
/// unacknowledged, with `resume_revision` just past what it acknowledged; the resume from
/// there delivers every revision after it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_acknowledging_is_ended_slow_consumer_and_resumes_losslessly(
) -> Result<()> {
    const ACK_TIMEOUT: Duration = Duration::from_millis(1500);
    let opts = options().env("CONCORD_WATCH__ACK_TIMEOUT_MS", ACK_TIMEOUT.as_millis());
    let cluster = Cluster::start_format_2(3, opts).await?;
    let r = async {
        let first = puts(&cluster, "wa/", "first", 3).await?;
        let mut w = Watch::create(&cluster, 1, "wa/", first[0], json!({}))
            .await?
            .ok()?;
        let Got::Message(m) = w.next(Duration::from_secs(5), true).await? else {
            bail!("the watch ended at once");
        };
        let acked = m["store_revision"].as_u64().context("store_revision")?;
        ensure!(
            m["fragment"] != true && acked >= first[0],
            "first message: {m}"
        );
        let later = puts(&cluster, "wa/", "later", 4).await?;
        // Unacknowledged from here: the first message after the acknowledged one.
        let Got::Message(_) = w.next(Duration::from_secs(5), false).await? else {
            bail!("ended before the first unacknowledged message");
        };
        let since = Instant::now();
        let (end, at) = w.read_to_end(ACK_TIMEOUT + SLACK, false).await?;
        let waited = at - since;
        ensure!(end["code"] == "slow_consumer", "end: {end}");
        ensure!(
            waited + Duration::from_millis(200) >= ACK_TIMEOUT,
            "ended {waited:?} after the first unacknowledged message, before the ack timeout"
        );
        let resume = end["resume_revision"].as_u64().context("resume_revision")?;
        ensure!(
            resume == acked + 1,
            "resume_revision {resume}, acknowledged up to {acked}"
        );
        let last = *later.last().context("no puts")?;
        let mut again = Watch::create(&cluster, 2, "wa/", resume, json!({}))
            .await?
            .ok()?;
        let events = again.read_until(last, Duration::from_secs(10)).await?;
        let expected: Vec<u64> = first
            .iter()
            .chain(&later)
            .copied()
            .filter(|r| *r >= resume)
            .collect();
        assert_revisions(&events, &expected)
    }
    .await;
    cluster.fail_on_err(r)
}

/// (b) After `P.admin.compact`, a watch from a compacted revision is refused `compacted` with
/// the compact revision; and a watch left behind (window 1, its first message
/// unacknowledged) while a compaction passes the revisions it has still to deliver is ended
/// `compacted` once it goes on (its first message acknowledged), its `resume_revision` at
/// most the compact revision + 1, unless the node still holds those revisions (the newest
/// are in memory) and delivers each of them exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_refuses_old_starts_and_ends_a_watch_left_behind() -> Result<()> {
    let cluster = Cluster::start_format_2(3, options()).await?;
    let r = async {
        let revs = puts(&cluster, "wb/", "b", 5).await?;
        let compact = compact(&cluster, revs[2]).await?;
        ensure!(
            compact >= revs[2],
            "compact_revision {compact} below {}",
            revs[2]
        );
        let refused = Watch::create(&cluster, 1, "wb/", revs[0], json!({})).await?;
        let r = &refused.reply;
        ensure!(
            common::error_code(r) == Some("compacted"),
            "watch from {}: {r}",
            revs[0]
        );
        let c = r["error"]["compact_revision"]
            .as_u64()
            .or(r["compact_revision"].as_u64());
        ensure!(
            c == Some(compact),
            "compacted without compact_revision {compact}: {r}"
        );
        // Left behind: the window is full with one unacknowledged message.
        let start = compact + 1;
        let mut w = Watch::create(&cluster, 2, "wb/", start, json!({"window": 1}))
            .await?
            .ok()?;
        let next = puts(&cluster, "wb/", "next", 2).await?;
        let first = tokio::time::timeout(Duration::from_secs(5), w.sub.next())
            .await
            .context("no first message")?
            .context("the subscription closed")?;
        let ack = first.reply.context("a message without an ack address")?;
        // Written after the window filled: the watch cannot have delivered them.
        let more = puts(&cluster, "wb/", "more", 6).await?;
        let last = *more.last().context("no puts")?;
        let compacted = compact_at_least(&cluster, last).await?;
        // Acknowledged only now: the watch goes on from revisions compaction removed.
        w.client.publish(ack, "{}".into()).await?;
        // Either the watch ends `compacted` (it needed revisions compaction removed), or the
        // node still had them and delivers each revision once: nothing lost either way.
        let first: Value = serde_json::from_slice(&first.payload)?;
        let mut events: Vec<Value> = first["events"].as_array().cloned().unwrap_or_default();
        let deadline = Instant::now() + SLACK * 2;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match w.next(left, true).await? {
                Got::End(end) => {
                    ensure!(
                        end["code"] == "compacted",
                        "end: {end} (compacted at {compacted})"
                    );
                    let resume = end["resume_revision"].as_u64().context("resume_revision")?;
                    ensure!(
                        resume >= start && resume <= compacted + 1,
                        "resume_revision {resume} outside [{start}, {}]",
                        compacted + 1
                    );
                    return Ok(());
                }
                Got::Message(m) => {
                    events.extend(m["events"].as_array().cloned().unwrap_or_default());
                    if m["store_revision"].as_u64() >= Some(last) && m["fragment"] != true {
                        break;
                    }
                }
            }
        }
        let expected: Vec<u64> = revs
            .iter()
            .chain(&next)
            .chain(&more)
            .copied()
            .filter(|r| *r >= start)
            .collect();
        assert_revisions(&events, &expected)?;
        Ok(())
    }
    .await;
    cluster.fail_on_err(r)
}

/// `P.admin.compact {"revision"}`: the compact revision it answers.
async fn compact(cluster: &Cluster, revision: u64) -> Result<u64> {
    let subject = cluster.subject("admin.compact");
    let body = to_bytes(&json!({"revision": revision}));
    let r = cluster
        .request_raw(
            &subject,
            cluster.admin_headers(),
            body,
            common::REQUEST_TIMEOUT,
        )
        .await?;
    r["compact_revision"]
        .as_u64()
        .with_context(|| format!("admin.compact: {r}"))
}

/// Compacts up to `revision`: the compact revision is at most the store revision, so a
/// compaction racing the last apply is asked again (bounded).
async fn compact_at_least(cluster: &Cluster, revision: u64) -> Result<u64> {
    for _ in 0..50 {
        let c = compact(cluster, revision).await?;
        if c >= revision {
            return Ok(c);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("admin.compact never reached revision {revision}")
}

/// (c) A follower whose two peers are SIGSTOPped hears from no leader: it ends its watch
/// `no_leader` within three election timeouts (+ slack) of the pause, with a
/// `resume_revision` past everything it acknowledged and at most one past; after the peers
/// resume, a watch from that revision delivers every later revision exactly once, so the
/// two streams together lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_leader_ends_its_watches_no_leader_and_loses_nothing() -> Result<()>
{
    let cluster = Cluster::start_format_2(3, options()).await?;
    let r = async {
        let leader = cluster.wait_stable(Duration::from_secs(20)).await?;
        let node = cluster
            .ids()
            .into_iter()
            .find(|&id| id != leader)
            .context("a follower")?;
        let before = puts(&cluster, "wc/", "before", 4).await?;
        let mut w = Watch::create(&cluster, node, "wc/", before[0], json!({}))
            .await?
            .ok()?;
        let seen = w.read_until(before[3], Duration::from_secs(10)).await?;
        assert_revisions(&seen, &before)?;
        let others: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != node).collect();
        for &id in &others {
            cluster.pause(id).await?;
        }
        let paused = Instant::now();
        let bound = Duration::from_millis(3 * ELECTION_MAX_MS) + SLACK;
        let ended = w.read_to_end(bound, true).await;
        for &id in &others {
            cluster.resume(id).await?;
        }
        let (end, at) = ended?;
        ensure!(end["code"] == "no_leader", "end: {end}");
        let waited = at - paused;
        ensure!(
            waited <= bound,
            "no_leader after {waited:?}, bound {bound:?}"
        );
        let resume = end["resume_revision"].as_u64().context("resume_revision")?;
        // Everything was acknowledged: nothing to deliver again, unless an ack was lost.
        ensure!(
            resume > before[0] && resume <= before[3] + 1,
            "resume_revision {resume}, acknowledged up to revision {}",
            before[3]
        );
        cluster.wait_stable(Duration::from_secs(30)).await?;
        let after = puts(&cluster, "wc/", "after", 4).await?;
        let last = *after.last().context("no puts")?;
        let mut again = Watch::create(&cluster, node, "wc/", resume, json!({}))
            .await?
            .ok()?;
        let events = again.read_until(last, Duration::from_secs(10)).await?;
        let expected: Vec<u64> = before
            .iter()
            .chain(&after)
            .copied()
            .filter(|r| *r >= resume)
            .collect();
        assert_revisions(&events, &expected)
    }
    .await;
    cluster.fail_on_err(r)
}
