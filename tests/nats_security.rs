//! Concord on a secured NATS, against real `nats-server` and `concord` processes. Each test
//! starts its own `nats-server` from a config file (127.0.0.1, ephemeral port) and proves:
//!
//! - user/password: three nodes form a cluster and serve put/get, the CLI works with the same
//!   env, and a node or CLI with a wrong password stops at once naming the authorization
//!   failure, without printing the password;
//! - TLS with client-certificate verification (certificates made here with rcgen): nodes and
//!   the CLI with CA + client certificate work; without the CA or without a client
//!   certificate they are refused with a TLS/certificate message;
//! - NKey: nodes with `nats.nkey_seed_file` serve put/get; another user's seed is refused;
//! - `serve --check-config` masks every NATS secret.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use common::{Cluster, ClusterOptions, SecuredOptions};
use concord::config::NatsConfig;
use serde_json::{json, Value};

const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// A refused connection must end the process within this (the node's own connect timeout is
/// 10 s, the CLI's 5 s; a refusal should come back at once).
const REFUSAL_LIMIT: Duration = Duration::from_secs(8);
/// A CLI command against a working cluster.
const CLI_LIMIT: Duration = Duration::from_secs(20);

// ----- user and password -----------------------------------------------------------------

const PASSWORD: &str = "pw-8f2c1e9a7b";
const WRONG_PASSWORD: &str = "pw-wrong-55d0c3";

/// Proves that nodes and the CLI authenticate with `nats.user`/`nats.password` from the env
/// (cluster formed, put/get through every node, CLI put/get), that neither password shows up
/// in any log, and that a node and a CLI with a wrong password exit non-zero within
/// `REFUSAL_LIMIT` with a message naming the authorization violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_password_cluster_serves_and_wrong_password_is_refused() -> Result<()> {
    let _lock = common::exclusive().await?;
    let tmp = tempdir()?;
    let nats = NatsServer::start(
        tmp.path(),
        &format!(
            r#"authorization {{ users = [ {{ user: "concord", password: "{PASSWORD}" }} ] }}"#
        ),
    )
    .await?;
    let auth = vec![
        env("CONCORD_NATS__USER", "concord"),
        env("CONCORD_NATS__PASSWORD", PASSWORD),
    ];
    let fixture = NatsConfig {
        user: Some("concord".into()),
        password: Some(PASSWORD.into()),
        ..NatsConfig::default()
    };
    let cluster = start_cluster(&nats, &auth, fixture).await?;
    serves_put_get(&cluster, "sec:userpass").await?;
    cli_put_get(&cluster, tmp.path(), &auth, "sec:userpass:cli").await?;

    let wrong = vec![
        env("CONCORD_NATS__USER", "concord"),
        env("CONCORD_NATS__PASSWORD", WRONG_PASSWORD),
    ];
    let (out, took) = serve_once(&cluster, tmp.path(), &wrong).await?;
    let stderr = text(&out.stderr);
    ensure!(
        !out.status.success(),
        "a node with a wrong password started: {stderr}"
    );
    ensure!(
        stderr.contains("authorization violation") && stderr.contains("nats.password"),
        "the node's error does not name the authorization failure: {stderr}"
    );
    ensure!(
        !stderr.contains(WRONG_PASSWORD),
        "the node printed the password: {stderr}"
    );
    eprintln!(
        "node with a wrong password exited after {took:?}: {}",
        last_line(&stderr)
    );

    let (out, _) = cli(
        &cluster,
        tmp.path(),
        &wrong,
        &["get", "sec:userpass"],
        REFUSAL_LIMIT,
    )
    .await?;
    let stderr = text(&out.stderr);
    ensure!(
        !out.status.success(),
        "the CLI got through with a wrong password"
    );
    ensure!(
        stderr.contains("authorization violation"),
        "CLI error: {stderr}"
    );
    ensure!(
        !stderr.contains(WRONG_PASSWORD),
        "the CLI printed the password: {stderr}"
    );

    for id in cluster.ids() {
        ensure!(
            !cluster.log(id).contains(PASSWORD),
            "node {id} logged the NATS password"
        );
    }
    Ok(())
}

// ----- TLS with client certificates ------------------------------------------------------

/// Proves that with a nats-server that requires TLS and verifies client certificates, nodes
/// with `nats.tls_ca_file` + `nats.tls_cert_file` + `nats.tls_key_file` form a cluster and
/// serve put/get, the CLI works with the same env, and a client without the CA, or without a
/// client certificate, is refused (non-zero exit, message about TLS/certificates) in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_serves_and_refuses_clients_without_them() -> Result<()> {
    let _lock = common::exclusive().await?;
    let tmp = tempdir()?;
    let pki = Pki::generate(tmp.path())?;
    let nats = NatsServer::start(
        tmp.path(),
        &format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 2\n}}",
            pki.server_cert, pki.server_key, pki.ca
        ),
    )
    .await?;
    let tls = vec![
        env("CONCORD_NATS__TLS_CA_FILE", &pki.ca),
        env("CONCORD_NATS__TLS_CERT_FILE", &pki.client_cert),
        env("CONCORD_NATS__TLS_KEY_FILE", &pki.client_key),
    ];
    let fixture = NatsConfig {
        tls_ca_file: Some(pki.ca.clone()),
        tls_cert_file: Some(pki.client_cert.clone()),
        tls_key_file: Some(pki.client_key.clone()),
        ..NatsConfig::default()
    };
    let cluster = start_cluster(&nats, &tls, fixture).await?;
    serves_put_get(&cluster, "sec:tls").await?;
    cli_put_get(&cluster, tmp.path(), &tls, "sec:tls:cli").await?;

    // The CA is missing: the server's certificate cannot be verified.
    let no_ca = vec![
        env("CONCORD_NATS__TLS_REQUIRED", "true"),
        env("CONCORD_NATS__TLS_CERT_FILE", &pki.client_cert),
        env("CONCORD_NATS__TLS_KEY_FILE", &pki.client_key),
    ];
    // The client certificate is missing: the server refuses the client.
    let no_cert = vec![env("CONCORD_NATS__TLS_CA_FILE", &pki.ca)];
    for (what, env) in [
        ("without the CA", &no_ca),
        ("without a client certificate", &no_cert),
    ] {
        let (out, took) = cli(
            &cluster,
            tmp.path(),
            env,
            &["get", "sec:tls"],
            REFUSAL_LIMIT,
        )
        .await?;
        let stderr = text(&out.stderr);
        eprintln!(
            "CLI {what}: exit {} after {took:?}: {}",
            out.status,
            stderr.trim()
        );
        ensure!(
            !out.status.success(),
            "the CLI {what} got through: {}",
            text(&out.stdout)
        );
        ensure!(
            stderr.contains("TLS") && stderr.to_lowercase().contains("certificate"),
            "the CLI {what} did not say TLS/certificate: {stderr}"
        );
    }
    let (out, took) = serve_once(&cluster, tmp.path(), &no_cert).await?;
    let stderr = text(&out.stderr);
    ensure!(
        !out.status.success(),
        "a node without a client certificate started: {stderr}"
    );
    ensure!(
        stderr.contains("TLS") && stderr.to_lowercase().contains("certificate"),
        "the node without a client certificate did not say TLS/certificate: {stderr}"
    );
    eprintln!(
        "node without a client certificate exited after {took:?}: {}",
        last_line(&stderr)
    );
    Ok(())
}

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, as PEM
/// files.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn generate(dir: &Path) -> Result<Pki> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "concord test CA");
        let ca = ca_params.self_signed(&ca_key)?;

        let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca, &ca_key)?;
            Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
        };
        let server = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            "nats-server",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let client = leaf(
            vec!["concord".into()],
            "concord",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let write = |name: &str, pem: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, pem).with_context(|| format!("writing {path:?}"))?;
            Ok(path)
        };
        Ok(Pki {
            ca: write("ca.pem", &ca.pem())?,
            server_cert: write("server-cert.pem", &server.0)?,
            server_key: write("server-key.pem", &server.1)?,
            client_cert: write("client-cert.pem", &client.0)?,
            client_key: write("client-key.pem", &client.1)?,
        })
    }
}

// ----- NKey ------------------------------------------------------------------------------

/// Proves NKey authentication: nodes reading their seed from `nats.nkey_seed_file` form a
/// cluster and serve put/get, the CLI works with the same env, the seed appears in no node
/// log, and a client with another user's seed is refused as an authorization violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_seed_file_cluster_serves_and_other_key_is_refused() -> Result<()> {
    let _lock = common::exclusive().await?;
    let tmp = tempdir()?;
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().map_err(|e| anyhow!("nkey seed: {e}"))?;
    let seed_file = tmp.path().join("concord.nk");
    std::fs::write(&seed_file, format!("{seed}\n"))?;
    let nats = NatsServer::start(
        tmp.path(),
        &format!(
            r#"authorization {{ users = [ {{ nkey: "{}" }} ] }}"#,
            user.public_key()
        ),
    )
    .await?;
    let auth = vec![env("CONCORD_NATS__NKEY_SEED_FILE", &seed_file)];
    let fixture = NatsConfig {
        nkey_seed_file: Some(seed_file.clone()),
        ..NatsConfig::default()
    };
    let cluster = start_cluster(&nats, &auth, fixture).await?;
    serves_put_get(&cluster, "sec:nkey").await?;
    cli_put_get(&cluster, tmp.path(), &auth, "sec:nkey:cli").await?;
    for id in cluster.ids() {
        let log = cluster.log(id);
        ensure!(!log.contains(&seed), "node {id} logged the NKey seed");
        ensure!(
            log.contains(&user.public_key()),
            "node {id} does not log the public NKey it authenticates with"
        );
    }

    let other = nkeys::KeyPair::new_user()
        .seed()
        .map_err(|e| anyhow!("nkey seed: {e}"))?;
    let other_env = vec![env("CONCORD_NATS__NKEY_SEED", &other)];
    let (out, _) = cli(
        &cluster,
        tmp.path(),
        &other_env,
        &["get", "sec:nkey"],
        REFUSAL_LIMIT,
    )
    .await?;
    let stderr = text(&out.stderr);
    ensure!(!out.status.success(), "another user's NKey got through");
    ensure!(
        stderr.contains("authorization violation"),
        "CLI error: {stderr}"
    );
    ensure!(
        !stderr.contains(&other),
        "the CLI printed the seed: {stderr}"
    );
    Ok(())
}

// ----- --check-config --------------------------------------------------------------------

/// Proves that `serve --check-config` masks the NATS password, token and NKey seed, and
/// credentials inside a NATS URL, while still showing the non-secret settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_masks_nats_secrets() -> Result<()> {
    let tmp = tempdir()?;
    let seed = nkeys::KeyPair::new_user()
        .seed()
        .map_err(|e| anyhow!("nkey seed: {e}"))?;
    let secrets = [
        "pw-check-3b9d",
        "tok-check-77aa",
        seed.as_str(),
        "url-pw-19c2",
    ];
    let vars = vec![
        env(
            "CONCORD_NATS__URL",
            "nats://alice:url-pw-19c2@127.0.0.1:4222",
        ),
        env("CONCORD_NATS__USER", "alice"),
        env("CONCORD_NATS__PASSWORD", secrets[0]),
        env("CONCORD_NATS__TOKEN", secrets[1]),
        env("CONCORD_NATS__NKEY_SEED", &seed),
        env("CONCORD_NATS__TLS_CA_FILE", "/etc/concord/ca.pem"),
    ];
    let (out, _) = run_concord(
        tmp.path(),
        &vars,
        &["serve", "--check-config", "--json"],
        CLI_LIMIT,
    )
    .await?;
    let stdout = text(&out.stdout);
    ensure!(
        out.status.success(),
        "--check-config failed: {}",
        text(&out.stderr)
    );
    for s in secrets {
        ensure!(
            !stdout.contains(s),
            "--check-config shows a secret: {stdout}"
        );
    }
    let v: Value = serde_json::from_str(&stdout).context("--check-config output")?;
    let n = |key: &str| v[format!("nats.{key}")]["value"].clone();
    ensure!(
        n("password") == json!("***") && n("token") == json!("***"),
        "{v}"
    );
    ensure!(n("nkey_seed") == json!("***"), "{v}");
    ensure!(n("url") == json!(["nats://***@127.0.0.1:4222"]), "{v}");
    ensure!(
        n("user") == json!("alice") && n("tls_ca_file") == json!("/etc/concord/ca.pem"),
        "{v}"
    );
    Ok(())
}

// ----- helpers ---------------------------------------------------------------------------

/// Three nodes on `nats` with `auth` in their env; the fixture's own client connects with
/// `fixture`. Waits for a leader.
async fn start_cluster(
    nats: &NatsServer,
    auth: &[(String, String)],
    fixture: NatsConfig,
) -> Result<Cluster> {
    let mut opts = ClusterOptions::default()
        .nats_url(nats.url.clone())
        .nats_config(fixture);
    for (k, v) in auth {
        opts = opts.env(k.clone(), v);
    }
    let cluster = Cluster::start_with(3, opts).await?;
    cluster.wait_for_leader(LEADER_TIMEOUT).await?;
    Ok(cluster)
}

/// A put through the cluster, then a linearizable get of it through every node (followers
/// forward to the leader over the same secured NATS).
async fn serves_put_get(cluster: &Cluster, key: &str) -> Result<()> {
    let value = json!({"written": key});
    let put = cluster
        .request("kv.put", json!({"key": key, "value": value}))
        .await?;
    ensure!(put["ok"] == json!(true), "put {key}: {put}");
    let revision = put["revision"].clone();
    for id in cluster.ids() {
        let got = cluster
            .node_request(id, "kv.get", json!({"key": key}))
            .await?;
        ensure!(
            got["ok"] == json!(true) && got["value"] == value && got["revision"] == revision,
            "get {key} through node {id}: {got} (put answered {put})"
        );
    }
    Ok(())
}

/// `concord put` then `concord get` of `key` with `auth` in the env.
async fn cli_put_get(
    cluster: &Cluster,
    dir: &Path,
    auth: &[(String, String)],
    key: &str,
) -> Result<()> {
    let (out, _) = cli(
        cluster,
        dir,
        auth,
        &["--json", "put", key, "from the CLI"],
        CLI_LIMIT,
    )
    .await?;
    ensure!(
        out.status.success(),
        "concord put: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let (out, _) = cli(cluster, dir, auth, &["--json", "get", key], CLI_LIMIT).await?;
    ensure!(out.status.success(), "concord get: {}", text(&out.stderr));
    let v: Value = serde_json::from_str(text(&out.stdout).trim())
        .with_context(|| format!("concord get --json printed {:?}", text(&out.stdout)))?;
    ensure!(
        v["ok"] == json!(true) && v["value"] == json!("from the CLI"),
        "concord get: {v}"
    );
    Ok(())
}

/// A CLI command against the cluster's NATS and prefix, with `extra` env.
async fn cli(
    cluster: &Cluster,
    dir: &Path,
    extra: &[(String, String)],
    args: &[&str],
    limit: Duration,
) -> Result<(Output, Duration)> {
    let mut vars = vec![
        env("CONCORD_NATS__URL", cluster.nats_url()),
        env("CONCORD_NATS__SUBJECT_PREFIX", cluster.prefix()),
    ];
    vars.extend_from_slice(extra);
    run_concord(dir, &vars, args, limit).await
}

/// `concord serve` as an extra node (id 9, its own data dir) that is expected to stop at once.
async fn serve_once(
    cluster: &Cluster,
    dir: &Path,
    extra: &[(String, String)],
) -> Result<(Output, Duration)> {
    let data = dir.join("node-9");
    std::fs::create_dir_all(&data)?;
    let mut vars = vec![
        env("CONCORD_NODE__ID", "9"),
        env("CONCORD_DATA_DIR", &data),
        env("CONCORD_CLUSTER__NAME", cluster.cluster_name()),
        env("CONCORD_CLUSTER__INITIAL_MEMBERS", "1,2,3"),
        env("RUST_LOG", "info"),
    ];
    vars.extend_from_slice(extra);
    cli(cluster, dir, &vars, &["serve"], REFUSAL_LIMIT).await
}

/// Runs the `concord` binary in `dir` with only `vars` as `CONCORD_*` configuration; fails
/// if it has not exited within `limit` (it is killed then).
async fn run_concord(
    dir: &Path,
    vars: &[(String, String)],
    args: &[&str],
    limit: Duration,
) -> Result<(Output, Duration)> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord"));
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CONCORD_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("RUST_LOG");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let started = Instant::now();
    match tokio::time::timeout(limit, cmd.output()).await {
        Ok(out) => Ok((
            out.with_context(|| format!("running concord {args:?}"))?,
            started.elapsed(),
        )),
        Err(_) => bail!("concord {args:?} did not exit within {limit:?}"),
    }
}

/// A `nats-server` with a config file, on 127.0.0.1 and an ephemeral port, started by the
/// harness. Killed on drop; its log is printed if the test panics.
struct NatsServer {
    server: concord_harness::nats_server::NatsServer,
    url: String,
}

impl NatsServer {
    async fn start(dir: &Path, config: &str) -> Result<NatsServer> {
        let binary = common::nats_server_binary()?;
        let server =
            concord_harness::nats_server::NatsServer::start_with_config(&binary, dir, config)
                .await
                .with_context(|| format!("nats-server with config:\n{config}"))?;
        let url = server.url();
        Ok(NatsServer { server, url })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.server.child.kill();
        let _ = self.server.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.server.log_path).unwrap_or_default();
            eprintln!("===== nats-server log =====\n{text}");
        }
    }
}

fn env(key: &str, value: impl AsRef<std::ffi::OsStr>) -> (String, String) {
    (
        key.to_string(),
        value.as_ref().to_string_lossy().into_owned(),
    )
}

/// The last non-empty line (a process's final error message).
fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn tempdir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("concord-sec-")
        .tempdir()
        .context("creating a temp dir")
}
