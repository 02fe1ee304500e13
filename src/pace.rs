//! The transfer rate cap (`max_bytes_per_s`), shared by downloads and uploads: after
//! each chunk, sleep until the average since the start is back under the cap. Averaging
//! from the start (not per chunk) lets a transfer catch up after a slow patch, which is
//! what a user capping a metered link expects: the total stays under the cap.

use crate::shutdown::Shutdown;
use std::time::{Duration, Instant};

/// Keeps a transfer under `rate` bytes per second (0: no cap).
pub(crate) struct Pace {
    rate: u64,
    start: Instant,
    bytes: u64,
}

impl Pace {
    pub(crate) fn new(rate: u64) -> Self {
        Pace {
            rate,
            start: Instant::now(),
            bytes: 0,
        }
    }

    /// How long to wait after `n` more bytes, `elapsed` after the start (pure).
    fn wait_after(&mut self, n: u64, elapsed: Duration) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        self.bytes += n;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        due.saturating_sub(elapsed)
    }

    /// Counts `n` more bytes and sleeps until the average is back under the cap (a stop
    /// cuts the sleep short).
    pub(crate) fn after(&mut self, n: u64, shutdown: &Shutdown) {
        let wait = self.wait_after(n, self.start.elapsed());
        if !wait.is_zero() {
            shutdown.sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_only_when_ahead_of_the_cap() {
        let mut p = Pace::new(1000);
        assert_eq!(
            p.wait_after(500, Duration::ZERO),
            Duration::from_millis(500)
        );
        assert_eq!(
            p.wait_after(500, Duration::from_millis(2000)),
            Duration::ZERO,
            "behind the cap: no wait"
        );
        let mut free = Pace::new(0);
        assert_eq!(free.wait_after(u64::MAX, Duration::ZERO), Duration::ZERO);
    }
}
