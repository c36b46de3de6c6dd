//! The `etcd` target (cargo feature `bench-etcd`): etcd's v3 gRPC API through the
//! `etcd-client` crate. Put is `Put`; a linearizable get is the default `Range`
//! (`serializable = false`: the member confirms with the leader, ReadIndex); a stale get is
//! `Range` with `serializable = true` (served from the member's own state); delete is
//! `DeleteRange` of the one key.
//!
//! Connections: one `etcd_client::Client` is one balanced gRPC channel with an HTTP/2
//! connection to every endpoint; it is cloneable and its clones share those connections.
//! HTTP/2 multiplexes all in-flight requests of a connection over one TCP stream (one
//! writer, one reader, flow-control windows), so many clients on one channel queue behind
//! each other; the bench opens one channel per `clients_per_conn` clients (default 16) and
//! hands them out round-robin.

use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Client, ConnectOptions, GetOptions, KvClient};

use super::{snake_case, Driver, Op, Outcome};

#[derive(Clone)]
pub struct EtcdHandle {
    kv: KvClient,
    value: Bytes,
    stale: bool,
}

pub struct Etcd {
    conns: Vec<Client>,
    value: Bytes,
    stale: bool,
}

impl Etcd {
    pub async fn connect(
        endpoints: &[String],
        clients: usize,
        clients_per_conn: usize,
        value_size: usize,
        stale: bool,
        timeout: Duration,
    ) -> anyhow::Result<Etcd> {
        let n = clients.div_ceil(clients_per_conn.max(1)).max(1);
        let opts = ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(Duration::from_secs(5));
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let c = Client::connect(endpoints, Some(opts.clone()))
                .await
                .map_err(|e| anyhow::anyhow!("etcd {endpoints:?}: {e}"))?;
            conns.push(c);
        }
        // The channel connects lazily: one read now turns an unreachable cluster into a clear
        // error instead of a run of failed operations.
        conns[0]
            .kv_client()
            .get("bench:probe", None)
            .await
            .map_err(|e| anyhow::anyhow!("etcd {endpoints:?} does not answer: {e}"))?;
        Ok(Etcd {
            conns,
            value: Bytes::from(vec![b'x'; value_size]),
            stale,
        })
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The handle of client `c`: its share of the channels, round-robin.
    pub fn handle(&self, c: usize) -> EtcdHandle {
        EtcdHandle {
            kv: self.conns[c % self.conns.len()].kv_client(),
            value: self.value.clone(),
            stale: self.stale,
        }
    }
}

impl Driver for EtcdHandle {
    type Request = String;

    fn prepare(&self, _op: Op, key: u64) -> String {
        format!("bench:{key}")
    }

    async fn execute(&mut self, op: Op, key: String) -> Outcome {
        let res = match op {
            Op::Put => self.kv.put(key, self.value.to_vec(), None).await.map(drop),
            Op::Get => {
                let opts = self.stale.then(|| GetOptions::new().with_serializable());
                // An empty result (key not yet written) is a served read.
                self.kv.get(key, opts).await.map(drop)
            }
            Op::Delete => self.kv.delete(key, None).await.map(drop),
        };
        res.map_err(|e| error_code(&e))
    }
}

/// `etcd_<grpc code>` (`etcd_unavailable`, `etcd_deadline_exceeded`, ...), or the kind of
/// a client-side failure.
fn error_code(e: &etcd_client::Error) -> String {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(s) => format!("etcd_{}", snake_case(&format!("{:?}", s.code()))),
        E::TransportError(_) => "etcd_transport".into(),
        E::IoError(_) => "etcd_io".into(),
        _ => "etcd_client".into(),
    }
}
