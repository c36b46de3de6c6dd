//! Bringing a [`CheckCluster`] up and down: starting the servers and nodes, connecting the
//! clients, waiting for the NATS mesh and a stable leader, and the teardown that `Drop` and
//! [`CheckCluster::shutdown`] share.

use super::*;

impl CheckCluster {
    pub(super) fn node_mut(&mut self, id: u64) -> Result<&mut Node, Error> {
        self.nodes
            .get_mut(index_checked(id)?)
            .ok_or(Error::UnknownNode(id))
    }

    /// `Err(NodeExited)` (and the child forgotten) if node `id` exited without being killed
    /// by us.
    pub(super) fn check_exited(&mut self, id: u64) -> Result<(), Error> {
        let node = self.node_mut(id)?;
        let Some(child) = node.child.as_mut() else {
            return Ok(());
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                node.child = None;
                node.paused = false;
                Err(Error::NodeExited {
                    id,
                    status: status.to_string(),
                    log_tail: self.log_tail(id, 40),
                })
            }
            Err(e) => Err(io_err(format!("checking whether node {id} runs"))(e)),
        }
    }

    /// The node's full env: this module's settings, then the caller's `node_env`.
    pub(super) fn node_env(&self, id: u64) -> Vec<(String, String)> {
        let nats_url = match &self.net {
            Net::Netns(_) => format!("nats://127.0.0.1:{NETNS_CLIENT_PORT}"),
            Net::Loopback { .. } => self.client_url(id),
        };
        let mut env: Vec<(String, String)> = vec![
            ("CONCORD_NODE__ID".into(), id.to_string()),
            ("CONCORD_CLUSTER__INITIAL_MEMBERS".into(), "1,2,3".into()),
            ("CONCORD_NATS__URL".into(), nats_url),
            (
                "CONCORD_DATA_DIR".into(),
                self.workdir.join(format!("n{id}")).display().to_string(),
            ),
            ("CONCORD_CLUSTER__NAME".into(), "check".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        for (k, v) in &self.spec.node_env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    pub(super) fn spawn_node(&mut self, id: u64) -> Result<(), Error> {
        let bin = self.spec.bin.clone();
        let ns = match &self.net {
            Net::Netns(n) => Some(ns_name(&n.tag, id)),
            Net::Loopback { .. } => None,
        };
        let node = self.node_mut(id)?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .map_err(io_err(format!("opening {}", node.log_path.display())))?;
        writeln!(log, "----- check: starting node {id} -----")
            .map_err(io_err(format!("writing {}", node.log_path.display())))?;
        let mut cmd = in_namespace(ns.as_deref(), &bin);
        cmd.arg("serve");
        // Nothing from the caller's shell may leak into the node's configuration.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CONCORD_") {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(node.env.iter().map(|(k, v)| (k, v)));
        let child = spawn_logged(&mut cmd, log, &format!("node {id}"))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    pub(super) async fn start_servers(&mut self) -> Result<(), Error> {
        if let Net::Netns(netns) = &self.net {
            let tag = netns.tag.clone();
            for id in IDS {
                let routes: Vec<String> = IDS
                    .iter()
                    .filter(|&&peer| peer != id)
                    .map(|&peer| format!("nats-route://{}:{NETNS_ROUTE_PORT}", mesh_ip(peer, id)))
                    .collect();
                let server = start_server(
                    &self.spec,
                    &self.workdir,
                    Some(&ns_name(&tag, id)),
                    id,
                    &format!("0.0.0.0:{NETNS_CLIENT_PORT}"),
                    &format!("0.0.0.0:{NETNS_ROUTE_PORT}"),
                    &routes,
                )
                .await?;
                self.servers.push(server);
            }
            return Ok(());
        }
        // Loopback: free ports are picked by binding port 0; another process may take one
        // before the server binds it, so a failed start is retried with new ports.
        let mut last_err = None;
        for _ in 0..LOOPBACK_ATTEMPTS {
            let ports = free_ports(6)?;
            let (client_ports, route_ports) = ports.split_at(3);
            let mut servers = Vec::new();
            let mut failed = None;
            for id in IDS {
                let routes: Vec<String> = IDS
                    .iter()
                    .filter(|&&peer| peer != id)
                    .map(|&peer| format!("nats-route://127.0.0.1:{}", route_ports[index(peer)]))
                    .collect();
                match start_server(
                    &self.spec,
                    &self.workdir,
                    None,
                    id,
                    &format!("127.0.0.1:{}", client_ports[index(id)]),
                    &format!("127.0.0.1:{}", route_ports[index(id)]),
                    &routes,
                )
                .await
                {
                    Ok(server) => servers.push(server),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => {
                    if let Net::Loopback {
                        client_ports: cp, ..
                    } = &mut self.net
                    {
                        *cp = client_ports.to_vec();
                    }
                    self.servers = servers;
                    return Ok(());
                }
                Some(e) => {
                    for mut server in servers {
                        if let Some(mut child) = server.child.take() {
                            let _ = child.kill();
                            let _ = reap(&mut child, "nats-server").await;
                        }
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Spec("no nats-server start attempted".into())))
    }

    /// One client per server plus a responder on `_CHECK.<tag>.mesh.<id>` for mesh probes.
    pub(super) async fn connect_clients(&mut self) -> Result<(), Error> {
        for id in IDS {
            let url = self.client_url(id);
            // The server listens already, but a fresh veth may need a moment: retry briefly.
            let deadline = Instant::now() + Duration::from_secs(10);
            let client = loop {
                let attempt = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(2))
                    // Pinned to its own server: never fail over to another one.
                    .ignore_discovered_servers()
                    .connect(url.as_str())
                    .await;
                match attempt {
                    Ok(client) => break client,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(Error::Connect {
                            url,
                            message: e.to_string(),
                        })
                    }
                    Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
                }
            };
            let subject = format!("_CHECK.{}.mesh.{id}", self.tag);
            let mut sub = client
                .subscribe(subject.clone())
                .await
                .map_err(|e| Error::Request {
                    subject: subject.clone(),
                    message: format!("subscribing: {e}"),
                })?;
            let replier = client.clone();
            self.responders.push(tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    if let Some(reply) = msg.reply {
                        let _ = replier.publish(reply, Bytes::from_static(b"ok")).await;
                    }
                }
            }));
            self.clients.push(client);
        }
        Ok(())
    }

    /// `Ok` when a request from every server reaches a responder on every other server (so
    /// every route carries messages and subscription interest both ways).
    pub(super) async fn mesh_probe(&self) -> Result<(), String> {
        let mut probes = Vec::new();
        for from in IDS {
            for to in IDS.iter().copied().filter(|&to| to != from) {
                probes.push(async move {
                    let subject = format!("_CHECK.{}.mesh.{to}", self.tag);
                    let client = self
                        .clients
                        .get(index(from))
                        .ok_or_else(|| format!("no client for server {from}"))?;
                    let req = async_nats::Request::new()
                        .payload(Bytes::new())
                        .timeout(Some(PROBE_TIMEOUT));
                    match tokio::time::timeout(PROBE_TIMEOUT * 2, client.send_request(subject, req))
                        .await
                    {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(format!("server {from} -> server {to}: {e}")),
                        Err(_) => Err(format!("server {from} -> server {to}: no reply")),
                    }
                });
            }
        }
        let failures: Vec<String> = futures::future::join_all(probes)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    pub(super) async fn wait_mesh(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.mesh_probe().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                let logs: Vec<String> = IDS
                    .iter()
                    .map(|&id| format!("nats-server n{id}:\n{}", self.nats_log_tail(id, 10)))
                    .collect();
                return Err(Error::Timeout {
                    what: "the NATS servers to route messages between every pair".into(),
                    waited: timeout,
                    last: format!("{last}\n{}", logs.join("\n")),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Like [`CheckCluster::wait_for_leader`], but fails at once when a node exits.
    /// Like [`CheckCluster::wait_stable`], but fails at once when a node exits.
    pub(super) async fn wait_stable_watching(&mut self, timeout: Duration) -> Result<u64, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            for id in IDS {
                self.check_exited(id)?;
            }
            let last = match stable_leader(&self.statuses().await) {
                Ok(leader) => return Ok(leader),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                let mut last = format!("{last}; {}", self.status_summary().await);
                for id in IDS {
                    last.push_str(&format!("\nnode {id} log tail:\n{}", self.log_tail(id, 15)));
                }
                return Err(Error::Timeout {
                    what: "every node of the new cluster to follow one leader".into(),
                    waited: timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    pub(super) async fn statuses(&self) -> BTreeMap<u64, Value> {
        let polls = futures::future::join_all(IDS.iter().map(|&id| self.status(id))).await;
        IDS.iter()
            .zip(polls)
            .filter_map(|(&id, r)| r.ok().map(|s| (id, s)))
            .collect()
    }

    /// One bracket per node, for error messages.
    pub(super) async fn status_summary(&self) -> String {
        let polls = futures::future::join_all(IDS.iter().map(|&id| self.status(id))).await;
        IDS.iter()
            .zip(polls)
            .map(|(&id, r)| match r {
                Ok(s) => format!(
                    "[node {id}: role={} leader={} term={} last_applied={}]",
                    s["role"], s["leader"], s["term"], s["last_applied"]
                ),
                Err(e) => format!("[node {id}: {e}]"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Synchronous, best-effort, idempotent: stop everything and delete the namespaces.
    pub(super) fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        for handle in self.responders.drain(..) {
            handle.abort();
        }
        for child in self
            .nodes
            .iter_mut()
            .filter_map(|n| n.child.take())
            .chain(self.servers.iter_mut().filter_map(|s| s.child.take()))
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Net::Netns(netns) = &mut self.net {
            netns.teardown();
        }
        self.cleaned = true;
    }
}
