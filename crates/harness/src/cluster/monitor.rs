//! The fixture's `nats-server` as its monitoring endpoint sees it (`/connz`, `/subsz`): which
//! connections it still holds and what each is subscribed to. Only for a cluster started with
//! [`ClusterOptions::nats_server_config`] enabling the monitor (`http_port: -1`).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Longest one monitoring request may take: the server answers from memory.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest monitoring reply read (a few hundred subscriptions fit many times over).
const MONITOR_MAX_BYTES: u64 = 16 << 20;

/// A connection nats-server closed, from `/connz?state=closed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedConnection {
    /// The server's connection id: increasing, so a later connection has a larger one.
    pub cid: u64,
    pub name: String,
    pub reason: String,
}

impl Cluster {
    /// `GET <path>` on the fixture's `nats-server` monitor (e.g. `/connz?subs=1`), as JSON.
    pub async fn nats_monitor(&self, path: &str) -> Result<Value> {
        let port = self
            .nats_monitor_port
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ok_or_else(|| {
                anyhow!("nats_monitor: this cluster's nats-server has no monitor (http_port)")
            })?;
        tokio::time::timeout(MONITOR_TIMEOUT, http_get(port, path))
            .await
            .map_err(|_| anyhow!("nats monitor {path}: no answer within {MONITOR_TIMEOUT:?}"))?
    }

    /// Subscriptions on the cluster's `P.kv.*` queue subject, per NATS connection name, as
    /// the server holds them now (a node's connections are named `concord-<id>` and
    /// `concord-<id>-bulk`; a closed connection is absent).
    pub async fn kv_queue_subscriptions(&self) -> Result<BTreeMap<String, usize>> {
        let connz = self.nats_monitor("/connz?subs=1&limit=4096").await?;
        let wildcard = self.subject("kv.*");
        let conns = connz["connections"]
            .as_array()
            .ok_or_else(|| anyhow!("/connz without connections: {connz}"))?;
        let mut out = BTreeMap::new();
        for c in conns {
            let name = c["name"].as_str().unwrap_or("").to_string();
            let subs = c["subscriptions_list"].as_array().map_or(0, |l| {
                l.iter().filter(|s| s.as_str() == Some(&wildcard)).count()
            });
            *out.entry(name).or_default() += subs;
        }
        Ok(out)
    }

    /// Whether the server still holds a connection of node `id` (either of its two).
    pub async fn node_connected(&self, id: u64) -> Result<bool> {
        let subs = self.kv_queue_subscriptions().await?;
        let own = format!("concord-{id}");
        let bulk = format!("concord-{id}-bulk");
        Ok(subs.keys().any(|n| *n == own || *n == bulk))
    }

    /// Connections the server closed so far (it keeps the latest ones), e.g. `concord-1`
    /// closed for `Stale Connection` when it stopped answering pings.
    pub async fn closed_connections(&self) -> Result<Vec<ClosedConnection>> {
        let connz = self.nats_monitor("/connz?state=closed&limit=4096").await?;
        let conns = connz["connections"].as_array().cloned().unwrap_or_default();
        Ok(conns
            .iter()
            .map(|c| {
                let field = |f: &str| c[f].as_str().unwrap_or("").to_string();
                ClosedConnection {
                    cid: c["cid"].as_u64().unwrap_or(0),
                    name: field("name"),
                    reason: field("reason"),
                }
            })
            .collect())
    }

    /// The fixture's `nats-server` log so far (empty for an external NATS).
    pub fn nats_log_text(&self) -> String {
        self.nats_log
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1:`port` (the harness has no HTTP client, and one
/// request to a loopback monitor needs none), returning the JSON body.
async fn http_get(port: u16, path: &str) -> Result<Value> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to the nats monitor on port {port}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.take(MONITOR_MAX_BYTES).read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("nats monitor {path}: no HTTP header end"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("nats monitor {path}: {}", head.lines().next().unwrap_or(""));
    }
    serde_json::from_str(body).with_context(|| format!("nats monitor {path}: body is not JSON"))
}
