//! The retry and resume rules of a download, as pure decisions: after each attempt (how
//! it ended, whether it brought bytes) and after the MD5 verdict, what happens next —
//! resume where it stopped, retry after a delay, start over from byte 0, or fail. No
//! I/O and no clock: the fetch loop (`fetch.rs`) acts on the [`Decision`], and the delays
//! come from an injectable [`RetryPolicy`], so every rule has a unit test that runs at
//! zero delay. The rules (docs/protocol.md, "Download" and "Result codes"):
//! - a stall (no byte within `transfer_timeout_s`) is resumed once; a second stall in a
//!   row without progress fails the task with -1;
//! - the network failing (a connection refused, unreachable, not resolved, timed out, or
//!   lost mid-body) never fails the task and never drops the bytes on disk: it is
//!   retried after a growing delay capped at minutes, until the network is back, the
//!   platform withdraws the task, or another error comes (a router restart, a cellular
//!   handover or a DNS that is not up yet after a reboot must not discard gigabytes);
//! - a transient answer of the server (5xx, 408, 429) is retried after a growing delay;
//!   the fourth in a row without progress fails the task;
//! - a resume the server does not honour as asked starts over from byte 0;
//! - an MD5 mismatch after a resumed download starts over once (the part kept on disk
//!   may not be what the server has now); a mismatch of a whole fresh download fails -4;
//! - any other error (404, 403, a size that disagrees, a bad redirect) fails at once.

use crate::backoff::Backoff;
use crate::transfer::TransferError;
use std::time::Duration;

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Ask again from the bytes on disk, now.
    Resume,
    /// Ask again from the bytes on disk after this delay.
    RetryAfter(Duration),
    /// Drop the bytes on disk and ask from byte 0.
    StartOver,
    /// The complete file matched its MD5.
    Verified,
    /// The task fails with the error at hand.
    Fail,
    /// The task fails: this many transient failures in a row without progress.
    GiveUp { attempts: u32 },
}

/// The limits and delays of the rules.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    /// Stalls in a row without progress before the task fails (-1).
    pub(crate) max_stalls: u32,
    /// Transient failures in a row without progress before the task fails.
    pub(crate) max_failures: u32,
    /// The delays between transient answers of the server.
    pub(crate) backoff: Backoff,
    /// The delays while the network fails (never given up).
    pub(crate) network_backoff: Backoff,
}

impl RetryPolicy {
    /// The agent's policy: two stalls; four transient answers, 2 s doubling to 32 s; the
    /// network failing, 2 s doubling to 5 min, for as long as it fails; jittered.
    pub(crate) fn download() -> Self {
        RetryPolicy {
            max_stalls: 2,
            max_failures: 4,
            backoff: Backoff::new(Duration::from_secs(2), Duration::from_secs(32)),
            network_backoff: Backoff::new(Duration::from_secs(2), Duration::from_secs(300)),
        }
    }
}

/// The counters of one task's attempts.
#[derive(Debug)]
pub(crate) struct Retry {
    policy: RetryPolicy,
    failures: u32,
    stalls: u32,
    /// Bytes kept from before (a resume after a restart) are not yet proven by an MD5
    /// match: a mismatch then earns one clean start.
    unproven_resumed_part: bool,
}

impl Retry {
    /// `resumed`: the staging file held bytes from before when the task started.
    pub(crate) fn new(policy: RetryPolicy, resumed: bool) -> Self {
        Retry {
            policy,
            failures: 0,
            stalls: 0,
            unproven_resumed_part: resumed,
        }
    }

    /// After an attempt that ended with `error` (None: the body ended at the task's
    /// size); `progressed`: it brought bytes; `random`: 64 bits for the delay's jitter.
    pub(crate) fn after_attempt(
        &mut self,
        progressed: bool,
        error: Option<&TransferError>,
        random: u64,
    ) -> Decision {
        if progressed {
            self.failures = 0;
            self.stalls = 0;
            self.policy.backoff.reset();
            self.policy.network_backoff.reset();
        }
        let Some(error) = error else {
            return Decision::Resume;
        };
        match error {
            TransferError::ResumeRefused { .. } => {
                self.failures += 1;
                Decision::StartOver
            }
            TransferError::Connect { .. } | TransferError::Interrupted { .. } => {
                Decision::RetryAfter(self.policy.network_backoff.next_delay(random))
            }
            TransferError::Timeout { .. } => {
                if !progressed {
                    self.stalls += 1;
                }
                if self.stalls >= self.policy.max_stalls {
                    Decision::Fail
                } else {
                    Decision::Resume
                }
            }
            e if e.is_transient() => {
                if !progressed {
                    self.failures += 1;
                }
                if self.failures >= self.policy.max_failures {
                    Decision::GiveUp {
                        attempts: self.failures,
                    }
                } else {
                    Decision::RetryAfter(self.policy.backoff.next_delay(random))
                }
            }
            _ => Decision::Fail,
        }
    }

    /// After the whole file arrived: `matched` says whether its MD5 is the task's.
    pub(crate) fn after_md5(&mut self, matched: bool) -> Decision {
        if matched {
            Decision::Verified
        } else if std::mem::replace(&mut self.unproven_resumed_part, false) {
            Decision::StartOver
        } else {
            Decision::Fail
        }
    }
}

/// Whether an answer to a request from `offset` must drop the bytes on disk: the server
/// ignored `Range` and sends the resource from byte 0.
pub(crate) fn range_ignored(offset: u64, body_start: u64) -> bool {
    offset > 0 && body_start == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zero_delay() -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff::new(Duration::ZERO, Duration::ZERO),
            network_backoff: Backoff::new(Duration::ZERO, Duration::ZERO),
            ..RetryPolicy::download()
        }
    }

    fn timeout() -> TransferError {
        TransferError::Timeout {
            url: "u".into(),
            secs: 1,
        }
    }

    fn refused_connection() -> TransferError {
        TransferError::Connect {
            url: "u".into(),
            reason: "refused".into(),
        }
    }

    fn status(code: u16) -> TransferError {
        TransferError::Status {
            code,
            url: "u".into(),
        }
    }

    #[test]
    fn a_clean_end_resumes_to_the_md5_check() {
        let mut r = Retry::new(zero_delay(), false);
        assert_eq!(r.after_attempt(true, None, 0), Decision::Resume);
    }

    #[test]
    fn a_stall_is_resumed_once_then_fails() {
        let mut r = Retry::new(zero_delay(), false);
        assert_eq!(
            r.after_attempt(false, Some(&timeout()), 0),
            Decision::Resume
        );
        assert_eq!(r.after_attempt(false, Some(&timeout()), 0), Decision::Fail);
    }

    #[test]
    fn a_stall_after_progress_starts_the_count_again() {
        let mut r = Retry::new(zero_delay(), false);
        assert_eq!(
            r.after_attempt(false, Some(&timeout()), 0),
            Decision::Resume
        );
        assert_eq!(r.after_attempt(true, Some(&timeout()), 0), Decision::Resume);
        assert_eq!(
            r.after_attempt(false, Some(&timeout()), 0),
            Decision::Resume
        );
        assert_eq!(r.after_attempt(false, Some(&timeout()), 0), Decision::Fail);
    }

    #[test]
    fn transient_answers_retry_after_a_delay_and_give_up_at_the_fourth() {
        let mut r = Retry::new(zero_delay(), false);
        for code in [500, 408, 429] {
            assert_eq!(
                r.after_attempt(false, Some(&status(code)), 0),
                Decision::RetryAfter(Duration::ZERO)
            );
        }
        assert_eq!(
            r.after_attempt(false, Some(&status(503)), 0),
            Decision::GiveUp { attempts: 4 }
        );
    }

    #[test]
    fn the_network_failing_never_gives_up_and_waits_at_most_five_minutes() {
        let mut r = Retry::new(RetryPolicy::download(), true);
        let lost = || TransferError::Interrupted {
            url: "u".into(),
            reason: "reset".into(),
        };
        let mut last = Duration::ZERO;
        for i in 0..40 {
            let e = if i % 2 == 0 {
                refused_connection()
            } else {
                lost()
            };
            match r.after_attempt(false, Some(&e), u64::MAX) {
                Decision::RetryAfter(d) => {
                    assert!(d <= Duration::from_secs(300), "{d:?}");
                    last = d;
                }
                other => panic!("attempt {i}: {other:?}"),
            }
        }
        assert!(
            last >= Duration::from_secs(150),
            "capped at minutes: {last:?}"
        );
        // Progress starts the delays over.
        match r.after_attempt(true, Some(&refused_connection()), u64::MAX) {
            Decision::RetryAfter(d) => assert!(d <= Duration::from_secs(2), "{d:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transient_delays_grow_and_progress_resets_them() {
        let mut r = Retry::new(RetryPolicy::download(), false);
        let delay = |d: Decision| match d {
            Decision::RetryAfter(d) => d,
            other => panic!("{other:?}"),
        };
        let first = delay(r.after_attempt(false, Some(&status(500)), u64::MAX));
        let second = delay(r.after_attempt(false, Some(&status(500)), u64::MAX));
        assert!(
            first <= Duration::from_secs(2) && second > first,
            "{first:?} {second:?}"
        );
        let after_progress = delay(r.after_attempt(true, Some(&status(500)), u64::MAX));
        assert!(
            after_progress <= Duration::from_secs(2),
            "{after_progress:?}"
        );
    }

    #[test]
    fn a_refused_resume_starts_over() {
        let mut r = Retry::new(zero_delay(), true);
        let e = TransferError::ResumeRefused {
            url: "u".into(),
            reason: "416".into(),
        };
        assert_eq!(r.after_attempt(false, Some(&e), 0), Decision::StartOver);
    }

    #[test]
    fn final_answers_fail_at_once() {
        for e in [status(404), status(403), status(401)] {
            let mut r = Retry::new(zero_delay(), false);
            assert_eq!(r.after_attempt(false, Some(&e), 0), Decision::Fail, "{e}");
        }
        let mut r = Retry::new(zero_delay(), false);
        let size = TransferError::SizeMismatch {
            url: "u".into(),
            header: "Content-Length",
            got: 1,
            expected: 2,
        };
        assert_eq!(r.after_attempt(false, Some(&size), 0), Decision::Fail);
    }

    #[test]
    fn a_mismatch_after_a_resume_starts_over_once() {
        let mut r = Retry::new(zero_delay(), true);
        assert_eq!(r.after_md5(false), Decision::StartOver);
        assert_eq!(r.after_md5(false), Decision::Fail);
    }

    #[test]
    fn a_mismatch_of_a_fresh_download_fails_and_a_match_verifies() {
        let mut r = Retry::new(zero_delay(), false);
        assert_eq!(r.after_md5(true), Decision::Verified);
        assert_eq!(r.after_md5(false), Decision::Fail);
    }

    #[test]
    fn an_ignored_range_drops_the_part_on_disk() {
        assert!(range_ignored(100, 0));
        assert!(!range_ignored(100, 100));
        assert!(!range_ignored(0, 0));
    }
}
