//! Progress reports to the platform: intermediate ones as QoS 0 and throttled, final ones
//! as QoS 1 and kept in the journal until the broker acknowledged them, so a `done` or
//! `fail` survives a lost connection, a kill or a reboot and is sent again after the next
//! connect.

use crate::journal::{Journal, JournalStore};
use crate::mqtt::Publisher;
use crate::protocol::{Direction, ProgressState, Report};
use std::collections::VecDeque;
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
    /// The reports sent in this session and not answered yet, one list per direction:
    /// the next `report_download_progress_rsp` (`report_upload_progress_rsp`) answers
    /// the oldest download (upload) report.
    awaiting: Mutex<[Awaiting; 2]>,
}

/// Reports awaiting an answer, kept at most: a platform that stopped answering must not
/// grow the list (past it the oldest go, and a reconnect starts afresh anyway).
const MAX_AWAITING: usize = 256;

/// The reports of one direction sent in this MQTT session that have no answer yet,
/// oldest first. The platform answers every `report_download_progress` with one
/// `report_download_progress_rsp` (every `report_upload_progress` with one
/// `report_upload_progress_rsp`), in order; the broker keeps a session's order, so the
/// n-th answer is the answer to the n-th report (docs/protocol.md, "Cancelling").
/// Answers carry no name: this list is how one is told from another — with no time
/// window, so a late answer is still matched to its report.
#[derive(Debug, Default)]
pub(crate) struct Awaiting {
    sent: VecDeque<(u64, Sent)>,
    next_id: u64,
}

/// A report awaiting its answer: which resource it was about and the state it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sent {
    pub(crate) name: String,
    pub(crate) state: ProgressState,
}

impl Awaiting {
    /// A report about `name` is about to be published (before it is, so its answer
    /// cannot arrive first); its id, to take it back if the publish fails.
    pub(crate) fn sent(&mut self, name: &str, state: ProgressState) -> u64 {
        self.next_id += 1;
        if self.sent.len() >= MAX_AWAITING {
            self.sent.pop_front();
        }
        let report = Sent {
            name: name.to_string(),
            state,
        };
        self.sent.push_back((self.next_id, report));
        self.next_id
    }

    /// The report `id` did not leave: no answer will come for it.
    pub(crate) fn not_sent(&mut self, id: u64) {
        self.sent.retain(|(i, _)| *i != id);
    }

    /// An answer arrived: the report it answers (None: no report awaits one — the
    /// platform sent it unasked).
    pub(crate) fn answered(&mut self) -> Option<Sent> {
        self.sent.pop_front().map(|(_, sent)| sent)
    }

    /// The session ended: answers to what it sent are lost with it (clean session).
    pub(crate) fn session_lost(&mut self) {
        self.sent.clear();
    }
}

impl Reporter {
    pub(crate) fn new(publisher: Publisher, journal: Arc<JournalStore>) -> Self {
        Reporter {
            publisher,
            journal,
            finals: Mutex::new(()),
            awaiting: Mutex::new(Default::default()),
        }
    }

    /// An intermediate report, QoS 0: a stale percent is not worth a retransmission.
    /// Whether it was handed to the broker connection.
    pub(crate) fn progress(&self, report: &Report) -> bool {
        match self.publish(report, 0) {
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

    /// A final report journaled and handed to Paho without waiting for its
    /// acknowledgement (pipelined uploads: the next file goes while the broker answers);
    /// [`poll_final`](Self::poll_final) tells when it is in. None: not handed over (it
    /// stays journaled and is sent again after the next connect).
    pub(crate) fn final_report_queued(&self, report: Report) -> Option<FinalQueued> {
        let _guard = self.finals.lock().unwrap_or_else(|p| p.into_inner());
        log::info!("{} {}: {}", report.name, report.state, report.result_code);
        let pending = report.clone();
        self.journal.record(|j| {
            j.unacked_reports.push(pending);
            let excess = j.unacked_reports.len().saturating_sub(MAX_UNACKED);
            j.unacked_reports.drain(..excess);
        });
        match self.list_and_queue(&report, 1) {
            Ok((id, queued)) => Some(FinalQueued {
                report,
                id,
                queued,
                at: std::time::Instant::now(),
            }),
            Err(e) => {
                log::warn!(
                    "{} report for {} not sent ({e}); it is sent again after the next connect",
                    report.state,
                    report.name
                );
                None
            }
        }
    }

    /// Whether the broker acknowledged a queued final report: None while it may still;
    /// Some(true) once it did (the journal forgets it), Some(false) when it failed or
    /// took longer than a publish may (it is sent again after the next connect).
    pub(crate) fn poll_final(&self, f: &FinalQueued) -> Option<bool> {
        let outcome = match f.queued.poll() {
            None if f.at.elapsed() < crate::mqtt::REQUEST_TIMEOUT => return None,
            None => Err("no acknowledgement in time".to_string()),
            Some(r) => r.map_err(|e| e.to_string()),
        };
        match outcome {
            Ok(()) => {
                self.journal.record(|j| {
                    if let Some(i) = j.unacked_reports.iter().position(|r| r == &f.report) {
                        j.unacked_reports.remove(i);
                    }
                });
                Some(true)
            }
            Err(e) => {
                self.awaiting(f.report.direction, |a| a.not_sent(f.id));
                log::warn!(
                    "{} report for {} not acknowledged ({e}); it is sent again after the next connect",
                    f.report.state,
                    f.report.name
                );
                Some(false)
            }
        }
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

    /// A `report_download_progress_rsp` (`direction` Download) or
    /// `report_upload_progress_rsp` (Upload) arrived: the report it answers (None: no
    /// report of this session awaits one).
    pub(crate) fn answered(&self, direction: Direction) -> Option<Sent> {
        self.awaiting(direction, |a| a.answered())
    }

    /// The MQTT session ended: no report sent in it will be answered.
    pub(crate) fn session_lost(&self) {
        let mut lists = self.awaiting.lock().unwrap_or_else(|p| p.into_inner());
        lists.iter_mut().for_each(Awaiting::session_lost);
    }

    fn awaiting<T>(&self, direction: Direction, f: impl FnOnce(&mut Awaiting) -> T) -> T {
        let mut lists = self.awaiting.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut lists[direction as usize])
    }

    /// Publishes `report`, listed as awaiting its answer first. Listing and handing it
    /// to Paho happen under one lock: the list's order is then the order on the wire,
    /// also when the coordinator (a refused task's `fail`) and the download thread (its
    /// progress) report at the same instant — else an answer to one would be taken for
    /// the other's (a refusal's `-1` withdrawing a healthy download). The acknowledgement
    /// of a QoS 1 report is waited for outside the lock.
    fn publish(&self, report: &Report, qos: i32) -> Result<(), crate::mqtt::MqttError> {
        let (id, queued) = self.list_and_queue(report, qos)?;
        let sent = queued.wait();
        if sent.is_err() {
            self.awaiting(report.direction, |a| a.not_sent(id));
        }
        sent
    }

    /// Lists `report` as awaiting its answer and hands it to Paho, under one lock (see
    /// [`publish`](Self::publish)); its id in the list and the handle of its ack.
    fn list_and_queue(
        &self,
        report: &Report,
        qos: i32,
    ) -> Result<(u64, crate::mqtt::Queued), crate::mqtt::MqttError> {
        let message = report.to_message();
        let mut lists = self.awaiting.lock().unwrap_or_else(|p| p.into_inner());
        let list = &mut lists[report.direction as usize];
        let id = list.sent(&report.name, report.state);
        let queued = self.publisher.queue(&message, qos);
        if queued.is_err() {
            list.not_sent(id);
        }
        Ok((id, queued?))
    }

    /// Publishes with QoS 1; on PUBACK forgets the report. Returns whether it was acked.
    fn send_final(&self, report: &Report) -> bool {
        match self.publish(report, 1) {
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

/// A final report handed to Paho whose acknowledgement is not waited for
/// ([`Reporter::final_report_queued`]).
pub(crate) struct FinalQueued {
    report: Report,
    id: u64,
    queued: crate::mqtt::Queued,
    at: std::time::Instant,
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
    fn answers_are_matched_to_reports_in_order_whenever_they_come() {
        let mut a = Awaiting::default();
        let name = |a: &mut Awaiting| a.answered().map(|s| s.name);
        a.sent("refused.bin", ProgressState::Fail);
        a.sent("fw.bin", ProgressState::Downloading);
        let lost = a.sent("fw.bin", ProgressState::Downloading);
        a.not_sent(lost);
        a.sent("fw.bin", ProgressState::Done);
        assert_eq!(
            name(&mut a).as_deref(),
            Some("refused.bin"),
            "late, still its own"
        );
        assert_eq!(name(&mut a).as_deref(), Some("fw.bin"));
        let done = a.answered().map(|s| s.state);
        assert_eq!(done, Some(ProgressState::Done), "the state it said");
        assert_eq!(a.answered(), None, "the report not sent has no answer");
    }

    #[test]
    fn a_lost_session_forgets_its_reports_and_the_list_is_bounded() {
        let mut a = Awaiting::default();
        a.sent("old.bin", ProgressState::Done);
        a.session_lost();
        assert_eq!(a.answered(), None);
        for i in 0..MAX_AWAITING + 10 {
            a.sent(&format!("r{i}"), ProgressState::Uploading);
        }
        assert_eq!(a.answered().map(|s| s.name).as_deref(), Some("r10"));
    }

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
