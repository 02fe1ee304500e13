//! The transfer rate cap (`max_bytes_per_s`), shared by downloads and uploads: after
//! each chunk, sleep until the average since the start is back under the cap. Averaging
//! from the start (not per chunk) lets a transfer catch up after a slow patch, which is
//! what a user capping a metered link expects: the total stays under the cap.

use crate::schedule::RateCap;
use crate::shutdown::Shutdown;
use std::time::{Duration, Instant};

/// How often a scheduled cap reads the local time again.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// A [`Pace`] under `max_bytes_per_s` as configured: one cap, or caps by local time of
/// day. The time of day is read again at most once a second (a cap changes at a whole
/// minute); a new rate starts a new average, so bytes sent under the old one neither
/// borrow from nor owe to the new.
pub(crate) struct ScheduledPace {
    cap: RateCap,
    rate: u64,
    pace: Pace,
    next_look: Instant,
}

impl ScheduledPace {
    pub(crate) fn new(cap: &RateCap) -> Self {
        // A fixed cap needs no clock (the time zone is read only for a schedule).
        let rate = match cap {
            RateCap::Always(rate) => *rate,
            RateCap::Scheduled(_) => cap.at(crate::sys::local_second_now()),
        };
        ScheduledPace {
            cap: cap.clone(),
            rate,
            pace: Pace::new(rate),
            next_look: Instant::now() + LOOK_EVERY,
        }
    }

    /// Counts `n` more bytes and sleeps as the cap of this moment says.
    pub(crate) fn after(&mut self, n: u64, shutdown: &Shutdown) {
        if self.cap.varies() && Instant::now() >= self.next_look {
            self.next_look = Instant::now() + LOOK_EVERY;
            let rate = self.cap.at(crate::sys::local_second_now());
            if rate != self.rate {
                log::info!(
                    "rate cap now {} (max_bytes_per_s by time of day)",
                    if rate == 0 {
                        "off".to_string()
                    } else {
                        format!("{rate} bytes/s")
                    }
                );
                self.rate = rate;
                self.pace = Pace::new(rate);
            }
        }
        self.pace.after(n, shutdown);
    }
}

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
