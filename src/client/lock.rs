//! Fenced locks for [`Client`] (DESIGN.md "Locks and fencing"): [`Client::lock`] acquires a
//! lock with a lease of the claim's own and keeps that lease alive in the background (the
//! loop of [`super::keeper`]); the [`LockGuard`] carries the fence, reports the loss, and
//! releases the lock.
//!
//! Waiting is done by the cluster (FIFO, no polling): an acquire with `wait_ms` stays
//! unanswered until the grant or the end of the wait. The cluster keeps requests for at most
//! `limits.max_timeout_ms` (default 60 s), so a longer wait is made of rounds of at most
//! [`MAX_WAIT_ROUND`], each a request of its own with a fresh `request_id`; within a round,
//! an attempt that got no answer is sent again with the same id, which re-attaches to the
//! claim or gets its grant. A round's `wait_ms` always ends [`DEADLINE_SLACK`] before the
//! attempt's deadline, as the cluster requires.
//!
//! Never here: a write of a claim key (the cluster owns `_lock/`).

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use super::keeper::{Lease, LeaseLoss, LeaseState, LossReason};
use super::put::{ttl_ms, Fence};
use super::{retry, Client, ClientError, Retry};
use crate::subjects::KvOp;

/// The longest wait of one acquire request.
pub const MAX_WAIT_ROUND: Duration = Duration::from_secs(20);
/// What an attempt's deadline leaves after its wait: the cluster's margin to withdraw the
/// claim (250 ms) and the reply's way back.
pub const DEADLINE_SLACK: Duration = Duration::from_millis(1500);

/// How a lock is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockOptions {
    /// The ttl of the claim's lease: how long the lock outlives its holder's last
    /// acknowledged keepalive.
    pub ttl: Duration,
    /// How long to wait for the lock; zero: one try ([`ClientError::LockHeld`] when held).
    pub wait: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            ttl: Duration::from_secs(10),
            wait: Duration::ZERO,
        }
    }
}

/// A `lock.acquire` reply.
#[derive(Debug, Clone, Deserialize)]
struct Granted {
    fence: u64,
    lease: u64,
}

/// A held lock: its `fence` (grows with every holder; hand it to what the lock protects,
/// e.g. as a fenced write's token) and the claim's `lease`, kept alive in the background.
/// [`LockGuard::lost`] says when the lock may be gone; [`LockGuard::release`] releases it;
/// dropping the guard releases it in the background, best effort (the lease ends it within
/// its ttl otherwise).
pub struct LockGuard {
    pub name: String,
    pub fence: u64,
    pub lease: u64,
    keeper: Lease,
    client: Client,
    released: bool,
}

impl LockGuard {
    /// The fence as a token for fenced writes.
    pub fn fence_token(&self) -> Fence {
        Fence::new(self.name.clone(), self.fence)
    }

    /// The keepalive loop's state (renewals, loss).
    pub fn state(&self) -> LeaseState {
        self.keeper.state()
    }

    /// A channel that changes at every renewal and at the loss.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<LeaseState> {
        self.keeper.watch()
    }

    /// Resolves when the lock may be lost (its lease ended, or was not renewed in time).
    pub async fn lost(&self) -> LeaseLoss {
        self.keeper.lost().await
    }

    /// Releases the lock (the claim's own lease ends with it) and stops the keepalives.
    /// [`ClientError::Fence`] when this guard no longer held it.
    pub async fn release(mut self) -> Result<u64, ClientError> {
        self.released = true;
        self.keeper
            .stop_keeping(LossReason::Revoked, "released by its holder");
        self.client.lock_release(&self.name, self.fence).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.keeper
            .stop_keeping(LossReason::Revoked, "the lock guard was dropped");
        let (client, name, fence) = (self.client.clone(), self.name.clone(), self.fence);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = client.lock_release(&name, fence).await;
            });
        }
    }
}

/// A `lock.acquire` body.
fn acquire_body(name: &str, ttl: Duration, wait: Duration, request_id: Uuid) -> Value {
    let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
    serde_json::json!({"name": name, "ttl_ms": ttl_ms(ttl), "wait_ms": wait_ms,
        "request_id": request_id})
}

/// The wait to ask for in an attempt of a round that ends at `round_end`: what is left of
/// it, at least 1 ms when the round waits at all (0 would turn it into one try), and ending
/// [`DEADLINE_SLACK`] before the attempt's deadline `deadline`.
fn attempt_wait(waits: bool, now: Instant, round_end: Instant, deadline: Instant) -> Duration {
    if !waits {
        return Duration::ZERO;
    }
    let latest = deadline
        .checked_sub(DEADLINE_SLACK)
        .unwrap_or(now)
        .saturating_duration_since(now);
    round_end
        .saturating_duration_since(now)
        .min(latest)
        .max(Duration::from_millis(1))
}

impl Client {
    /// Takes lock `name`, waiting up to `opts.wait`, with a lease of `opts.ttl` kept alive
    /// in the background. [`ClientError::LockHeld`] (no wait) or [`ClientError::LockWait`]
    /// (the wait ended) when it was not granted.
    ///
    /// ```no_run
    /// # async fn f(client: &concord::Client) -> Result<(), concord::client::ClientError> {
    /// use concord::client::{LockOptions, PutOptions};
    /// use std::time::Duration;
    /// let opts = LockOptions { ttl: Duration::from_secs(10), wait: Duration::from_secs(30) };
    /// let guard = client.lock("reindex", opts).await?;
    /// client
    ///     .put_with("jobs/reindex", &"running".into(), &PutOptions::new().fence(guard.fence_token()))
    ///     .await?;
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn lock(&self, name: &str, opts: LockOptions) -> Result<LockGuard, ClientError> {
        let wait_end = Instant::now() + opts.wait;
        loop {
            let round_end = (Instant::now() + MAX_WAIT_ROUND).min(wait_end);
            let waits = !opts.wait.is_zero();
            match self.acquire_round(name, opts.ttl, waits, round_end).await {
                Ok((granted, sent)) => {
                    // The claim's lease started at the grant, after `sent`; renew at once
                    // to learn a sure start (the grant may have come from an earlier attempt).
                    let keeper = Lease::start(self, granted.lease, opts.ttl, sent + opts.ttl, true);
                    return Ok(LockGuard {
                        name: name.to_string(),
                        fence: granted.fence,
                        lease: granted.lease,
                        keeper,
                        client: self.clone(),
                        released: false,
                    });
                }
                Err(ClientError::LockWait { .. })
                    if Instant::now() + Duration::from_millis(5) < wait_end => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// One acquire request (one `request_id`), sent again after refusals and unanswered
    /// attempts until `round_end` + the client's timeout. The grant and when its answering
    /// attempt was sent.
    async fn acquire_round(
        &self,
        name: &str,
        ttl: Duration,
        waits: bool,
        round_end: Instant,
    ) -> Result<(Granted, Instant), ClientError> {
        let request_id = Uuid::new_v4();
        let deadline = round_end + self.timeout.max(DEADLINE_SLACK * 2);
        let subject = self.subjects.kv(KvOp::LockAcquire);
        let mut earlier_unknown = false;
        let mut retries = 0u32;
        loop {
            let now = Instant::now();
            let attempt_timeout = deadline.saturating_duration_since(now);
            let wait = attempt_wait(waits, now, round_end, deadline);
            let body = acquire_body(name, ttl, wait, request_id);
            let err = match self
                .call_once(subject.clone(), &body, attempt_timeout)
                .await
            {
                Ok(v) => {
                    let g: Granted = serde_json::from_value(v)
                        .map_err(|e| ClientError::Decode(format!("lock.acquire reply: {e}")))?;
                    return Ok((g, now));
                }
                Err(e) => e,
            };
            // Another attempt needs room for its wait's slack.
            let left = deadline
                .saturating_duration_since(Instant::now())
                .saturating_sub(DEADLINE_SLACK);
            match Retry::Idempotent.pause(&err, retries, left, retry::jitter()) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return Err(retry::final_error(err, earlier_unknown)),
            }
            earlier_unknown |= retry::outcome_unknown(&err);
            retries = retries.saturating_add(1);
        }
    }

    /// Releases lock `name` held under `fence`: the claim key is deleted (and its own lease
    /// with it). Returns the revision. [`ClientError::Fence`] when `fence` is not the
    /// holder's.
    pub async fn lock_release(&self, name: &str, fence: u64) -> Result<u64, ClientError> {
        let body = serde_json::json!({"name": name, "fence": fence, "request_id": Uuid::new_v4()});
        let r = self
            .send(
                self.subjects.kv(KvOp::LockRelease),
                &body,
                Retry::Idempotent,
            )
            .await?;
        super::revision(&r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_attempts_wait_ends_before_its_deadline_and_never_becomes_one_try() {
        let now = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(
            attempt_wait(false, now, now + s(5), now + s(20)),
            Duration::ZERO
        );
        assert_eq!(attempt_wait(true, now, now + s(5), now + s(20)), s(5));
        // The deadline is near: the wait ends DEADLINE_SLACK before it.
        assert_eq!(
            attempt_wait(true, now, now + s(5), now + s(3)),
            s(3) - DEADLINE_SLACK
        );
        // Nothing left of the round: 1 ms, not 0 (0 means one try without a wait).
        assert_eq!(
            attempt_wait(true, now + s(6), now + s(5), now + s(20)),
            Duration::from_millis(1)
        );
        let b = acquire_body("job", s(10), Duration::from_millis(2500), Uuid::nil());
        assert_eq!(b["ttl_ms"], json!(10_000));
        assert_eq!(b["wait_ms"], json!(2500));
        assert_eq!(b["name"], json!("job"));
    }

    #[test]
    fn lock_conflicts_decode_to_their_own_errors() {
        let held = super::super::decode_reply(
            br#"{"ok":false,"error":{"code":"conflict","reason":"lock_held","fence":41,"message":"m"}}"#,
        )
        .expect_err("held");
        assert!(matches!(held, ClientError::LockHeld { fence: 41, .. }));
        assert_eq!(held.to_json()["fence"], json!(41));
        assert!(!Retry::Idempotent.allows(&held));
        let fence = super::super::decode_reply(
            br#"{"ok":false,"error":{"code":"conflict","reason":"fence","fence":0,"message":"m"}}"#,
        )
        .expect_err("fence");
        assert_eq!(fence.conflict_fence(), Some(0));
        assert_eq!(fence.conflict_reason(), Some("fence"));
        let wait = super::super::decode_reply(
            br#"{"ok":false,"error":{"code":"conflict","reason":"lock_wait","message":"m"}}"#,
        )
        .expect_err("wait");
        assert!(matches!(wait, ClientError::LockWait { .. }));
        assert_eq!(wait.code(), crate::ErrorKind::Conflict);
    }
}
