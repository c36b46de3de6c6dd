//! The integration tests' thin layer over the shared harness (`concord_harness::cluster`):
//! it hands the harness the `concord` binary cargo built for these tests, and adds what needs
//! the node library (a test client connected through `concord::nats::connect`).
//!
//! ```ignore
//! let cluster = Cluster::start(3).await?;           // nats-server -p -1 + 3 nodes
//! let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
//! cluster.kill(leader).await?;                      // SIGKILL, no graceful path
//! cluster.restart(leader).await?;                   // same data dir and id
//! cluster.wait_applied(leader, index, Duration::from_secs(10)).await?;
//! ```
//!
//! Every method of the harness's cluster is reached through `Deref`; see
//! `crates/harness/src/cluster/mod.rs` for the rules it keeps (serialized cluster tests, polled
//! waits, logs printed on failure, `Drop` kills every child).
// Each test binary uses its own part of this module.
#![allow(dead_code, unused_imports)]

pub mod forwarding;
pub mod writes;

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use concord::config::NatsConfig;

pub use concord_harness::cluster::{
    error_code, exclusive, to_bytes, wait_until, CliRun, ClusterOptions, Exclusive, REQUEST_TIMEOUT,
};

/// The `concord` binary cargo built for this test (`CONCORD_TEST_BIN` overrides it inside the
/// harness, e.g. for a release build).
fn concord_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_concord"))
}

/// `nats-server`, found the one way every harness user finds it.
pub fn nats_server_binary() -> Result<PathBuf> {
    Ok(concord_harness::nats_server::find()?)
}

/// A running test cluster of the harness, started with this test's `concord` binary.
pub struct Cluster(concord_harness::cluster::Cluster);

impl Deref for Cluster {
    type Target = concord_harness::cluster::Cluster;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Cluster {
    /// `n` nodes (ids 1..=n, all initial members) on a fresh `nats-server`, all started and
    /// answering their admin status. Does not wait for a leader.
    pub async fn start(n: u64) -> Result<Cluster> {
        Cluster::start_with(n, ClusterOptions::default()).await
    }

    pub async fn start_with(n: u64, mut opts: ClusterOptions) -> Result<Cluster> {
        if opts.bin.is_none() {
            opts.bin = Some(concord_binary());
        }
        Ok(Cluster(
            concord_harness::cluster::Cluster::start_with(n, opts).await?,
        ))
    }

    /// `n` nodes with a leader and the cluster writing log format 2, where conditions,
    /// counters and transactions travel.
    pub async fn start_format_2(n: u64, opts: ClusterOptions) -> Result<Cluster> {
        const SETTLE: Duration = Duration::from_secs(30);
        let cluster = Cluster::start_with(n, opts).await?;
        let leader = cluster.wait_stable(SETTLE).await?;
        let c = &cluster;
        wait_until(SETTLE, "the cluster writes log format 2", || async move {
            let s = c.status(leader).await?;
            Ok(s["log_format"]["cluster"].as_u64() >= Some(2))
        })
        .await?;
        Ok(cluster)
    }
}

/// Options that need the node library.
pub trait SecuredOptions {
    /// The fixture's own test clients connect through `concord::nats::connect` like a node
    /// (credentials, TLS); `config.url` is replaced by the cluster's.
    fn nats_config(self, config: NatsConfig) -> Self;
}

impl SecuredOptions for ClusterOptions {
    fn nats_config(self, config: NatsConfig) -> Self {
        self.connector(Arc::new(move |url| {
            let mut config = config.clone();
            config.url = vec![url];
            Box::pin(async move {
                Ok(concord::nats::connect(&config, "concord-it", Duration::from_secs(10)).await?)
            })
        }))
    }
}
