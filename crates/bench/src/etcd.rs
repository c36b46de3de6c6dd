//! The `etcd` target (cargo feature `bench-etcd`): etcd's v3 gRPC API through the
//! `etcd-client` crate. Put is `Put`; a linearizable get is the default `Range`
//! (`serializable = false`: the member confirms with the leader, ReadIndex); a stale get is
//! `Range` with `serializable = true` (served from the member's own state); delete is
//! `DeleteRange` of the one key. `cas` is etcd's optimistic update loop: a linearizable
//! `Range` of the counter (a missing key is 0 at mod_revision 0), then a `Txn` comparing
//! the key's `mod_revision` with the one read and putting the value + 1 if it holds; when
//! it does not, a fresh `Range` and another try. Counters are decimal text (etcd values are
//! bytes). etcd has no increment, so `incr` is refused before the run.
//!
//! Connections: one `etcd_client::Client` is one balanced gRPC channel with an HTTP/2
//! connection to every endpoint (requests spread over the members, which forward writes and
//! ReadIndex to the leader); it is cloneable and its clones share those connections. The
//! bench opens `--etcd-conns` channels (default 1) and hands them to the clients
//! round-robin. One channel for all clients is the fastest setting measured on this 2-core
//! machine (3 members on loopback, 64 and 256 clients, puts and gets): HTTP/2 multiplexing
//! is not the bottleneck, and every extra connection costs etcd and the client CPU. At 256
//! clients, one channel per client gave 7k puts/s and 9k gets/s, one per 16 clients 8-9.5k
//! and 9-13k, one for all 11.7k and 17-22k; at 64 clients one channel was at least as fast
//! as 4 or 16.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse,
};

use super::{key_name, snake_case, Driver, Op, OpResult, MAX_CAS_ATTEMPTS};

#[derive(Clone)]
pub struct EtcdHandle {
    kv: KvClient,
    value_size: usize,
    stale: bool,
    /// `cas` transactions whose compare failed (this client's).
    conflicts: u64,
}

pub struct Etcd {
    conns: Vec<Client>,
    value_size: usize,
    stale: bool,
}

impl Etcd {
    pub async fn connect(
        endpoints: &[String],
        conns: usize,
        value_size: usize,
        stale: bool,
        timeout: Duration,
    ) -> anyhow::Result<Etcd> {
        let n = conns.max(1);
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
            value_size,
            stale,
        })
    }

    /// Channel `c` (round-robin), for the lease and lock clients.
    pub fn client(&self, c: usize) -> &Client {
        &self.conns[c % self.conns.len()]
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The handle of client `c`: its share of the channels, round-robin.
    pub fn handle(&self, c: usize) -> EtcdHandle {
        EtcdHandle {
            kv: self.conns[c % self.conns.len()].kv_client(),
            value_size: self.value_size,
            stale: self.stale,
            conflicts: 0,
        }
    }
}

impl EtcdHandle {
    /// Read, then put value + 1 in a Txn that holds only if the key's mod_revision is still
    /// the one read; a failed compare's `else` branch reads the key in the same Txn (the
    /// idiom of etcd's own STM), so the next try needs no read of its own. At most
    /// [`MAX_CAS_ATTEMPTS`] tries.
    async fn cas(&mut self, key: String) -> Result<(), etcd_client::Error> {
        let read = self.kv.get(key.as_str(), None).await?;
        let mut seen = counter_of(read.kvs().first());
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (value, revision) = seen;
            let next = value.wrapping_add(1).to_string();
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::put(key.as_str(), next, None)])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let reply = self.kv.txn(txn).await?;
            if reply.succeeded() {
                return Ok(());
            }
            self.conflicts += 1;
            seen = match reply.op_responses().first() {
                Some(TxnOpResponse::Get(read)) => counter_of(read.kvs().first()),
                _ => counter_of(self.kv.get(key.as_str(), None).await?.kvs().first()),
            };
        }
        Err(etcd_client::Error::InvalidArgs("cas_gave_up".into()))
    }
}

/// A counter's value and mod_revision as read: a missing key is 0 at revision 0.
fn counter_of(kv: Option<&etcd_client::KeyValue>) -> (i64, i64) {
    kv.map_or((0, 0), |kv| (counter_value(kv.value()), kv.mod_revision()))
}

/// A counter's decimal text; anything else counts as 0 (the cas then overwrites it).
fn counter_value(bytes: &[u8]) -> i64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Driver for EtcdHandle {
    /// The key, and for a put its value.
    type Request = (String, Vec<u8>);

    fn prepare(&self, op: Op, key: u64) -> (String, Vec<u8>) {
        let value = match op {
            Op::Put => super::fresh_value(self.value_size),
            Op::Get | Op::Delete | Op::Cas | Op::Incr => Vec::new(),
        };
        (key_name(op, key), value)
    }

    async fn execute(&mut self, op: Op, (key, value): (String, Vec<u8>)) -> OpResult {
        let res = match op {
            Op::Put => self.kv.put(key, value, None).await.map(drop),
            Op::Get => {
                let opts = self.stale.then(|| GetOptions::new().with_serializable());
                // An empty result (key not yet written) is a served read.
                self.kv.get(key, opts).await.map(drop)
            }
            Op::Delete => self.kv.delete(key, None).await.map(drop),
            Op::Cas => self.cas(key).await,
            // check_ops refuses a mix with incr for etcd before the run starts.
            Op::Incr => return Err("etcd_no_incr".into()),
        };
        res.map_err(|e| error_code(&e))
    }

    fn conflicts(&self) -> u64 {
        self.conflicts
    }
}

/// `etcd_<grpc code>` (`etcd_unavailable`, `etcd_deadline_exceeded`, ...), or the kind of
/// a client-side failure.
pub(crate) fn error_code(e: &etcd_client::Error) -> String {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(s) => format!("etcd_{}", snake_case(&format!("{:?}", s.code()))),
        E::TransportError(_) => "etcd_transport".into(),
        E::IoError(_) => "etcd_io".into(),
        E::InvalidArgs(why) if why == "cas_gave_up" => why.clone(),
        _ => "etcd_client".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_decimal_text() {
        assert_eq!(counter_value(b"41"), 41);
        assert_eq!(counter_value(b"-3"), -3);
        assert_eq!(counter_value(b""), 0);
        assert_eq!(counter_value(b"ABC"), 0);
        assert_eq!(counter_value(&[0xff, 0xfe]), 0);
    }
}
