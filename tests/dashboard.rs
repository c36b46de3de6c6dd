//! The observability deliverables checked without Docker, Grafana or Kubernetes, which these
//! machines do not have:
//!
//! - structure: `compose/docker-compose.yml`, the Grafana provisioning, the dashboard JSON, the
//!   Prometheus configs and `deploy/kubernetes/concord.yaml` agree with each other, with the
//!   node's configuration keys and with the metric contract, and every file they mount exists;
//!   `promtool check config` and `nats-server -t` accept the configs they are given;
//! - behaviour: every query of the dashboard, evaluated by a real Prometheus scraping a live
//!   three-node cluster under a little load, returns at least one series.
//!
//! What stays unproved here: that Docker builds the image and runs the stack, and that Grafana
//! renders the panels (its JSON model is checked, not drawn).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use common::{error_code, to_bytes, Cluster, ClusterOptions};
use serde::Deserialize;
use serde_json::{json, Value as Json};
use serde_yaml::Value as Yaml;

const COMPOSE: &str = "compose/docker-compose.yml";
const DOCKERFILE: &str = "compose/Dockerfile";
const COMPOSE_PROMETHEUS: &str = "compose/prometheus/prometheus.yml";
const DASHBOARD: &str = "grafana/dashboards/concord.json";
const DATASOURCES: &str = "grafana/provisioning/datasources/prometheus.yml";
const DASHBOARD_PROVIDERS: &str = "grafana/provisioning/dashboards/concord.yml";
const KUBERNETES: &str = "deploy/kubernetes/concord.yaml";
/// The Compose Specification's JSON Schema (see tests/schemas/README.md).
const COMPOSE_SCHEMA: &str = "tests/schemas/compose-spec.json";

/// Port of the nodes' metrics listener in the compose stack and the Kubernetes example.
const METRICS_PORT: u16 = 9464;
/// What the dashboard's `$__rate_interval`, `$__interval` and `$__range` become in the test.
const TEST_INTERVAL: &str = "1m";

/// Every metric of the node's metric contract (names without the histogram suffixes). The
/// dashboard must use each of them and nothing else named `concord_*`.
const CONTRACT_METRICS: &[&str] = &[
    "concord_build_info",
    "concord_requests_total",
    "concord_request_duration_seconds",
    "concord_auth_failures_total",
    "concord_raft_term",
    "concord_raft_state",
    "concord_raft_leader_id",
    "concord_raft_commit_index",
    "concord_raft_applied_index",
    "concord_raft_last_log_index",
    "concord_raft_leader_changes_total",
    "concord_raft_voters",
    "concord_raft_learners",
    "concord_raft_replication_lag",
    "concord_raft_rpc_duration_seconds",
    "concord_raft_rpc_errors_total",
    "concord_raft_rpc_rejected_total",
    "concord_raft_commit_notices_skipped_total",
    "concord_raft_early_appends_total",
    "concord_raft_appends_answered_early_total",
    "concord_snapshots_total",
    "concord_snapshot_size_bytes",
    "concord_snapshot_duration_seconds",
    "concord_apply_duration_seconds",
    "concord_storage_keys",
    "concord_storage_bytes",
    "concord_storage_data_bytes",
    "concord_storage_max_bytes",
    "concord_storage_fsync",
    "concord_revision",
    "concord_cluster_time_seconds",
    "concord_log_format",
    "concord_idempotency_entries",
    "concord_idempotency_window_seconds",
    "concord_idempotency_oldest_left_seconds",
    "concord_idempotency_replays_total",
    "concord_idempotency_conflicts_total",
    "concord_conflicts_total",
    "concord_watches",
    "concord_watch_messages_total",
    "concord_watch_events_total",
    "concord_watch_ends_total",
    "concord_history_bytes",
    "concord_compact_revision",
    "concord_leases",
    "concord_lease_keys",
    "concord_lease_expiries_total",
    "concord_nats_connected",
    "concord_nats_reconnects_total",
    "concord_telemetry_events_total",
];

// ----- structure ---------------------------------------------------------------------------

/// The compose file is valid under the Compose Specification's schema. The stack has the three
/// NATS servers routed into one cluster, three Concord nodes
/// built from the Dockerfile with the settings the brief names (checked against the node's
/// real configuration keys), Prometheus and Grafana; published ports are unique and bound to
/// localhost; every bind-mounted file exists and every named volume is declared.
#[test]
fn compose_stack_is_complete_and_consistent() -> Result<()> {
    let compose = read_yaml(COMPOSE)?;
    let compose_dir = repo_path(COMPOSE).parent().unwrap().to_path_buf();
    let services = mapping(&compose, "services")?;
    let names: BTreeSet<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    let expected: BTreeSet<&str> = [
        "nats-1",
        "nats-2",
        "nats-3",
        "concord-1",
        "concord-2",
        "concord-3",
        "prometheus",
        "grafana",
    ]
    .into();
    ensure!(
        names == expected,
        "compose services are {names:?}, want {expected:?}"
    );

    // What `docker compose config` checks first: the file is valid under the Compose
    // Specification's JSON Schema (merge keys resolved, as compose resolves them).
    let schema: Json = serde_json::from_str(&std::fs::read_to_string(repo_path(COMPOSE_SCHEMA))?)?;
    let validator = jsonschema::validator_for(&schema)
        .map_err(|e| anyhow!("{COMPOSE_SCHEMA} is not a usable schema: {e}"))?;
    let instance = serde_json::to_value(&compose)?;
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    ensure!(
        errors.is_empty(),
        "{COMPOSE} breaks the Compose Specification:\n{}",
        errors.join("\n")
    );

    let declared_volumes: BTreeSet<String> = mapping(&compose, "volumes")?
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    let mut used_volumes = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        for mount in mounts(service) {
            if mount.source.starts_with('.') || mount.source.starts_with('/') {
                let path = compose_dir.join(&mount.source);
                ensure!(
                    path.exists(),
                    "{name} mounts {} which does not exist ({})",
                    mount.source,
                    path.display()
                );
            } else {
                ensure!(
                    declared_volumes.contains(&mount.source),
                    "{name} uses volume {} which is not declared under `volumes:`",
                    mount.source
                );
                used_volumes.insert(mount.source.clone());
            }
        }
        for port in strings(service.get("ports")) {
            // "127.0.0.1:HOST:CONTAINER": never published on every interface of a laptop.
            let parts: Vec<&str> = port.split(':').collect();
            ensure!(
                parts.len() == 3 && parts[0] == "127.0.0.1",
                "{name} publishes {port}; publish on 127.0.0.1 only"
            );
            ensure!(
                host_ports.insert(parts[1].to_string()),
                "host port {} is published twice",
                parts[1]
            );
        }
        let image = service.get("image").and_then(Yaml::as_str).unwrap_or("");
        ensure!(!image.is_empty(), "{name} has no image");
    }
    ensure!(
        used_volumes == declared_volumes,
        "declared volumes {declared_volumes:?} but used {used_volumes:?}"
    );
    for port in ["4222", "9090", "3000", "9464", "9465", "9466"] {
        ensure!(
            host_ports.contains(port),
            "host port {port} is not published"
        );
    }

    // NATS: three servers, each naming itself, one config whose routes name all three.
    let nats_servers: Vec<String> = (1..=3).map(|i| format!("nats-{i}")).collect();
    for name in &nats_servers {
        let service = &services[name.as_str()];
        let env = environment(service)?;
        ensure!(
            env.get("SERVER_NAME") == Some(name),
            "{name}: SERVER_NAME is {:?}",
            env.get("SERVER_NAME")
        );
        let conf = mounts(service)
            .into_iter()
            .find(|m| m.source.ends_with("nats.conf"))
            .ok_or_else(|| anyhow!("{name} mounts no nats.conf"))?;
        let command = strings(service.get("command")).join(" ");
        ensure!(
            command.contains(&conf.target),
            "{name} does not start with its mounted config {}: {command}",
            conf.target
        );
        let text = std::fs::read_to_string(compose_dir.join(&conf.source))?;
        for other in &nats_servers {
            ensure!(
                text.contains(&format!("nats://{other}:6222")),
                "{}: no route to {other}",
                conf.source
            );
        }
        check_nats_config(&compose_dir.join(&conf.source), name)?;
        // A file the config includes (liveness.conf: the ping settings) must be mounted next
        // to it in the container too, or the server there refuses to start.
        let conf_dir = |p: &str| p.rsplit_once('/').map(|(d, _)| d.to_string());
        for line in text.lines() {
            let Some(inc) = line.trim().strip_prefix("include ") else {
                continue;
            };
            let file = inc.trim().trim_start_matches("./");
            ensure!(
                mounts(service).iter().any(|m| {
                    m.source.ends_with(&format!("/{file}"))
                        && conf_dir(&m.target) == conf_dir(&conf.target)
                        && m.target.ends_with(&format!("/{file}"))
                }),
                "{name}: {} includes {file}, which is not mounted next to it",
                conf.source
            );
        }
    }

    // Concord nodes.
    let keys = config_keys();
    let dockerfile = std::fs::read_to_string(repo_path(DOCKERFILE))?;
    for id in 1..=3u64 {
        let name = format!("concord-{id}");
        let service = &services[name.as_str()];
        let build = service
            .get("build")
            .ok_or_else(|| anyhow!("{name} is not built"))?;
        let context = compose_dir.join(build["context"].as_str().unwrap_or(""));
        let dockerfile_path = context.join(build["dockerfile"].as_str().unwrap_or(""));
        ensure!(
            dockerfile_path.canonicalize()? == repo_path(DOCKERFILE).canonicalize()?,
            "{name} builds {} instead of {DOCKERFILE}",
            dockerfile_path.display()
        );
        ensure!(
            context.join("Cargo.toml").exists(),
            "{name}: build context {} is not the repository root",
            context.display()
        );
        let env = environment(service)?;
        for key in env.keys().filter(|k| k.starts_with("CONCORD_")) {
            let dotted = key["CONCORD_".len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            ensure!(
                keys.contains(&dotted),
                "{name}: {key} is no configuration setting"
            );
        }
        let want = |key: &str, value: &str| -> Result<()> {
            ensure!(
                env.get(key).map(String::as_str) == Some(value),
                "{name}: {key} is {:?}, want {value:?}",
                env.get(key)
            );
            Ok(())
        };
        want("CONCORD_NODE__ID", &id.to_string())?;
        want("CONCORD_CLUSTER__INITIAL_MEMBERS", "1,2,3")?;
        want(
            "CONCORD_METRICS__LISTEN",
            &format!("0.0.0.0:{METRICS_PORT}"),
        )?;
        let urls: BTreeSet<&str> = env["CONCORD_NATS__URL"].split(',').collect();
        let all: BTreeSet<String> = nats_servers
            .iter()
            .map(|s| format!("nats://{s}:4222"))
            .collect();
        ensure!(
            urls == all.iter().map(String::as_str).collect(),
            "{name}: CONCORD_NATS__URL must list all three NATS servers: {urls:?}"
        );
        let data_dir = &env["CONCORD_DATA_DIR"];
        let data = mounts(service)
            .into_iter()
            .find(|m| &m.target == data_dir)
            .ok_or_else(|| anyhow!("{name}: nothing is mounted on its data dir {data_dir}"))?;
        ensure!(
            data.source == format!("concord-{id}-data"),
            "{name}: data dir on {}, want its own named volume",
            data.source
        );
        ensure!(
            dockerfile.contains(&format!("\"{data_dir}\"")),
            "the Dockerfile declares no VOLUME for {data_dir}"
        );
        let health = strings(service.get("healthcheck").and_then(|h| h.get("test"))).join(" ");
        ensure!(
            health.contains(&format!("127.0.0.1:{METRICS_PORT}/readyz")),
            "{name}: the health check does not ask /readyz on the metrics port: {health}"
        );
        let tool = if health.contains("curl") {
            "curl"
        } else if health.contains("wget") {
            "wget"
        } else {
            bail!("{name}: the health check uses neither curl nor wget: {health}")
        };
        ensure!(
            dockerfile.contains(&format!(" {tool}")),
            "{name}'s health check runs {tool}, which the Dockerfile does not install"
        );
        let depends: BTreeSet<String> = match service.get("depends_on") {
            Some(Yaml::Mapping(m)) => m
                .keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect(),
            other => strings(other).into_iter().collect(),
        };
        ensure!(
            nats_servers.iter().all(|s| depends.contains(s)),
            "{name} does not wait for the NATS servers: {depends:?}"
        );
    }

    // The Dockerfile: multi-stage, slim runtime, non-root.
    ensure!(
        dockerfile.contains("FROM rust:") && dockerfile.contains("AS builder"),
        "{DOCKERFILE}: no rust builder stage"
    );
    ensure!(
        dockerfile.contains("FROM debian:bookworm-slim"),
        "{DOCKERFILE}: runtime is not debian:bookworm-slim"
    );
    ensure!(
        dockerfile.contains("COPY --from=builder"),
        "{DOCKERFILE}: the runtime does not copy from the builder"
    );
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("USER "))
        .ok_or_else(|| anyhow!("{DOCKERFILE}: no USER"))?;
    ensure!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{DOCKERFILE}: runs as {user}"
    );
    for line in dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
    {
        if line.starts_with("--from") {
            continue;
        }
        let sources: Vec<&str> = line.split_whitespace().collect();
        for source in &sources[..sources.len() - 1] {
            ensure!(
                repo_path(source).exists(),
                "{DOCKERFILE} copies {source}, which does not exist"
            );
        }
    }

    // Prometheus runs with the mounted config; Grafana gets provisioning and dashboards.
    let prometheus = &services["prometheus"];
    let config_flag = strings(prometheus.get("command"))
        .into_iter()
        .find_map(|a| a.strip_prefix("--config.file=").map(str::to_string))
        .ok_or_else(|| anyhow!("prometheus: no --config.file"))?;
    let config_mount = mounts(prometheus)
        .into_iter()
        .find(|m| m.target == config_flag)
        .ok_or_else(|| anyhow!("prometheus: nothing mounted at {config_flag}"))?;
    ensure!(
        compose_dir
            .join(&config_mount.source)
            .canonicalize()?
            .ends_with(COMPOSE_PROMETHEUS),
        "prometheus reads {} instead of {COMPOSE_PROMETHEUS}",
        config_mount.source
    );
    let grafana = mounts(&services["grafana"]);
    let provisioning = grafana
        .iter()
        .find(|m| m.target == "/etc/grafana/provisioning")
        .ok_or_else(|| anyhow!("grafana: no provisioning mounted"))?;
    ensure!(
        compose_dir
            .join(&provisioning.source)
            .canonicalize()?
            .ends_with("grafana/provisioning"),
        "grafana: provisioning from {}",
        provisioning.source
    );
    Ok(())
}

/// The provisioned data source is the compose Prometheus; the dashboard provider reads the
/// directory compose mounts the dashboards on; the dashboard names the provisioned data source
/// everywhere, every panel has a query, and the queries use every metric of the contract and
/// no other `concord_*` name.
#[test]
fn grafana_provisioning_and_dashboard_agree() -> Result<()> {
    let datasources = read_yaml(DATASOURCES)?;
    let list = datasources["datasources"]
        .as_sequence()
        .ok_or_else(|| anyhow!("{DATASOURCES}: no datasources"))?;
    ensure!(list.len() == 1, "{DATASOURCES}: want one data source");
    let ds = &list[0];
    ensure!(
        ds["type"].as_str() == Some("prometheus"),
        "{DATASOURCES}: type"
    );
    let uid = ds["uid"]
        .as_str()
        .ok_or_else(|| anyhow!("{DATASOURCES}: no uid"))?;
    ensure!(uid == "prometheus", "{DATASOURCES}: uid {uid}");
    ensure!(
        ds["url"].as_str() == Some("http://prometheus:9090"),
        "{DATASOURCES}: url {:?} is not the compose Prometheus",
        ds["url"]
    );

    // The dashboards directory as compose mounts it is where the provider looks.
    let compose = read_yaml(COMPOSE)?;
    let compose_dir = repo_path(COMPOSE).parent().unwrap().to_path_buf();
    let providers = read_yaml(DASHBOARD_PROVIDERS)?;
    let provider_path = providers["providers"][0]["options"]["path"]
        .as_str()
        .ok_or_else(|| anyhow!("{DASHBOARD_PROVIDERS}: no providers[0].options.path"))?
        .to_string();
    ensure!(
        providers["providers"][0]["type"].as_str() == Some("file"),
        "{DASHBOARD_PROVIDERS}: provider type"
    );
    let dashboards_mount = mounts(&compose["services"]["grafana"])
        .into_iter()
        .find(|m| m.target == provider_path)
        .ok_or_else(|| {
            anyhow!("grafana mounts nothing at {provider_path}, where the provider looks")
        })?;
    let mounted = compose_dir.join(&dashboards_mount.source);
    ensure!(
        mounted.join("concord.json").canonicalize()? == repo_path(DASHBOARD).canonicalize()?,
        "{} does not hold {DASHBOARD}",
        mounted.display()
    );
    let home = environment(&compose["services"]["grafana"])?
        .get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
        .cloned();
    if let Some(home) = home {
        ensure!(
            home == format!("{provider_path}/concord.json"),
            "grafana's home dashboard {home} is not the mounted one"
        );
    }

    let dashboard = read_json(DASHBOARD)?;
    ensure!(dashboard["uid"] == json!("concord"), "dashboard uid");
    let mut ids = BTreeSet::new();
    let mut used_metrics = BTreeSet::new();
    let panels = all_panels(&dashboard);
    ensure!(panels.len() > 10, "only {} panels", panels.len());
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("panel {title}: no id"))?;
        ensure!(ids.insert(id), "panel id {id} is used twice");
        let pos = &panel["gridPos"];
        let (x, w) = (
            pos["x"].as_u64().unwrap_or(99),
            pos["w"].as_u64().unwrap_or(99),
        );
        ensure!(x + w <= 24, "panel {title} is wider than the grid: {pos}");
        if panel["type"] == json!("row") {
            continue;
        }
        ensure!(
            panel["datasource"]["uid"] == json!(uid),
            "panel {title}: data source {} is not the provisioned uid {uid}",
            panel["datasource"]
        );
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        let exprs: Vec<&str> = targets
            .iter()
            .filter_map(|t| t["expr"].as_str())
            .filter(|e| !e.trim().is_empty())
            .collect();
        ensure!(
            !exprs.is_empty(),
            "panel {title} has no target with an expr"
        );
        for target in &targets {
            if !target["datasource"].is_null() {
                ensure!(
                    target["datasource"]["uid"] == json!(uid),
                    "panel {title}: a target names data source {}",
                    target["datasource"]
                );
            }
        }
        for expr in exprs {
            used_metrics.extend(metric_names(expr));
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        if var["type"] == json!("query") {
            ensure!(
                var["datasource"]["uid"] == json!(uid),
                "variable {}: data source {}",
                var["name"],
                var["datasource"]
            );
        }
    }
    let contract: BTreeSet<String> = CONTRACT_METRICS.iter().map(|s| s.to_string()).collect();
    let unknown: Vec<_> = used_metrics.difference(&contract).collect();
    ensure!(
        unknown.is_empty(),
        "the dashboard queries metrics outside the contract: {unknown:?}"
    );
    let unused: Vec<_> = contract.difference(&used_metrics).collect();
    ensure!(
        unused.is_empty(),
        "no panel shows these contract metrics: {unused:?}"
    );

    // The queries survive the substitution the live test applies.
    for query in dashboard_queries(&dashboard)? {
        ensure!(!query.contains('$'), "unsubstituted variable in {query}");
    }
    Ok(())
}

/// The compose Prometheus scrapes exactly the three compose nodes on their metrics port under
/// job `concord` (what the dashboard selects), and promtool accepts its config.
#[test]
fn prometheus_config_scrapes_the_three_nodes() -> Result<()> {
    let config = read_yaml(COMPOSE_PROMETHEUS)?;
    let jobs = config["scrape_configs"]
        .as_sequence()
        .ok_or_else(|| anyhow!("{COMPOSE_PROMETHEUS}: no scrape_configs"))?;
    let concord = jobs
        .iter()
        .find(|j| j["job_name"].as_str() == Some("concord"))
        .ok_or_else(|| anyhow!("{COMPOSE_PROMETHEUS}: no job `concord`"))?;
    let targets: BTreeSet<String> = concord["static_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|c| strings(c.get("targets")))
        .collect();
    let want: BTreeSet<String> = (1..=3)
        .map(|i| format!("concord-{i}:{METRICS_PORT}"))
        .collect();
    ensure!(targets == want, "scrape targets {targets:?}, want {want:?}");
    let path = concord["metrics_path"].as_str().unwrap_or("/metrics");
    ensure!(path == "/metrics", "metrics_path {path}");
    match promtool_check(&repo_path(COMPOSE_PROMETHEUS))? {
        Some(out) => println!("promtool check config {COMPOSE_PROMETHEUS}: {out}"),
        None => println!("promtool not found: {COMPOSE_PROMETHEUS} checked structurally only"),
    }
    Ok(())
}

/// The Kubernetes example: a headless Service governs a three-replica StatefulSet that starts
/// its pods in parallel, derives the node id from the pod ordinal, keeps data on a PVC, probes
/// /healthz and /readyz on the metrics port, and reads the cluster secret and admin token from
/// files of the Secret it mounts, whose placeholders a node refuses.
#[test]
fn kubernetes_example_is_consistent() -> Result<()> {
    let text = std::fs::read_to_string(repo_path(KUBERNETES))?;
    let mut by_kind: BTreeMap<String, Yaml> = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let doc = Yaml::deserialize(doc).context(KUBERNETES)?;
        let kind = doc["kind"]
            .as_str()
            .ok_or_else(|| anyhow!("{KUBERNETES}: a document without kind"))?
            .to_string();
        ensure!(
            by_kind.insert(kind.clone(), doc).is_none(),
            "two {kind} documents"
        );
    }
    let sts = by_kind
        .get("StatefulSet")
        .ok_or_else(|| anyhow!("no StatefulSet"))?;
    let service = by_kind
        .get("Service")
        .ok_or_else(|| anyhow!("no Service"))?;
    let secret = by_kind.get("Secret").ok_or_else(|| anyhow!("no Secret"))?;

    let spec = &sts["spec"];
    let replicas = spec["replicas"].as_u64().unwrap_or(0);
    ensure!(replicas == 3, "replicas {replicas}");
    ensure!(
        spec["serviceName"] == service["metadata"]["name"],
        "serviceName {:?} is not the Service",
        spec["serviceName"]
    );
    ensure!(
        service["spec"]["clusterIP"].as_str() == Some("None"),
        "the Service is not headless"
    );
    ensure!(
        spec["podManagementPolicy"].as_str() == Some("Parallel"),
        "podManagementPolicy must be Parallel: pod 0 is ready only when a second voter runs"
    );
    let labels = &spec["template"]["metadata"]["labels"];
    for (k, v) in mapping(&spec["selector"], "matchLabels")? {
        ensure!(
            &labels[k] == v,
            "the selector does not match the pod labels"
        );
        ensure!(
            &service["spec"]["selector"][k] == v,
            "the Service does not select the pods"
        );
    }

    let pod = &spec["template"]["spec"];
    let containers = pod["containers"]
        .as_sequence()
        .ok_or_else(|| anyhow!("no containers"))?;
    ensure!(containers.len() == 1, "want one container");
    let c = &containers[0];
    let mut env = BTreeMap::new();
    for e in c["env"].as_sequence().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or("").to_string();
        let value = e["value"].as_str().unwrap_or("").to_string();
        env.insert(name, value);
    }
    let keys = config_keys();
    for key in env.keys().filter(|k| k.starts_with("CONCORD_")) {
        let dotted = key["CONCORD_".len()..]
            .to_ascii_lowercase()
            .replace("__", ".");
        ensure!(keys.contains(&dotted), "{key} is no configuration setting");
    }
    let members: Vec<String> = (1..=replicas).map(|i| i.to_string()).collect();
    ensure!(
        env.get("CONCORD_CLUSTER__INITIAL_MEMBERS") == Some(&members.join(",")),
        "initial members {:?} are not the replicas' ids",
        env.get("CONCORD_CLUSTER__INITIAL_MEMBERS")
    );
    let command = strings(c.get("command")).join(" ");
    ensure!(
        command.contains("CONCORD_NODE__ID=$(( ${HOSTNAME##*-} + 1 ))")
            && command.contains("exec /usr/local/bin/concord serve"),
        "the node id is not derived from the pod ordinal: {command}"
    );
    ensure!(
        env.get("CONCORD_METRICS__LISTEN") == Some(&format!("0.0.0.0:{METRICS_PORT}")),
        "metrics listen {:?}",
        env.get("CONCORD_METRICS__LISTEN")
    );
    ensure!(
        env.get("CONCORD_NATS__URL")
            .is_some_and(|u| u.starts_with("nats://")),
        "no NATS URL"
    );

    // Probes on the container port that is the metrics listener.
    let port = c["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some("metrics"))
        .ok_or_else(|| anyhow!("no container port named metrics"))?;
    ensure!(
        port["containerPort"].as_u64() == Some(METRICS_PORT.into()),
        "metrics containerPort"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        ensure!(
            get["path"].as_str() == Some(path),
            "{probe} path {:?}",
            get["path"]
        );
        ensure!(
            get["port"].as_str() == Some("metrics"),
            "{probe} port {:?}",
            get["port"]
        );
    }

    // Data on the PVC at the data dir; secrets from the Secret's keys.
    let data_dir = env
        .get("CONCORD_DATA_DIR")
        .ok_or_else(|| anyhow!("no CONCORD_DATA_DIR"))?;
    let claim = spec["volumeClaimTemplates"][0]["metadata"]["name"]
        .as_str()
        .ok_or_else(|| anyhow!("no volumeClaimTemplates"))?;
    let mount_of = |name: &str| -> Option<String> {
        c["volumeMounts"]
            .as_sequence()?
            .iter()
            .find(|m| m["name"].as_str() == Some(name))
            .and_then(|m| m["mountPath"].as_str().map(str::to_string))
    };
    ensure!(
        mount_of(claim).as_deref() == Some(data_dir.as_str()),
        "the PVC {claim} is not mounted at the data dir {data_dir}"
    );
    let secret_name = secret["metadata"]["name"].as_str().unwrap_or("");
    let volume = pod["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["secret"]["secretName"].as_str() == Some(secret_name))
        .ok_or_else(|| anyhow!("the Secret {secret_name} is not a pod volume"))?;
    let secret_dir = mount_of(volume["name"].as_str().unwrap_or(""))
        .ok_or_else(|| anyhow!("the Secret volume is not mounted"))?;
    let secret_data = mapping(secret, "stringData")?;
    for key in [
        "CONCORD_CLUSTER__SECRET_FILE",
        "CONCORD_AUTH__ADMIN_TOKEN_FILE",
    ] {
        let file = env.get(key).ok_or_else(|| anyhow!("{key} is not set"))?;
        let item = file
            .strip_prefix(&format!("{secret_dir}/"))
            .ok_or_else(|| anyhow!("{key}={file} is not in the Secret mount {secret_dir}"))?;
        let value = secret_data
            .get(item)
            .and_then(Yaml::as_str)
            .ok_or_else(|| anyhow!("{key}: the Secret has no key {item}"))?;
        // A node refuses secrets shorter than 16 characters: an unedited example must not run.
        ensure!(
            value.chars().count() < 16,
            "the Secret ships a usable {item}; keep a placeholder a node refuses"
        );
    }
    ensure!(
        env.get("CONCORD_AUTH__ENABLED").map(String::as_str) == Some("true"),
        "auth is not enabled"
    );
    Ok(())
}

// ----- behaviour ---------------------------------------------------------------------------

/// Every query of the dashboard returns at least one series from a real Prometheus scraping
/// a live three-node cluster (auth on, snapshots every 20 entries) after a little load: puts,
/// gets, a `not_found`, a delete, a scan and an `unauthorized`. Also: each node's /healthz and
/// /readyz answer 200 (what the compose health checks and Kubernetes probes ask).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_return_series_from_a_live_cluster() -> Result<()> {
    let prometheus_bin = prometheus_binary()?;
    let started = Instant::now();
    let metrics_ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_>>()?;
    let mut opts = ClusterOptions::default()
        .env("CONCORD_AUTH__ENABLED", "true")
        .env("CONCORD_AUTH__ADMIN_TOKEN", ADMIN)
        .env("CONCORD_RAFT__SNAPSHOT_EVERY", "20")
        .admin_token(ADMIN);
    for (i, port) in metrics_ports.iter().enumerate() {
        opts = opts.node_env(
            i as u64 + 1,
            "CONCORD_METRICS__LISTEN",
            format!("127.0.0.1:{port}"),
        );
    }
    let cluster = Cluster::start_with(3, opts).await?;
    let result = run_dashboard_check(&cluster, &prometheus_bin, &metrics_ports).await;
    if result.is_err() {
        cluster.mark_failed();
    }
    println!("dashboard check took {:.1?}", started.elapsed());
    result
}

const ADMIN: &str = "dashboard-admin-credential-0123456789";

async fn run_dashboard_check(cluster: &Cluster, bin: &Path, metrics_ports: &[u16]) -> Result<()> {
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    for port in metrics_ports {
        let addr = format!("127.0.0.1:{port}");
        let (status, body) = http_get(&addr, "/healthz").await?;
        ensure!(status == 200, "{addr}/healthz: {status} {body}");
        wait_for(
            Duration::from_secs(30),
            &format!("{addr}/readyz to answer 200"),
            || {
                let addr = addr.clone();
                async move {
                    let (status, body) = http_get(&addr, "/readyz").await?;
                    ensure!(status == 200, "{status} {}", body.trim());
                    Ok(())
                }
            },
        )
        .await?;
    }

    let targets: Vec<String> = metrics_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let prometheus = Prometheus::start(bin, &targets)?;
    let api: &str = &prometheus.addr;
    // Two scrapes of every node before the load, so that rates see it arrive.
    wait_scraped(api, targets.len(), 2).await?;

    let load = Instant::now();
    put_load(cluster).await?;
    println!("load took {:.1?}", load.elapsed());
    // The load is in every node's counters once three more scrapes have happened.
    let before = scrape_count(api).await?;
    wait_scraped(api, targets.len(), before + 3).await?;

    // The load itself reached the panels' metrics through Prometheus: exact request counts
    // (each request counted once, on the node that answered the client), the failed auth,
    // snapshots taken, a leader.
    let figures = [
        (
            r#"sum(concord_requests_total{op="put", result="ok"})"#,
            31.0,
        ),
        (
            r#"sum(concord_requests_total{op="get", result="ok"})"#,
            30.0,
        ),
        (
            r#"sum(concord_requests_total{op="get", result="not_found"})"#,
            3.0,
        ),
        (
            r#"sum(concord_requests_total{op="delete", result="ok"})"#,
            2.0,
        ),
        (
            r#"sum(concord_requests_total{op="scan", result="ok"})"#,
            1.0,
        ),
        (
            r#"sum(concord_requests_total{op="put", result="unauthorized"})"#,
            1.0,
        ),
        (r#"sum(concord_auth_failures_total{op="put"})"#, 1.0),
        (r#"sum(concord_raft_state{state="leader"})"#, 1.0),
    ];
    for (query, want) in figures {
        wait_for(
            Duration::from_secs(15),
            &format!("{query} == {want}"),
            || async move {
                let got = query_values(api, query).await?;
                ensure!(got == [want], "got {got:?}");
                Ok(())
            },
        )
        .await?;
        println!("{want:>5}  {query}");
    }
    wait_for(
        Duration::from_secs(15),
        "a snapshot created on every node",
        || async move {
            let got = query_values(api, r#"concord_snapshots_total{kind="created"}"#).await?;
            ensure!(
                got.len() == 3 && got.iter().all(|v| *v >= 1.0),
                "got {got:?}"
            );
            Ok(())
        },
    )
    .await?;

    let dashboard = read_json(DASHBOARD)?;
    let mut failures = Vec::new();
    let queries = dashboard_queries(&dashboard)?;
    for query in &queries {
        match instant_query(api, query).await {
            Ok(series) if series > 0 => println!("{series:>3} series  {query}"),
            Ok(_) => {
                println!("  0 series  {query}");
                failures.push(format!("no series: {query}"));
            }
            Err(e) => {
                println!("  error     {query}: {e:#}");
                failures.push(format!("error: {query}: {e:#}"));
            }
        }
    }
    println!("{} queries evaluated", queries.len());
    if !failures.is_empty() {
        eprintln!("----- prometheus log -----\n{}", prometheus.log());
        bail!(
            "{} of {} dashboard queries failed:\n{}",
            failures.len(),
            queries.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

/// 31 puts (one with a lease), 30 gets, 3 gets of missing keys, 2 deletes, a scan, incrs, a
/// txn, a lease grant and keepalive, a lock acquire and release, and one put
/// without a token.
async fn put_load(cluster: &Cluster) -> Result<()> {
    let headers = cluster.admin_headers();
    let call = |suffix: &'static str, body: Json| {
        let headers = headers.clone();
        async move {
            cluster
                .request_raw(
                    &cluster.subject(suffix),
                    headers,
                    to_bytes(&body),
                    Duration::from_secs(10),
                )
                .await
        }
    };
    for i in 0..30 {
        let reply = call(
            "kv.put",
            json!({"key": format!("dash:{i}"), "value": {"n": i}}),
        )
        .await?;
        ensure!(reply["ok"] == json!(true), "put {i}: {reply}");
    }
    for i in 0..30 {
        let reply = call("kv.get", json!({"key": format!("dash:{i}")})).await?;
        ensure!(reply["ok"] == json!(true), "get {i}: {reply}");
    }
    for i in 0..3 {
        let reply = call("kv.get", json!({"key": format!("dash:missing:{i}")})).await?;
        ensure!(
            error_code(&reply) == Some("not_found"),
            "get missing: {reply}"
        );
    }
    for i in 0..2 {
        let reply = call("kv.delete", json!({"key": format!("dash:{i}")})).await?;
        ensure!(reply["ok"] == json!(true), "delete {i}: {reply}");
    }
    let reply = call("kv.scan", json!({})).await?;
    ensure!(reply["ok"] == json!(true), "scan: {reply}");
    // A counter and a txn, and one conflict of each kind the conflict panels split.
    let reply = call("kv.incr", json!({"key": "dash:n"})).await?;
    ensure!(reply["ok"] == json!(true), "incr: {reply}");
    let reply = call("kv.incr", json!({"key": "dash:n", "max": 1})).await?;
    ensure!(
        error_code(&reply) == Some("conflict"),
        "incr past max: {reply}"
    );
    let txn = json!({"success": [{"get": {"key": "dash:n"}}, {"incr": {"key": "dash:t"}}]});
    let reply = call("kv.txn", txn).await?;
    ensure!(reply["ok"] == json!(true), "txn: {reply}");
    // A lease with a key, a keepalive, and a lock taken and released.
    let lease = call("lease.grant", json!({"ttl_ms": 60_000})).await?;
    ensure!(lease["ok"] == json!(true), "lease.grant: {lease}");
    let put = json!({"key": "dash:leased", "value": 1, "lease": lease["id"]});
    ensure!(
        call("kv.put", put).await?["ok"] == json!(true),
        "put with a lease"
    );
    let keepalive = call("lease.keepalive", json!({"id": lease["id"]})).await?;
    ensure!(keepalive["ok"] == json!(true), "keepalive: {keepalive}");
    let lock = call("lock.acquire", json!({"name": "dash", "ttl_ms": 10_000})).await?;
    ensure!(lock["ok"] == json!(true), "lock.acquire: {lock}");
    let release = json!({"name": "dash", "fence": lock["fence"]});
    ensure!(
        call("lock.release", release).await?["ok"] == json!(true),
        "lock.release"
    );
    let reply = cluster
        .request_raw(
            &cluster.subject("kv.put"),
            None,
            to_bytes(&json!({"key": "dash:anon", "value": 1})),
            Duration::from_secs(10),
        )
        .await?;
    ensure!(
        error_code(&reply) == Some("unauthorized"),
        "a put without a token: {reply}"
    );
    Ok(())
}

/// Waits until Prometheus has scraped each of `targets` successfully at least `scrapes`
/// times in the last 5 minutes.
async fn wait_scraped(api: &str, targets: usize, scrapes: u64) -> Result<()> {
    wait_for(
        Duration::from_secs(60),
        &format!("Prometheus to scrape {targets} targets {scrapes} times each"),
        || async move {
            let up = query_values(api, r#"up{job="concord"}"#).await?;
            ensure!(
                up.len() == targets && up.iter().all(|v| *v == 1.0),
                "up: {up:?}"
            );
            let n = scrape_count(api).await?;
            ensure!(n >= scrapes, "{n} scrapes so far");
            Ok(())
        },
    )
    .await
}

/// The fewest successful scrapes of any concord target in the last 5 minutes.
async fn scrape_count(api: &str) -> Result<u64> {
    let counts = query_values(api, r#"sum_over_time(up{job="concord"}[5m])"#).await?;
    Ok(counts
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min)
        .max(0.0) as u64)
}

// ----- the dashboard's queries -------------------------------------------------------------

/// Panels, including those nested in collapsed rows.
fn all_panels(dashboard: &Json) -> Vec<Json> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel.clone());
        for inner in panel["panels"].as_array().into_iter().flatten() {
            out.push(inner.clone());
        }
    }
    out
}

/// Every PromQL query of the dashboard with Grafana's variables substituted: interval
/// variables become [`TEST_INTERVAL`], template variables `.*` (they are used as regexes).
/// Template variable queries `label_values(SELECTOR, label)` become `SELECTOR`.
fn dashboard_queries(dashboard: &Json) -> Result<Vec<String>> {
    let vars: Vec<String> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    let substitute = |expr: &str| -> String {
        let mut s = expr.to_string();
        // Longest names first: `$__range` is a prefix of `$__range_s`.
        for builtin in [
            "$__rate_interval",
            "$__interval_ms",
            "$__interval",
            "$__range_s",
            "$__range_ms",
            "$__range",
        ] {
            s = s.replace(builtin, TEST_INTERVAL);
        }
        let mut vars = vars.clone();
        vars.sort_by_key(|v| std::cmp::Reverse(v.len()));
        for var in &vars {
            s = s
                .replace(&format!("${{{var}}}"), ".*")
                .replace(&format!("[[{var}]]"), ".*")
                .replace(&format!("${var}"), ".*");
        }
        s
    };
    let mut out = Vec::new();
    for panel in all_panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(substitute(expr));
            }
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != json!("query") {
            continue;
        }
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .ok_or_else(|| anyhow!("variable {}: no query", var["name"]))?;
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .map(|(selector, _label)| selector.trim())
            .ok_or_else(|| {
                anyhow!(
                    "variable {}: not label_values(selector, label): {query}",
                    var["name"]
                )
            })?;
        out.push(substitute(inner));
    }
    Ok(out)
}

/// `concord_*` metric names in a PromQL expression, histogram suffixes removed.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("concord_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        // A name inside a string ("job=~\"concord\"") is not a metric.
        let quoted = start > 0 && bytes[start - 1] == b'"';
        if boundary && !quoted {
            let mut name = &expr[start..end];
            for suffix in ["_bucket", "_count", "_sum"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    if CONTRACT_METRICS.contains(&base) {
                        name = base;
                    }
                }
            }
            out.insert(name.to_string());
        }
        i = end.max(start + 1);
    }
    out
}

// ----- Prometheus ----------------------------------------------------------------------------

/// A `prometheus` child process with its own temp dir (config, TSDB, log); killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(bin: &Path, targets: &[String]) -> Result<Prometheus> {
        let dir = tempfile::Builder::new()
            .prefix("concord-prometheus-")
            .tempdir()?;
        let config = dir.path().join("prometheus.yml");
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: concord\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        )?;
        if let Some(out) = promtool_check(&config)? {
            println!("promtool check config (test config): {out}");
        }
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Prometheus { child, addr, dir })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `CONCORD_TEST_PROMETHEUS`, else `prometheus` on PATH; fails saying how to install it.
fn prometheus_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CONCORD_TEST_PROMETHEUS") {
        return Ok(PathBuf::from(path));
    }
    which("prometheus").ok_or_else(|| {
        anyhow!(
            "`prometheus` is not installed, and this test runs the dashboard's queries on a real \
             one. Install Debian's package: `apt-get install --no-install-recommends prometheus` \
             (or `scripts/tools.sh prometheus`; CI does this in .ci/run), or point \
             CONCORD_TEST_PROMETHEUS at a prometheus binary."
        )
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `promtool check config FILE`: `Ok(None)` when promtool is not installed, an error when it
/// rejects the file.
fn promtool_check(config: &Path) -> Result<Option<String>> {
    let Some(promtool) = which("promtool") else {
        return Ok(None);
    };
    let out = Command::new(promtool)
        .args(["check", "config"])
        .arg(config)
        .output()
        .context("running promtool")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "promtool check config {} failed:\n{text}",
        config.display()
    );
    Ok(Some(text.trim().replace('\n', " | ")))
}

/// `nats-server -c FILE -t` with the server name a compose service sets; skipped (with a note)
/// when no nats-server is found.
fn check_nats_config(conf: &Path, server_name: &str) -> Result<()> {
    let Ok(bin) = common::nats_server_binary() else {
        println!(
            "nats-server not found: {} checked structurally only",
            conf.display()
        );
        return Ok(());
    };
    let out = Command::new(bin)
        .arg("-c")
        .arg(conf)
        .arg("-t")
        .env("SERVER_NAME", server_name)
        .output()
        .context("running nats-server -t")?;
    ensure!(
        out.status.success(),
        "nats-server -t rejects {}: {}{}",
        conf.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// An instant query; the number of series (a scalar counts as one).
async fn instant_query(api: &str, query: &str) -> Result<usize> {
    let data = query_data(api, query).await?;
    match data["resultType"].as_str() {
        Some("vector") | Some("matrix") => Ok(data["result"].as_array().map_or(0, Vec::len)),
        Some("scalar") | Some("string") => Ok(1),
        other => bail!("unexpected resultType {other:?}"),
    }
}

/// The sample values of an instant vector query.
async fn query_values(api: &str, query: &str) -> Result<Vec<f64>> {
    let data = query_data(api, query).await?;
    data["result"]
        .as_array()
        .ok_or_else(|| anyhow!("{query}: no result array: {data}"))?
        .iter()
        .map(|s| {
            s["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("{query}: bad sample {s}"))
        })
        .collect()
}

async fn query_data(api: &str, query: &str) -> Result<Json> {
    let path = format!("/api/v1/query?query={}", percent_encode(query));
    let (status, body) = http_get(api, &path).await?;
    let reply: Json = serde_json::from_str(&body)
        .with_context(|| format!("HTTP {status} from Prometheus, not JSON: {body}"))?;
    ensure!(
        reply["status"] == json!("success"),
        "{} ({})",
        reply["error"].as_str().unwrap_or("?"),
        reply["errorType"].as_str().unwrap_or("?")
    );
    Ok(reply["data"].clone())
}

// ----- small helpers -------------------------------------------------------------------------

/// A plain HTTP/1.0 GET (no keep-alive, no chunking): status and body.
async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| anyhow!("GET http://{addr}{path}: no answer within 10 s"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("GET http://{addr}{path}: no HTTP header in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("GET http://{addr}{path}: bad status line {head:?}"))?;
    Ok((status, body.to_string()))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A port that was free a moment ago (bind to 0, read it, release it).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Polls `check` every 250 ms until it succeeds or `timeout` passes; the error names `what`
/// and the last failure.
async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let err = match check().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last: {err:#}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read_yaml(rel: &str) -> Result<Yaml> {
    let text = std::fs::read_to_string(repo_path(rel)).with_context(|| format!("reading {rel}"))?;
    let mut value: Yaml = serde_yaml::from_str(&text).with_context(|| format!("parsing {rel}"))?;
    // Compose files share settings through `<<: *anchor`; resolve them as compose does.
    value
        .apply_merge()
        .with_context(|| format!("resolving merge keys of {rel}"))?;
    Ok(value)
}

fn read_json(rel: &str) -> Result<Json> {
    let text = std::fs::read_to_string(repo_path(rel)).with_context(|| format!("reading {rel}"))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {rel}"))
}

fn mapping<'a>(v: &'a Yaml, key: &str) -> Result<&'a serde_yaml::Mapping> {
    v.get(key)
        .and_then(Yaml::as_mapping)
        .ok_or_else(|| anyhow!("no mapping `{key}`"))
}

/// A YAML string or list of strings (or scalars) as strings.
fn strings(v: Option<&Yaml>) -> Vec<String> {
    let scalar = |v: &Yaml| match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match v {
        Some(Yaml::Sequence(items)) => items.iter().filter_map(scalar).collect(),
        Some(other) => scalar(other).into_iter().collect(),
        None => Vec::new(),
    }
}

/// A compose service's environment, from either the mapping or the `KEY=value` list form.
fn environment(service: &Yaml) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    match service.get("environment") {
        Some(Yaml::Mapping(m)) => {
            for (k, v) in m {
                let key = k.as_str().ok_or_else(|| anyhow!("env key {k:?}"))?;
                let value = strings(Some(v)).pop().unwrap_or_default();
                out.insert(key.to_string(), value);
            }
        }
        Some(Yaml::Sequence(_)) => {
            for item in strings(service.get("environment")) {
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                out.insert(k.to_string(), v.to_string());
            }
        }
        _ => {}
    }
    Ok(out)
}

struct Mount {
    source: String,
    target: String,
}

/// A compose service's volumes in the short form `SOURCE:TARGET[:MODE]`.
fn mounts(service: &Yaml) -> Vec<Mount> {
    strings(service.get("volumes"))
        .into_iter()
        .filter_map(|v| {
            let mut parts = v.splitn(3, ':');
            let source = parts.next()?.to_string();
            let target = parts.next()?.to_string();
            Some(Mount { source, target })
        })
        .collect()
}

/// Every dotted configuration key (`nats.url`, `metrics.listen`, ...), as the node's own
/// check of `CONCORD_*` variables knows them.
fn config_keys() -> BTreeSet<String> {
    concord::config::known_keys()
}
