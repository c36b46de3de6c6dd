//! Sampling of the per-operation events (`telemetry.api_events`, `telemetry.apply_events`):
//! `all`, `sampled:R` (0 < R <= 1) or `off`.
//!
//! Sampling is deterministic, not random: of every run of events a fraction R is kept, evenly
//! spread (R = 0.25 keeps every fourth). Counts are then exact to within one, which makes
//! the stream easy to reason about and to test, and needs no random number per event.

use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::config::Sampling;

/// Decides, event by event, which ones are kept.
#[derive(Debug)]
pub struct Sampler {
    mode: Sampling,
    seen: AtomicU64,
}

impl Sampler {
    pub fn new(mode: Sampling) -> Sampler {
        Sampler {
            mode,
            seen: AtomicU64::new(0),
        }
    }

    pub fn is_off(&self) -> bool {
        self.mode == Sampling::Off
    }

    /// Whether to keep the next event.
    pub fn keep(&self) -> bool {
        match self.mode {
            Sampling::All => true,
            Sampling::Off => false,
            Sampling::Sampled(rate) => {
                // Kept when the running count of kept events, floor(n * R), steps up.
                let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
                ((n + 1.0) * rate).floor() > (n * rate).floor()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(Sampling::parse("all"), Ok(Sampling::All));
        assert_eq!(Sampling::parse("off"), Ok(Sampling::Off));
        assert_eq!(Sampling::parse("sampled:0.25"), Ok(Sampling::Sampled(0.25)));
        assert_eq!(Sampling::parse("sampled:1"), Ok(Sampling::Sampled(1.0)));
        for bad in [
            "",
            "some",
            "sampled:",
            "sampled:0",
            "sampled:1.5",
            "sampled:-1",
            "sampled:NaN",
        ] {
            let e = Sampling::parse(bad).unwrap_err();
            assert!(e.contains("sampled:R"), "{bad}: {e}");
        }
    }

    #[test]
    fn sampled_keeps_the_fraction_evenly() {
        let s = Sampler::new(Sampling::Sampled(0.25));
        let kept: Vec<bool> = (0..8).map(|_| s.keep()).collect();
        assert_eq!(kept, [false, false, false, true, false, false, false, true]);
        let s = Sampler::new(Sampling::Sampled(0.3));
        assert_eq!((0..1000).filter(|_| s.keep()).count(), 300);
        let all = Sampler::new(Sampling::All);
        assert!((0..10).all(|_| all.keep()));
        let off = Sampler::new(Sampling::Off);
        assert!(!(0..10).any(|_| off.keep()));
    }
}
