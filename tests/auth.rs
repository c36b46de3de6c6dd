//! Tokens and roles on a real cluster (`auth.enabled`): every subject refuses a missing,
//! unknown, malformed, expired or revoked token with `unauthorized`; roles limit what a
//! token may do; a token made through one node works through every node; a revocation is
//! refused at once everywhere and survives a whole-cluster restart and a snapshot install;
//! no token is ever written in plain text to a data dir or a log.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use common::{error_code, to_bytes, Cluster, ClusterOptions};
use serde_json::{json, Value};

const ADMIN: &str = "bootstrap-admin-credential-0123456789";
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(90);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn auth_options() -> ClusterOptions {
    ClusterOptions::default()
        .env("CONCORD_AUTH__ENABLED", "true")
        .env("CONCORD_AUTH__ADMIN_TOKEN", ADMIN)
        .admin_token(ADMIN)
}

/// How a request presents its credential.
#[derive(Clone, Copy, Debug)]
enum Cred<'a> {
    None,
    Header(&'a str),
    Body(&'a str),
    RawHeader(&'a str),
}

/// A request on `<prefix>.<suffix>`; the reply as JSON, whatever its `ok`.
async fn call(cluster: &Cluster, suffix: &str, body: Value, cred: Cred<'_>) -> Result<Value> {
    let mut body = body;
    let mut headers = async_nats::HeaderMap::new();
    match cred {
        Cred::None => {}
        Cred::Header(t) => headers.insert("Authorization", format!("Bearer {t}").as_str()),
        Cred::RawHeader(v) => headers.insert("Authorization", v),
        Cred::Body(t) => {
            body["token"] = json!(t);
        }
    }
    cluster
        .request_raw(
            &cluster.subject(suffix),
            Some(headers),
            to_bytes(&body),
            REQUEST_TIMEOUT,
        )
        .await
}

/// Like [`call`], but the reply must be `ok`.
async fn ok(cluster: &Cluster, suffix: &str, body: Value, cred: Cred<'_>) -> Result<Value> {
    let reply = call(cluster, suffix, body.clone(), cred).await?;
    ensure!(
        reply["ok"] == json!(true),
        "{suffix} {body} with {cred:?}: expected ok, got {reply}"
    );
    Ok(reply)
}

async fn expect_unauthorized(
    cluster: &Cluster,
    suffix: &str,
    body: Value,
    cred: Cred<'_>,
) -> Result<()> {
    let reply = call(cluster, suffix, body.clone(), cred).await?;
    ensure!(
        error_code(&reply) == Some("unauthorized"),
        "{suffix} {body} with {cred:?}: expected unauthorized, got {reply}"
    );
    Ok(())
}

/// Creates a token through `via` (a subject suffix such as `admin` or `node.2.admin`).
async fn create_token(cluster: &Cluster, via: &str, body: Value) -> Result<(String, String)> {
    let reply = ok(
        cluster,
        &format!("{via}.token.create"),
        body,
        Cred::Header(ADMIN),
    )
    .await?;
    let token = reply["token"]
        .as_str()
        .ok_or_else(|| anyhow!("create reply without token: {reply}"))?
        .to_string();
    let id = reply["id"]
        .as_str()
        .ok_or_else(|| anyhow!("create reply without id: {reply}"))?
        .to_string();
    Ok((token, id))
}

// ----- the tests -------------------------------------------------------------------------

/// Every `kv.*` and `admin.*` subject, on the cluster subjects and on a node's own subjects,
/// answers `unauthorized` to a missing, unknown, malformed, expired and revoked token; a
/// `read` token cannot write or administer, a `readwrite` token cannot manage tokens, an
/// admin token and the bootstrap credential can do everything; the CLI manages tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_everywhere_and_roles_hold() -> Result<()> {
    let cluster = Cluster::start_format_2(3, auth_options()).await?;
    let r = refusals_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn refusals_body(cluster: &Cluster) -> Result<()> {
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let follower = if leader == 1 { 2 } else { 1 };

    let (read, _) = create_token(cluster, "admin", json!({"role": "read", "name": "r"})).await?;
    let (rw, _) = create_token(cluster, "admin", json!({"role": "readwrite"})).await?;
    let (admin, _) = create_token(cluster, "admin", json!({"role": "admin"})).await?;
    let (short, _) = create_token(
        cluster,
        "admin",
        json!({"role": "admin", "expires_in": "2s"}),
    )
    .await?;
    let expires_at = Instant::now() + Duration::from_secs(2);
    let (revoked, revoked_id) = create_token(cluster, "admin", json!({"role": "admin"})).await?;
    let r = ok(
        cluster,
        "admin.token.revoke",
        json!({ "id": revoked_id }),
        Cred::Header(ADMIN),
    )
    .await?;
    ensure!(r["revoked"] == json!(true), "revoke reply: {r}");
    ok(
        cluster,
        "kv.put",
        json!({"key": "k", "value": 1}),
        Cred::Body(&rw),
    )
    .await?;

    // The expiring token works before it expires...
    ok(cluster, "kv.get", json!({"key": "k"}), Cred::Header(&short)).await?;
    let wait = expires_at.saturating_duration_since(Instant::now()) + Duration::from_millis(200);
    tokio::time::sleep(wait).await;

    let bodies: Vec<(&str, Value)> = vec![
        ("kv.put", json!({"key": "k", "value": 2})),
        ("kv.get", json!({"key": "k"})),
        ("kv.get", json!({"key": "k", "consistency": "stale"})),
        ("kv.delete", json!({"key": "k"})),
        ("kv.scan", json!({})),
        ("kv.incr", json!({"key": "n"})),
        ("kv.txn", json!({"success": [{"get": {"key": "k"}}]})),
        ("kv.touch", json!({"key": "k"})),
        ("lease.grant", json!({"ttl_ms": 1000})),
        ("lease.get", json!({"id": 1})),
        ("lease.list", json!({})),
        (
            "lock.acquire",
            json!({"name": "l", "ttl_ms": 1000, "wait_ms": 0}),
        ),
        ("admin.status", json!({})),
        ("admin.members", json!({})),
        ("admin.token.create", json!({"role": "read"})),
        ("admin.token.revoke", json!({"id": "0000000000000000"})),
        ("admin.token.list", json!({})),
    ];
    let bad: Vec<Cred> = vec![
        Cred::None,
        Cred::Header("cnc_not-a-token-anyone-made"),
        Cred::Body("cnc_not-a-token-anyone-made"),
        Cred::RawHeader("Basic dXNlcjpwYXNz"),
        Cred::Header("two words"),
        Cred::Body(""),
        Cred::Header(&short),
        Cred::Header(&revoked),
    ];
    let mut checked = 0;
    for (op, body) in &bodies {
        for via in [
            "".to_string(),
            format!("node.{follower}."),
            format!("node.{leader}."),
        ] {
            for cred in &bad {
                expect_unauthorized(cluster, &format!("{via}{op}"), body.clone(), *cred).await?;
                checked += 1;
            }
        }
    }
    eprintln!("{checked} refused requests");
    // Nothing was written by any of them.
    let v = ok(cluster, "kv.get", json!({"key": "k"}), Cred::Header(&read)).await?;
    ensure!(v["value"] == json!(1), "k changed: {v}");

    // Roles.
    let via_follower = |op: &str| format!("node.{follower}.{op}");
    for suffix in ["kv.put".to_string(), via_follower("kv.put")] {
        expect_unauthorized(
            cluster,
            &suffix,
            json!({"key": "k", "value": 3}),
            Cred::Header(&read),
        )
        .await?;
    }
    expect_unauthorized(
        cluster,
        "kv.delete",
        json!({"key": "k"}),
        Cred::Header(&read),
    )
    .await?;
    // Counters, prefix deletes and a txn that may write need readwrite; a txn whose
    // branches only read is a read.
    let writes = [
        ("kv.incr", json!({"key": "n"})),
        ("kv.delete", json!({"prefix": "k"})),
        (
            "kv.txn",
            json!({"failure": [{"put": {"key": "k", "value": 5}}]}),
        ),
        ("kv.touch", json!({"key": "k"})),
        ("lease.grant", json!({"ttl_ms": 1000})),
        ("lease.keepalive", json!({"id": 1})),
        ("lease.revoke", json!({"id": 1})),
        ("lock.acquire", json!({"name": "l", "ttl_ms": 1000})),
        ("lock.release", json!({"name": "l", "fence": 1})),
    ];
    for (op, body) in writes {
        expect_unauthorized(cluster, op, body, Cred::Header(&read)).await?;
    }
    // Lease reads need only read.
    let leases = ok(cluster, "lease.list", json!({}), Cred::Header(&read)).await?;
    ensure!(leases["leases"].is_array(), "lease.list: {leases}");
    let only_reads =
        json!({"success": [{"get": {"key": "k"}}], "failure": [{"get": {"key": "n"}}]});
    let r = ok(cluster, "kv.txn", only_reads, Cred::Header(&read)).await?;
    ensure!(
        r["results"][0]["get"]["value"] == json!(1),
        "read-only txn: {r}"
    );
    for op in ["admin.token.create", "admin.token.list"] {
        expect_unauthorized(cluster, op, json!({}), Cred::Header(&read)).await?;
        expect_unauthorized(cluster, op, json!({}), Cred::Header(&rw)).await?;
        expect_unauthorized(cluster, &via_follower(op), json!({}), Cred::Header(&rw)).await?;
    }
    expect_unauthorized(
        cluster,
        "admin.token.revoke",
        json!({"id": "0000000000000000"}),
        Cred::Header(&rw),
    )
    .await?;
    ok(cluster, "kv.get", json!({"key": "k"}), Cred::Header(&read)).await?;
    ok(cluster, "kv.scan", json!({}), Cred::Body(&read)).await?;
    ok(cluster, "admin.status", json!({}), Cred::Header(&read)).await?;
    ok(
        cluster,
        &via_follower("kv.put"),
        json!({"key": "k", "value": 4}),
        Cred::Header(&rw),
    )
    .await?;
    ok(cluster, "kv.delete", json!({"key": "k"}), Cred::Header(&rw)).await?;
    ok(
        cluster,
        &via_follower("admin.token.list"),
        json!({}),
        Cred::Header(&admin),
    )
    .await?;
    ok(cluster, "admin.members", json!({}), Cred::Body(&admin)).await?;

    // The listing shows metadata and never a token.
    let list = ok(cluster, "admin.token.list", json!({}), Cred::Header(ADMIN)).await?;
    let text = list.to_string();
    for t in [&read, &rw, &admin, &short] {
        ensure!(
            !text.contains(t.as_str()),
            "token list shows a token: {text}"
        );
    }
    let tokens = list["tokens"].as_array().cloned().unwrap_or_default();
    ensure!(tokens.len() == 4, "4 live tokens expected: {text}");
    ensure!(
        tokens
            .iter()
            .any(|t| t["name"] == json!("r") && t["role"] == json!("read")),
        "{text}"
    );
    ensure!(
        tokens
            .iter()
            .filter(|t| t["expired"] == json!(true))
            .count()
            == 1,
        "one expired token expected: {text}"
    );

    // Bad token requests are bad requests, not crashes.
    for (op, body, code) in [
        ("admin.token.create", json!({"role": "root"}), "bad_request"),
        (
            "admin.token.create",
            json!({"expires_in": "soon"}),
            "bad_request",
        ),
        (
            "admin.token.revoke",
            json!({"id": "ffffffffffffffff"}),
            "not_found",
        ),
    ] {
        let r = call(cluster, op, body.clone(), Cred::Header(ADMIN)).await?;
        ensure!(
            error_code(&r) == Some(code),
            "{op} {body}: expected {code}, got {r}"
        );
    }

    cli_manages_tokens(cluster).await
}

/// `concord token create|list|revoke` with the admin credential from `CONCORD_TOKEN`, and a
/// put with the token it made.
async fn cli_manages_tokens(cluster: &Cluster) -> Result<()> {
    let env = [
        ("CONCORD_NATS__URL", cluster.nats_url().to_string()),
        ("CONCORD_TOKEN", ADMIN.to_string()),
    ];
    let created = cli(
        &env,
        &[
            "--json",
            "token",
            "create",
            "--role",
            "readwrite",
            "--name",
            "ci",
            "--expires",
            "30d",
        ],
    )?;
    let created: Value = serde_json::from_str(&created.stdout)
        .with_context(|| format!("token create --json: {created:?}"))?;
    let token = created["token"].as_str().unwrap_or_default().to_string();
    let id = created["id"].as_str().unwrap_or_default().to_string();
    ensure!(token.starts_with("cnc_") && token.len() >= 47, "{created}");
    ensure!(
        created["role"] == json!("readwrite") && created["expires"].is_string(),
        "{created}"
    );

    let put = cli(&env, &["--token", &token, "put", "cli-key", "42"])?;
    ensure!(put.code == Some(0), "put with the new token: {put:?}");
    let refused = cli(
        &[("CONCORD_NATS__URL", cluster.nats_url().to_string())],
        &["--json", "put", "cli-key", "43"],
    )?;
    ensure!(refused.code == Some(1), "put without a token: {refused:?}");
    ensure!(refused.stdout.contains("unauthorized"), "{refused:?}");

    let list = cli(&env, &["token", "list"])?;
    ensure!(
        list.stdout.contains(&id) && list.stdout.contains("ci"),
        "{list:?}"
    );
    ensure!(
        !list.stdout.contains(&token),
        "token list printed a token: {list:?}"
    );

    let revoke = cli(&env, &["token", "revoke", &token])?;
    ensure!(
        revoke.code == Some(0) && revoke.stdout.contains(&id),
        "{revoke:?}"
    );
    let put = cli(&env[..1], &["--token", &token, "put", "cli-key", "44"])?;
    ensure!(
        put.code == Some(1) && put.stderr.contains("unauthorized"),
        "{put:?}"
    );
    Ok(())
}

/// A token created through node 1 works through node 3; revoked through node 2 it is
/// refused at once through nodes 1 and 3 (writes and linearizable reads), and by node 3's
/// stale reads once it has applied the revocation; all of it survives a whole-cluster
/// restart, and a node that catches up by snapshot install receives the token table. No
/// data dir or log holds a token or the admin credential in plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_cluster_wide_and_revocation_is_immediate_and_durable() -> Result<()> {
    let opts = auth_options()
        .env("CONCORD_RAFT__SNAPSHOT_EVERY", 100)
        .env("CONCORD_RAFT__MAX_IN_SNAPSHOT_LOG_TO_KEEP", 5);
    let cluster = Cluster::start_with(3, opts).await?;
    let r = cluster_wide_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn cluster_wide_body(cluster: &Cluster) -> Result<()> {
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    let (doomed, doomed_id) =
        create_token(cluster, "node.1.admin", json!({"role": "readwrite"})).await?;
    let (kept, _) = create_token(cluster, "node.1.admin", json!({"role": "readwrite"})).await?;
    ok(
        cluster,
        "node.3.kv.put",
        json!({"key": "a", "value": "x"}),
        Cred::Header(&doomed),
    )
    .await?;
    ok(
        cluster,
        "node.3.kv.get",
        json!({"key": "a"}),
        Cred::Body(&doomed),
    )
    .await?;

    let r = ok(
        cluster,
        "node.2.admin.token.revoke",
        json!({ "id": doomed_id }),
        Cred::Header(ADMIN),
    )
    .await?;
    ensure!(r["revoked"] == json!(true), "{r}");
    for node in [1, 3] {
        expect_unauthorized(
            cluster,
            &format!("node.{node}.kv.put"),
            json!({"key": "a", "value": "y"}),
            Cred::Header(&doomed),
        )
        .await?;
        expect_unauthorized(
            cluster,
            &format!("node.{node}.kv.get"),
            json!({"key": "a"}),
            Cred::Header(&doomed),
        )
        .await?;
    }
    // A stale read honours the revocation once the node has applied it.
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let commit = cluster.status(leader).await?["commit_index"]
        .as_u64()
        .unwrap_or(0);
    cluster.wait_applied(3, commit, CATCH_UP_TIMEOUT).await?;
    expect_unauthorized(
        cluster,
        "node.3.kv.get",
        json!({"key": "a", "consistency": "stale"}),
        Cred::Header(&doomed),
    )
    .await?;

    // Whole-cluster restart.
    for id in 1..=3 {
        cluster.stop(id).await?;
    }
    for id in 1..=3 {
        cluster.restart(id).await?;
    }
    cluster.wait_stable(LEADER_TIMEOUT).await?;
    for node in 1..=3 {
        expect_unauthorized(
            cluster,
            &format!("node.{node}.kv.put"),
            json!({"key": "a", "value": "z"}),
            Cred::Header(&doomed),
        )
        .await?;
        ok(
            cluster,
            &format!("node.{node}.kv.get"),
            json!({"key": "a"}),
            Cred::Header(&kept),
        )
        .await?;
    }

    // Snapshot install: node 3 misses a token's creation and the log behind it.
    let lagging = if leader == 3 { 2 } else { 3 };
    let had = cluster.status(lagging).await?["last_applied"]
        .as_u64()
        .unwrap_or(0);
    cluster.kill(lagging).await?;
    let (late, _) = create_token(cluster, "admin", json!({"role": "read"})).await?;
    let mut bearer = async_nats::HeaderMap::new();
    bearer.insert("Authorization", format!("Bearer {kept}").as_str());
    cluster.fill_until_purged(had, Some(bearer)).await?;
    cluster.restart(lagging).await?;
    let leader = cluster.wait_stable(LEADER_TIMEOUT).await?;
    let commit = cluster.status(leader).await?["commit_index"]
        .as_u64()
        .unwrap_or(0);
    cluster
        .wait_applied(lagging, commit, CATCH_UP_TIMEOUT)
        .await?;
    ensure!(
        cluster.log(lagging).contains("snapshot installed"),
        "node {lagging} caught up without a snapshot install"
    );
    // Its own table decides stale reads: the token arrived with the snapshot.
    ok(
        cluster,
        &format!("node.{lagging}.kv.get"),
        json!({"key": "a", "consistency": "stale"}),
        Cred::Header(&late),
    )
    .await?;
    expect_unauthorized(
        cluster,
        &format!("node.{lagging}.kv.get"),
        json!({"key": "a", "consistency": "stale"}),
        Cred::Header(&doomed),
    )
    .await?;

    // No secret in plain text on disk or in a log.
    for id in 1..=3 {
        cluster.stop(id).await?;
    }
    for id in 1..=3 {
        let mut files = Vec::new();
        collect_files(&cluster.data_dir(id), &mut files)?;
        files.push(cluster.log_path(id));
        ensure!(
            files.len() > 3,
            "node {id}: too few files to scan: {files:?}"
        );
        for f in &files {
            let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            for secret in [doomed.as_str(), kept.as_str(), late.as_str(), ADMIN] {
                ensure!(
                    !contains(&bytes, secret.as_bytes()),
                    "{} holds a token in plain text",
                    f.display()
                );
            }
        }
    }
    Ok(())
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            collect_files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// With auth off, a request works with or without a token, even a meaningless one, and the
/// token subjects need no credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_off_ignores_tokens() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let r = async {
        cluster.wait_stable(LEADER_TIMEOUT).await?;
        ok(
            &cluster,
            "kv.put",
            json!({"key": "k", "value": 1}),
            Cred::None,
        )
        .await?;
        ok(
            &cluster,
            "kv.put",
            json!({"key": "k", "value": 2}),
            Cred::Body("whatever"),
        )
        .await?;
        ok(
            &cluster,
            "kv.get",
            json!({"key": "k"}),
            Cred::RawHeader("Basic x"),
        )
        .await?;
        ok(
            &cluster,
            "admin.status",
            json!({}),
            Cred::Header("nonsense"),
        )
        .await?;
        let t = ok(&cluster, "admin.token.create", json!({}), Cred::None).await?;
        ensure!(t["role"] == json!("read"), "default role is read: {t}");
        Ok(())
    }
    .await;
    cluster.fail_on_err(r)
}

#[derive(Debug)]
struct CliRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the `concord` binary with only `env` (and PATH) set; bounded by its own timeout.
fn cli(env: &[(&str, String)], args: &[&str]) -> Result<CliRun> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["--timeout-ms", "10000"])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(std::env::temp_dir())
        .output()
        .context("running concord")?;
    Ok(CliRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
