//! A clock the agent can trust before it signs a login or checks a certificate: boards
//! without a battery-backed clock start in 1970 until NTP answers, and then every TLS
//! handshake fails (a certificate "not yet valid") and every signature is expired. A
//! clock earlier than this binary's build time ([`BUILD_UNIX`], from `SOURCE_DATE_EPOCH`
//! when the build sets it) is "not set yet": the agent says so once and waits, reading
//! the clock every second, instead of failing tasks; it goes on when the clock moves.
//!
//! Intervals never use this clock: backoffs, stall timers, pacing and waits run on the
//! monotonic clock (`Instant`), so NTP correcting the wall clock by years fires none of
//! them early or late.

use crate::shutdown::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// When this binary was built (Unix seconds).
pub(crate) const BUILD_UNIX: u64 = parse(env!("RESAGENT_BUILD_UNIX"));

/// How often a wait for the clock reads it again.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Whether "not set yet" was said (once per process).
static SAID: AtomicBool = AtomicBool::new(false);

const fn parse(s: &str) -> u64 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n: u64 = 0;
    while i < b.len() {
        n = n * 10 + (b[i] - b'0') as u64;
        i += 1;
    }
    n
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether a clock reading of `unix` can be trusted: not before the build.
pub(crate) fn trusted(unix: u64) -> bool {
    unix >= BUILD_UNIX
}

/// Returns once the clock is at or after the build time (at once when it is), or when
/// the agent stops (false). `what` is what waits, for the one log line.
pub(crate) fn wait_until_set(shutdown: &Shutdown, what: &str) -> bool {
    loop {
        let now = unix_now();
        if trusted(now) {
            if SAID.swap(false, Ordering::SeqCst) {
                log::info!("the system clock is set now; going on");
            }
            return true;
        }
        if !SAID.swap(true, Ordering::SeqCst) {
            log::warn!(
                "the system clock says {now} (Unix seconds), before this agent was built \
                 ({BUILD_UNIX}): it is not set yet. Waiting for it before {what} \
                 (a signature or certificate checked now would fail)"
            );
        }
        crate::notify::beat();
        if shutdown.sleep(LOOK_EVERY) {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_time_is_recorded_and_bounds_a_trusted_clock() {
        let built = BUILD_UNIX;
        assert!(built > 1_700_000_000, "{built}");
        assert!(!trusted(0), "1970 is not set");
        assert!(!trusted(BUILD_UNIX - 1));
        assert!(trusted(BUILD_UNIX) && trusted(unix_now()));
    }
}
