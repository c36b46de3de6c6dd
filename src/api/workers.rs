//! Small pools of threads of their own for request work that reads the whole store or much
//! of it: the `admin.status` digest and backups ([`Workers::heavy`]) and scan pages
//! ([`Workers::scans`]). Neither runs on the async workers (where it would delay Raft's
//! tasks) nor on tokio's blocking pool (where the leader's log fsync runs): a full-keyspace
//! hash that takes seconds must never make a heartbeat or an fsync wait (issue #20, item 7).
//!
//! Each pool has as many permits as threads, so a job is never queued behind another: a
//! request first waits for a permit, until its deadline, and is answered `busy` if none
//! frees. The permit travels with the job and is released when the job ends, even if the
//! request gave up meanwhile.
//!
//! Never: run anything here that awaits, or that Raft itself waits on.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::{busy, internal, WireError};

/// Threads for the digest, backup writes and backup chunk reads: a whole-keyspace job
/// hogs a core, and the node has to keep one for Raft and the request path.
pub const HEAVY_THREADS: usize = 1;
/// Threads for scan pages.
pub const SCAN_THREADS: usize = 2;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// One pool: `threads` std threads taking jobs from one channel, and a permit per thread.
pub struct Pool {
    name: &'static str,
    threads: usize,
    permits: Arc<Semaphore>,
    // std `Mutex` around the sender only to make it `Sync` on every toolchain; never held
    // across an `.await`.
    jobs: Mutex<mpsc::Sender<Job>>,
}

/// The node's pools.
pub struct Workers {
    pub heavy: Arc<Pool>,
    pub scans: Arc<Pool>,
}

impl Workers {
    pub fn start() -> Workers {
        Workers {
            heavy: Arc::new(Pool::start("heavy", HEAVY_THREADS)),
            scans: Arc::new(Pool::start("scan", SCAN_THREADS)),
        }
    }
}

impl Pool {
    /// Starts `threads` threads; they end when the pool is dropped.
    pub fn start(name: &'static str, threads: usize) -> Pool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("concord-{name}-{i}"))
                .spawn(move || loop {
                    // The lock is held only while taking a job, not while running it.
                    let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    job();
                });
            if let Err(e) = spawned {
                // Fewer threads than permits: jobs queue in the channel, still bounded.
                tracing::error!(pool = name, error = %e, "cannot start a worker thread");
            }
        }
        Pool {
            name,
            threads: threads.max(1),
            permits: Arc::new(Semaphore::new(threads.max(1))),
            jobs: Mutex::new(tx),
        }
    }

    /// A permit, waiting until `deadline` at most; `busy` past it. `what` names the work in
    /// the reply.
    pub async fn permit(
        &self,
        deadline: Instant,
        what: &str,
    ) -> Result<OwnedSemaphorePermit, WireError> {
        match tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(internal(format!("the {} pool is closed", self.name))),
            Err(_) => Err(busy(format!(
                "{what}: this node runs at most {} such job(s) at once and none finished before the request's deadline; retry later",
                self.threads
            ))),
        }
    }

    /// Runs `f` on one of the pool's threads once a permit is free (see [`Self::permit`]),
    /// and returns its result. If the caller stops waiting, `f` still runs to its end and
    /// keeps the permit until then.
    pub async fn run<T, F>(&self, deadline: Instant, what: &str, f: F) -> Result<T, WireError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let permit = self.permit(deadline, what).await?;
        self.run_with(permit, what, f).await
    }

    /// [`Self::run`] with a permit already taken from this pool.
    pub async fn run_with<T, F>(
        &self,
        permit: OwnedSemaphorePermit,
        what: &str,
        f: F,
    ) -> Result<T, WireError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _permit = permit;
            // A panic ends this job, not the thread: the caller gets `internal`.
            if let Ok(out) = std::panic::catch_unwind(AssertUnwindSafe(f)) {
                let _ = tx.send(out);
            }
        });
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job);
        if sent.is_err() {
            return Err(internal(format!("the {} pool is stopped", self.name)));
        }
        rx.await
            .map_err(|_| internal(format!("{what} failed on the {} pool", self.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn runs_off_the_runtime_and_answers_busy_past_the_deadline() {
        let pool = Pool::start("heavy", 1);
        let name = pool
            .run(Instant::now() + Duration::from_secs(5), "t", || {
                std::thread::current().name().map(str::to_string)
            })
            .await
            .expect("ran");
        assert_eq!(name.as_deref(), Some("concord-heavy-0"));

        // The only permit is held: a second job gets `busy` at its deadline.
        let pool = Arc::new(pool);
        let (started, is_running) = oneshot::channel::<()>();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(Instant::now() + Duration::from_secs(5), "t", move || {
                    let _ = started.send(());
                    let _ = held.recv_timeout(Duration::from_secs(10));
                })
                .await
            }
        });
        is_running.await.expect("first job started");
        let e = pool
            .run(Instant::now() + Duration::from_millis(100), "digest", || ())
            .await
            .expect_err("no permit is free");
        assert_eq!(e.code, crate::error::ErrorKind::Busy, "{e:?}");
        assert!(e.message.contains("digest"), "{e:?}");
        release.send(()).expect("release");
        first.await.expect("joined").expect("first job ran");
        let panicked = pool
            .run(Instant::now() + Duration::from_secs(5), "boom", || {
                panic!("job panics")
            })
            .await;
        assert!(panicked.is_err());
        // The thread survived the panic.
        assert!(pool
            .run(Instant::now() + Duration::from_secs(5), "t", || ())
            .await
            .is_ok());
    }
}
