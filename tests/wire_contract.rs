//! The client wire contract of DESIGN.md, checked through a raw `async_nats` client (never
//! `concord::Client`), against real 3-node clusters: every operation, every reply field,
//! every error code a bad request can produce, per-node subjects, deadlines, admin subjects,
//! and the reply of a cluster that has lost its quorum.
//!
//! Starting a cluster is slow on 2 cores, so one cluster serves many checks. The checks are
//! grouped in sections; a failing section is recorded and the others still run, and the test
//! fails at the end with every failure listed (node logs are printed first).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use bytes::Bytes;
use common::{error_code, to_bytes, Cluster, ClusterOptions};
use serde_json::{json, Value};

const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(15);
/// `limits.max_value_bytes` of the cluster in `wire_contract_of_every_operation_and_error`.
const MAX_VALUE_BYTES: usize = 1024;

// ----- the tests -------------------------------------------------------------------------

/// Proves that every operation of DESIGN.md's client table (put, get linearizable and stale,
/// delete, scan with prefix/limit/after paging and without prefix) answers with exactly the
/// documented reply fields; that every bad request gets its documented error code
/// (`bad_request`, `invalid_key`, `value_too_large`, `not_found`) with `ok:false` and a
/// non-empty message, and is not applied; that the per-node subjects `P.node.<id>.kv.*` of
/// every node give the cluster's answer; that deadlines (`timeout_ms`, `Concord-Timeout-Ms`)
/// are accepted; that `P.admin.status` / `P.admin.members` have the fields of
/// docs/node-contract.md; and that no credential is needed when auth is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_contract_of_every_operation_and_error() -> Result<()> {
    let opts = ClusterOptions::default().env("CONCORD_LIMITS__MAX_VALUE_BYTES", MAX_VALUE_BYTES);
    let cluster = Cluster::start_with(3, opts).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    // Every node (not only a majority) must have joined before per-node checks.
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    eprintln!("leader is node {leader}");

    let mut failures = Vec::new();
    record(
        &mut failures,
        "put and get of any JSON value",
        put_and_get_any_json(&cluster).await,
    );
    record(
        &mut failures,
        "get of a missing key",
        get_missing_key(&cluster).await,
    );
    record(
        &mut failures,
        "delete",
        delete_reports_deleted(&cluster).await,
    );
    record(
        &mut failures,
        "scan with prefix, limit, after",
        scan_pages_by_prefix(&cluster).await,
    );
    record(
        &mut failures,
        "scan without prefix",
        scan_without_prefix(&cluster).await,
    );
    record(
        &mut failures,
        "per-node subjects",
        per_node_subjects_agree(&cluster).await,
    );
    record(
        &mut failures,
        "deadline field and header",
        deadlines_are_accepted(&cluster).await,
    );
    record(
        &mut failures,
        "no credential needed without auth",
        no_credential_needed(&cluster).await,
    );
    record(
        &mut failures,
        "bad_request",
        bad_requests_are_refused(&cluster).await,
    );
    record(
        &mut failures,
        "invalid_key",
        invalid_keys_are_refused(&cluster).await,
    );
    record(
        &mut failures,
        "value_too_large",
        large_values_are_refused(&cluster).await,
    );
    record(
        &mut failures,
        "admin.status",
        admin_status_fields(&cluster).await,
    );
    record(
        &mut failures,
        "admin.members",
        admin_members_fields(&cluster).await,
    );
    record(
        &mut failures,
        "replicas converge (digest)",
        replicas_converge(&cluster).await,
    );
    finish(cluster, failures)
}

/// Proves that a cluster that has lost its quorum (2 of 3 nodes SIGKILLed) still answers a
/// write before the request's deadline (`"timeout_ms": 1000` or header `Concord-Timeout-Ms`,
/// plus 500 ms slack) with `cluster_not_ready` or `timeout`, both right after the loss (the
/// survivor may still believe in the old leader) and once the survivor has noticed it; that a
/// linearizable read does the same; and that a write refused with `cluster_not_ready` was
/// never applied (checked after the killed nodes come back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_without_quorum_answer_before_their_deadline() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let rev = put(&cluster, "wc:q:before", json!("x")).await?;
    let followers: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    let (victim, survivor) = (followers[0], followers[1]);
    // The survivor must hold the write so that it would be a valid leader candidate later.
    cluster
        .wait_until(WAIT, "the survivor to apply the first write", || async {
            let s = cluster.status(survivor).await?;
            Ok(s["revision"].as_u64() >= Some(rev))
        })
        .await?;

    cluster.kill(leader).await?;
    cluster.kill(victim).await?;
    eprintln!("killed leader {leader} and follower {victim}; survivor is {survivor}");

    let mut failures = Vec::new();
    let mut refused_keys = Vec::new();
    let deadline = Duration::from_millis(1000);

    // Right after the loss: the survivor may still forward to the dead leader.
    let checks: [(&str, String, &str); 2] = [
        (
            "P.kv.put right after the loss",
            cluster.subject("kv.put"),
            "wc:q:a",
        ),
        (
            "P.node.<survivor>.kv.put right after the loss",
            cluster.subject(&format!("node.{survivor}.kv.put")),
            "wc:q:a2",
        ),
    ];
    for (what, subject, key) in checks {
        let body = json!({"key": key, "value": 1, "timeout_ms": 1000});
        let r = answers_before_deadline(&cluster, &subject, None, body, deadline).await;
        if let Ok(code) = &r {
            if code == "cluster_not_ready" {
                refused_keys.push(key);
            }
        }
        record(&mut failures, what, r.map(|_| ()));
    }

    // Once the survivor has noticed that there is no leader.
    let noticed = cluster
        .wait_until(
            WAIT,
            "the survivor to report no leader (or candidate role)",
            || async {
                let s = cluster.status(survivor).await?;
                Ok(s["leader"].is_null() || s["role"] == json!("candidate"))
            },
        )
        .await;
    record(&mut failures, "survivor notices the leader loss", noticed);

    let mut header = async_nats::HeaderMap::new();
    header.insert("Concord-Timeout-Ms", "1000");
    // (what, subject, headers, body, key written by the request)
    type Probe<'a> = (
        &'a str,
        String,
        Option<async_nats::HeaderMap>,
        Value,
        Option<&'a str>,
    );
    let checks: [Probe; 4] = [
        (
            "P.kv.put without leader (timeout_ms)",
            cluster.subject("kv.put"),
            None,
            json!({"key": "wc:q:b", "value": 1, "timeout_ms": 1000}),
            Some("wc:q:b"),
        ),
        (
            "P.kv.put without leader (Concord-Timeout-Ms header)",
            cluster.subject("kv.put"),
            Some(header),
            json!({"key": "wc:q:b2", "value": 1}),
            Some("wc:q:b2"),
        ),
        (
            "P.node.<survivor>.kv.put without leader",
            cluster.subject(&format!("node.{survivor}.kv.put")),
            None,
            json!({"key": "wc:q:b3", "value": 1, "timeout_ms": 1000}),
            Some("wc:q:b3"),
        ),
        (
            "linearizable P.kv.get without leader",
            cluster.subject("kv.get"),
            None,
            json!({"key": "wc:q:before", "timeout_ms": 1000}),
            None,
        ),
    ];
    for (what, subject, headers, body, key) in checks {
        let r = answers_before_deadline(&cluster, &subject, headers, body, deadline).await;
        if let (Ok(code), Some(key)) = (&r, key) {
            if code == "cluster_not_ready" {
                refused_keys.push(key);
            }
        }
        record(&mut failures, what, r.map(|_| ()));
    }

    // Bring the quorum back: the refused writes must not exist, and writes work again.
    let recovered = async {
        cluster.restart(leader).await?;
        cluster.restart(victim).await?;
        cluster.wait_for_leader(LEADER_TIMEOUT).await?;
        for key in &refused_keys {
            let reply = cluster.request("kv.get", json!({"key": key})).await?;
            expect_error(
                &reply,
                "not_found",
                &format!("get {key} refused with cluster_not_ready"),
            )?;
        }
        let after = put(&cluster, "wc:q:after", json!("y")).await?;
        ensure!(
            after > rev,
            "revision after recovery {after} is not above {rev}"
        );
        Ok(())
    }
    .await;
    record(
        &mut failures,
        "recovery: refused writes were never applied",
        recovered,
    );
    finish(cluster, failures)
}

// ----- sections of the first test --------------------------------------------------------

/// put answers `{"ok":true,"revision":N}` with strictly increasing N; get (default,
/// explicit linearizable, stale) answers the value and the revision of the write, for every
/// kind of JSON value.
async fn put_and_get_any_json(c: &Cluster) -> Result<()> {
    let values = [
        json!({"name": "ada", "tags": ["x", "y"], "nested": {"n": 1, "none": null}}),
        json!("a string"),
        json!(""),
        json!(42),
        json!(-3.25),
        json!(18446744073709551615u64),
        json!([1, "two", {"three": 3}, [null]]),
        json!(null),
        json!(true),
        json!({}),
        json!([]),
        json!("unicode ✓ é 日本"),
    ];
    let mut last = 0u64;
    let mut written = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let key = format!("wc:value:{i:02}");
        let reply = c
            .request("kv.put", json!({"key": key, "value": value}))
            .await?;
        expect_ok(&reply, &format!("put {key}"))?;
        expect_fields(&reply, &["ok", "revision"], &format!("put {key}"))?;
        let rev = revision(&reply, &format!("put {key}"))?;
        ensure!(
            rev > last,
            "put {key}: revision {rev} is not above the previous {last}"
        );
        last = rev;
        written.push((key, value.clone(), rev));
    }

    for (key, value, rev) in &written {
        for body in [
            json!({"key": key}),
            json!({"key": key, "consistency": "linearizable"}),
            json!({"key": key, "consistency": "stale", "min_revision": rev}),
        ] {
            let reply = c.request("kv.get", body.clone()).await?;
            expect_value(&reply, value, *rev, &format!("get {body}"))?;
            expect_fields(&reply, &["ok", "value", "revision"], &format!("get {body}"))?;
        }
    }

    // A stale read without min_revision may lag, but converges to the write.
    let (key, value, rev) = written.last().expect("values is not empty");
    c.wait_until(WAIT, "a stale get to see the last write", || async {
        let reply = c
            .request("kv.get", json!({"key": key, "consistency": "stale"}))
            .await?;
        expect_ok(&reply, "stale get")?;
        Ok(reply["value"] == *value && reply["revision"].as_u64() == Some(*rev))
    })
    .await?;

    // Overwrite: the new value and a new, higher revision.
    let key = &written[0].0;
    let reply = c
        .request("kv.put", json!({"key": key, "value": {"v": 2}}))
        .await?;
    expect_ok(&reply, "overwrite")?;
    let rev2 = revision(&reply, "overwrite")?;
    ensure!(rev2 > last, "overwrite revision {rev2} is not above {last}");
    let reply = c.request("kv.get", json!({"key": key})).await?;
    expect_value(&reply, &json!({"v": 2}), rev2, "get after overwrite")?;

    // The status revision has seen every write.
    let leader = c.wait_for_leader(WAIT).await?;
    let status = c.status(leader).await?;
    let status_rev = status["revision"]
        .as_u64()
        .ok_or_else(|| anyhow!("status without numeric revision: {status}"))?;
    ensure!(
        status_rev >= rev2,
        "leader status revision {status_rev} < last write {rev2}"
    );
    Ok(())
}

/// get of an absent key answers `not_found` (linearizable and stale), naming the key.
async fn get_missing_key(c: &Cluster) -> Result<()> {
    for body in [
        json!({"key": "wc:missing"}),
        json!({"key": "wc:missing", "consistency": "stale"}),
    ] {
        let reply = c.request("kv.get", body.clone()).await?;
        expect_error(&reply, "not_found", &format!("get {body}"))?;
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains("wc:missing"),
            "get {body}: the not_found message does not name the key: {reply}"
        );
    }
    Ok(())
}

/// delete answers `deleted:true` + a new revision, then the key is gone; deleting an absent
/// key answers `ok:true, deleted:false`.
async fn delete_reports_deleted(c: &Cluster) -> Result<()> {
    let rev = put(c, "wc:del", json!({"x": 1})).await?;
    let reply = c.request("kv.delete", json!({"key": "wc:del"})).await?;
    expect_ok(&reply, "delete present key")?;
    ensure!(
        reply["deleted"] == json!(true),
        "delete present key: deleted is not true: {reply}"
    );
    let del_rev = revision(&reply, "delete present key")?;
    ensure!(
        del_rev > rev,
        "delete revision {del_rev} is not above the put's {rev}"
    );

    let reply = c.request("kv.get", json!({"key": "wc:del"})).await?;
    expect_error(&reply, "not_found", "get after delete")?;
    let reply = c
        .request(
            "kv.get",
            json!({"key": "wc:del", "consistency": "stale", "min_revision": del_rev}),
        )
        .await?;
    expect_error(&reply, "not_found", "stale get (min_revision) after delete")?;

    for (what, key) in [
        ("delete again", "wc:del"),
        ("delete never-written key", "wc:never"),
    ] {
        let reply = c.request("kv.delete", json!({"key": key})).await?;
        expect_ok(&reply, what)?;
        ensure!(
            reply["deleted"] == json!(false),
            "{what}: deleted is not false: {reply}"
        );
        if let Some(r) = reply.get("revision") {
            ensure!(r.is_u64(), "{what}: revision is not a number: {reply}");
        }
    }

    // The key can be written again, with a higher revision.
    let rev3 = put(c, "wc:del", json!("back")).await?;
    ensure!(
        rev3 > del_rev,
        "re-put revision {rev3} is not above the delete's {del_rev}"
    );
    c.request("kv.delete", json!({"key": "wc:del"})).await?;
    Ok(())
}

/// scan answers `{"ok":true,"items":[{key,value,revision}],"more":bool}`, items sorted by key,
/// only keys with the prefix; `limit` caps a page, `more` says whether keys remain, `after`
/// continues strictly after a key.
async fn scan_pages_by_prefix(c: &Cluster) -> Result<()> {
    let mut expected = Vec::new();
    // Written out of order on purpose: the scan must sort.
    for i in [3, 0, 6, 1, 5, 2, 4] {
        let key = format!("wc:scan:a:{i:02}");
        let rev = put(c, &key, json!({"n": i})).await?;
        expected.push((key, json!({"n": i}), rev));
    }
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    put(c, "wc:scan:b:0", json!("b")).await?;
    put(c, "wc:scanx", json!("x")).await?; // shares "wc:scan" but not "wc:scan:"

    // Whole prefix, default limit.
    let reply = c
        .request("kv.scan", json!({"prefix": "wc:scan:a:"}))
        .await?;
    let (items, more) = scan_page(&reply, "scan prefix wc:scan:a:")?;
    ensure!(
        !more,
        "scan of 7 keys with the default limit says more: {reply}"
    );
    expect_items(&items, &expected, "scan prefix wc:scan:a:")?;

    // Pages of 3: 3 (more), 3 (more), 1 (no more).
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    for page in 0..3 {
        let mut body = json!({"prefix": "wc:scan:a:", "limit": 3});
        if let Some(a) = &after {
            body["after"] = json!(a);
        }
        let reply = c.request("kv.scan", body.clone()).await?;
        let (items, more) = scan_page(&reply, &format!("scan {body}"))?;
        let want_len = if page < 2 { 3 } else { 1 };
        ensure!(
            items.len() == want_len,
            "scan {body}: {} items, expected {want_len}: {reply}",
            items.len()
        );
        ensure!(
            more == (page < 2),
            "scan {body}: more is {more}, expected {}: {reply}",
            page < 2
        );
        after = items.last().map(|i| i.0.clone());
        pages.extend(items);
    }
    expect_items(&pages, &expected, "scan pages of 3 joined")?;

    // `more` is exact at the boundary.
    let reply = c
        .request("kv.scan", json!({"prefix": "wc:scan:a:", "limit": 7}))
        .await?;
    let (items, more) = scan_page(&reply, "scan limit 7 of 7")?;
    ensure!(
        items.len() == 7 && !more,
        "scan limit 7 of 7 keys: {} items, more {more}: {reply}",
        items.len()
    );
    let reply = c
        .request("kv.scan", json!({"prefix": "wc:scan:a:", "limit": 6}))
        .await?;
    let (items, more) = scan_page(&reply, "scan limit 6 of 7")?;
    ensure!(
        items.len() == 6 && more,
        "scan limit 6 of 7 keys: {} items, more {more}: {reply}",
        items.len()
    );

    // `after` past the end, and a prefix nothing has.
    for body in [
        json!({"prefix": "wc:scan:a:", "after": "wc:scan:a:99"}),
        json!({"prefix": "wc:nothing-here:"}),
    ] {
        let reply = c.request("kv.scan", body.clone()).await?;
        let (items, more) = scan_page(&reply, &format!("scan {body}"))?;
        ensure!(
            items.is_empty() && !more,
            "scan {body}: expected no items and more false: {reply}"
        );
    }

    // A shorter prefix includes b:0 but not "wc:scanx".
    let reply = c.request("kv.scan", json!({"prefix": "wc:scan:"})).await?;
    let (items, _) = scan_page(&reply, "scan prefix wc:scan:")?;
    let keys: Vec<&str> = items.iter().map(|i| i.0.as_str()).collect();
    ensure!(
        keys.len() == 8 && keys.contains(&"wc:scan:b:0") && !keys.contains(&"wc:scanx"),
        "scan prefix wc:scan: returned {keys:?}"
    );

    // Stale scan (accepted like get's consistency) converges to the same items.
    c.wait_until(WAIT, "a stale scan to list the 7 keys", || async {
        let reply = c
            .request(
                "kv.scan",
                json!({"prefix": "wc:scan:a:", "consistency": "stale"}),
            )
            .await?;
        let (items, _) = scan_page(&reply, "stale scan")?;
        Ok(expect_items(&items, &expected, "stale scan").is_ok())
    })
    .await?;
    Ok(())
}

/// scan with no prefix lists the whole keyspace in key order, paged with `after`, and agrees
/// with an unpaged scan.
async fn scan_without_prefix(c: &Cluster) -> Result<()> {
    put(c, "wc:all:1", json!(1)).await?;
    put(c, "wc:all:2", json!(2)).await?;

    let reply = c.request("kv.scan", json!({})).await?;
    let (all, more) = scan_page(&reply, "scan {}")?;
    ensure!(!more, "scan {{}} of a few dozen keys says more: {reply}");
    ensure!(
        all.len() >= 10,
        "scan {{}} returned only {} items",
        all.len()
    );
    for key in [
        "wc:all:1",
        "wc:all:2",
        "wc:scan:a:00",
        "wc:scanx",
        "wc:value:00",
    ] {
        ensure!(all.iter().any(|i| i.0 == key), "scan {{}} misses {key}");
    }
    ensure!(
        !all.iter().any(|i| i.0 == "wc:del"),
        "scan {{}} lists the deleted key wc:del"
    );

    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..1000 {
        let mut body = json!({"limit": 5});
        if let Some(a) = &after {
            body["after"] = json!(a);
        }
        let reply = c.request("kv.scan", body.clone()).await?;
        let (items, more) = scan_page(&reply, &format!("scan {body}"))?;
        ensure!(
            items.len() <= 5,
            "scan {body}: {} items over the limit",
            items.len()
        );
        after = items.last().map(|i| i.0.clone());
        paged.extend(items);
        if !more {
            break;
        }
    }
    ensure!(
        paged == all,
        "paged scan (limit 5) differs from the unpaged scan:\n{paged:?}\nvs\n{all:?}"
    );
    Ok(())
}

/// `P.node.<id>.kv.*` of every node gives the cluster's answer (a follower forwards to the
/// leader): get (linearizable and stale with min_revision), put, delete, scan.
async fn per_node_subjects_agree(c: &Cluster) -> Result<()> {
    let rev = put(c, "wc:node:k", json!({"same": "everywhere"})).await?;
    let via_cluster = c.request("kv.get", json!({"key": "wc:node:k"})).await?;
    expect_value(
        &via_cluster,
        &json!({"same": "everywhere"}),
        rev,
        "get via P.kv.get",
    )?;
    let scan_cluster = scan_page(
        &c.request("kv.scan", json!({"prefix": "wc:scan:a:"}))
            .await?,
        "P.kv.scan",
    )?;

    let mut last = rev;
    for id in c.ids() {
        let what = format!("node {id}");
        let reply = c
            .node_request(id, "kv.get", json!({"key": "wc:node:k"}))
            .await?;
        expect_value(
            &reply,
            &via_cluster["value"],
            rev,
            &format!("{what} kv.get (P.kv.get said {via_cluster})"),
        )?;
        let reply = c
            .node_request(
                id,
                "kv.get",
                json!({"key": "wc:node:k", "consistency": "stale", "min_revision": rev}),
            )
            .await?;
        expect_value(
            &reply,
            &via_cluster["value"],
            rev,
            &format!("{what} stale kv.get (P.kv.get said {via_cluster})"),
        )?;
        let reply = c
            .node_request(id, "kv.get", json!({"key": "wc:node:absent"}))
            .await?;
        expect_error(&reply, "not_found", &format!("{what} kv.get absent"))?;
        let reply = c
            .node_request(id, "kv.scan", json!({"prefix": "wc:scan:a:"}))
            .await?;
        let got = scan_page(&reply, &format!("{what} kv.scan"))?;
        ensure!(
            got == scan_cluster,
            "{what} kv.scan differs from P.kv.scan: {reply} vs {scan_cluster:?}"
        );

        let key = format!("wc:node:put:{id}");
        let reply = c
            .node_request(id, "kv.put", json!({"key": key, "value": id}))
            .await?;
        expect_ok(&reply, &format!("{what} kv.put"))?;
        let r = revision(&reply, &format!("{what} kv.put"))?;
        ensure!(r > last, "{what} kv.put revision {r} is not above {last}");
        last = r;
        let reply = c.request("kv.get", json!({"key": key})).await?;
        expect_value(
            &reply,
            &json!(id),
            r,
            &format!("P.kv.get of the put through {what}"),
        )?;

        let reply = c.node_request(id, "kv.delete", json!({"key": key})).await?;
        expect_ok(&reply, &format!("{what} kv.delete"))?;
        ensure!(
            reply["deleted"] == json!(true),
            "{what} kv.delete: deleted is not true: {reply}"
        );
        let r = revision(&reply, &format!("{what} kv.delete"))?;
        ensure!(
            r > last,
            "{what} kv.delete revision {r} is not above {last}"
        );
        last = r;

        let reply = c.node_request(id, "kv.get", json!({"key": ""})).await?;
        expect_error(
            &reply,
            "invalid_key",
            &format!("{what} kv.get of an empty key"),
        )?;
    }
    Ok(())
}

/// `"timeout_ms"` in the body and the `Concord-Timeout-Ms` header are accepted on every
/// operation; a mistyped `timeout_ms` is a `bad_request`.
async fn deadlines_are_accepted(c: &Cluster) -> Result<()> {
    for (op, body) in [
        (
            "kv.put",
            json!({"key": "wc:deadline", "value": 1, "timeout_ms": 2000}),
        ),
        ("kv.get", json!({"key": "wc:deadline", "timeout_ms": 2000})),
        (
            "kv.get",
            json!({"key": "wc:deadline", "consistency": "stale", "timeout_ms": 2000}),
        ),
        (
            "kv.scan",
            json!({"prefix": "wc:deadline", "timeout_ms": 2000}),
        ),
        (
            "kv.delete",
            json!({"key": "wc:deadline", "timeout_ms": 2000}),
        ),
    ] {
        let reply = c.request(op, body.clone()).await?;
        expect_ok(&reply, &format!("{op} {body}"))?;
    }

    for (op, body) in [
        ("kv.put", json!({"key": "wc:deadline-h", "value": 2})),
        ("kv.get", json!({"key": "wc:deadline-h"})),
        ("kv.scan", json!({"prefix": "wc:deadline-h"})),
        ("kv.delete", json!({"key": "wc:deadline-h"})),
    ] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Concord-Timeout-Ms", "2000");
        let reply = c
            .request_raw(
                &c.subject(op),
                Some(headers),
                to_bytes(&body),
                common::REQUEST_TIMEOUT,
            )
            .await?;
        expect_ok(
            &reply,
            &format!("{op} {body} with header Concord-Timeout-Ms: 2000"),
        )?;
    }

    for body in [
        json!({"key": "wc:deadline", "value": 1, "timeout_ms": "soon"}),
        json!({"key": "wc:deadline", "value": 1, "timeout_ms": -5}),
    ] {
        let reply = c.request("kv.put", body.clone()).await?;
        expect_error(&reply, "bad_request", &format!("put {body}"))?;
    }
    Ok(())
}

/// With auth off (the default), a request with neither a `token` field nor an
/// `Authorization` header is served: none of the requests above carried one, and a plain
/// `nats req`-style request from a fresh connection works too.
async fn no_credential_needed(c: &Cluster) -> Result<()> {
    let client = c.connect().await?;
    let msg = client
        .request(
            c.subject("kv.put"),
            Bytes::from_static(br#"{"key":"a","value":1}"#),
        )
        .await
        .context("plain put from a fresh connection")?;
    let reply: Value = serde_json::from_slice(&msg.payload)?;
    expect_ok(&reply, "plain put from a fresh connection")?;
    let msg = client
        .request(c.subject("kv.get"), Bytes::from_static(br#"{"key":"a"}"#))
        .await?;
    let reply: Value = serde_json::from_slice(&msg.payload)?;
    expect_ok(&reply, "plain get from a fresh connection")?;
    ensure!(reply["value"] == json!(1), "plain get: {reply}");
    Ok(())
}

/// Every malformed request is refused with `bad_request` (not JSON, not an object, missing or
/// mistyped field, unknown option or field) and nothing is written.
async fn bad_requests_are_refused(c: &Cluster) -> Result<()> {
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for op in ["kv.put", "kv.get", "kv.delete", "kv.scan"] {
        for raw in [
            &b"not json"[..],
            b"",
            b"{",
            b"{\"key\":",
            b"[1,2]",
            b"[]",
            b"\"key\"",
            b"42",
            b"null",
            b"true",
        ] {
            cases.push((op, raw.to_vec()));
        }
    }
    let json_cases = [
        // missing key
        ("kv.put", json!({"value": 1})),
        ("kv.get", json!({})),
        ("kv.delete", json!({})),
        // key not a string
        ("kv.put", json!({"key": 5, "value": 1})),
        ("kv.get", json!({"key": 5})),
        ("kv.get", json!({"key": null})),
        ("kv.get", json!({"key": ["a"]})),
        ("kv.delete", json!({"key": {"k": 1}})),
        // unknown consistency level
        (
            "kv.get",
            json!({"key": "wc:bad", "consistency": "eventual"}),
        ),
        ("kv.get", json!({"key": "wc:bad", "consistency": 1})),
        (
            "kv.scan",
            json!({"prefix": "wc:", "consistency": "eventual"}),
        ),
        // unknown field
        (
            "kv.put",
            json!({"key": "wc:bad:unknown", "value": 1, "bogus": true}),
        ),
        ("kv.get", json!({"key": "wc:bad", "bogus": 1})),
        ("kv.delete", json!({"key": "wc:bad", "bogus": 1})),
        ("kv.scan", json!({"bogus": 1})),
        // mistyped fields
        ("kv.scan", json!({"prefix": 5})),
        ("kv.scan", json!({"limit": "ten"})),
        ("kv.scan", json!({"limit": -1})),
        ("kv.scan", json!({"after": 5})),
        (
            "kv.get",
            json!({"key": "wc:bad", "consistency": "stale", "min_revision": "x"}),
        ),
    ];
    for (op, body) in json_cases {
        cases.push((op, serde_json::to_vec(&body)?));
    }

    let mut wrong = Vec::new();
    for (op, payload) in cases {
        let shown = String::from_utf8_lossy(&payload).into_owned();
        let reply = c
            .request_raw(
                &c.subject(op),
                None,
                Bytes::from(payload),
                common::REQUEST_TIMEOUT,
            )
            .await
            .with_context(|| format!("{op} {shown:?}"))?;
        if let Err(e) = expect_error(&reply, "bad_request", &format!("{op} {shown:?}")) {
            wrong.push(format!("{e:#}"));
        }
    }
    ensure!(
        wrong.is_empty(),
        "{} malformed requests not refused with bad_request:\n  {}",
        wrong.len(),
        wrong.join("\n  ")
    );

    // The refused put with an unknown field was not applied.
    let reply = c
        .request("kv.get", json!({"key": "wc:bad:unknown"}))
        .await?;
    expect_error(
        &reply,
        "not_found",
        "get of the key of a refused put (unknown field)",
    )?;
    Ok(())
}

/// Keys that are empty, over 1024 bytes (bytes, not chars), or hold control characters are
/// refused with `invalid_key` by put, get and delete, and nothing is written; 1024 bytes is
/// accepted. A key that is not valid UTF-8 is refused (`invalid_key` or `bad_request`).
async fn invalid_keys_are_refused(c: &Cluster) -> Result<()> {
    let invalid = [
        String::new(),
        "a".repeat(1025),
        format!("{}a", "é".repeat(512)), // 513 chars, 1025 bytes
        "a\nb".to_string(),
        "a\u{0}b".to_string(),
        "a\tb".to_string(),
        "a\rb".to_string(),
        "\u{1b}[31m".to_string(),
        "a\u{7f}".to_string(),
    ];
    let mut wrong = Vec::new();
    for key in &invalid {
        for (op, body) in [
            ("kv.put", json!({"key": key, "value": 1})),
            ("kv.get", json!({"key": key})),
            ("kv.get", json!({"key": key, "consistency": "stale"})),
            ("kv.delete", json!({"key": key})),
        ] {
            let reply = c.request(op, body).await?;
            let shown: String = key.chars().take(20).collect();
            if let Err(e) = expect_error(
                &reply,
                "invalid_key",
                &format!("{op} key {shown:?} ({} bytes)", key.len()),
            ) {
                wrong.push(format!("{e:#}"));
            }
        }
    }
    ensure!(
        wrong.is_empty(),
        "{} invalid keys not refused with invalid_key:\n  {}",
        wrong.len(),
        wrong.join("\n  ")
    );

    // Nothing was written: no key of the scan is invalid.
    let reply = c.request("kv.scan", json!({})).await?;
    let (items, _) = scan_page(&reply, "scan after invalid puts")?;
    for (key, _, _) in &items {
        ensure!(
            !key.is_empty() && key.len() <= 1024 && !key.chars().any(char::is_control),
            "an invalid key was written: {key:?}"
        );
    }

    // The boundary: exactly 1024 bytes is valid, in ASCII and in 2-byte chars.
    for key in ["k".repeat(1024), "é".repeat(512)] {
        let rev = put(c, &key, json!("long key")).await?;
        let reply = c.request("kv.get", json!({"key": key})).await?;
        expect_value(&reply, &json!("long key"), rev, "get of a 1024-byte key")?;
        c.request("kv.delete", json!({"key": key})).await?;
    }

    // Not UTF-8 (raw byte 0xFF) and a lone surrogate escape.
    for payload in [
        &b"{\"key\":\"a\xffb\",\"value\":1}"[..],
        br#"{"key":"a\ud800b","value":1}"#,
    ] {
        let shown = String::from_utf8_lossy(payload).into_owned();
        let reply = c
            .request_raw(
                &c.subject("kv.put"),
                None,
                Bytes::copy_from_slice(payload),
                common::REQUEST_TIMEOUT,
            )
            .await?;
        let code = error_code(&reply).unwrap_or_default();
        ensure!(
            code == "invalid_key" || code == "bad_request",
            "put {shown:?}: expected invalid_key or bad_request, got {reply}"
        );
        expect_error(&reply, code, &format!("put {shown:?}"))?;
    }
    Ok(())
}

/// A value whose encoding is over `limits.max_value_bytes` (1024 here) is refused with
/// `value_too_large` and not written; one under the limit is stored.
async fn large_values_are_refused(c: &Cluster) -> Result<()> {
    let big_string = json!("v".repeat(2000));
    let big_array = json!((0..400).map(|i| i * 1000).collect::<Vec<u32>>()); // ~2000 bytes
    let big_object = json!({"blob": "z".repeat(1100)});
    for (key, value) in [
        ("wc:big:s", &big_string),
        ("wc:big:a", &big_array),
        ("wc:big:o", &big_object),
    ] {
        let reply = c
            .request("kv.put", json!({"key": key, "value": value}))
            .await?;
        expect_error(
            &reply,
            "value_too_large",
            &format!("put {key} ({} bytes)", value.to_string().len()),
        )?;
        let reply = c.request("kv.get", json!({"key": key})).await?;
        expect_error(
            &reply,
            "not_found",
            &format!("get {key} after the refused put"),
        )?;
    }
    // Through a follower's node subject too (checked before or after forwarding).
    let leader = c.wait_for_leader(WAIT).await?;
    let follower = c
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("3 nodes");
    let reply = c
        .node_request(
            follower,
            "kv.put",
            json!({"key": "wc:big:f", "value": big_string}),
        )
        .await?;
    expect_error(
        &reply,
        "value_too_large",
        &format!("put 2000 bytes via node {follower}"),
    )?;

    let fits = json!("w".repeat(500));
    let rev = put(c, "wc:big:fits", fits.clone()).await?;
    let reply = c.request("kv.get", json!({"key": "wc:big:fits"})).await?;
    expect_value(&reply, &fits, rev, "get of a 500-byte value")?;
    Ok(())
}

/// `P.admin.status` and every `P.node.<id>.admin.status` answer the fields of
/// docs/node-contract.md, agree on cluster id, leader and voters, and add `digest` only when
/// asked.
async fn admin_status_fields(c: &Cluster) -> Result<()> {
    let leader = c.wait_stable(WAIT).await?;
    let reply = c.request("admin.status", json!({})).await?;
    check_status(c, &reply, None)?;
    let cluster_id = reply["cluster_id"].clone();

    for id in c.ids() {
        let reply = c.node_request(id, "admin.status", json!({})).await?;
        check_status(c, &reply, Some(id))?;
        ensure!(
            reply["cluster_id"] == cluster_id,
            "node {id} cluster_id differs: {reply}"
        );
        ensure!(
            reply["leader"] == json!(leader),
            "node {id} names leader {} not {leader}",
            reply["leader"]
        );
        let role = if id == leader { "leader" } else { "follower" };
        ensure!(
            reply["role"] == json!(role),
            "node {id}: role {} expected {role}",
            reply["role"]
        );
        ensure!(
            reply.get("digest").is_none_or(Value::is_null),
            "node {id}: digest present without asking: {reply}"
        );

        let reply = c
            .node_request(id, "admin.status", json!({"digest": true}))
            .await?;
        check_status(c, &reply, Some(id))?;
        let digest = reply["digest"].as_str().unwrap_or_default();
        ensure!(
            digest.len() == 64 && digest.chars().all(|ch| ch.is_ascii_hexdigit()),
            "node {id}: digest is not 64 hex chars: {reply}"
        );
    }
    Ok(())
}

/// `P.admin.members` and `P.node.<id>.admin.members` answer leader, term, voters, learners
/// and one `nodes` entry per voter.
async fn admin_members_fields(c: &Cluster) -> Result<()> {
    let leader = c.wait_stable(WAIT).await?;
    let mut replies = vec![(
        "P.admin.members".to_string(),
        c.request("admin.members", json!({})).await?,
    )];
    for id in c.ids() {
        replies.push((
            format!("node {id} admin.members"),
            c.node_request(id, "admin.members", json!({})).await?,
        ));
    }
    for (what, reply) in replies {
        expect_ok(&reply, &what)?;
        ensure!(
            reply["leader"] == json!(leader),
            "{what}: leader is not {leader}: {reply}"
        );
        ensure!(
            reply["term"].as_u64().is_some_and(|t| t >= 1),
            "{what}: term: {reply}"
        );
        ensure!(
            reply["voters"] == json!([1, 2, 3]),
            "{what}: voters: {reply}"
        );
        ensure!(reply["learners"] == json!([]), "{what}: learners: {reply}");
        let nodes = reply["nodes"]
            .as_array()
            .ok_or_else(|| anyhow!("{what}: nodes is not an array: {reply}"))?;
        let mut ids: Vec<u64> = Vec::new();
        for node in nodes {
            let id = node["id"]
                .as_u64()
                .ok_or_else(|| anyhow!("{what}: node without id: {node}"))?;
            ids.push(id);
            ensure!(
                node["role"] == json!("voter"),
                "{what}: node {id} role is not voter: {node}"
            );
            ensure!(
                node["matched_index"].is_u64() || node["matched_index"].is_null(),
                "{what}: node {id} matched_index is neither a number nor null: {node}"
            );
        }
        ids.sort_unstable();
        ensure!(ids == [1, 2, 3], "{what}: nodes ids {ids:?}");
    }
    Ok(())
}

/// Once writes stop, every node reaches the same applied index and the same keyspace digest.
async fn replicas_converge(c: &Cluster) -> Result<()> {
    c.wait_until(
        WAIT,
        "every node to report the same last_applied and digest",
        || async {
            let mut seen = BTreeMap::new();
            for id in c.ids() {
                let s = c
                    .node_request(id, "admin.status", json!({"digest": true}))
                    .await?;
                seen.insert(
                    id,
                    (
                        s["last_applied"].clone(),
                        s["revision"].clone(),
                        s["digest"].clone(),
                    ),
                );
            }
            let first = seen.values().next().cloned();
            Ok(first.is_some_and(|f| !f.2.is_null() && seen.values().all(|v| *v == f)))
        },
    )
    .await
}

// ----- helpers ---------------------------------------------------------------------------

fn check_status(c: &Cluster, reply: &Value, node: Option<u64>) -> Result<()> {
    let what = match node {
        Some(id) => format!("node {id} admin.status"),
        None => "P.admin.status".to_string(),
    };
    expect_ok(reply, &what)?;
    let id = reply["node"]
        .as_u64()
        .ok_or_else(|| anyhow!("{what}: node is not a number: {reply}"))?;
    if let Some(want) = node {
        ensure!(id == want, "{what}: node is {id}: {reply}");
    } else {
        ensure!(
            c.ids().contains(&id),
            "{what}: node {id} is not a member: {reply}"
        );
    }
    ensure!(
        reply["cluster_name"] == json!(c.cluster_name()),
        "{what}: cluster_name: {reply}"
    );
    let cluster_id = reply["cluster_id"]
        .as_str()
        .ok_or_else(|| anyhow!("{what}: cluster_id is not a string once bootstrapped: {reply}"))?;
    ensure!(
        uuid::Uuid::parse_str(cluster_id).is_ok(),
        "{what}: cluster_id is not a UUID: {reply}"
    );
    let role = reply["role"].as_str().unwrap_or_default();
    ensure!(
        ["leader", "follower", "candidate", "learner", "shutdown"].contains(&role),
        "{what}: role {role:?}: {reply}"
    );
    ensure!(
        reply["leader"].is_u64(),
        "{what}: leader is not a number: {reply}"
    );
    for field in [
        "term",
        "commit_index",
        "last_applied",
        "last_log_index",
        "revision",
    ] {
        ensure!(
            reply[field].is_u64(),
            "{what}: {field} is not a number: {reply}"
        );
    }
    ensure!(
        reply["term"].as_u64() >= Some(1),
        "{what}: term is 0: {reply}"
    );
    ensure!(
        reply["last_applied"].as_u64() <= reply["last_log_index"].as_u64(),
        "{what}: last_applied above last_log_index: {reply}"
    );
    ensure!(
        reply["members"]["voters"] == json!([1, 2, 3]),
        "{what}: members.voters: {reply}"
    );
    ensure!(
        reply["members"]["learners"] == json!([]),
        "{what}: members.learners: {reply}"
    );
    ensure!(
        reply["storage"]["keys"].is_u64(),
        "{what}: storage.keys: {reply}"
    );
    ensure!(
        reply["storage"]["bytes"].is_u64(),
        "{what}: storage.bytes: {reply}"
    );
    for field in ["snapshot_index", "purged_index"] {
        ensure!(
            reply.get(field).is_some() && (reply[field].is_null() || reply[field].is_u64()),
            "{what}: {field} is missing or neither null nor a number: {reply}"
        );
    }
    Ok(())
}

/// Sends one request with a client-side allowance far above `deadline`, and checks that the
/// reply is `cluster_not_ready` or `timeout` and arrived within `deadline` + 500 ms. Returns
/// the code.
async fn answers_before_deadline(
    c: &Cluster,
    subject: &str,
    headers: Option<async_nats::HeaderMap>,
    body: Value,
    deadline: Duration,
) -> Result<String> {
    let started = Instant::now();
    let reply = c
        .request_raw(subject, headers, to_bytes(&body), deadline * 5)
        .await
        .with_context(|| format!("{subject} {body}: no JSON reply"))?;
    let elapsed = started.elapsed();
    eprintln!("{subject} {body} -> {reply} after {elapsed:?}");
    let code = error_code(&reply).unwrap_or_default().to_string();
    ensure!(
        code == "cluster_not_ready" || code == "timeout",
        "{subject} {body}: expected cluster_not_ready or timeout, got {reply}"
    );
    expect_error(&reply, &code, &format!("{subject} {body}"))?;
    let allowed = deadline + Duration::from_millis(500);
    ensure!(
        elapsed <= allowed,
        "{subject} {body}: reply after {elapsed:?}, over the deadline {deadline:?} + 500 ms slack"
    );
    Ok(code)
}

async fn put(c: &Cluster, key: &str, value: Value) -> Result<u64> {
    let reply = c
        .request("kv.put", json!({"key": key, "value": value}))
        .await?;
    expect_ok(&reply, &format!("put {key}"))?;
    revision(&reply, &format!("put {key}"))
}

fn expect_ok(reply: &Value, what: &str) -> Result<()> {
    ensure!(
        reply.is_object(),
        "{what}: reply is not a JSON object: {reply}"
    );
    ensure!(
        reply["ok"] == json!(true),
        "{what}: expected ok:true, got {reply}"
    );
    ensure!(
        reply.get("error").is_none_or(Value::is_null),
        "{what}: ok reply carries an error: {reply}"
    );
    Ok(())
}

/// `{"ok": false, "error": {"code": <code>, "message": <non-empty>}}`.
fn expect_error(reply: &Value, code: &str, what: &str) -> Result<()> {
    ensure!(
        reply.is_object(),
        "{what}: reply is not a JSON object: {reply}"
    );
    ensure!(
        reply["ok"] == json!(false),
        "{what}: expected ok:false with {code}, got {reply}"
    );
    ensure!(
        error_code(reply) == Some(code),
        "{what}: expected error.code {code:?}, got {reply}"
    );
    let message = reply["error"]["message"].as_str();
    ensure!(
        message.is_some_and(|m| !m.trim().is_empty()),
        "{what}: error.message is missing or empty: {reply}"
    );
    Ok(())
}

/// The reply has every field in `fields`. Extra fields are an additive extension, not a
/// contract break: they are only reported (once per shape) on stderr.
fn expect_fields(reply: &Value, fields: &[&str], what: &str) -> Result<()> {
    let obj = reply
        .as_object()
        .ok_or_else(|| anyhow!("{what}: reply is not an object: {reply}"))?;
    for f in fields {
        ensure!(obj.contains_key(*f), "{what}: reply lacks {f:?}: {reply}");
    }
    let extra: Vec<&String> = obj
        .keys()
        .filter(|k| !fields.contains(&k.as_str()))
        .collect();
    if !extra.is_empty() {
        eprintln!("note: {what}: reply has fields beyond DESIGN.md {extra:?}");
    }
    Ok(())
}

fn revision(reply: &Value, what: &str) -> Result<u64> {
    let rev = reply["revision"]
        .as_u64()
        .ok_or_else(|| anyhow!("{what}: revision is not an unsigned integer: {reply}"))?;
    ensure!(rev >= 1, "{what}: revision 0: {reply}");
    Ok(rev)
}

fn expect_value(reply: &Value, value: &Value, rev: u64, what: &str) -> Result<()> {
    expect_ok(reply, what)?;
    ensure!(
        reply.get("value") == Some(value),
        "{what}: expected value {value}, got {reply}"
    );
    ensure!(
        reply["revision"].as_u64() == Some(rev),
        "{what}: expected revision {rev}, got {reply}"
    );
    Ok(())
}

type Item = (String, Value, u64);

/// Checks the shape of a scan reply and returns its items and `more`. Items must be sorted
/// strictly by key.
fn scan_page(reply: &Value, what: &str) -> Result<(Vec<Item>, bool)> {
    expect_ok(reply, what)?;
    expect_fields(reply, &["ok", "items", "more"], what)?;
    let more = reply["more"]
        .as_bool()
        .ok_or_else(|| anyhow!("{what}: more is not a bool: {reply}"))?;
    let raw = reply["items"]
        .as_array()
        .ok_or_else(|| anyhow!("{what}: items is not an array: {reply}"))?;
    let mut items = Vec::new();
    for item in raw {
        let key = item["key"]
            .as_str()
            .ok_or_else(|| anyhow!("{what}: item without string key: {item}"))?;
        ensure!(
            item.get("value").is_some(),
            "{what}: item without value: {item}"
        );
        let rev = item["revision"]
            .as_u64()
            .ok_or_else(|| anyhow!("{what}: item without revision: {item}"))?;
        items.push((key.to_string(), item["value"].clone(), rev));
    }
    for pair in items.windows(2) {
        ensure!(
            pair[0].0 < pair[1].0,
            "{what}: items not sorted by key: {:?} then {:?}",
            pair[0].0,
            pair[1].0
        );
    }
    Ok((items, more))
}

fn expect_items(got: &[Item], want: &[Item], what: &str) -> Result<()> {
    ensure!(
        got == want,
        "{what}: items\n  {got:?}\nexpected\n  {want:?}"
    );
    Ok(())
}

fn record(failures: &mut Vec<String>, section: &str, result: Result<()>) {
    match result {
        Ok(()) => eprintln!("[ok] {section}"),
        Err(e) => {
            eprintln!("[FAILED] {section}: {e:#}");
            failures.push(format!("{section}: {e:#}"));
        }
    }
}

/// Ends a test: on failures, prints the node logs (via `Drop`) and then panics with every
/// failure listed, so the list is the last thing on the terminal.
fn finish(cluster: Cluster, failures: Vec<String>) -> Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    cluster.mark_failed();
    drop(cluster);
    panic!(
        "{} section(s) failed:\n- {}",
        failures.len(),
        failures.join("\n- ")
    );
}

/// Proves the in-flight limit: with `limits.max_in_flight = 4`, a burst of 200 concurrent
/// puts gets every request answered (no drop, no hang), some with `busy`, and a `busy` put
/// was not applied while every acknowledged one was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_when_the_in_flight_limit_is_reached() -> Result<()> {
    let c = Cluster::start_with(
        1,
        ClusterOptions::default().env("CONCORD_LIMITS__MAX_IN_FLIGHT", 4),
    )
    .await?;
    c.wait_for_leader(LEADER_TIMEOUT).await?;
    let nats = c.client();
    let subject = c.subject("kv.put");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (nats, subject) = (nats.clone(), subject.clone());
        tasks.push(tokio::spawn(async move {
            let body = to_bytes(&json!({"key": format!("busy:{i}"), "value": i}));
            let req = async_nats::Request::new()
                .payload(body)
                .timeout(Some(Duration::from_secs(10)));
            let reply = nats.send_request(subject, req).await?;
            let v: Value = serde_json::from_slice(&reply.payload)?;
            anyhow::Ok((i, v))
        }));
    }
    let (mut acked, mut busy) = (Vec::new(), Vec::new());
    for t in tasks {
        let (i, v) = t.await??;
        match error_code(&v) {
            None if v["ok"] == json!(true) => acked.push(i),
            Some("busy") => {
                ensure!(
                    v["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "busy reply without a message: {v}"
                );
                busy.push(i)
            }
            other => return Err(anyhow!("put {i}: unexpected reply {v} ({other:?})")),
        }
    }
    ensure!(
        !busy.is_empty(),
        "200 concurrent puts against a limit of 4 drew no busy"
    );
    ensure!(!acked.is_empty(), "no put was acknowledged");
    for i in &acked {
        let v = c
            .request("kv.get", json!({"key": format!("busy:{i}")}))
            .await?;
        ensure!(
            v["value"] == json!(i),
            "acknowledged put {i} reads back as {v}"
        );
    }
    for i in &busy {
        let v = c
            .request("kv.get", json!({"key": format!("busy:{i}")}))
            .await?;
        ensure!(
            error_code(&v) == Some("not_found"),
            "busy put {i} was applied: {v}"
        );
    }
    Ok(())
}
