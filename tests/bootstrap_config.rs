//! Node configuration and bootstrap safety, against real `nats-server` and `concord`
//! processes:
//!
//! - `concord serve --check-config` shows the layering defaults < file < `CONCORD_*` env <
//!   flags with each setting's source, secrets masked, and a bad setting stops `serve` at
//!   once with a message that names it;
//! - a second node on a data directory is refused by its lock, which a SIGKILL never leaves
//!   stuck;
//! - a bootstrapper whose data dir was wiped never forms a new cluster, and a node of another
//!   cluster refuses to start on a prefix that is already served;
//! - a request sent while the cluster has no quorum is answered before its deadline;
//! - the Raft log is fsynced before a write is acknowledged (observed with `strace`).

mod common;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use common::{error_code, to_bytes, wait_until, Cluster, ClusterOptions};
use serde_json::{json, Value};

const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(15);
/// A bad configuration must stop the process within this.
const CONFIG_EXIT_LIMIT: Duration = Duration::from_secs(10);

// ----- configuration ---------------------------------------------------------------------

/// Proves the configuration layering of DESIGN.md: a `--config` file overrides the defaults,
/// `CONCORD_*` env overrides the file (sections split by `__`), command-line flags override
/// the env; that comma-separated env values become lists (`initial_members`, `nats.url`);
/// that every serve flag wins over env and file; and that `./concord.toml` in the working
/// directory is read when no `--config` is given (and not when one is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_layers_file_then_env_then_flags() -> Result<()> {
    let tmp = tempdir()?;
    let dir = tmp.path();
    let file = dir.join("layers.toml");
    std::fs::write(
        &file,
        r#"data_dir = "/srv/concord-from-file"

[node]
id = 5

[cluster]
name = "f"

[nats]
url = "nats://from-file:4222"
"#,
    )?;
    let file_arg = file.to_str().context("temp path is not UTF-8")?;

    // Defaults alone (no file in the working dir, no env, no flags).
    let c = check_config(dir, &[], &[]).await?;
    expect_setting(
        &c,
        "/nats/url",
        json!(["nats://127.0.0.1:4222"]),
        "defaults",
    )?;
    expect_setting(&c, "/node/id", json!(1), "defaults")?;
    expect_setting(&c, "/cluster/name", json!("concord"), "defaults")?;
    expect_setting(&c, "/cluster/initial_members", json!([1]), "defaults")?;
    expect_setting(&c, "/nats/subject_prefix", json!("concord"), "defaults")?;

    // The file over the defaults.
    let c = check_config(dir, &["--config", file_arg], &[]).await?;
    let what = "--config file";
    expect_setting(&c, "/nats/url", json!(["nats://from-file:4222"]), what)?;
    expect_setting(&c, "/node/id", json!(5), what)?;
    expect_setting(&c, "/data_dir", json!("/srv/concord-from-file"), what)?;
    expect_setting(&c, "/cluster/name", json!("f"), what)?;

    // Env over the file.
    let env = [
        ("CONCORD_NATS__URL", "nats://from-env:4222"),
        ("CONCORD_NODE__ID", "6"),
    ];
    let c = check_config(dir, &["--config", file_arg], &env).await?;
    let what = "file + env";
    expect_setting(&c, "/nats/url", json!(["nats://from-env:4222"]), what)?;
    expect_setting(&c, "/node/id", json!(6), what)?;
    expect_setting(&c, "/data_dir", json!("/srv/concord-from-file"), what)?;
    expect_setting(&c, "/cluster/name", json!("f"), what)?;

    // A flag over env and file.
    let c = check_config(dir, &["--config", file_arg, "--node-id", "7"], &env).await?;
    let what = "file + env + --node-id";
    expect_setting(&c, "/nats/url", json!(["nats://from-env:4222"]), what)?;
    expect_setting(&c, "/node/id", json!(7), what)?;
    expect_setting(&c, "/data_dir", json!("/srv/concord-from-file"), what)?;
    expect_setting(&c, "/cluster/name", json!("f"), what)?;

    // Comma-separated env values are lists.
    let env = [
        ("CONCORD_CLUSTER__INITIAL_MEMBERS", "1,2,3"),
        ("CONCORD_NATS__URL", "nats://a:1,nats://b:2"),
    ];
    let c = check_config(dir, &[], &env).await?;
    let what = "comma-separated env";
    expect_setting(&c, "/cluster/initial_members", json!([1, 2, 3]), what)?;
    expect_setting(&c, "/nats/url", json!(["nats://a:1", "nats://b:2"]), what)?;

    // Every serve flag over env and file.
    let env = [
        ("CONCORD_NATS__URL", "nats://from-env:4222"),
        ("CONCORD_NODE__ID", "6"),
        ("CONCORD_DATA_DIR", "/srv/from-env"),
        ("CONCORD_CLUSTER__NAME", "envname"),
        ("CONCORD_CLUSTER__INITIAL_MEMBERS", "1,2,3"),
        ("CONCORD_NATS__SUBJECT_PREFIX", "envprefix"),
    ];
    let flags = [
        "--config",
        file_arg,
        "--node-id",
        "9",
        "--data-dir",
        "/srv/from-flag",
        "--nats-url",
        "nats://from-flag:1,nats://from-flag:2",
        "--cluster-name",
        "flagname",
        "--initial-members",
        "7,8,9",
        "--subject-prefix",
        "flag.prefix",
    ];
    let c = check_config(dir, &flags, &env).await?;
    let what = "every flag over env and file";
    expect_setting(&c, "/node/id", json!(9), what)?;
    expect_setting(&c, "/data_dir", json!("/srv/from-flag"), what)?;
    expect_setting(
        &c,
        "/nats/url",
        json!(["nats://from-flag:1", "nats://from-flag:2"]),
        what,
    )?;
    expect_setting(&c, "/cluster/name", json!("flagname"), what)?;
    expect_setting(&c, "/cluster/initial_members", json!([7, 8, 9]), what)?;
    expect_setting(&c, "/nats/subject_prefix", json!("flag.prefix"), what)?;

    // ./concord.toml in the working directory, when no --config is given.
    let cwd = tempdir()?;
    std::fs::write(
        cwd.path().join("concord.toml"),
        "[cluster]\nname = \"from-cwd\"\n[node]\nid = 3\n",
    )?;
    let c = check_config(cwd.path(), &[], &[]).await?;
    expect_setting(&c, "/cluster/name", json!("from-cwd"), "./concord.toml")?;
    expect_setting(&c, "/node/id", json!(3), "./concord.toml")?;
    let c = check_config(cwd.path(), &["--config", file_arg], &[]).await?;
    let what = "--config given while ./concord.toml exists";
    expect_setting(&c, "/cluster/name", json!("f"), what)?;
    expect_setting(&c, "/node/id", json!(5), what)?;
    Ok(())
}

/// Proves that a bad setting stops `serve` (and `serve --check-config`) at once, with a
/// non-zero exit within 10 s and a message naming the setting: an unknown key in the file,
/// a missing or unreadable `--config` file, a malformed value from env or file, and an
/// election timeout below 3x the heartbeat (exactly 3x is accepted). An unknown `CONCORD_*`
/// variable only draws a warning: `--check-config` exits 0 and a node with it runs and
/// serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_is_refused_with_the_setting_named() -> Result<()> {
    let tmp = tempdir()?;
    let dir = tmp.path();
    let write = |name: &str, text: &str| -> Result<String> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path.to_str().context("temp path is not UTF-8")?.to_string())
    };
    let unknown_key = write("unknown-key.toml", "[nats]\nurll = \"nats://x:4222\"\n")?;
    let zero_id = write("zero-id.toml", "[node]\nid = 0\n")?;
    let short_election = write(
        "short-election.toml",
        "[raft]\nheartbeat_interval_ms = 500\nelection_timeout_min_ms = 1499\n",
    )?;
    let missing = dir.join("no-such-dir").join("concord.toml");
    let missing = missing
        .to_str()
        .context("temp path is not UTF-8")?
        .to_string();
    let a_directory = dir.join("a-directory");
    std::fs::create_dir_all(&a_directory)?;
    let a_directory = a_directory.to_str().context("not UTF-8")?.to_string();

    // (what, --config file, env, text the message must hold)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unknown key nats.urll in the file",
            Some(unknown_key.as_str()),
            vec![],
            "urll",
        ),
        (
            "--config file that does not exist",
            Some(missing.as_str()),
            vec![],
            missing.as_str(),
        ),
        (
            "--config path that is a directory",
            Some(a_directory.as_str()),
            vec![],
            a_directory.as_str(),
        ),
        (
            "CONCORD_NODE__ID=abc",
            None,
            vec![("CONCORD_NODE__ID", "abc")],
            "node.id",
        ),
        (
            "node.id = 0 in the file",
            Some(zero_id.as_str()),
            vec![],
            "node.id",
        ),
        (
            "CONCORD_CLUSTER__INITIAL_MEMBERS=1,x",
            None,
            vec![("CONCORD_CLUSTER__INITIAL_MEMBERS", "1,x")],
            "cluster.initial_members",
        ),
        (
            "election timeout below 3x heartbeat (file)",
            Some(short_election.as_str()),
            vec![],
            "raft.election_timeout_min_ms",
        ),
        (
            "election timeout below 3x heartbeat (env)",
            None,
            vec![
                ("CONCORD_RAFT__HEARTBEAT_INTERVAL_MS", "400"),
                ("CONCORD_RAFT__ELECTION_TIMEOUT_MIN_MS", "1000"),
            ],
            "raft.election_timeout_min_ms",
        ),
    ];

    let data_dir = dir.join("data");
    let data_dir = data_dir.to_str().context("not UTF-8")?.to_string();
    let mut failures = Vec::new();
    for (what, config, env, needle) in &cases {
        for check in [true, false] {
            let mut args = vec!["serve"];
            if check {
                args.push("--check-config");
            }
            if let Some(path) = config {
                args.extend(["--config", *path]);
            }
            let mut env = env.clone();
            // Were the setting accepted, plain `serve` would fail on NATS instead, and its
            // message would not name the setting.
            env.push(("CONCORD_NATS__URL", "nats://127.0.0.1:1"));
            env.push(("CONCORD_DATA_DIR", data_dir.as_str()));
            let mode = if check {
                "serve --check-config"
            } else {
                "serve"
            };
            let r = async {
                let run = run_concord(dir, &args, &env, CONFIG_EXIT_LIMIT).await?;
                let stderr = strip_ansi(&run.stderr);
                eprintln!(
                    "{what} [{mode}]: {} after {:?}: {}",
                    run.status,
                    run.elapsed,
                    stderr.trim()
                );
                ensure!(
                    !run.status.success(),
                    "exited 0; stdout:\n{}\nstderr:\n{stderr}",
                    run.stdout
                );
                ensure!(
                    stderr.contains(*needle),
                    "stderr does not name {needle:?}:\n{stderr}"
                );
                ensure!(!stderr.contains("panicked"), "it panicked:\n{stderr}");
                Ok(())
            }
            .await;
            if let Err(e) = r {
                failures.push(format!("{what} [{mode}]: {e:#}"));
            }
        }
    }

    // The boundary: exactly 3x the heartbeat is valid.
    let env = [
        ("CONCORD_RAFT__HEARTBEAT_INTERVAL_MS", "500"),
        ("CONCORD_RAFT__ELECTION_TIMEOUT_MIN_MS", "1500"),
        ("CONCORD_RAFT__ELECTION_TIMEOUT_MAX_MS", "3000"),
    ];
    match check_config(dir, &[], &env).await {
        Ok(c) => {
            if let Err(e) = expect_setting(
                &c,
                "/raft/election_timeout_min_ms",
                json!(1500),
                "3x heartbeat",
            ) {
                failures.push(format!("{e:#}"));
            }
        }
        Err(e) => failures.push(format!(
            "election timeout of exactly 3x the heartbeat refused: {e:#}"
        )),
    }

    // An unknown variable is a warning only.
    const WARNING: &str = "ignoring unknown environment variable CONCORD_FOO";
    let r = async {
        let run = run_concord(
            dir,
            &["serve", "--check-config", "--json"],
            &[("CONCORD_FOO", "1")],
            CONFIG_EXIT_LIMIT,
        )
        .await?;
        let stderr = strip_ansi(&run.stderr);
        ensure!(
            run.status.success(),
            "check-config with CONCORD_FOO=1 exited {}; stderr:\n{stderr}",
            run.status
        );
        serde_json::from_str::<Value>(&run.stdout)
            .with_context(|| format!("stdout is not JSON:\n{}", run.stdout))?;
        ensure!(
            stderr.contains(WARNING),
            "no {WARNING:?} warning on stderr:\n{stderr}"
        );
        Ok(())
    }
    .await;
    if let Err(e) = r {
        failures.push(format!("unknown env var with --check-config: {e:#}"));
    }
    let r = async {
        let cluster =
            Cluster::start_with(1, ClusterOptions::default().env("CONCORD_FOO", 1)).await?;
        let r = async {
            cluster.wait_for_leader(LEADER_TIMEOUT).await?;
            wait_cluster_id(&cluster, &[1]).await?;
            put(&cluster, "bc:foo", json!("runs")).await?;
            let log = strip_ansi(&cluster.log(1));
            ensure!(log.contains(WARNING), "no {WARNING:?} in the node log");
            Ok(())
        }
        .await;
        if r.is_err() {
            cluster.mark_failed();
        }
        r
    }
    .await;
    if let Err(e) = r {
        failures.push(format!("node with CONCORD_FOO=1: {e:#}"));
    }

    ensure!(
        failures.is_empty(),
        "{} check(s) failed:\n- {}",
        failures.len(),
        failures.join("\n- ")
    );
    Ok(())
}

/// Proves that `serve --check-config` names where each setting came from: `default`, the
/// `--config` file's path, `env CONCORD_...` and `flag --...`, one `key = value   (source)`
/// line each, and the same as `{"key": {"value", "source"}}` with `--json`; and that no
/// secret (NATS password, token, NKey seed, credentials in `nats.url`, cluster secret,
/// admin token, client token) appears in either output, while they are shown as set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_names_each_source_and_masks_secrets() -> Result<()> {
    let tmp = tempdir()?;
    let dir = tmp.path();
    let file = dir.join("sources.toml");
    std::fs::write(
        &file,
        "[cluster]\nname = \"from-file\"\nsecret = \"file-secret-0123456789\"\n\
         [raft]\nheartbeat_interval_ms = 100\n",
    )?;
    let file_arg = file.to_str().context("temp path is not UTF-8")?;
    let secrets = [
        "file-secret-0123456789",
        "url-pass-5d1e",
        "env-password-77c1",
        "env-token-a9f0",
        "SUAENVSEEDNOTREAL",
        "admin-token-0123456789",
        "client-token-4b2e",
    ];
    let env = [
        (
            "CONCORD_NATS__URL",
            "nats://bob:url-pass-5d1e@127.0.0.1:4222",
        ),
        ("CONCORD_NATS__PASSWORD", secrets[2]),
        ("CONCORD_NATS__TOKEN", secrets[3]),
        ("CONCORD_NATS__NKEY_SEED", secrets[4]),
        ("CONCORD_AUTH__ADMIN_TOKEN", secrets[5]),
        ("CONCORD_CLIENT__TOKEN", secrets[6]),
        ("CONCORD_LIMITS__MAX_IN_FLIGHT", "77"),
    ];
    let flags = [
        "serve",
        "--check-config",
        "--config",
        file_arg,
        "--node-id",
        "4",
        "--data-dir",
        "/srv/from-flag",
    ];
    // (key, value as printed, source)
    let want = [
        ("node.id", "4", "flag --node-id".to_string()),
        (
            "data_dir",
            "\"/srv/from-flag\"",
            "flag --data-dir".to_string(),
        ),
        ("cluster.name", "\"from-file\"", file_arg.to_string()),
        ("raft.heartbeat_interval_ms", "100", file_arg.to_string()),
        ("cluster.secret", "\"***\"", file_arg.to_string()),
        (
            "limits.max_in_flight",
            "77",
            "env CONCORD_LIMITS__MAX_IN_FLIGHT".into(),
        ),
        (
            "nats.url",
            "[\"nats://***@127.0.0.1:4222\"]",
            "env CONCORD_NATS__URL".into(),
        ),
        (
            "nats.password",
            "\"***\"",
            "env CONCORD_NATS__PASSWORD".into(),
        ),
        ("nats.token", "\"***\"", "env CONCORD_NATS__TOKEN".into()),
        (
            "nats.nkey_seed",
            "\"***\"",
            "env CONCORD_NATS__NKEY_SEED".into(),
        ),
        (
            "auth.admin_token",
            "\"***\"",
            "env CONCORD_AUTH__ADMIN_TOKEN".into(),
        ),
        (
            "client.token",
            "\"***\"",
            "env CONCORD_CLIENT__TOKEN".into(),
        ),
        ("nats.subject_prefix", "\"concord\"", "default".into()),
        ("raft.election_timeout_min_ms", "300", "default".into()),
        ("nats.user", "unset", "default".into()),
    ];

    let run = run_concord(dir, &flags, &env, CONFIG_EXIT_LIMIT).await?;
    ensure!(
        run.status.success(),
        "--check-config exited {}; stderr:\n{}",
        run.status,
        run.stderr
    );
    let text = run.stdout;
    eprintln!("--check-config:\n{text}");
    for s in secrets {
        ensure!(!text.contains(s), "the text output shows the secret {s:?}");
        ensure!(!run.stderr.contains(s), "stderr shows the secret {s:?}");
    }
    for (key, value, source) in &want {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .ok_or_else(|| anyhow!("no line for {key} in:\n{text}"))?;
        let (setting, from) = line
            .rsplit_once("   (")
            .ok_or_else(|| anyhow!("{key}: no `   (source)` in {line:?}"))?;
        ensure!(
            setting.trim_end() == format!("{key} = {value}"),
            "{key}: line {line:?}, expected value {value}"
        );
        ensure!(
            from.strip_suffix(')') == Some(source.as_str()),
            "{key}: line {line:?}, expected source {source:?}"
        );
    }
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    let keys = concord::config::known_keys();
    let leaves = keys
        .iter()
        .filter(|k| !keys.iter().any(|o| o.starts_with(&format!("{k}."))))
        .count();
    ensure!(
        lines == leaves,
        "{lines} lines for {leaves} settings:\n{text}"
    );

    let mut json_flags = flags.to_vec();
    json_flags.push("--json");
    let run = run_concord(dir, &json_flags, &env, CONFIG_EXIT_LIMIT).await?;
    ensure!(
        run.status.success(),
        "--check-config --json exited {}",
        run.status
    );
    for s in secrets {
        ensure!(
            !run.stdout.contains(s),
            "the JSON output shows the secret {s:?}"
        );
    }
    let v: Value = serde_json::from_str(&run.stdout)
        .with_context(|| format!("--check-config --json is not JSON:\n{}", run.stdout))?;
    for (key, value, source) in &want {
        let want_value = if *value == "unset" {
            Value::Null
        } else {
            serde_json::from_str(value)?
        };
        ensure!(
            v[key] == json!({"value": want_value, "source": source}),
            "{key}: {}",
            v[key]
        );
    }
    Ok(())
}

// ----- the data directory lock -------------------------------------------------------------

/// Proves the data directory lock: a second `concord serve` on a running node's data dir
/// exits non-zero within 5 s with `data directory ... is in use by another Concord process
/// (pid N); stop it first` naming the running node's pid, before it tries NATS (its NATS
/// URL points nowhere); and after that node is killed with SIGKILL, which leaves
/// `concord.lock` behind, the node restarts on the same data dir, leads again and holds its
/// data, and the lock file holds the new pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_lock_refuses_a_second_node_and_survives_kill_9() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let r = async {
        cluster.wait_for_leader(LEADER_TIMEOUT).await?;
        wait_cluster_id(&cluster, &[1]).await?;
        let rev = put(&cluster, "lock:before", json!("kept")).await?;
        let data_dir = cluster.data_dir(1);
        let data_arg = data_dir.to_str().context("not UTF-8")?;
        let pid = cluster.pid(1).ok_or_else(|| anyhow!("node 1 has no pid"))?;
        let tmp = tempdir()?;
        let run = run_concord(
            tmp.path(),
            &["serve", "--data-dir", data_arg, "--node-id", "1"],
            &[("CONCORD_NATS__URL", "nats://127.0.0.1:1")],
            Duration::from_secs(5),
        )
        .await?;
        let stderr = strip_ansi(&run.stderr);
        eprintln!(
            "second serve: {} after {:?}: {}",
            run.status,
            run.elapsed,
            stderr.trim()
        );
        ensure!(!run.status.success(), "a second node on {data_arg} exited 0");
        let want = format!(
            "data directory {data_arg} is in use by another Concord process (pid {pid}); stop it first"
        );
        ensure!(stderr.contains(&want), "stderr lacks {want:?}:\n{stderr}");

        cluster.kill(1).await?;
        let lock = data_dir.join("concord.lock");
        ensure!(lock.exists(), "no {lock:?} after SIGKILL");
        cluster.start_node(1).await?;
        cluster.wait_for_leader(LEADER_TIMEOUT).await?;
        let new_pid = cluster.pid(1).ok_or_else(|| anyhow!("node 1 has no pid"))?;
        let held = std::fs::read_to_string(&lock)?;
        ensure!(
            held.trim() == new_pid.to_string(),
            "{lock:?} holds {held:?}, the node's pid is {new_pid}"
        );
        let reply = cluster
            .request("kv.get", json!({"key": "lock:before"}))
            .await?;
        ensure!(
            reply["value"] == json!("kept") && reply["revision"] == json!(rev),
            "after the restart: {reply}"
        );
        Ok(())
    }
    .await;
    cluster.fail_on_err(r)
}

// ----- bootstrap -------------------------------------------------------------------------

/// Proves DESIGN.md's bootstrap rule for a wiped bootstrapper: node 1 (the lowest initial
/// member) is killed, its data dir wiped, and it is restarted while nodes 2 and 3 live. It
/// logs that it is "not initializing"; for 10 s no node reports a cluster id other than the
/// original, node 1 never leads a cluster of its own, and the cluster (2, 3) still serves the
/// key written before and acknowledges a new write. Whether node 1 catches up or waits is
/// not asserted, but if it learns a cluster id it is the original one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_bootstrap_node_does_not_form_a_new_cluster() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let r = wiped_bootstrapper(&cluster).await;
    cluster.fail_on_err(r)
}

async fn wiped_bootstrapper(cluster: &Cluster) -> Result<()> {
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    let rev = put(cluster, "bc:wiped", json!("before the wipe")).await?;
    let original = wait_cluster_id(cluster, &[1, 2, 3]).await?;
    eprintln!("cluster id {original}, key written at revision {rev}");

    cluster.kill(1).await?;
    cluster.wipe(1).await?;
    cluster.restart(1).await?;

    // Observe for 10 s.
    let window = Duration::from_secs(10);
    let started = Instant::now();
    let mut violations = Vec::new();
    let mut node1_roles = std::collections::BTreeSet::new();
    let mut node1_id: Option<String> = None;
    while started.elapsed() < window {
        let polls = futures::future::join_all([1u64, 2, 3].map(|id| cluster.status(id))).await;
        for (id, poll) in [1u64, 2, 3].into_iter().zip(polls) {
            let Ok(s) = poll else { continue };
            let at = started.elapsed();
            if let Some(cid) = s["cluster_id"].as_str() {
                if cid != original {
                    violations.push(format!(
                        "after {at:?} node {id} reports cluster id {cid}, not {original}: {s}"
                    ));
                }
                if id == 1 {
                    node1_id = Some(cid.to_string());
                }
            }
            if id == 1 {
                node1_roles.insert(s["role"].as_str().unwrap_or("?").to_string());
                let voters = &s["members"]["voters"];
                if s["role"] == json!("leader") && *voters == json!([1]) {
                    violations.push(format!("after {at:?} node 1 leads a one-node cluster: {s}"));
                }
                if s["role"] == json!("leader") && s["cluster_id"].as_str() != Some(&original) {
                    violations.push(format!(
                        "after {at:?} node 1 is leader without the original cluster id: {s}"
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "node 1 after the wipe: roles seen {node1_roles:?}, cluster id {}",
        node1_id.as_deref().unwrap_or("none")
    );
    ensure!(
        violations.is_empty(),
        "a wiped bootstrapper formed or joined another cluster:\n- {}",
        violations.join("\n- ")
    );

    // The cluster still serves the key through the cluster subject, and takes a write.
    cluster
        .wait_until(
            WAIT,
            "P.kv.get to serve the key written before the wipe",
            || async {
                let reply = cluster
                    .request("kv.get", json!({"key": "bc:wiped", "timeout_ms": 2000}))
                    .await?;
                ensure!(reply["ok"] == json!(true), "get: {reply}");
                ensure!(
                    reply["value"] == json!("before the wipe") && reply["revision"] == json!(rev),
                    "get answers another value: {reply}"
                );
                Ok(true)
            },
        )
        .await?;
    let after = put(cluster, "bc:wiped:after", json!("after the wipe")).await?;
    ensure!(
        after > rev,
        "revision {after} after the wipe is not above {rev}"
    );

    let log = strip_ansi(&cluster.log(1));
    let since_restart = log
        .rsplit("----- fixture: starting node 1 -----")
        .next()
        .unwrap_or_default();
    ensure!(
        since_restart.contains("not initializing"),
        "node 1's log since the restart does not say \"not initializing\":\n{since_restart}"
    );
    ensure!(
        !since_restart.contains("initialized a new cluster"),
        "node 1 initialized a new cluster after the wipe:\n{since_restart}"
    );
    // Whatever node 1 did since: no node knows another cluster id.
    for id in [1u64, 2, 3] {
        let s = cluster.status(id).await?;
        if let Some(cid) = s["cluster_id"].as_str() {
            ensure!(
                cid == original,
                "node {id} reports cluster id {cid}, not {original}"
            );
        }
    }
    Ok(())
}

/// Proves "one cluster per prefix": with cluster "alpha" serving prefix P, a node of cluster
/// "beta" started on the same NATS with the same prefix (and a pristine data dir, so it would
/// bootstrap) exits non-zero within 15 s and says that another cluster answers on the prefix;
/// alpha keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_cluster_on_same_prefix_refuses_to_start() -> Result<()> {
    let prefix = "shared-prefix";
    let opts = ClusterOptions::default()
        .cluster_name("alpha")
        .prefix(prefix);
    let alpha = Cluster::start_with(1, opts).await?;
    let r = second_cluster(&alpha, prefix).await;
    if r.is_err() {
        alpha.mark_failed();
    }
    r
}

async fn second_cluster(alpha: &Cluster, prefix: &str) -> Result<()> {
    alpha.wait_for_leader(LEADER_TIMEOUT).await?;
    let alpha_id = wait_cluster_id(alpha, &[1]).await?;
    let status = alpha.request("admin.status", json!({})).await?;
    ensure!(
        status["cluster_name"] == json!("alpha"),
        "{prefix}.admin.status is not answered by alpha: {status}"
    );

    let tmp = tempdir()?;
    let data = tmp.path().join("beta-data");
    let data = data.to_str().context("not UTF-8")?;
    let env = [
        ("CONCORD_NODE__ID", "1"),
        ("CONCORD_CLUSTER__INITIAL_MEMBERS", "1"),
        ("CONCORD_CLUSTER__NAME", "beta"),
        ("CONCORD_NATS__SUBJECT_PREFIX", prefix),
        ("CONCORD_NATS__URL", alpha.nats_url()),
        ("CONCORD_DATA_DIR", data),
    ];
    let run = run_concord(tmp.path(), &["serve"], &env, Duration::from_secs(15))
        .await
        .context("the beta node on alpha's prefix")?;
    let stderr = strip_ansi(&run.stderr);
    eprintln!(
        "beta node: {} after {:?}; stderr:\n{stderr}",
        run.status, run.elapsed
    );
    ensure!(
        !run.status.success(),
        "the beta node exited 0 on a prefix served by alpha; stderr:\n{stderr}"
    );
    ensure!(
        stderr.contains("another cluster") && stderr.contains("alpha") && stderr.contains(prefix),
        "the beta node's stderr does not say that another cluster (alpha) answers on \
         prefix {prefix:?}:\n{stderr}"
    );

    // Alpha is untouched.
    let status = alpha.request("admin.status", json!({})).await?;
    ensure!(
        status["cluster_name"] == json!("alpha") && status["cluster_id"] == json!(alpha_id),
        "{prefix}.admin.status after beta's attempt: {status}"
    );
    put(alpha, "bc:alpha", json!("still alpha")).await?;
    Ok(())
}

// ----- deadlines -------------------------------------------------------------------------

/// Proves the deadline rule during an election: with the leader and one follower of 3 nodes
/// SIGKILLed, a `P.kv.put` with `"timeout_ms": 1000` is answered within 1000 ms + 300 ms
/// (client timeout 3 s) with `cluster_not_ready` or `timeout`, and a linearizable `P.kv.get`
/// with `"timeout_ms": 800` within 800 ms + 300 ms likewise; both right after the loss (the
/// survivor may still believe in the dead leader) and once the survivor campaigns. Once the
/// nodes are back the cluster acknowledges a write, and the puts refused with
/// `cluster_not_ready` were not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_during_election_gets_cluster_not_ready_in_time() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let r = during_election(&cluster).await;
    cluster.fail_on_err(r)
}

async fn during_election(cluster: &Cluster) -> Result<()> {
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let before = put(cluster, "bc:elect:before", json!("x")).await?;
    let others: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    let (victim, survivor) = (others[0], others[1]);
    cluster
        .wait_until(WAIT, "the survivor to apply the first write", || async {
            let s = cluster.status(survivor).await?;
            Ok(s["revision"].as_u64() >= Some(before))
        })
        .await?;
    cluster.kill(leader).await?;
    cluster.kill(victim).await?;
    eprintln!("killed leader {leader} and node {victim}; node {survivor} is alone");

    let mut failures = Vec::new();
    let put_body = json!({"key": "bc:elect:during", "value": 1, "timeout_ms": 1000});
    let put_code = match answered_in_time(cluster, "kv.put", put_body, 1000).await {
        Ok(code) => Some(code),
        Err(e) => {
            failures.push(format!("put during the election: {e:#}"));
            None
        }
    };
    let get_body = json!({"key": "bc:elect:before", "timeout_ms": 800});
    if let Err(e) = answered_in_time(cluster, "kv.get", get_body, 800).await {
        failures.push(format!("get during the election: {e:#}"));
    }
    if let Ok(s) = cluster.status(survivor).await {
        eprintln!(
            "survivor {survivor}: role {} leader {} term {}",
            s["role"], s["leader"], s["term"]
        );
    }

    // Once the survivor has noticed the loss and campaigns: the election proper.
    let mut refused = Vec::new();
    if put_code.as_deref() == Some("cluster_not_ready") {
        refused.push("bc:elect:during");
    }
    let noticed = cluster
        .wait_until(
            WAIT,
            "the survivor to campaign (candidate, or no leader)",
            || async {
                let s = cluster.status(survivor).await?;
                Ok(s["leader"].is_null() || s["role"] == json!("candidate"))
            },
        )
        .await;
    match noticed {
        Err(e) => failures.push(format!("the survivor never noticed the loss: {e:#}")),
        Ok(()) => {
            let body = json!({"key": "bc:elect:campaign", "value": 2, "timeout_ms": 1000});
            match answered_in_time(cluster, "kv.put", body, 1000).await {
                Ok(code) if code == "cluster_not_ready" => refused.push("bc:elect:campaign"),
                Ok(_) => {}
                Err(e) => failures.push(format!("put while the survivor campaigns: {e:#}")),
            }
            let body = json!({"key": "bc:elect:before", "timeout_ms": 800});
            if let Err(e) = answered_in_time(cluster, "kv.get", body, 800).await {
                failures.push(format!("get while the survivor campaigns: {e:#}"));
            }
        }
    }

    let recovered = async {
        cluster.restart(leader).await?;
        cluster.restart(victim).await?;
        cluster.wait_for_leader(LEADER_TIMEOUT).await?;
        let after = put(cluster, "bc:elect:after", json!("y")).await?;
        ensure!(
            after > before,
            "revision {after} after recovery is not above {before}"
        );
        for key in &refused {
            let reply = cluster.request("kv.get", json!({"key": key})).await?;
            ensure!(
                error_code(&reply) == Some("not_found"),
                "put {key}, refused with cluster_not_ready, was applied: get answers {reply}"
            );
        }
        Ok(())
    }
    .await;
    if let Err(e) = recovered {
        failures.push(format!("recovery: {e:#}"));
    }
    ensure!(
        failures.is_empty(),
        "{} check(s) failed:\n- {}",
        failures.len(),
        failures.join("\n- ")
    );
    Ok(())
}

/// Sends `body` (which carries `timeout_ms` = `deadline_ms`) to `P.<suffix>` with a 3 s
/// client timeout; checks that the reply is `cluster_not_ready` or `timeout` and came within
/// the deadline plus 300 ms. Returns the code.
async fn answered_in_time(
    cluster: &Cluster,
    suffix: &str,
    body: Value,
    deadline_ms: u64,
) -> Result<String> {
    let subject = cluster.subject(suffix);
    let started = Instant::now();
    let reply = cluster
        .request_raw(&subject, None, to_bytes(&body), Duration::from_secs(3))
        .await
        .with_context(|| format!("{subject} {body}: no reply within the client's 3 s"))?;
    let elapsed = started.elapsed();
    eprintln!("{subject} {body} -> {reply} after {elapsed:?}");
    let code = error_code(&reply).unwrap_or_default().to_string();
    ensure!(
        reply["ok"] == json!(false) && (code == "cluster_not_ready" || code == "timeout"),
        "{subject} {body}: expected cluster_not_ready or timeout, got {reply}"
    );
    ensure!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{subject}: error without a message: {reply}"
    );
    let allowed = Duration::from_millis(deadline_ms + 300);
    ensure!(
        elapsed <= allowed,
        "{subject} {body}: reply after {elapsed:?}, over {deadline_ms} ms + 300 ms"
    );
    Ok(code)
}

// ----- durability ------------------------------------------------------------------------

/// Proves that the Raft log is fsynced before a write is acknowledged: a single-node cluster
/// runs under `strace -f`; for each of 20 sequential puts with a unique marker value, the
/// trace must show, in order, the request arriving (a read holding the marker), the marker
/// written to a file in the data dir (the journal), an fdatasync/fsync of that same file
/// that starts after the write and completes before the reply carrying the put's
/// `"revision":N` is written to the NATS socket. The same run with
/// `CONCORD_STORAGE__FSYNC=false` must show no fdatasync/fsync at all between the first
/// request and the last reply (so the check can fail). Skipped only when strace is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_is_fsynced_before_each_acknowledgement() -> Result<()> {
    let Some(strace) = find_on_path("strace") else {
        eprintln!("SKIPPED log_is_fsynced_before_each_acknowledgement: strace is not installed");
        return Ok(());
    };
    const PUTS: usize = 20;

    let synced = traced_puts(&strace, true, PUTS).await?;
    let mut problems = Vec::new();
    for (i, obs) in synced.puts.iter().enumerate() {
        eprintln!(
            "fsync=true put {i:02} rev {}: journal writes at line {}, {} sync(s) of the journal \
             between it and the reply at line {}; {} sync(s) since the previous reply",
            obs.revision, obs.journal_line, obs.journal_syncs, obs.reply_line, obs.syncs_since_prev
        );
        if obs.journal_syncs == 0 {
            problems.push(format!(
                "put {i} (revision {}): no fdatasync/fsync of the journal between writing its \
                 value (trace line {}) and sending its reply (trace line {})",
                obs.revision, obs.journal_line, obs.reply_line
            ));
        }
        if obs.syncs_since_prev == 0 {
            problems.push(format!(
                "put {i} (revision {}): no fdatasync/fsync since the previous reply",
                obs.revision
            ));
        }
    }
    ensure!(
        problems.is_empty(),
        "with storage.fsync=true (trace kept in {}):\n- {}",
        synced.trace_path.display(),
        problems.join("\n- ")
    );

    let unsynced = traced_puts(&strace, false, PUTS).await?;
    for (i, obs) in unsynced.puts.iter().enumerate() {
        eprintln!(
            "fsync=false put {i:02} rev {}: {} journal sync(s) before the reply",
            obs.revision, obs.journal_syncs
        );
    }
    ensure!(
        unsynced.syncs_in_window == 0 && unsynced.puts.iter().all(|o| o.journal_syncs == 0),
        "with storage.fsync=false the trace shows {} fdatasync/fsync call(s) between the first \
         request and the last reply: the check cannot tell a synced log from an unsynced one",
        unsynced.syncs_in_window
    );
    Ok(())
}

/// Proves the durability audit catches a node that skips fsync while configured to sync:
/// with the `skip-fsync` failpoint the same trace must show no journal sync before the
/// replies, so the audit above would fail. (A `kill -9` nemesis keeps the page cache and
/// cannot see a missing fsync; this audit is the suite's check for it.)
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_fsync_failpoint_is_caught_by_the_durability_audit() -> Result<()> {
    let Some(strace) = find_on_path("strace") else {
        eprintln!("SKIPPED skip_fsync_failpoint_is_caught_by_the_durability_audit: no strace");
        return Ok(());
    };
    let run = traced_puts_with(&strace, true, 10, Some("skip-fsync")).await?;
    let unsynced = run.puts.iter().filter(|o| o.journal_syncs == 0).count();
    ensure!(
        unsynced == run.puts.len() && run.syncs_in_window == 0,
        "the audit did not notice the skipped fsync: {unsynced} of {} puts unsynced, {} syncs",
        run.puts.len(),
        run.syncs_in_window
    );
    Ok(())
}

/// What the trace shows for one put.
struct PutObs {
    revision: u64,
    /// Trace line where the marker was written to the journal (completion).
    journal_line: usize,
    /// Trace line where the reply write starts.
    reply_line: usize,
    /// fdatasync/fsync of the journal's file that started after the journal write and
    /// completed before the reply write started.
    journal_syncs: usize,
    /// fdatasync/fsync (any file) completed between the previous reply and this one.
    syncs_since_prev: usize,
}

struct TracedRun {
    puts: Vec<PutObs>,
    /// fdatasync/fsync (any file) completed between the first request and the last reply.
    syncs_in_window: usize,
    trace_path: PathBuf,
}

async fn traced_puts(strace: &Path, fsync: bool, puts: usize) -> Result<TracedRun> {
    traced_puts_with(strace, fsync, puts, None).await
}

/// `failpoints`: a `CONCORD_FAILPOINTS` value for the node (build with the feature).
async fn traced_puts_with(
    strace: &Path,
    fsync: bool,
    puts: usize,
    failpoints: Option<&str>,
) -> Result<TracedRun> {
    let prefix = if fsync { "dur-sync" } else { "dur-nosync" };
    let opts = ClusterOptions::default().prefix(prefix).start_nodes(false);
    let cluster = Cluster::start_with(1, opts).await?;
    let r = traced_puts_on(&cluster, strace, fsync, puts, failpoints).await;
    if r.is_err() {
        cluster.mark_failed();
        if std::env::var_os("CONCORD_TEST_KEEP_DIR").is_none() {
            eprintln!("(set CONCORD_TEST_KEEP_DIR=1 to keep the strace output)");
        }
    }
    r
}

async fn traced_puts_on(
    cluster: &Cluster,
    strace: &Path,
    fsync: bool,
    puts: usize,
    failpoints: Option<&str>,
) -> Result<TracedRun> {
    let data_dir = cluster.data_dir(1);
    let node_dir = data_dir.parent().context("data dir has a parent")?;
    let trace_path = node_dir.join("strace.txt");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(cluster.log_path(1))?;
    let mut cmd = Command::new(strace);
    cmd.args([
        "-f",
        "-tt",
        "-yy",
        "-s",
        "65536",
        "-e",
        "trace=fdatasync,fsync,write,pwrite64,writev,pwritev,sendto,sendmsg,\
         read,readv,recvfrom,recvmsg",
        "-o",
    ])
    .arg(&trace_path)
    .arg(concord_binary())
    .arg("serve")
    .stdin(Stdio::null())
    .stdout(Stdio::from(log.try_clone()?))
    .stderr(Stdio::from(log));
    remove_concord_env(&mut cmd);
    cmd.envs([
        ("CONCORD_NODE__ID", "1".to_string()),
        ("CONCORD_CLUSTER__INITIAL_MEMBERS", "1".to_string()),
        ("CONCORD_NATS__URL", cluster.nats_url().to_string()),
        ("CONCORD_DATA_DIR", data_dir.display().to_string()),
        ("CONCORD_CLUSTER__NAME", cluster.cluster_name().to_string()),
        ("CONCORD_NATS__SUBJECT_PREFIX", cluster.prefix().to_string()),
        ("CONCORD_STORAGE__FSYNC", fsync.to_string()),
        ("RUST_LOG", "info".to_string()),
    ]);
    if let Some(fp) = failpoints {
        cmd.env("CONCORD_FAILPOINTS", fp);
    }
    let mut traced = Traced {
        strace: cmd.spawn().context("spawning strace")?,
    };

    // Up: leader with a cluster id (strace slows the node down).
    cluster
        .wait_until(
            Duration::from_secs(60),
            "the traced node to lead with a cluster id",
            || {
                let exited = traced.strace.try_wait();
                async move {
                    if let Ok(Some(status)) = exited {
                        bail!("strace exited with {status}");
                    }
                    let s = cluster.status(1).await?;
                    Ok(s["role"] == json!("leader") && s["cluster_id"].is_string())
                }
            },
        )
        .await?;

    // The puts. Nothing else may be asked of the node until they are done: a status reply
    // also carries "revision".
    let tag = format!("{}-{}", if fsync { "s" } else { "n" }, std::process::id());
    let subject = cluster.subject("kv.put");
    let mut sent = Vec::new();
    for i in 0..puts {
        let marker = format!("durability-marker-{tag}-{i:02}");
        let body = json!({"key": format!("dur:{i:02}"), "value": marker});
        let reply = cluster
            .request_raw(&subject, None, to_bytes(&body), Duration::from_secs(10))
            .await?;
        ensure!(reply["ok"] == json!(true), "put {i}: {reply}");
        let revision = reply["revision"]
            .as_u64()
            .ok_or_else(|| anyhow!("put {i}: reply without revision: {reply}"))?;
        sent.push((marker, revision));
    }
    traced.stop().await?;

    let text = std::fs::read_to_string(&trace_path)
        .with_context(|| format!("reading {}", trace_path.display()))?;
    let calls = parse_strace(&text);
    let data_dir_text = data_dir.display().to_string();
    let result = analyze(&calls, &sent, &data_dir_text).with_context(|| {
        format!(
            "analyzing {} ({} lines, {} calls)",
            trace_path.display(),
            text.lines().count(),
            calls.len()
        )
    });
    if std::env::var_os("CONCORD_TEST_KEEP_DIR").is_some() {
        eprintln!("strace output: {}", trace_path.display());
    }
    let (puts, syncs_in_window) = result?;
    Ok(TracedRun {
        puts,
        syncs_in_window,
        trace_path,
    })
}

/// `strace` and the node it runs. Drop kills both (the node first: a killed strace would
/// detach and leave it running).
struct Traced {
    strace: Child,
}

impl Traced {
    /// The traced process: the child of strace.
    fn tracee(&self) -> Option<u32> {
        let pid = self.strace.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// SIGKILLs the node and waits for strace to finish its output and exit.
    async fn stop(&mut self) -> Result<()> {
        let tracee = self
            .tracee()
            .ok_or_else(|| anyhow!("strace has no child process"))?;
        let status = Command::new("kill")
            .args(["-KILL", &tracee.to_string()])
            .status()?;
        ensure!(status.success(), "kill -KILL {tracee} failed");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.strace.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("strace did not exit within 15 s of its tracee being killed");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Ok(None) = self.strace.try_wait() {
            if let Some(tracee) = self.tracee() {
                let _ = Command::new("kill")
                    .args(["-KILL", &tracee.to_string()])
                    .status();
            }
            let _ = self.strace.kill();
            let _ = self.strace.wait();
        }
    }
}

/// One system call in an `strace -f` trace.
#[derive(Debug)]
struct Call {
    name: String,
    /// The first argument as strace shows it with `-yy` (`12</path>`, `7<TCP:[...]>`).
    fd: String,
    /// Entry and (if any) resumed text, arguments included.
    text: String,
    /// Line where the call starts.
    start: usize,
    /// Line where the call returns (`None`: it never returned in the trace).
    end: Option<usize>,
    result: Option<i64>,
}

fn parse_strace(text: &str) -> Vec<Call> {
    let mut calls: Vec<Call> = Vec::new();
    let mut pending: HashMap<&str, usize> = HashMap::new();
    for (line_no, line) in text.lines().enumerate() {
        // "<tid>  <HH:MM:SS.micros> <event>"
        let Some((tid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some((_time, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some(i) = pending.remove(tid) else {
                continue;
            };
            let call = &mut calls[i];
            if resumed.starts_with(&format!("{} resumed>", call.name)) {
                call.text.push_str(resumed);
                call.end = Some(line_no);
                call.result = parse_result(resumed);
            }
            continue;
        }
        let Some(open) = rest.find('(') else {
            continue; // "+++ exited", "--- SIGCHLD", ...
        };
        let name = rest[..open].to_string();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let args = &rest[open + 1..];
        let fd = first_arg(args).to_string();
        let unfinished = rest.ends_with("<unfinished ...>");
        let idx = calls.len();
        calls.push(Call {
            name,
            fd,
            text: rest.to_string(),
            start: line_no,
            end: (!unfinished).then_some(line_no),
            result: if unfinished { None } else { parse_result(rest) },
        });
        if unfinished {
            pending.insert(tid, idx);
        }
    }
    calls
}

/// The first argument: up to the first ',' or ')' outside `<...>`.
fn first_arg(args: &str) -> &str {
    let mut depth = 0usize;
    for (i, c) in args.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth = depth.saturating_sub(1),
            ',' | ')' | ' ' if depth == 0 => return &args[..i],
            _ => {}
        }
    }
    args
}

/// The return value at the end of a line: `... = 0`, `... = -1 EAGAIN (...)`.
fn parse_result(line: &str) -> Option<i64> {
    let at = line.rfind(") = ")?;
    line[at + 4..].split_whitespace().next()?.parse().ok()
}

fn is_socket(fd: &str) -> bool {
    fd.contains("<TCP") || fd.contains("<UDP") || fd.contains("<UNIX") || fd.contains("socket:")
}

const READS: &[&str] = &["read", "readv", "recvfrom", "recvmsg"];
const WRITES: &[&str] = &[
    "write", "pwrite64", "writev", "pwritev", "sendto", "sendmsg",
];
const SYNCS: &[&str] = &["fdatasync", "fsync"];

/// For each put (marker, revision): request read → marker written to a file under
/// `data_dir` → reply with `"revision":N` written to a socket, and the syncs in between.
/// Also returns the number of completed syncs between the first request and the last reply.
fn analyze(calls: &[Call], sent: &[(String, u64)], data_dir: &str) -> Result<(Vec<PutObs>, usize)> {
    let completed_sync = |c: &Call| SYNCS.contains(&c.name.as_str()) && c.result == Some(0);
    let mut out = Vec::new();
    let mut cursor = 0usize; // calls before this index belong to earlier puts
    let mut prev_reply: Option<usize> = None;
    let mut first_request: Option<usize> = None;
    for (i, (marker, revision)) in sent.iter().enumerate() {
        let request = calls[cursor..]
            .iter()
            .find(|c| {
                READS.contains(&c.name.as_str())
                    && c.end.is_some()
                    && is_socket(&c.fd)
                    && c.text.contains(marker.as_str())
            })
            .ok_or_else(|| anyhow!("put {i}: no socket read holding {marker:?} in the trace"))?;
        let request_end = request.end.expect("filtered on end");
        first_request.get_or_insert(request_end);

        let journal = calls
            .iter()
            .find(|c| {
                WRITES.contains(&c.name.as_str())
                    && c.start > request_end
                    && !is_socket(&c.fd)
                    && c.fd.contains(data_dir)
                    && c.text.contains(marker.as_str())
            })
            .ok_or_else(|| {
                anyhow!(
                    "put {i}: no write of {marker:?} to a file under {data_dir} after the \
                     request (trace line {request_end})"
                )
            })?;
        let journal_end = journal
            .end
            .ok_or_else(|| anyhow!("put {i}: the journal write never returned"))?;

        let needle = format!("\"revision\":{revision}");
        let reply_idx = calls
            .iter()
            .position(|c| {
                WRITES.contains(&c.name.as_str())
                    && c.start > journal_end
                    && is_socket(&c.fd)
                    && holds_revision(&c.text.replace("\\\"", "\""), &needle)
            })
            .ok_or_else(|| {
                anyhow!(
                    "put {i}: no socket write holding {needle} after the journal write \
                     (trace line {journal_end})"
                )
            })?;
        let reply_line = calls[reply_idx].start;

        let journal_syncs = calls
            .iter()
            .filter(|c| {
                completed_sync(c)
                    && c.fd == journal.fd
                    && c.start > journal_end
                    && c.end.is_some_and(|e| e < reply_line)
            })
            .count();
        let since = prev_reply.unwrap_or(request_end);
        let syncs_since_prev = calls
            .iter()
            .filter(|c| completed_sync(c) && c.end.is_some_and(|e| e > since && e < reply_line))
            .count();
        out.push(PutObs {
            revision: *revision,
            journal_line: journal_end + 1,
            reply_line: reply_line + 1,
            journal_syncs,
            syncs_since_prev,
        });
        prev_reply = Some(reply_line);
        cursor = reply_idx;
    }
    let (first, last) = (first_request.unwrap_or(0), prev_reply.unwrap_or(0));
    let in_window = calls
        .iter()
        .filter(|c| completed_sync(c) && c.end.is_some_and(|e| e > first && e < last))
        .count();
    Ok((out, in_window))
}

/// `text` holds `needle` (`"revision":N`) not followed by another digit.
fn holds_revision(text: &str, needle: &str) -> bool {
    text.match_indices(needle).any(|(at, _)| {
        !text[at + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

// ----- helpers ---------------------------------------------------------------------------

/// The node binary: `CONCORD_TEST_BIN` (as the fixture) or the one cargo built.
fn concord_binary() -> PathBuf {
    std::env::var_os("CONCORD_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_concord")))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn tempdir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("concord-bc-")
        .tempdir()
        .context("creating a temp dir")
}

/// Nothing from the developer's shell may leak into a node's config.
fn remove_concord_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CONCORD_") {
            cmd.env_remove(&key);
        }
    }
}

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs `concord <args>` in `dir` with only `env` of the `CONCORD_*` variables (and
/// `RUST_LOG=info`); fails if it has not exited within `limit`.
async fn run_concord(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> Result<Run> {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let out_path = dir.join(format!(".run-{n}.stdout"));
    let err_path = dir.join(format!(".run-{n}.stderr"));
    let mut cmd = Command::new(concord_binary());
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?);
    remove_concord_env(&mut cmd);
    cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
    cmd.envs(env.iter().copied());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning concord {args:?}"))?;
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "concord {args:?} (env {env:?}) did not exit within {limit:?}; stderr:\n{}",
                read(&err_path)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(Run {
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
        elapsed: started.elapsed(),
    })
}

/// `concord serve --check-config --json <flags>` must exit 0 within 10 s and print JSON:
/// `{"key": {"value": ..., "source": ...}}`.
async fn check_config(dir: &Path, flags: &[&str], env: &[(&str, &str)]) -> Result<Value> {
    let mut args = vec!["serve", "--check-config", "--json"];
    args.extend_from_slice(flags);
    let run = run_concord(dir, &args, env, CONFIG_EXIT_LIMIT).await?;
    ensure!(
        run.status.success(),
        "concord {args:?} (env {env:?}) exited {}; stderr:\n{}",
        run.status,
        run.stderr
    );
    serde_json::from_str(&run.stdout).with_context(|| {
        format!(
            "concord {args:?}: stdout is not JSON:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        )
    })
}

/// `pointer` names the setting as a JSON pointer into the config (`/nats/url`).
fn expect_setting(config: &Value, pointer: &str, want: Value, what: &str) -> Result<()> {
    let key = pointer.trim_start_matches('/').replace('/', ".");
    let got = config[&key]["value"].clone();
    ensure!(
        got == want,
        "{what}: {key} is {got}, expected {want}; effective config:\n{config:#}"
    );
    Ok(())
}

/// Removes ANSI escape sequences (log lines may be coloured).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn put(cluster: &Cluster, key: &str, value: Value) -> Result<u64> {
    let reply = cluster
        .request("kv.put", json!({"key": key, "value": value}))
        .await?;
    ensure!(reply["ok"] == json!(true), "put {key}: {reply}");
    reply["revision"]
        .as_u64()
        .ok_or_else(|| anyhow!("put {key}: reply without revision: {reply}"))
}

/// Waits until every node of `ids` reports the same non-null cluster id; returns it.
async fn wait_cluster_id(cluster: &Cluster, ids: &[u64]) -> Result<String> {
    let found = std::cell::RefCell::new(None);
    let found_ref = &found;
    wait_until(
        WAIT,
        "every node to report the same cluster id",
        || async move {
            let mut seen = Vec::new();
            for &id in ids {
                let s = cluster.status(id).await?;
                seen.push(s["cluster_id"].as_str().map(str::to_string));
            }
            match seen.first() {
                Some(Some(first)) if seen.iter().all(|s| s.as_deref() == Some(first)) => {
                    *found_ref.borrow_mut() = Some(first.clone());
                    Ok(true)
                }
                _ => bail!("cluster ids: {seen:?}"),
            }
        },
    )
    .await
    .inspect_err(|_| cluster.mark_failed())?;
    found
        .into_inner()
        .ok_or_else(|| anyhow!("no cluster id found"))
}
