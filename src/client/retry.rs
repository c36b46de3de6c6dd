//! The client's retry rules as pure functions of an attempt's error, the retry number and the
//! time left, so that they are tested without a network. [`super::Client`] applies them; its
//! module doc says which request gets which [`Retry`].
//!
//! Never here: IO, clocks or randomness (the caller passes the jitter in).

use std::time::Duration;

use super::ClientError;
use crate::error::{ErrorKind, WireError};

/// The first pause between attempts; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(25);
/// The longest pause between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_millis(400);
/// An attempt that may be retried after `timeout` gets at least this long (or the rest of the
/// deadline), and at most a third of the whole deadline beyond it.
pub const MIN_ATTEMPT: Duration = Duration::from_secs(1);
/// No new attempt starts with less than this left after its pause: it could only time out,
/// and would turn a refusal (known not applied) into `timeout` (unknown).
pub const MIN_LAST_ATTEMPT: Duration = Duration::from_millis(50);

/// Which failures a request may be re-sent after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Only refusals, which did nothing: `busy`, `cluster_not_ready`, NATS "no responders".
    /// One attempt may use all the time left. Stale reads, admin calls, writes without an id.
    Refused,
    /// Refusals and unknown outcomes too (`timeout`, a lost NATS request): a request that
    /// does the same whether it runs once or more, i.e. a linearizable read or a write that
    /// carries a `request_id`. Each attempt gets a slice of the deadline
    /// ([`Retry::attempt_timeout`]), so that one node that does not answer does not eat it.
    Idempotent,
}

impl Retry {
    /// Whether a request that failed with `err` may be sent again. Every other code (e.g.
    /// `conflict`, `unauthorized`, `internal`) is final.
    pub fn allows(self, err: &ClientError) -> bool {
        match err {
            ClientError::Server(e) => match e.code {
                ErrorKind::Busy | ErrorKind::ClusterNotReady => true,
                ErrorKind::Timeout => self == Retry::Idempotent,
                _ => false,
            },
            // A condition that did not hold holds no better the second time.
            ClientError::Conflict { .. }
            | ClientError::LockHeld { .. }
            | ClientError::LockWait { .. }
            | ClientError::Fence { .. } => false,
            // The revisions are gone for good.
            ClientError::Compacted { .. } => false,
            ClientError::NoResponders(_) => true,
            ClientError::Nats(_) => self == Retry::Idempotent,
            ClientError::Connect(_) | ClientError::Decode(_) => false,
        }
    }

    /// The timeout of the next attempt, given the whole deadline `total` and what is left of
    /// it: `Idempotent` attempts get min(remaining, max(1 s, total / 3)).
    pub fn attempt_timeout(self, total: Duration, remaining: Duration) -> Duration {
        match self {
            Retry::Refused => remaining,
            Retry::Idempotent => remaining.min(MIN_ATTEMPT.max(total / 3)),
        }
    }

    /// After attempt number `retry` (0 for the first) failed with `err`, with `remaining` left
    /// of the deadline: the pause before the next attempt, or `None` to give up.
    pub fn pause(
        self,
        err: &ClientError,
        retry: u32,
        remaining: Duration,
        jitter: f64,
    ) -> Option<Duration> {
        if !self.allows(err) {
            return None;
        }
        let pause = backoff(retry, jitter);
        (remaining >= pause + MIN_LAST_ATTEMPT).then_some(pause)
    }
}

/// The pause after attempt `retry`: 25 ms doubling to 400 ms, times `jitter` (clamped to
/// 0.5..=1.0, so that clients that failed together do not retry together).
pub fn backoff(retry: u32, jitter: f64) -> Duration {
    let full = FIRST_BACKOFF
        .saturating_mul(1u32 << retry.min(16))
        .min(MAX_BACKOFF);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.5, 1.0)
    } else {
        1.0
    };
    full.mul_f64(jitter)
}

/// Whether `err` leaves an attempt's outcome unknown: it may have applied.
pub fn outcome_unknown(err: &ClientError) -> bool {
    match err {
        ClientError::Server(e) => e.code == ErrorKind::Timeout,
        ClientError::Nats(_) => true,
        _ => false,
    }
}

/// The error to give the caller when retries end with `err`. If an earlier attempt's outcome
/// was unknown, a final refusal (`busy`, `cluster_not_ready`: "this attempt did nothing")
/// would wrongly say the operation did not apply; the caller gets `timeout` instead.
pub fn final_error(err: ClientError, earlier_unknown: bool) -> ClientError {
    let refused = matches!(&err, ClientError::Server(e) if matches!(e.code, ErrorKind::Busy | ErrorKind::ClusterNotReady))
        || matches!(err, ClientError::NoResponders(_));
    if earlier_unknown && refused {
        return ClientError::Server(WireError::new(
            ErrorKind::Timeout,
            format!(
                "an earlier attempt got no answer (it may have applied), the last one: {}",
                err.message()
            ),
        ));
    }
    err
}

/// The longest pause of an optimistic update ([`super::Client::update`]) after a conflict.
pub const MAX_CONFLICT_PAUSE: Duration = Duration::from_millis(200);
/// Its first pause, about one write's round trip: it doubles after each conflict.
pub const FIRST_CONFLICT_PAUSE: Duration = Duration::from_millis(5);

/// The pause of an optimistic update after its `conflicts`-th conflict in a row (1 for the
/// first): 5 ms doubling to 200 ms, times `spread` (clamped to 0..=1, "full jitter").
/// Writers that lost together then spread out instead of reading and colliding again at
/// once; the whole range, not the half that [`backoff`] uses, because here every contender
/// retries, not only the ones a fault hit.
pub fn conflict_pause(conflicts: u32, spread: f64) -> Duration {
    let full = FIRST_CONFLICT_PAUSE
        .saturating_mul(1u32 << conflicts.saturating_sub(1).min(16))
        .min(MAX_CONFLICT_PAUSE);
    let spread = if spread.is_finite() {
        spread.clamp(0.0, 1.0)
    } else {
        1.0
    };
    full.mul_f64(spread)
}

/// A uniform factor in 0.0..=1.0 from the OS's random source (1.0 if it fails).
pub fn spread() -> f64 {
    match getrandom::u32() {
        Ok(r) => f64::from(r) / f64::from(u32::MAX),
        Err(_) => 1.0,
    }
}

/// A jitter factor in 0.5..=1.0 from the OS's random source (1.0 if it fails: no jitter).
pub fn jitter() -> f64 {
    match getrandom::u32() {
        Ok(r) => 0.5 + 0.5 * (f64::from(r) / f64::from(u32::MAX)),
        Err(_) => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::WireError;

    fn server(code: ErrorKind) -> ClientError {
        ClientError::Server(WireError::new(code, "x"))
    }

    #[test]
    fn only_refusals_and_unknown_outcomes_are_retried() {
        for code in ErrorKind::ALL {
            let e = server(code);
            let refusal = matches!(code, ErrorKind::Busy | ErrorKind::ClusterNotReady);
            assert_eq!(Retry::Refused.allows(&e), refusal, "{code}");
            assert_eq!(
                Retry::Idempotent.allows(&e),
                refusal || code == ErrorKind::Timeout,
                "{code}"
            );
        }
        let nobody = ClientError::NoResponders("no node".into());
        assert!(Retry::Refused.allows(&nobody) && Retry::Idempotent.allows(&nobody));
        let lost = ClientError::Nats("connection closed".into());
        assert!(!Retry::Refused.allows(&lost) && Retry::Idempotent.allows(&lost));
        let garbled = ClientError::Decode("unknown variant `conflict`".into());
        assert!(!Retry::Refused.allows(&garbled) && !Retry::Idempotent.allows(&garbled));
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_jitter_only_shortens_it() {
        let ms = |r, j| backoff(r, j).as_millis();
        assert_eq!(
            (0..6).map(|r| ms(r, 1.0)).collect::<Vec<_>>(),
            [25, 50, 100, 200, 400, 400]
        );
        assert_eq!(ms(u32::MAX, 1.0), 400);
        assert_eq!(ms(0, 0.5), 12);
        assert_eq!(ms(4, 0.0), 200, "jitter below 0.5 is clamped");
        assert_eq!(ms(4, f64::NAN), 400);
        for _ in 0..100 {
            let j = jitter();
            assert!((0.5..=1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn conflict_pauses_double_to_their_cap_over_the_whole_jitter_range() {
        let ms = |c, s| conflict_pause(c, s).as_millis();
        assert_eq!(
            (1..8).map(|c| ms(c, 1.0)).collect::<Vec<_>>(),
            [5, 10, 20, 40, 80, 160, 200]
        );
        assert_eq!(ms(0, 1.0), 5, "0 counts as the first conflict");
        assert_eq!(ms(u32::MAX, 1.0), 200);
        assert_eq!(ms(3, 0.0), 0);
        assert_eq!(ms(3, 0.5), 10);
        assert_eq!(ms(3, -2.0), 0, "spread below 0 is clamped");
        assert_eq!(ms(3, f64::INFINITY), 20);
        for _ in 0..100 {
            let s = spread();
            assert!((0.0..=1.0).contains(&s), "{s}");
        }
    }

    #[test]
    fn a_conflict_is_never_retried_by_the_transport() {
        let c = ClientError::Conflict {
            reason: "revision".into(),
            revision: Some(7),
            value: None,
            key: None,
            message: "m".into(),
        };
        assert!(!Retry::Refused.allows(&c) && !Retry::Idempotent.allows(&c));
        assert!(!outcome_unknown(&c));
        assert_eq!(final_error(c, true).code(), ErrorKind::Conflict);
    }

    #[test]
    fn attempts_get_a_slice_of_the_deadline_only_when_timeouts_are_retried() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(Retry::Idempotent.attempt_timeout(s(9), s(9)), s(3));
        assert_eq!(Retry::Idempotent.attempt_timeout(s(9), ms(1500)), ms(1500));
        assert_eq!(Retry::Idempotent.attempt_timeout(s(2), s(2)), s(1));
        assert_eq!(Retry::Idempotent.attempt_timeout(ms(300), ms(300)), ms(300));
        assert_eq!(Retry::Refused.attempt_timeout(s(9), s(9)), s(9));
    }

    #[test]
    fn pauses_stay_within_the_deadline_and_final_codes_end_at_once() {
        let busy = server(ErrorKind::Busy);
        let ms = Duration::from_millis;
        assert_eq!(Retry::Refused.pause(&busy, 0, ms(1000), 1.0), Some(ms(25)));
        assert_eq!(Retry::Refused.pause(&busy, 9, ms(1000), 1.0), Some(ms(400)));
        // The pause and a last attempt of 50 ms must fit in what is left.
        assert_eq!(Retry::Refused.pause(&busy, 9, ms(449), 1.0), None);
        assert_eq!(Retry::Refused.pause(&busy, 9, ms(450), 1.0), Some(ms(400)));
        assert_eq!(Retry::Idempotent.pause(&busy, 0, ms(74), 1.0), None);
        let timeout = server(ErrorKind::Timeout);
        assert_eq!(Retry::Refused.pause(&timeout, 0, ms(5000), 1.0), None);
        assert_eq!(
            Retry::Idempotent.pause(&timeout, 0, ms(5000), 1.0),
            Some(ms(25))
        );
        assert_eq!(
            Retry::Idempotent.pause(&server(ErrorKind::Internal), 0, ms(5000), 1.0),
            None
        );
    }

    #[test]
    fn a_retry_loop_never_outlives_its_deadline() {
        // Simulated time: every attempt fails with `timeout` after using its whole slice.
        for total_ms in [0u64, 10, 100, 999, 1000, 3000, 5000, 10_000] {
            let total = Duration::from_millis(total_ms);
            let mut used = Duration::ZERO;
            let mut attempts = 0u32;
            loop {
                let remaining = total.saturating_sub(used);
                used += Retry::Idempotent.attempt_timeout(total, remaining);
                attempts += 1;
                let left = total.saturating_sub(used);
                match Retry::Idempotent.pause(&server(ErrorKind::Timeout), attempts - 1, left, 0.5)
                {
                    Some(p) => used += p,
                    None => break,
                }
                assert!(attempts < 1000, "no end to the retries of {total_ms} ms");
            }
            assert!(used <= total, "{total_ms} ms: used {used:?}");
            if total_ms >= 3000 {
                assert!(attempts >= 3, "{total_ms} ms: only {attempts} attempts");
            }
        }
    }

    #[test]
    fn a_refusal_after_an_unknown_outcome_is_reported_as_timeout() {
        let busy = server(ErrorKind::Busy);
        assert_eq!(final_error(busy, true).code(), ErrorKind::Timeout);
        let not_ready = server(ErrorKind::ClusterNotReady);
        assert_eq!(
            final_error(not_ready, false).code(),
            ErrorKind::ClusterNotReady
        );
        let nobody = ClientError::NoResponders("no node".into());
        assert_eq!(final_error(nobody, true).code(), ErrorKind::Timeout);
        let denied = server(ErrorKind::Unauthorized);
        assert_eq!(final_error(denied, true).code(), ErrorKind::Unauthorized);
        assert!(outcome_unknown(&server(ErrorKind::Timeout)));
        assert!(!outcome_unknown(&server(ErrorKind::Busy)));
    }
}
