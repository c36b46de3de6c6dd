//! Dispatch of the issue 25 runs (`--leases`, `--lock-handoff`) to their systems: the
//! `concord` and `etcd` targets' lease and lock clients, handed to [`lease_bench`] and
//! [`lock_bench`].

#[cfg(feature = "bench-etcd")]
use std::time::Duration;

use crate::{concord, concord_coord, lease_bench, lock_bench, BenchConfig, Summary, Target};
#[cfg(feature = "bench-etcd")]
use crate::{etcd, etcd_coord};

/// A `--leases` or `--lock-handoff` run (`concord`, `etcd`).
pub(crate) async fn run(
    target: Target,
    cfg: BenchConfig,
    progress: bool,
) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        !(cfg.lock_handoff && cfg.leases > 0),
        "--lock-handoff and --leases are runs of their own: choose one"
    );
    let name = target.name();
    // A fresh lock per run: nothing left by an earlier run stands in the queue.
    let lock = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    match target {
        Target::Concord {
            nats,
            prefix,
            token,
        } => {
            let coord =
                concord_coord::Coord::new(nats.clone(), &prefix, token.as_deref(), cfg.timeout);
            if cfg.lock_handoff {
                let lockers = (0..cfg.clients)
                    .map(|_| concord_coord::ConcordLocker {
                        coord: coord.clone(),
                        name: lock.clone(),
                        ttl_ms: cfg.lease_ttl.as_millis() as u64,
                        value_size: cfg.value_size,
                    })
                    .collect();
                return lock_bench::run(name, &lock, lockers, &cfg, progress).await;
            }
            let h = concord::ConcordHandle::new(
                nats,
                &prefix,
                None,
                cfg.value_size,
                cfg.stale,
                cfg.timeout,
            )
            .with_token(token.as_deref())
            .with_ids(cfg.ids);
            lease_bench::run(name, coord, |_| h.clone(), &cfg, progress).await
        }
        #[cfg(feature = "bench-etcd")]
        Target::Etcd { endpoints, conns } => {
            let e = etcd::Etcd::connect(
                &endpoints,
                conns.min(cfg.clients),
                cfg.value_size,
                cfg.stale,
                cfg.timeout,
            )
            .await?;
            if cfg.lock_handoff {
                return etcd_lock_run(&e, &lock, &cfg, progress).await;
            }
            let leases =
                etcd_coord::EtcdLeases::new(e.client(0), cfg.timeout, cfg.keepalive_inflight);
            lease_bench::run(name, leases, |c| e.handle(c), &cfg, progress).await
        }
        other => anyhow::bail!(
            "--leases, --lock-handoff: the {} target has neither (concord and etcd have)",
            other.name()
        ),
    }
}

/// etcd's lock hand-off: each client's lease outlives the run and is revoked after it.
#[cfg(feature = "bench-etcd")]
async fn etcd_lock_run(
    e: &etcd::Etcd,
    lock: &str,
    cfg: &BenchConfig,
    progress: bool,
) -> anyhow::Result<Summary> {
    let ttl = cfg.duration + Duration::from_secs(60);
    let mut lockers = Vec::new();
    for c in 0..cfg.clients {
        let l = etcd_coord::EtcdLocker::new(e.client(c), lock, ttl, cfg.value_size)
            .await
            .map_err(|code| anyhow::anyhow!("etcd: granting a lock client's lease: {code}"))?;
        lockers.push(l);
    }
    let leases: Vec<i64> = lockers.iter().map(|l| l.lease()).collect();
    let s = lock_bench::run("etcd", lock, lockers, cfg, progress).await;
    let revoker = etcd_coord::EtcdLeases::new(e.client(0), cfg.timeout, 1);
    for id in leases {
        let _ = lease_bench::Leases::revoke(&revoker, id).await;
    }
    s
}
