//! Controlling a [`Cluster`]'s processes: start, stop, kill, restart, pause, resume, wipe and
//! add nodes, run the CLI, print logs; and NATS outages (kill and restart the fixture's
//! `nats-server` on its port, for `tests/faults.rs`).

use super::*;

impl Cluster {
    /// Starts a node that was prepared but is not running (see `ClusterOptions::start_nodes`)
    /// and waits until it answers its admin status.
    pub async fn start_node(&self, id: u64) -> Result<()> {
        let r = async {
            if self.is_running(id) {
                bail!("node {id} is already running");
            }
            self.spawn_node(id)?;
            self.wait_node_answers(id, NODE_READY_TIMEOUT).await
        }
        .await;
        r.map_err(|e| self.failed_with(e))
    }

    /// Starts a prepared node that is expected to refuse to start, and waits (bounded by
    /// `timeout`) for it to exit. Returns its exit status; its output is in [`Cluster::log`].
    pub async fn run_node_until_exit(&self, id: u64, timeout: Duration) -> Result<ExitStatus> {
        self.spawn_node(id)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait(id)? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.kill(id).await;
                bail!(
                    "node {id} did not exit within {timeout:?}:\n{}",
                    self.log(id)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// SIGKILL, then reap, then wait until NATS has dropped the node's subscriptions (so
    /// that no request of the test is routed to the dead process).
    pub async fn kill(&self, id: u64) -> Result<()> {
        let r = async {
            self.with_node(id, |node| {
                let mut child = node
                    .child
                    .take()
                    .ok_or_else(|| anyhow!("kill: node {id} is not running"))?;
                node.paused = false;
                child.kill().with_context(|| format!("SIGKILL node {id}"))?;
                child.wait().with_context(|| format!("reaping node {id}"))?;
                Ok(())
            })?;
            self.wait_unsubscribed(id, Duration::from_secs(10)).await
        }
        .await;
        r.map_err(|e| self.failed_with(e))
    }

    /// Waits until NATS answers `P.node.<id>.admin.status` with "no responders": the server
    /// has noticed that node `id` is gone and removed its subscriptions (its queue-group
    /// members on `P.kv.*` included, as they die with the same process). Without this a
    /// request sent right after a kill may be routed to the dead connection and time out.
    pub async fn wait_unsubscribed(&self, id: u64, timeout: Duration) -> Result<()> {
        let subject = self.subject(&format!("node.{id}.admin.status"));
        let what = format!(
            "NATS to drop the subscriptions of stopped node {id} (no responders on {subject})"
        );
        let c = self;
        wait_until(timeout, &what, move || {
            let subject = subject.clone();
            async move {
                let request = async_nats::Request::new()
                    .payload(to_bytes(&json!({})))
                    .timeout(Some(Duration::from_millis(500)));
                match c.client.send_request(subject, request).await {
                    Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(true),
                    Ok(reply) => bail!(
                        "node {id} still answers: {}",
                        String::from_utf8_lossy(&reply.payload)
                    ),
                    Err(e) => bail!("{e}"),
                }
            }
        })
        .await
    }

    /// SIGTERM (clean shutdown), wait up to 10 s for the exit, then SIGKILL. Returns the exit
    /// status (so a test can check that the node shut down cleanly).
    pub async fn stop(&self, id: u64) -> Result<ExitStatus> {
        let r = async {
            let pid = self
                .pid(id)
                .ok_or_else(|| anyhow!("stop: node {id} is not running"))?;
            if self.with_node(id, |n| Ok(n.paused))? {
                self.resume(id).await?;
            }
            signal(pid, "-TERM")?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = self.try_wait(id)? {
                    self.wait_unsubscribed(id, Duration::from_secs(10)).await?;
                    return Ok(status);
                }
                if Instant::now() >= deadline {
                    eprintln!("node {id} did not exit within 10 s of SIGTERM; killing it");
                    self.kill(id).await?;
                    bail!("node {id} did not exit within 10 s of SIGTERM (killed)");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        .await;
        r.map_err(|e| self.failed_with(e))
    }

    /// Sends `sig` (e.g. `"-TERM"`) to node `id` without waiting; see [`Cluster::wait_exit`].
    pub fn signal_node(&self, id: u64, sig: &str) -> Result<()> {
        let pid = self
            .pid(id)
            .ok_or_else(|| anyhow!("signal: node {id} is not running"))?;
        Ok(signal(pid, sig)?)
    }

    /// Waits up to `timeout` for node `id` to exit and reaps it; returns its exit status.
    pub async fn wait_exit(&self, id: u64, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait(id)? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(self.failed_with(anyhow!(
                    "node {id} did not exit within {timeout:?}; log tail:\n{}",
                    tail(&self.log(id), 3000)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts node `id` again with the same id, data dir and env (stopping it gracefully first
    /// if it is still running) and waits until it answers its admin status. Its log file is
    /// appended to.
    pub async fn restart(&self, id: u64) -> Result<()> {
        if self.is_running(id) {
            self.stop(id).await?;
        }
        self.start_node(id).await
    }

    /// Deletes the contents of node `id`'s data dir. The node must not be running.
    pub async fn wipe(&self, id: u64) -> Result<()> {
        let r = (|| {
            if self.is_running(id) {
                bail!("wipe: node {id} is running; kill or stop it first");
            }
            let dir = self.data_dir(id);
            for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir:?}"))? {
                let path = entry?.path();
                if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                }
                .with_context(|| format!("removing {path:?}"))?;
            }
            Ok(())
        })();
        r.map_err(|e| self.failed_with(e))
    }

    /// Sets (or replaces) one env variable of node `id` for its next start (e.g. a
    /// restart with another setting). The running process is not affected.
    pub fn set_node_env(&self, id: u64, key: &str, value: &str) -> Result<()> {
        self.with_node(id, |n| {
            n.env.retain(|(k, _)| k != key);
            n.env.push((key.to_string(), value.to_string()));
            Ok(())
        })
    }

    /// Runs node `id` from `bin` at its next start (`None`: the cluster's binary again), as
    /// a rolling upgrade or a downgrade does. The running process is not affected.
    pub fn set_node_bin(&self, id: u64, bin: Option<PathBuf>) -> Result<()> {
        self.with_node(id, |n| {
            n.bin = bin;
            Ok(())
        })
    }

    /// SIGSTOP: the process freezes (no heartbeats, no replies) but keeps its sockets.
    pub async fn pause(&self, id: u64) -> Result<()> {
        let r = (|| {
            let pid = self
                .pid(id)
                .ok_or_else(|| anyhow!("pause: node {id} is not running"))?;
            signal(pid, "-STOP")?;
            self.with_node(id, |n| {
                n.paused = true;
                Ok(())
            })
        })();
        r.map_err(|e| self.failed_with(e))
    }

    /// SIGCONT.
    pub async fn resume(&self, id: u64) -> Result<()> {
        let r = (|| {
            let pid = self
                .pid(id)
                .ok_or_else(|| anyhow!("resume: node {id} is not running"))?;
            signal(pid, "-CONT")?;
            self.with_node(id, |n| {
                n.paused = false;
                Ok(())
            })
        })();
        r.map_err(|e| self.failed_with(e))
    }

    /// Starts an extra node `id` (not an initial member; its `initial_members` is the
    /// cluster's) with the cluster's env plus `env`, and waits until it answers its admin
    /// status. Joining it to the cluster (`cluster add`) is up to the test.
    pub async fn add_node(&self, id: u64, env: &[(&str, &str)]) -> Result<()> {
        let r = async {
            if self.nodes().contains_key(&id) {
                bail!("add_node: node {id} already exists");
            }
            // The cluster-wide env of node 1 (minus its per-node part) is not recorded
            // separately, so rebuild from the fixture defaults plus the caller's env.
            let extra: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let base = self.cluster_env();
            let opts = ClusterOptions {
                cluster_name: self.cluster_name.clone(),
                prefix: self.prefix.clone(),
                ..ClusterOptions::default()
            };
            let tmp = self
                .tmp
                .as_ref()
                .expect("temp dir lives as long as the cluster");
            let node = prepare_node(
                tmp.path(),
                id,
                &self.initial_members,
                &self.nats_url,
                &opts,
                &base,
                &extra,
            )?;
            self.nodes().insert(id, node);
            self.spawn_node(id)?;
            self.wait_node_answers(id, NODE_READY_TIMEOUT).await
        }
        .await;
        r.map_err(|e| self.failed_with(e))
    }

    /// Runs the `concord` CLI against this cluster (its NATS URL, prefix and admin token)
    /// with `args`, off the async runtime.
    pub async fn run_cli(&self, args: &[&str]) -> Result<CliRun> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--timeout-ms", "10000"]).args(args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CONCORD_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("CONCORD_NATS__URL", &self.nats_url)
            .env("CONCORD_NATS__SUBJECT_PREFIX", &self.prefix)
            .current_dir(std::env::temp_dir());
        if let Some(t) = &self.admin_token {
            cmd.env("CONCORD_TOKEN", t);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await?
            .context("running concord")?;
        Ok(CliRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Prints every node log (and the NATS log) to stderr.
    pub fn dump_logs(&self) {
        let nodes: Vec<(u64, PathBuf)> = match self.nodes.lock() {
            Ok(n) => n.values().map(|n| (n.id, n.log_path.clone())).collect(),
            Err(p) => p
                .into_inner()
                .values()
                .map(|n| (n.id, n.log_path.clone()))
                .collect(),
        };
        for (id, path) in nodes {
            let text = std::fs::read(&path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| format!("<cannot read {path:?}: {e}>"));
            eprintln!(
                "===== node {id} log ({}) =====\n{}",
                path.display(),
                tail(&text, 512 * 1024)
            );
        }
        if let Some(path) = &self.nats_log {
            let text = std::fs::read(path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            eprintln!(
                "===== nats-server log ({}) =====\n{}",
                path.display(),
                tail(&text, 32 * 1024)
            );
        }
        eprintln!("===== end of logs =====");
    }

    // ----- internals ---------------------------------------------------------------------

    pub(super) fn nodes(&self) -> MutexGuard<'_, BTreeMap<u64, Node>> {
        // std Mutex: never held across `.await`.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn with_node<T>(
        &self,
        id: u64,
        f: impl FnOnce(&mut Node) -> Result<T>,
    ) -> Result<T> {
        let mut nodes = self.nodes();
        let node = nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no node {id} in this cluster"))?;
        f(node)
    }

    pub(super) fn failed_with(&self, e: anyhow::Error) -> anyhow::Error {
        self.mark_failed();
        e
    }

    /// The env shared by all nodes, recovered from the lowest node (without its per-node
    /// identity) for `add_node`.
    pub(super) fn cluster_env(&self) -> Vec<(String, String)> {
        let nodes = self.nodes();
        nodes
            .values()
            .next()
            .map(|n| {
                n.env
                    .iter()
                    .filter(|(k, _)| {
                        !matches!(
                            k.as_str(),
                            "CONCORD_NODE__ID"
                                | "CONCORD_DATA_DIR"
                                | "CONCORD_CLUSTER__INITIAL_MEMBERS"
                        )
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn spawn_node(&self, id: u64) -> Result<()> {
        self.with_node(id, |node| {
            if node.child.is_some() {
                bail!("node {id} is already running");
            }
            let mut log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&node.log_path)
                .with_context(|| format!("opening {:?}", node.log_path))?;
            writeln!(log, "----- fixture: starting node {id} -----")?;
            let bin = node.bin.clone().unwrap_or_else(|| self.bin.clone());
            let mut cmd = Command::new(&bin);
            cmd.arg("serve")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log));
            // Nothing from the developer's shell may leak into the nodes' config.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("CONCORD_") {
                    cmd.env_remove(&key);
                }
            }
            for (k, v) in &node.env {
                cmd.env(k, v);
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("spawning {} serve for node {id}", bin.display()))?;
            node.child = Some(child);
            node.paused = false;
            Ok(())
        })
    }

    pub(super) fn try_wait(&self, id: u64) -> Result<Option<ExitStatus>> {
        self.with_node(id, |node| match node.child.as_mut() {
            None => Ok(None),
            Some(child) => {
                let status = child
                    .try_wait()
                    .with_context(|| format!("try_wait node {id}"))?;
                if status.is_some() {
                    node.child = None;
                    node.paused = false;
                }
                Ok(status)
            }
        })
    }

    /// One line per node for error messages.
    pub(super) async fn status_summary(&self) -> String {
        let mut out = Vec::new();
        for id in self.ids() {
            let line = if !self.is_running(id) {
                "not running".to_string()
            } else if self.with_node(id, |n| Ok(n.paused)).unwrap_or(false) {
                "paused".to_string()
            } else {
                match self.status(id).await {
                    Ok(s) => format!(
                        "role={} leader={} term={} last_applied={}",
                        s["role"], s["leader"], s["term"], s["last_applied"]
                    ),
                    Err(e) => format!("status error: {e:#}"),
                }
            };
            out.push(format!("[node {id}: {line}]"));
        }
        out.join(" ")
    }
}

impl Cluster {
    /// The port of the fixture's NATS URL (`nats://127.0.0.1:<port>`).
    pub(super) fn nats_port(&self) -> Result<u16> {
        self.nats_url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .ok_or_else(|| anyhow!("cannot parse a port from the NATS URL {}", self.nats_url))
    }

    /// Whether the fixture's own `nats-server` process is running.
    pub fn nats_running(&self) -> bool {
        self.nats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// SIGKILLs the fixture's `nats-server` and reaps it. Every client (nodes and the test's
    /// own) loses its connection; async-nats clients keep trying to reconnect.
    pub async fn kill_nats(&self) -> Result<()> {
        let r = (|| {
            let mut child = self
                .nats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .ok_or_else(|| anyhow!("kill_nats: no nats-server of this fixture is running"))?;
            child.kill().context("SIGKILL nats-server")?;
            child.wait().context("reaping nats-server")?;
            Ok(())
        })();
        r.map_err(|e| self.failed_with(e))
    }

    /// Starts `nats-server` again on the same address and port as before (so every client
    /// reconnects to the URL it knows) and waits until it listens. The previous server log
    /// is kept as `nats.log.<n>`. Retries for up to 15 s if the port is not free yet.
    pub async fn start_nats(&self) -> Result<()> {
        let r = async {
            if self.nats_running() {
                bail!("start_nats: nats-server is already running");
            }
            let log_path = self
                .nats_log
                .clone()
                .ok_or_else(|| anyhow!("start_nats: this cluster uses an external NATS"))?;
            let port = self.nats_port()?;
            let server = NatsServer::restart_on(&nats_server::find()?, &log_path, port).await?;
            *self.nats.lock().unwrap_or_else(|p| p.into_inner()) = Some(server.child);
            *self
                .nats_monitor_port
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = server.monitor_port;
            Ok(())
        }
        .await;
        r.map_err(|e| self.failed_with(e))
    }

    /// [`Cluster::kill_nats`] then [`Cluster::start_nats`] on the same port.
    pub async fn restart_nats(&self) -> Result<()> {
        self.kill_nats().await?;
        self.start_nats().await
    }
}
