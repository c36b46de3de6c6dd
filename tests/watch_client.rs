//! Watches through `concord::Client` and the `concord watch` CLI (issue #24), against real
//! 3-node clusters (real `nats-server`, real `concord serve` processes): a stream sees the
//! puts and deletes under its prefix in order with their previous values; `list_watch`
//! gives every change after the list exactly once; a stream goes on through the kill of the
//! node serving it (unpinned: on another node; pinned: once the node is back) with no gap
//! and no duplicate; a compacted start ends with `Compacted`; and the CLI prints NDJSON.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use common::{Cluster, ClusterOptions};
use concord::client::{Client, ClientError, EventType, Watch, WatchEvent, WatchStream};
use futures::StreamExt;
use serde_json::{json, Value};

/// The client's deadline per request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a test waits for events it expects (through elections and restarts).
const WAIT: Duration = Duration::from_secs(60);

fn client(cluster: &Cluster) -> Client {
    Client::from_nats(cluster.client(), cluster.prefix(), CLIENT_TIMEOUT)
}

/// Short progress notices, so that a silent (killed) node is noticed within a second.
fn options() -> ClusterOptions {
    ClusterOptions::default().env("CONCORD_WATCH__PROGRESS_MS", 300)
}

/// Events from `stream` until it has seen every revision up to `revision` (a progress
/// notice may be what completes it: it yields no event, so look again now and then).
async fn events_through(stream: &mut WatchStream, revision: u64) -> Result<Vec<WatchEvent>> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while stream.next_revision() <= revision {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no revision {revision} within {WAIT:?}: next {}, got {:?}",
            stream.next_revision(),
            summary(&out)
        );
        let next = tokio::select! {
            next = stream.next() => next,
            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
        };
        match next {
            Some(Ok(e)) => out.push(e),
            Some(Err(e)) => return Err(anyhow!("the stream failed: {e}")),
            None => return Err(anyhow!("the stream ended: got {:?}", summary(&out))),
        }
    }
    Ok(out)
}

fn summary(events: &[WatchEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| format!("{} {}@{}", e.kind, e.key, e.revision))
        .collect()
}

/// Proves a stream's events: the puts and deletes under its prefix (none of another
/// prefix), in revision order, with values, metadata and, when asked, previous values; a
/// stream of one key with a type filter; and the CLI's `watch --json --count`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_sees_every_change_under_its_prefix_in_order() -> Result<()> {
    let cluster = Cluster::start_format_2(3, options()).await?;
    let r = order_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn order_body(cluster: &Cluster) -> Result<()> {
    let c = client(cluster);
    let mut stream = c.watch("app/", None).await.context("watch app/")?;
    let r1 = c.put("app/a", &json!(1)).await?;
    let r2 = c.put("app/b", &json!({"x": 2})).await?;
    c.put("other/x", &json!(0)).await?;
    let r3 = c.put("app/a", &json!(3)).await?;
    let (_, r4) = c.delete("app/b").await?;
    let events = events_through(&mut stream, r4).await?;
    let got: Vec<(EventType, &str, u64)> = events
        .iter()
        .map(|e| (e.kind, e.key.as_str(), e.revision))
        .collect();
    ensure!(
        got == [
            (EventType::Put, "app/a", r1),
            (EventType::Put, "app/b", r2),
            (EventType::Put, "app/a", r3),
            (EventType::Delete, "app/b", r4)
        ],
        "{got:?}"
    );
    let a = &events[2];
    ensure!(
        a.value == Some(json!(3)) && a.version == 2 && a.create_revision == r1,
        "{a:?}"
    );
    ensure!(
        events[3].value.is_none() && events[3].version == 0,
        "{events:?}"
    );
    ensure!(stream.resumes() == 0, "no resume without a fault");

    // From a past revision, with previous values.
    let mut prev = c
        .watch_with(Watch::prefix("app/").from(r1).prev_value(true))
        .await?;
    let events = events_through(&mut prev, r4).await?;
    let prevs: Vec<Option<Value>> = events.iter().map(|e| e.prev_value.clone()).collect();
    ensure!(
        prevs == [None, None, Some(json!(1)), Some(json!({"x": 2}))],
        "{prevs:?}"
    );

    // One key, deletes only, without values.
    let mut deletes = c
        .watch_with(
            Watch::key("app/b")
                .from(r1)
                .types(&[EventType::Delete])
                .keys_only(true),
        )
        .await?;
    let events = events_through(&mut deletes, r4).await?;
    ensure!(
        summary(&events) == [format!("delete app/b@{r4}")],
        "{events:?}"
    );

    // The CLI: one JSON event per line, stopping after --count.
    let run = cluster
        .run_cli(&[
            "watch",
            "app/",
            "--json",
            "--count",
            "3",
            "--from-revision",
            &r1.to_string(),
        ])
        .await?;
    ensure!(run.code == Some(0), "{run:?}");
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("NDJSON: {run:?}"))?;
    let revs: Vec<&Value> = lines.iter().map(|l| &l["revision"]).collect();
    ensure!(
        revs == [&json!(r1), &json!(r2), &json!(r3)] && lines[2]["value"] == 3,
        "{run:?}"
    );
    let run = cluster
        .run_cli(&[
            "watch",
            "app/",
            "--from-revision",
            "1",
            "--until-revision",
            &r4.to_string(),
        ])
        .await?;
    ensure!(
        run.code == Some(0) && run.stdout.lines().count() == 4,
        "{run:?}"
    );
    ensure!(
        run.stdout.lines().last() == Some(format!("delete app/b rev={r4}").as_str()),
        "{run:?}"
    );
    Ok(())
}

/// Proves list then watch: while a writer keeps writing, `list_watch` lists the prefix and
/// its stream yields exactly the writes the list did not show (newer than the listed key's
/// revision), each once; list plus stream end at the prefix's final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_watch_sees_every_later_change_exactly_once() -> Result<()> {
    let cluster = Cluster::start_format_2(3, options()).await?;
    let r = list_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn list_body(cluster: &Cluster) -> Result<()> {
    let c = client(cluster);
    for i in 0..5 {
        c.put(&format!("l/{i}"), &json!(i)).await?;
    }
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0..40u64 {
                let key = format!("l/{}", i % 8);
                let rev = c.put(&key, &json!(100 + i)).await?;
                written.push((key, rev, 100 + i));
            }
            Ok::<_, ClientError>(written)
        })
    };
    let (items, store_revision, mut stream) = c.list_watch("l/").await?;
    let written = writer.await??;
    let last = written.last().map_or(0, |w| w.1);
    let events = events_through(&mut stream, last).await?;
    let listed: HashMap<&str, u64> = items.iter().map(|i| (i.key.as_str(), i.revision)).collect();
    let expected: Vec<u64> = written
        .iter()
        .filter(|(k, r, _)| *r > store_revision.max(listed.get(k.as_str()).copied().unwrap_or(0)))
        .map(|w| w.1)
        .collect();
    let got: Vec<u64> = events.iter().map(|e| e.revision).collect();
    ensure!(
        got == expected,
        "listed at {store_revision}: {listed:?}\nexpected {expected:?}\ngot {got:?}"
    );
    let mut state: BTreeMap<String, Value> = items.into_iter().map(|i| (i.key, i.value)).collect();
    for e in events {
        state.insert(e.key, e.value.unwrap_or_default());
    }
    let now: BTreeMap<String, Value> = c
        .scan_all("l/")
        .await?
        .into_iter()
        .map(|i| (i.key, i.value))
        .collect();
    ensure!(state == now, "list + stream {state:?} != scan {now:?}");
    Ok(())
}

/// Proves resumption: an unpinned stream goes on through the kill of the node serving it,
/// and a stream pinned to a node goes on once that node is back; each yields exactly the
/// acknowledged writes, in order, none twice, none missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumes_through_the_kill_of_its_node_without_gap_or_duplicate() -> Result<()> {
    let cluster = Cluster::start_format_2(3, options()).await?;
    let r = resume_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn resume_body(cluster: &Cluster) -> Result<()> {
    let c = client(cluster);
    let mut free = c.watch("r/", None).await?;
    let served_by = free.node().context("the stream's node")?;
    let pinned_to = cluster
        .ids()
        .into_iter()
        .find(|&id| id != served_by)
        .context("another node")?;
    let mut pinned = c
        .watch_with(
            Watch::prefix("r/")
                .from(free.next_revision())
                .node(pinned_to),
        )
        .await?;
    let mut written = Vec::new();
    let write = |n: u64| {
        let c = c.clone();
        async move {
            let rev = c.put(&format!("r/{}", n % 5), &json!(n)).await?;
            Ok::<_, ClientError>((rev, n))
        }
    };
    for n in 0..10 {
        written.push(write(n).await?);
    }
    cluster.kill(served_by).await?;
    for n in 10..20 {
        written.push(write(n).await?);
    }
    cluster.restart(served_by).await?;
    cluster.kill(pinned_to).await?;
    for n in 20..30 {
        written.push(write(n).await?);
    }
    cluster.restart(pinned_to).await?;
    for n in 30..35 {
        written.push(write(n).await?);
    }
    let last = written.last().map_or(0, |w| w.0);
    for (name, stream) in [("unpinned", &mut free), ("pinned", &mut pinned)] {
        let events = events_through(stream, last).await?;
        let got: Vec<(u64, Option<Value>)> = events
            .iter()
            .map(|e| (e.revision, e.value.clone()))
            .collect();
        let expected: Vec<(u64, Option<Value>)> =
            written.iter().map(|&(r, n)| (r, Some(json!(n)))).collect();
        ensure!(
            got == expected,
            "{name}: expected {expected:?}\ngot {got:?}"
        );
        ensure!(stream.resumes() >= 1, "{name}: the stream never resumed");
    }
    ensure!(
        pinned.node() == Some(pinned_to),
        "the pinned stream moved to {:?}",
        pinned.node()
    );
    Ok(())
}

/// Proves compaction: a watch from a compacted revision is refused with
/// `ClientError::Compacted` naming the compact revision, one just after it works, and the
/// CLI exits 1 saying to list again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_start_ends_with_compacted() -> Result<()> {
    let cluster = Cluster::start_format_2(3, options()).await?;
    let r = compacted_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn compacted_body(cluster: &Cluster) -> Result<()> {
    let c = client(cluster);
    let first = c.put("k/a", &json!(1)).await?;
    let mut last = first;
    for i in 0..4 {
        last = c.put("k/a", &json!(i)).await?;
    }
    let compact = c
        .admin(
            concord::subjects::AdminOp::Compact,
            json!({"revision": first + 2}),
        )
        .await?;
    let cr = compact["compact_revision"]
        .as_u64()
        .context("compact_revision")?;
    ensure!(cr == first + 2, "{compact}");
    for id in cluster.ids() {
        common::wait_until(WAIT, "every node applied the compaction", || async move {
            let s = cluster.status(id).await?;
            Ok(s["compact_revision"].as_u64() >= Some(cr))
        })
        .await?;
    }
    match c.watch("k/", Some(first)).await {
        Err(ClientError::Compacted { compact_revision }) => {
            ensure!(
                compact_revision == cr,
                "compacted at {compact_revision}, not {cr}"
            )
        }
        Err(e) => return Err(anyhow!("expected Compacted, got {e}")),
        Ok(_) => return Err(anyhow!("a watch from a compacted revision was created")),
    }
    let mut after = c.watch("k/", Some(cr + 1)).await?;
    let events = events_through(&mut after, last).await?;
    ensure!(
        events.first().map(|e| e.revision) == Some(cr + 1),
        "{:?}",
        summary(&events)
    );
    let run = cluster
        .run_cli(&["watch", "k/", "--from-revision", &first.to_string()])
        .await?;
    ensure!(
        run.code == Some(1)
            && run.stderr.contains("compacted")
            && run.stderr.contains("List the keys again"),
        "{run:?}"
    );
    Ok(())
}
