//! Child processes of the mesh: spawning in a namespace with a log file, reaping, signals,
//! the servers' config and readiness, free loopback ports, and small lookups.

use super::*;

/// `program` itself, or `ip netns exec <ns> program`: `ip` execs the program after
/// entering the namespace, so the child's pid is the program's and signals reach it.
pub(super) fn in_namespace(ns: Option<&str>, program: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

pub(super) fn spawn_logged(cmd: &mut Command, log: File, what: &str) -> Result<Child, Error> {
    let err_log = log
        .try_clone()
        .map_err(io_err(format!("duplicating the log file of {what}")))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err_log))
        .spawn()
        .map_err(io_err(format!("spawning {what}")))
}

/// Polls until `child` is reaped (it was just sent SIGKILL).
pub(super) async fn reap(child: &mut Child, what: &str) -> Result<ExitStatus, Error> {
    let deadline = Instant::now() + REAP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(io_err(format!("reaping {what}"))(e)),
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("{what} to exit after SIGKILL"),
                waited: REAP_TIMEOUT,
                last: "still running".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(super) fn signal(pid: u32, sig: &str) -> Result<(), Error> {
    crate::process::signal(pid, sig).map_err(|e| Error::Command {
        command: e.command,
        status: e.status,
        stderr: e.stderr,
    })
}

/// Writes server `id`'s config, starts it (in namespace `ns` if given) and waits until it
/// logs "Server is ready".
pub(super) async fn start_server(
    spec: &super::Spec,
    workdir: &Path,
    ns: Option<&str>,
    id: u64,
    client_listen: &str,
    route_listen: &str,
    routes: &[String],
) -> Result<Server, Error> {
    let conf_path = workdir.join(format!("nats-n{id}.conf"));
    let log_path = workdir.join(format!("nats-n{id}.log"));
    let out_path = workdir.join(format!("nats-n{id}.out"));
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""));
    let routes_conf: Vec<String> = routes.iter().map(|r| format!("    {}", quote(r))).collect();
    // - ping_interval/ping_max (top level for clients, in `cluster` for routes; the same
    //   value for both, as the shipped config's top-level setting gives both): a route whose
    //   link went down is declared dead after 3 intervals instead of minutes, and until then
    //   the queue group still hands requests to the subscriptions behind it.
    // - cluster.no_advertise: servers do not tell clients about each other, so a client
    //   (a node, or the workload) stays on the server it was given.
    // - Explicit routes are retried forever, once a second: a healed link reconnects.
    let conf = format!(
        "server_name: n{id}\n\
         listen: {listen}\n\
         ping_interval: {client_ping}\n\
         ping_max: 2\n\
         log_file: {log}\n\
         cluster {{\n  \
           name: concord-check\n  \
           listen: {route_listen}\n  \
           no_advertise: true\n  \
           ping_interval: {client_ping}\n  \
           ping_max: 2\n  \
           routes: [\n{routes}\n  ]\n\
         }}\n",
        listen = quote(client_listen),
        log = quote(&log_path.display().to_string()),
        route_listen = quote(route_listen),
        client_ping = quote(spec.client_ping_interval.as_deref().unwrap_or("1s")),
        routes = routes_conf.join("\n"),
    );
    std::fs::write(&conf_path, conf).map_err(io_err(format!("writing {}", conf_path.display())))?;
    // Only what this instance logs counts: the log file may hold an earlier run's "ready".
    let offset = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)
        .map_err(io_err(format!("opening {}", out_path.display())))?;
    let mut cmd = in_namespace(ns, &spec.nats_server);
    cmd.arg("-c").arg(&conf_path);
    let mut child = spawn_logged(&mut cmd, out, &format!("nats-server n{id}"))?;

    let deadline = Instant::now() + SERVER_READY_TIMEOUT;
    loop {
        let text = read_from(&log_path, offset);
        if text.contains("Server is ready") {
            return Ok(Server {
                id,
                child: Some(child),
            });
        }
        let exited = match child.try_wait() {
            Ok(Some(status)) => Some(format!("exited with {status}")),
            Ok(None) => None,
            Err(e) => Some(format!("cannot be waited for: {e}")),
        };
        let timed_out = Instant::now() >= deadline;
        if exited.is_some() || timed_out {
            let _ = child.kill();
            let _ = child.wait();
            let why = exited.unwrap_or_else(|| {
                format!("did not log \"Server is ready\" within {SERVER_READY_TIMEOUT:?}")
            });
            let stdout = tail_lines(&out_path, 10);
            return Err(Error::NatsServer {
                id,
                message: format!("{why}; log:\n{}\n{stdout}", tail_str(&text, 20)),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `count` distinct free TCP ports on 127.0.0.1 (all bound at once, so they differ).
pub(super) fn free_ports(count: usize) -> Result<Vec<u16>, Error> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err("binding a free port on 127.0.0.1"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err("reading a bound port"))
}

// ----- small helpers ---------------------------------------------------------------------

/// Position of node `id` in the per-node vectors (out of range for unknown ids).
pub(super) fn index(id: u64) -> usize {
    usize::try_from(id.wrapping_sub(1)).unwrap_or(usize::MAX)
}

pub(super) fn index_checked(id: u64) -> Result<usize, Error> {
    if IDS.contains(&id) {
        Ok(index(id))
    } else {
        Err(Error::UnknownNode(id))
    }
}

pub(super) fn env_value(env: &[(String, String)], key: &str) -> Option<String> {
    env.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

/// Request with a JSON body, reply parsed as JSON (whatever its `ok`).
pub async fn request(
    client: &async_nats::Client,
    subject: &str,
    body: &Value,
    timeout: Duration,
) -> Result<Value, Error> {
    let payload = Bytes::from(body.to_string());
    let req = async_nats::Request::new()
        .payload(payload)
        .timeout(Some(timeout));
    // The outer timeout is a safety net in case the client's own timer does not fire.
    let msg = match tokio::time::timeout(
        timeout + Duration::from_millis(500),
        client.send_request(subject.to_string(), req),
    )
    .await
    {
        Ok(Ok(msg)) => msg,
        Ok(Err(e)) => {
            return Err(Error::Request {
                subject: subject.to_string(),
                message: e.to_string(),
            })
        }
        Err(_) => {
            return Err(Error::Request {
                subject: subject.to_string(),
                message: format!("no reply within {timeout:?}"),
            })
        }
    };
    serde_json::from_slice(&msg.payload).map_err(|e| Error::Request {
        subject: subject.to_string(),
        message: format!(
            "reply is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&msg.payload)
        ),
    })
}

/// The leader of a set of `admin.status` replies: a node that reports role `leader` and
/// names itself, named by more than half of the voters (its own member list, or the three
/// ids). Among several (stale replies), the highest term wins.
pub(super) fn agreed_leader(statuses: &BTreeMap<u64, Value>) -> Option<u64> {
    crate::process::agreed_leader(statuses, IDS.len())
}

/// The leader when every node of [`IDS`] answered and follows it (see
/// [`CheckCluster::wait_stable`]); else what is missing.
pub(super) fn stable_leader(statuses: &BTreeMap<u64, Value>) -> Result<u64, String> {
    let leader = agreed_leader(statuses).ok_or("no leader agreed by a majority")?;
    let own = statuses
        .get(&leader)
        .ok_or_else(|| format!("leader {leader} did not answer"))?;
    let commit = own["commit_index"].as_u64().unwrap_or(0);
    let voters = &own["members"]["voters"];
    for id in IDS {
        let s = statuses
            .get(&id)
            .ok_or_else(|| format!("node {id} did not answer"))?;
        let role = if id == leader { "leader" } else { "follower" };
        if s["leader"].as_u64() != Some(leader)
            || s["role"] != json!(role)
            || s["members"]["voters"] != *voters
            || s["last_applied"].as_u64().unwrap_or(0) < commit
        {
            return Err(format!(
                "node {id}: role={} leader={} voters={} last_applied={} \
                 (leader {leader}: commit_index={commit} voters={voters})",
                s["role"], s["leader"], s["members"]["voters"], s["last_applied"]
            ));
        }
    }
    Ok(leader)
}

pub(super) fn read_from(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

pub(super) fn tail_lines(path: &Path, lines: usize) -> String {
    tail_str(&read_from(path, 0), lines)
}

pub(super) fn tail_str(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
