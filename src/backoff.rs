//! Retry delays, one policy for every retry in the agent: reconnects (1 s doubling to
//! 5 min, full jitter: anywhere in the window), upload retries (2 s doubling to 5 min)
//! and a download's transient failures (2 s doubling to 32 s), those two drawn from the
//! upper half of their step. A fleet that failed together does not retry together; the
//! random bits come from the caller, so the rule is testable without randomness.

use std::time::Duration;

/// Exponential backoff with jitter: `min`, doubling to `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
    /// Draw from the whole window (0..step) rather than its upper half.
    full_jitter: bool,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            step: min,
            full_jitter: false,
        }
    }

    /// Reconnects to the broker (docs/agent.md, "Connection life"): 1 s doubling to
    /// 5 min, each wait drawn from the whole window (full jitter), so a fleet that lost
    /// its broker together comes back spread over the window, not in its last half.
    pub(crate) fn reconnect() -> Self {
        Backoff {
            full_jitter: true,
            ..Self::new(Duration::from_secs(1), Duration::from_secs(300))
        }
    }

    /// The next delay, given 64 random bits; the step then doubles up to the cap.
    pub(crate) fn next_delay(&mut self, random: u64) -> Duration {
        let step_ms = self.step.as_millis() as u64;
        let half = if self.full_jitter { 0 } else { step_ms / 2 };
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
    fn reconnect_delays_use_the_whole_window_double_to_the_cap_and_reset() {
        let max = Duration::from_secs(300);
        let mut b = Backoff::reconnect();
        assert_eq!(b.next_delay(0), Duration::ZERO, "full jitter: from 0");
        assert_eq!(b.next_delay(2000), Duration::from_secs(2), "up to the step");
        for _ in 0..20 {
            assert!(b.next_delay(u64::MAX) <= max, "never past the cap");
        }
        assert_eq!(b.next_delay(7), Duration::from_millis(7));
        b.reset();
        assert!(b.next_delay(3) <= Duration::from_secs(1));
    }

    #[test]
    fn retries_draw_from_the_upper_half() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(32));
        assert_eq!(b.next_delay(0), Duration::from_secs(1));
        assert!(b.next_delay(u64::MAX) >= Duration::from_secs(2));
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
