//! Retry delays, one policy for every retry in the agent: reconnects (1 s doubling to
//! 5 min), upload retries (2 s doubling to 5 min) and a download's transient failures
//! (2 s doubling to 32 s). Each delay is drawn from the upper half of its step, so that a
//! fleet that failed together does not retry together; the random bits come from the
//! caller, so the rule is testable without randomness or sleeping.

use std::time::Duration;

/// Exponential backoff with jitter: `min`, doubling to `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            step: min,
        }
    }

    /// Reconnects to the broker (docs/agent.md, "Connection life"): 1 s doubling to 5 min.
    pub(crate) fn reconnect() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(300))
    }

    /// The next delay, given 64 random bits; the step then doubles up to the cap.
    pub(crate) fn next_delay(&mut self, random: u64) -> Duration {
        let step_ms = self.step.as_millis() as u64;
        let half = step_ms / 2;
        let delay = Duration::from_millis(half + random % (step_ms - half + 1));
        self.step = (self.step * 2).min(self.max);
        delay
    }

    /// Starts over (after an accepted connection, a successful transfer).
    pub(crate) fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_double_to_the_cap_with_jitter_and_reset() {
        let max = Duration::from_secs(300);
        let mut b = Backoff::reconnect();
        assert_eq!(b.next_delay(0), Duration::from_millis(500));
        let d = b.next_delay(u64::MAX);
        assert!(
            d >= Duration::from_secs(1) && d <= Duration::from_secs(2),
            "{d:?}"
        );
        for _ in 0..20 {
            assert!(b.next_delay(u64::MAX) <= max);
        }
        assert!(b.next_delay(7) >= max / 2);
        b.reset();
        assert!(b.next_delay(3) <= Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::BTreeSet::new();
        for r in 0..50u64 {
            seen.insert(Backoff::reconnect().next_delay(r * 7919));
        }
        assert!(seen.len() > 10);
    }

    #[test]
    fn a_zero_policy_never_waits() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        for r in [0, 1, u64::MAX] {
            assert_eq!(b.next_delay(r), Duration::ZERO);
        }
    }
}
