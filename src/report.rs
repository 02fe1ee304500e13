//! Progress reports to the platform: intermediate ones as QoS 0 and throttled, final ones
//! as QoS 1 and kept in the journal until the broker acknowledged them, so a `done` or
//! `fail` survives a lost connection, a kill or a reboot and is sent again after the next
//! connect.

use crate::journal::{Journal, JournalStore};
use crate::mqtt::Publisher;
use crate::protocol::{Direction, ProgressState, Report};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Final reports kept for re-sending at most; past this the oldest go (a device cut off
/// from its broker for weeks must not grow its journal without bound).
const MAX_UNACKED: usize = 64;

/// Sends reports; shared by the coordinator and the transfer threads.
pub(crate) struct Reporter {
    publisher: Publisher,
    journal: Arc<JournalStore>,
    /// Serialises final reports, so a re-send after connect and a new final report do not
    /// interleave their journal updates.
    finals: Mutex<()>,
    /// Final reports published lately (direction, name, when): an answer arriving now
    /// may belong to one of them.
    recent: Mutex<Vec<(Direction, String, Instant)>>,
}

/// How long after a final report an answer may still be the platform's answer to it.
const ANSWER_WINDOW: Duration = Duration::from_secs(5);

impl Reporter {
    pub(crate) fn new(publisher: Publisher, journal: Arc<JournalStore>) -> Self {
        Reporter {
            publisher,
            journal,
            finals: Mutex::new(()),
            recent: Mutex::new(Vec::new()),
        }
    }

    /// An intermediate report, QoS 0: a stale percent is not worth a retransmission.
    /// Whether it was handed to the broker connection.
    pub(crate) fn progress(&self, report: &Report) -> bool {
        match self.publisher.publish(&report.to_message(), 0) {
            Ok(()) => true,
            Err(e) => {
                log::debug!("progress report for {} not sent: {e}", report.name);
                false
            }
        }
    }

    /// A final report: recorded in the journal first, removed once acknowledged.
    /// Returns whether the broker acknowledged it now.
    pub(crate) fn final_report(&self, report: Report) -> bool {
        self.final_report_with(report, |_| {})
    }

    /// A final report journaled in the same write as `change`, the state change it
    /// reports (an install, a task cleared): a crash cannot separate the two, and they
    /// cost one fsync instead of two. Returns whether the broker acknowledged it now.
    pub(crate) fn final_report_with(
        &self,
        report: Report,
        change: impl FnOnce(&mut Journal),
    ) -> bool {
        let _guard = self.finals.lock().unwrap_or_else(|p| p.into_inner());
        log::info!(
            "{} {}: {}{}",
            report.name,
            report.state,
            report.result_code,
            if report.result_msg.is_empty() {
                String::new()
            } else {
                format!(" ({})", report.result_msg)
            }
        );
        let pending = report.clone();
        self.journal.record(|j| {
            change(j);
            j.unacked_reports.push(pending);
            let excess = j.unacked_reports.len().saturating_sub(MAX_UNACKED);
            j.unacked_reports.drain(..excess);
        });
        self.send_final(&report)
    }

    /// Sends every final report still waiting for its acknowledgement (after a connect);
    /// returns those acknowledged now (a "reboot pending" among them starts
    /// `reboot_command`).
    pub(crate) fn resend_unacked(&self) -> Vec<Report> {
        let _guard = self.finals.lock().unwrap_or_else(|p| p.into_inner());
        let mut acked = Vec::new();
        for report in self.journal.snapshot().unacked_reports {
            log::info!(
                "re-sending the unacknowledged {} report for {}",
                report.state,
                report.name
            );
            if !self.send_final(&report) {
                break;
            }
            acked.push(report);
        }
        acked
    }

    /// A final report of `direction` about another resource than `name`, published
    /// within the last few seconds: an answer now may be the platform's answer to it
    /// (answers carry no name), so it must not cancel `name` (docs/protocol.md).
    pub(crate) fn recent_final_about_another(
        &self,
        direction: Direction,
        name: &str,
    ) -> Option<String> {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|(_, _, at)| at.elapsed() < ANSWER_WINDOW);
        recent
            .iter()
            .rev()
            .find(|(d, n, _)| *d == direction && n != name)
            .map(|(_, n, _)| n.clone())
    }

    /// Publishes with QoS 1; on PUBACK forgets the report. Returns whether it was acked.
    fn send_final(&self, report: &Report) -> bool {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.retain(|(_, _, at)| at.elapsed() < ANSWER_WINDOW);
            recent.push((report.direction, report.name.clone(), Instant::now()));
        }
        match self.publisher.publish(&report.to_message(), 1) {
            Ok(()) => {
                self.journal.record(|j| {
                    if let Some(i) = j.unacked_reports.iter().position(|r| r == report) {
                        j.unacked_reports.remove(i);
                    }
                });
                true
            }
            Err(e) => {
                log::warn!(
                    "{} report for {} not acknowledged ({e}); it is sent again after the next connect",
                    report.state,
                    report.name
                );
                false
            }
        }
    }
}

/// Decides which intermediate reports go out: the first of each state always, later ones
/// only when the percent moved and `interval` has passed since the last one.
#[derive(Debug)]
pub(crate) struct Throttle {
    interval: Duration,
    last: Option<(ProgressState, u8, Instant)>,
}

impl Throttle {
    pub(crate) fn new(interval: Duration) -> Self {
        Throttle {
            interval,
            last: None,
        }
    }

    /// Whether to send a report of `state` at `percent` now; records it if so.
    pub(crate) fn due(&mut self, state: ProgressState, percent: u8, now: Instant) -> bool {
        let send = match self.last {
            None => true,
            Some((s, _, _)) if s != state => true,
            Some((_, p, at)) => p != percent && now.duration_since(at) >= self.interval,
        };
        if send {
            self.last = Some((state, percent, now));
        }
        send
    }
}

/// The intermediate reports of one transfer, throttled: downloads (`downloading`,
/// `burning`) and uploads (`uploading`) all report through this one helper.
pub(crate) struct Progress<'a> {
    reporter: &'a Reporter,
    direction: Direction,
    name: &'a str,
    throttle: Throttle,
}

impl<'a> Progress<'a> {
    pub(crate) fn new(
        reporter: &'a Reporter,
        direction: Direction,
        name: &'a str,
        interval: Duration,
    ) -> Self {
        Progress {
            reporter,
            direction,
            name,
            throttle: Throttle::new(interval),
        }
    }

    /// Reports `state` at `percent` if the throttle lets it through; whether a report
    /// went out.
    pub(crate) fn report(&mut self, state: ProgressState, percent: u8) -> bool {
        let due = self.throttle.due(state, percent, Instant::now());
        due && self
            .reporter
            .progress(&Report::progress(self.direction, self.name, state, percent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_sends_first_of_each_state_then_on_interval_and_change() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Throttle::new(s);
        assert!(t.due(ProgressState::Downloading, 0, t0));
        assert!(
            !t.due(ProgressState::Downloading, 5, t0 + s / 2),
            "too soon"
        );
        assert!(
            !t.due(ProgressState::Downloading, 0, t0 + s * 2),
            "percent did not move"
        );
        assert!(t.due(ProgressState::Downloading, 7, t0 + s * 2));
        assert!(
            t.due(ProgressState::Burning, 0, t0 + s * 2),
            "first of a new state"
        );
    }
}
