//! [`Lease`]: a lease kept alive in the background by [`Client::lease`], and the keepalive
//! loop that [`super::LockGuard`] shares.
//!
//! The loop renews every ttl/3, counted from the sending of the last renewal the cluster
//! acknowledged. The cluster never ends a lease sooner than its ttl after an acknowledged
//! keepalive was sent (DESIGN.md "never early"), so the lease is surely alive until that
//! send + ttl (`safe_until`); a renewal that fails is tried again within that time. The loss
//! is reported (on a watch channel, and by [`Lease::lost`]) when the cluster says the lease
//! ended (`not_found`), or when `safe_until` passes without an acknowledged renewal: from
//! then on the lease may be gone, and whatever it guards must stop.
//!
//! Never here: a renewal after a loss (a lease that ended cannot come back), or a keepalive
//! after the handle is dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Client, ClientError, Revoked};

/// The pause between two failed renewals of one round.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Why a lease is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    /// The cluster answered `not_found`: the lease ended (expired or revoked elsewhere).
    NotFound,
    /// No renewal was acknowledged before the ttl ran out: the lease may have ended.
    TtlRanOut,
    /// This handle revoked it (or released the lock it held).
    Revoked,
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LossReason::NotFound => "not_found",
            LossReason::TtlRanOut => "ttl_ran_out",
            LossReason::Revoked => "revoked",
        })
    }
}

/// A lost lease: why, and what the last attempt said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseLoss {
    pub reason: LossReason,
    pub message: String,
}

impl std::fmt::Display for LeaseLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// What the keepalive loop knows: acknowledged renewals so far, the ttl, and the loss once
/// there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    pub id: u64,
    pub renewals: u64,
    pub ttl_ms: u64,
    pub loss: Option<LeaseLoss>,
}

/// A lease kept alive in the background. Dropping it stops the keepalives (the lease then
/// ends its ttl after the last one); [`Lease::revoke`] ends it at once.
pub struct Lease {
    client: Client,
    id: u64,
    state: Arc<watch::Sender<LeaseState>>,
    stop: CancellationToken,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Lease {
    /// Starts keeping lease `id` alive: it is surely alive until `safe_until` (the sending
    /// of its grant or last acknowledged renewal + ttl). `renew_now`: renew at once (e.g.
    /// when `safe_until` is only a guess).
    pub(crate) fn start(
        client: &Client,
        id: u64,
        ttl: Duration,
        safe_until: Instant,
        renew_now: bool,
    ) -> Lease {
        let state = Arc::new(watch::Sender::new(LeaseState {
            id,
            renewals: 0,
            ttl_ms: super::put::ttl_ms(ttl),
            loss: None,
        }));
        let stop = CancellationToken::new();
        let keep = Keep {
            client: client.clone(),
            id,
            ttl,
            safe_until,
            state: state.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(keep.run(renew_now));
        Lease {
            client: client.clone(),
            id,
            state,
            stop,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The loop's state now (renewals, ttl, loss).
    pub fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    /// A channel that changes at every renewal and at the loss.
    pub fn watch(&self) -> watch::Receiver<LeaseState> {
        self.state.subscribe()
    }

    /// The loss, if the lease is lost.
    pub fn loss(&self) -> Option<LeaseLoss> {
        self.state.borrow().loss.clone()
    }

    /// Resolves when the lease is lost, with why.
    pub async fn lost(&self) -> LeaseLoss {
        lost(self.state.subscribe()).await
    }

    /// Stops the keepalives and revokes the lease (its keys are deleted at one revision).
    /// A lease that had already ended is `not_found`.
    pub async fn revoke(self) -> Result<Revoked, ClientError> {
        self.stop_keeping(LossReason::Revoked, "revoked by its holder");
        self.client.lease_revoke(self.id).await
    }

    /// Stops the keepalives and records `reason` as the loss (unless one came first).
    pub(crate) fn stop_keeping(&self, reason: LossReason, message: &str) {
        self.stop.cancel();
        report_loss(&self.state, reason, message.to_string());
    }
}

/// Waits on `rx` until its state carries a loss.
pub(crate) async fn lost(mut rx: watch::Receiver<LeaseState>) -> LeaseLoss {
    match rx.wait_for(|s| s.loss.is_some()).await {
        Ok(s) => s.loss.clone().unwrap_or_else(|| gone("no loss")),
        // The sender lives in the handle that `rx` came from; dropped only with it.
        Err(_) => gone("the lease handle was dropped"),
    }
}

fn gone(message: &str) -> LeaseLoss {
    LeaseLoss {
        reason: LossReason::Revoked,
        message: message.into(),
    }
}

fn report_loss(state: &watch::Sender<LeaseState>, reason: LossReason, message: String) {
    state.send_if_modified(|s| {
        if s.loss.is_some() {
            return false;
        }
        s.loss = Some(LeaseLoss { reason, message });
        true
    });
}

/// The keepalive loop of one lease.
struct Keep {
    client: Client,
    id: u64,
    ttl: Duration,
    safe_until: Instant,
    state: Arc<watch::Sender<LeaseState>>,
    stop: CancellationToken,
}

/// How one round of renewal ended.
enum Round {
    Renewed { sent: Instant, ttl: Duration },
    Lost(LossReason, String),
    Stopped,
}

impl Keep {
    async fn run(mut self, mut renew_now: bool) {
        loop {
            let next = if renew_now {
                Instant::now()
            } else {
                // safe_until − ttl is when the last acknowledged renewal was sent.
                self.safe_until
                    .checked_sub(self.ttl)
                    .map_or_else(Instant::now, |sent| sent + self.ttl / 3)
            };
            renew_now = false;
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            match self.round().await {
                Round::Renewed { sent, ttl } => {
                    self.ttl = ttl;
                    self.safe_until = sent + ttl;
                    self.state.send_modify(|s| {
                        s.renewals += 1;
                        s.ttl_ms = super::put::ttl_ms(ttl);
                    });
                }
                Round::Lost(reason, message) => {
                    report_loss(&self.state, reason, message);
                    return;
                }
                Round::Stopped => return,
            }
        }
    }

    /// Renews, trying again until it is acknowledged, the lease is gone, or `safe_until`.
    async fn round(&self) -> Round {
        let mut last = String::from("no renewal was tried");
        loop {
            let sent = Instant::now();
            let left = self.safe_until.saturating_duration_since(sent);
            if left.is_zero() {
                return Round::Lost(
                    LossReason::TtlRanOut,
                    format!(
                        "no keepalive of lease {} was acknowledged within its ttl ({} ms); last: {last}",
                        self.id,
                        self.ttl.as_millis()
                    ),
                );
            }
            let client = self
                .client
                .clone()
                .with_timeout(left.min(self.client.timeout()));
            let res = tokio::select! {
                _ = self.stop.cancelled() => return Round::Stopped,
                res = client.lease_keepalive(self.id) => res,
            };
            match res {
                Ok(t) => return Round::Renewed { sent, ttl: t.ttl() },
                Err(e) if e.is_not_found() => {
                    return Round::Lost(
                        LossReason::NotFound,
                        format!("lease {} has ended: {}", self.id, e.message()),
                    )
                }
                Err(e) => last = e.to_string(),
            }
            let pause = RETRY_PAUSE.min(self.safe_until.saturating_duration_since(Instant::now()));
            tokio::select! {
                _ = self.stop.cancelled() => return Round::Stopped,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

impl Client {
    /// Grants a lease of `ttl` and keeps it alive in the background (a renewal every
    /// ttl/3) until the returned [`Lease`] is dropped or revoked; [`Lease::lost`] says when
    /// it is lost.
    ///
    /// ```no_run
    /// # async fn f(client: &concord::Client) -> Result<(), concord::client::ClientError> {
    /// use concord::client::PutOptions;
    /// use std::time::Duration;
    /// let lease = client.lease(Duration::from_secs(10)).await?;
    /// client.put_with("svc/api/1", &"10.0.0.1:80".into(), &PutOptions::new().lease(lease.id())).await?;
    /// let loss = lease.lost().await; // stop serving: the registration may be gone
    /// # let _ = loss; Ok(()) }
    /// ```
    pub async fn lease(&self, ttl: Duration) -> Result<Lease, ClientError> {
        // The grant applied after its first attempt was sent: the lease lives at least its
        // ttl from then.
        let sent = Instant::now();
        let granted = self.lease_grant(ttl, None).await?;
        Ok(Lease::start(
            self,
            granted.id,
            granted.ttl(),
            sent + granted.ttl(),
            false,
        ))
    }

    /// Keeps an existing lease `id` alive in the background: renews it at once (its ttl is
    /// learnt from that renewal), then every ttl/3. `not_found` when it has already ended.
    pub async fn keep_lease(&self, id: u64) -> Result<Lease, ClientError> {
        let sent = Instant::now();
        let renewed = self.lease_keepalive(id).await?;
        let lease = Lease::start(self, id, renewed.ttl(), sent + renewed.ttl(), false);
        lease.state.send_modify(|s| s.renewals = 1);
        Ok(lease)
    }
}
