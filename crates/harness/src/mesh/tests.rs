//! The mesh's own tests: names and addresses, leader agreement, and (opt-in, root) real
//! clusters with partitions.

use super::*;

#[test]
fn names_fit_and_parse_back() {
    // The largest pid Linux allows (2^22) with a two-digit sequence still fits IFNAMSIZ.
    let tag = run_tag(4_194_304, 99);
    assert!(
        root_link(&tag, 3).len() <= MAX_IFNAME,
        "{}",
        root_link(&tag, 3)
    );
    assert_eq!(stale_candidate_pid(&ns_name(&tag, 3)), Some(4_194_304));
    assert_eq!(
        stale_candidate_pid(&ns_name(&run_tag(123, 0), 1)),
        Some(123)
    );
    for other in [
        "cc123n4", "cc12xn1", "ccn1", "cc", "docker1", "cc123s1", "cc123sn2",
    ] {
        assert_eq!(stale_candidate_pid(other), None, "{other}");
    }
}

#[test]
fn mesh_addresses_pair_up() {
    assert_eq!(mesh_pairs(), vec![(1, 2), (1, 3), (2, 3)]);
    assert_eq!(mesh_ip(1, 2), "10.78.0.1");
    assert_eq!(mesh_ip(2, 1), "10.78.0.2");
    assert_eq!(mesh_ip(3, 1), "10.78.1.2");
    assert_eq!(mesh_ip(2, 3), "10.78.2.1");
}

#[test]
fn leader_needs_a_majority_and_its_own_claim() {
    let s = |role: &str, leader: u64, term: u64| {
        json!({"role": role, "leader": leader, "term": term,
               "members": {"voters": [1, 2, 3]}})
    };
    let mut statuses = BTreeMap::new();
    statuses.insert(1, s("leader", 1, 2));
    assert_eq!(agreed_leader(&statuses), None, "one vote of three");
    statuses.insert(2, s("follower", 1, 2));
    assert_eq!(agreed_leader(&statuses), Some(1));
    // An isolated old leader still claiming leadership loses to the majority's leader.
    statuses.insert(2, s("leader", 2, 3));
    statuses.insert(3, s("follower", 2, 3));
    assert_eq!(agreed_leader(&statuses), Some(2));
    statuses.insert(2, s("candidate", 2, 3));
    assert_eq!(agreed_leader(&statuses), None);
}

// ----- real clusters (opt-in) --------------------------------------------------------

/// Real clusters are slow and need `nats-server` (and root for namespaces): opt in with
/// `CONCORD_CHECK_NETNS_TEST=1`. One at a time: two clusters on two cores would make the
/// election timings meaningless.
static REAL_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn real_cluster_spec(use_netns: bool) -> Option<(Spec, tempfile::TempDir)> {
    if std::env::var("CONCORD_CHECK_NETNS_TEST").as_deref() != Ok("1") {
        eprintln!("skipped: set CONCORD_CHECK_NETNS_TEST=1 to start a real check cluster");
        return None;
    }
    let bin = std::env::var_os("CONCORD_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/concord")
        });
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build` first",
        bin.display()
    );
    let nats_server = crate::nats_server::find().expect("nats-server");
    let tmp = tempfile::Builder::new()
        .prefix("concord-check-")
        .tempdir()
        .expect("temp dir");
    let spec = Spec {
        bin,
        nats_server,
        workdir: tmp.path().to_path_buf(),
        node_env: vec![
            ("CONCORD_RAFT__HEARTBEAT_INTERVAL_MS".into(), "100".into()),
            ("CONCORD_RAFT__ELECTION_TIMEOUT_MIN_MS".into(), "800".into()),
            (
                "CONCORD_RAFT__ELECTION_TIMEOUT_MAX_MS".into(),
                "1600".into(),
            ),
        ],
        use_netns,
        client_ping_interval: None,
    };
    Some((spec, tmp))
}

async fn put(url: &str, key: &str, value: i64, timeout: Duration) -> Result<Value, Error> {
    let client = async_nats::ConnectOptions::new()
        .ignore_discovered_servers()
        .connect(url)
        .await
        .map_err(|e| Error::Connect {
            url: url.to_string(),
            message: e.to_string(),
        })?;
    let body = json!({"key": key, "value": value, "timeout_ms": timeout.as_millis() as u64});
    request(
        &client,
        "concord.kv.put",
        &body,
        timeout + Duration::from_secs(1),
    )
    .await
}

fn namespaces_with(prefix: &str) -> Vec<String> {
    ip_output(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Partition the leader: the two others elect a new one; heal: the old leader follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // the guard only serializes tests on their own runtimes
async fn netns_partition_elects_and_heal_rejoins() {
    let Some((spec, _tmp)) = real_cluster_spec(true) else {
        return;
    };
    let _guard = REAL_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());

    // A leftover of a crashed run (a pid that cannot exist: pids are < 2^22), with a
    // process inside: `start` must remove both.
    let stale = "cc4194304n2";
    let stale_path = "/run/netns/cc4194304n2";
    ip(&["netns", "add", stale]).expect("ip netns add");
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", stale, "sleep", "600"])
        .spawn()
        .expect("sleep in the stale namespace");
    // `ip netns exec` enters the namespace a moment after the spawn.
    let entered = Instant::now();
    while ip_output(&["netns", "pids", stale])
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        assert!(
            entered.elapsed() < Duration::from_secs(5),
            "sleeper never entered {stale}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A start that fails halfway (the "node" exits at once) leaves nothing behind.
    let failing = Spec {
        bin: PathBuf::from("/bin/false"),
        workdir: spec.workdir.join("failing"),
        ..spec.clone()
    };
    match CheckCluster::start(failing).await {
        Err(Error::NodeExited { id, status, .. }) => {
            eprintln!("failing start: node {id} exited with {status}")
        }
        Err(e) => panic!("failing start: unexpected error {e}"),
        Ok(_) => panic!("a cluster of /bin/false started"),
    }
    // Only this process's namespaces: other check clusters may run on the machine.
    let left = namespaces_with(&format!("cc{}", std::process::id()));
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(!Path::new(stale_path).exists(), "{stale_path} left");
    let sleeper_status = sleeper.wait().expect("reap the sleeper");
    eprintln!("stale namespace removed, its process ended with {sleeper_status}");

    let t0 = Instant::now();
    let mut cluster = CheckCluster::start(spec).await.expect("start");
    assert!(
        cluster.netns(),
        "namespaces unavailable: {:?}",
        cluster.fallback_reason()
    );
    let namespaces = cluster.namespaces();
    eprintln!("started in {:?}: namespaces {namespaces:?}", t0.elapsed());
    for id in cluster.ids() {
        let pid = cluster.pid(id).expect("running");
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(
            comm.trim(),
            "concord",
            "pid {pid} of node {id} is the node itself"
        );
    }

    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let term = cluster.status(leader).await.expect("status")["term"]
        .as_u64()
        .expect("term");
    let reply = put(&cluster.client_url(1), "k", 1, Duration::from_secs(5))
        .await
        .expect("put");
    assert_eq!(reply["ok"], json!(true), "{reply}");
    eprintln!("leader {leader} (term {term}), put ok: {reply}");

    cluster.partition(leader).await.expect("partition");
    let cut = Instant::now();
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&i| i != leader).collect();
    let mut new_leader = None;
    while cut.elapsed() < Duration::from_secs(15) {
        let mut named = Vec::new();
        for &id in &others {
            if let Ok(s) = cluster.status(id).await {
                named.push((s["leader"].as_u64(), s["term"].as_u64(), s["role"].clone()));
            }
        }
        let agreed = named.len() == 2
            && named[0].0 == named[1].0
            && named[0].0.is_some_and(|l| l != leader)
            && named[0].1.is_some_and(|t| t > term)
            && named.iter().any(|n| n.2 == json!("leader"));
        if agreed {
            new_leader = named[0].0;
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let elected_in = cut.elapsed();
    let Some(new_leader) = new_leader else {
        panic!(
            "no new leader among {others:?} within 15 s: {}",
            cluster.status_summary().await
        )
    };
    let new_term = cluster.status(new_leader).await.expect("status")["term"]
        .as_u64()
        .expect("term");
    eprintln!("partitioned {leader}: {new_leader} elected (term {new_term}) in {elected_in:?}");

    // The majority serves writes; the isolated node cannot commit any. Right after the
    // election a request may still be routed toward the isolated node's subscription
    // (until its server declares the route dead) and be lost: retry a few times.
    let mut reply = Err(Error::Spec("not tried".into()));
    for _ in 0..5 {
        reply = put(
            &cluster.client_url(new_leader),
            "k",
            2,
            Duration::from_secs(2),
        )
        .await;
        if reply.as_ref().is_ok_and(|r| r["ok"] == json!(true)) {
            break;
        }
        eprintln!("put through the majority, retrying: {reply:?}");
    }
    let reply = reply.expect("put through the majority");
    assert_eq!(reply["ok"], json!(true), "{reply}");
    let minority = put(&cluster.client_url(leader), "k", 3, Duration::from_secs(1)).await;
    assert!(
        minority.as_ref().map_or(true, |r| r["ok"] != json!(true)),
        "a write through the isolated node succeeded: {minority:?}"
    );
    // The isolated node's client link stays up: its status still answers.
    cluster.status(leader).await.expect("isolated node answers");

    // Hold the cut long enough for every server to declare its routes dead (1 s pings,
    // 2 missed), as the nemesis does, so that the heal has to reconnect them.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(cut.elapsed())).await;
    eprintln!(
        "isolated server n{leader} before the heal:\n{}",
        cluster.nats_log_tail(leader, 6)
    );
    let heal_start = Instant::now();
    cluster.heal().await.expect("heal");
    let mesh_in = heal_start.elapsed();
    let mut rejoined = false;
    while heal_start.elapsed() < Duration::from_secs(15) {
        if let Ok(s) = cluster.status(leader).await {
            if s["leader"].as_u64() == Some(new_leader)
                && s["term"].as_u64().is_some_and(|t| t >= new_term)
                && s["role"] == json!("follower")
            {
                rejoined = true;
                break;
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let rejoined_in = heal_start.elapsed();
    assert!(
        rejoined,
        "old leader {leader} did not follow {new_leader} within 15 s of the heal: {}",
        cluster.status_summary().await
    );
    eprintln!("healed: mesh back in {mesh_in:?}, old leader {leader} follows {new_leader} after {rejoined_in:?}");

    // Process faults work inside namespaces too.
    cluster.pause(new_leader).await.expect("pause");
    cluster.resume(new_leader).await.expect("resume");
    cluster.kill(leader).await.expect("kill");
    cluster.start_node(leader).await.expect("restart");
    cluster
        .wait_for_leader(Duration::from_secs(15))
        .await
        .expect("leader after restart");

    let tag_prefix = namespaces[0].trim_end_matches("n1").to_string() + "n";
    cluster.shutdown().await;
    let left = namespaces_with(&tag_prefix);
    assert!(left.is_empty(), "namespaces left after shutdown: {left:?}");
    let links = ip_output(&["-o", "link", "show"]).unwrap_or_default();
    let root_prefix = tag_prefix.trim_end_matches('n').to_string() + "c";
    assert!(
        !links.contains(&root_prefix),
        "root veths left after shutdown: {links}"
    );
    eprintln!("total {:?}", t0.elapsed());
}

/// Loopback: three clustered servers on 127.0.0.1; a leader, writes, process faults;
/// partitions are refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // the guard only serializes tests on their own runtimes
async fn loopback_fallback_elects_a_leader() {
    let Some((spec, _tmp)) = real_cluster_spec(false) else {
        return;
    };
    let _guard = REAL_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let t0 = Instant::now();
    let mut cluster = CheckCluster::start(spec).await.expect("start");
    assert!(!cluster.netns());
    let leader = cluster.leader().await.expect("start returns with a leader");
    eprintln!(
        "loopback cluster up in {:?}, leader {leader}, urls {:?}",
        t0.elapsed(),
        cluster.all_client_urls()
    );
    for url in cluster.all_client_urls() {
        let reply = put(&url, "k", 1, Duration::from_secs(5))
            .await
            .expect("put");
        assert_eq!(reply["ok"], json!(true), "{url}: {reply}");
    }
    match cluster.partition(leader).await {
        Err(Error::PartitionUnsupported(why)) => eprintln!("partition refused: {why}"),
        other => panic!("partition on loopback: {other:?}"),
    }
    cluster.heal().await.expect("heal is a no-op on loopback");

    cluster.kill(leader).await.expect("kill");
    assert!(matches!(
        cluster.kill(leader).await,
        Err(Error::NotRunning(_))
    ));
    let killed = Instant::now();
    let next = cluster
        .wait_for_leader(Duration::from_secs(15))
        .await
        .expect("new leader");
    assert_ne!(next, leader);
    eprintln!("killed {leader}: {next} leads after {:?}", killed.elapsed());
    cluster.start_node(leader).await.expect("restart");
    cluster.pause(next).await.expect("pause");
    let paused = Instant::now();
    let third = cluster
        .wait_for_leader(Duration::from_secs(15))
        .await
        .expect("leader while the old one is paused");
    assert_ne!(third, next);
    eprintln!("paused {next}: {third} leads after {:?}", paused.elapsed());
    cluster.resume(next).await.expect("resume");
    assert!(matches!(
        cluster.start_node(next).await,
        Err(Error::AlreadyRunning(_))
    ));
    let pids: Vec<u32> = cluster
        .ids()
        .iter()
        .filter_map(|&i| cluster.pid(i))
        .collect();
    cluster.shutdown().await;
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "node pid {pid} survived shutdown"
        );
    }
}
