//! The uploads in flight around the one being sent: files announced ahead
//! (`create_upload_task` out, the URL on its way) and files whose `done` went out and
//! whose verdict is still owed. On a link with 100–600 ms to the broker, one upload at a
//! time cost two round trips per file — the announce and the verdict — before its bytes
//! could move; with [`WINDOW`] files announced ahead and the verdicts collected while the
//! next file is sent, a batch of small files goes at the pace of the link.
//!
//! The order of the PUTs and of the `done` reports is the outbox's, as before; a file
//! still leaves the outbox only once its `done` was acknowledged and not rejected.
//! Answers are routed here from every wait of the upload thread: a
//! `create_upload_task_rsp` to the announced file it names (name and MD5), an answer to a
//! report to the judged file it belongs to (the FIFO match of `report::Awaiting`, judged
//! by [`verdict`]), an `upload_result` — which names no file — to the oldest `done` that
//! has not had one (the platform answers in order).

use super::verdict::{self, Heard, Verdict};
use super::UploadSignal;
use crate::protocol::UploadGrant;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Files announced ahead of the one being sent, and files sent whose verdict is owed,
/// at most. Small: a URL granted long before its PUT may expire (see [`GRANT_MAX_AGE`]),
/// a file announced but not sent when the agent stops is announced again after the
/// restart, and one sent whose verdict had not come is sent again.
pub(super) const WINDOW: usize = 4;

/// A grant older than this when its file's turn comes is not used: the file is announced
/// again (presigned URLs expire; the local platform's last 15 minutes).
pub(super) const GRANT_MAX_AGE: Duration = Duration::from_secs(300);

/// How long after its `done` was acknowledged a rejection still counts (docs/protocol.md).
pub(super) const REJECTION_WINDOW: Duration = Duration::from_secs(5);

/// A file announced, its grant awaited or in; `file` is what the schedule keeps of it.
pub(super) struct Ahead<P> {
    pub(super) name: String,
    pub(super) md5sum: String,
    pub(super) announced: Instant,
    pub(super) grant: Option<(UploadGrant, Instant)>,
    pub(super) file: P,
}

/// A file sent, its `done` queued: the broker's acknowledgement, then the verdict;
/// `sent` is what the schedule keeps of it.
pub(super) struct Judging<Q> {
    pub(super) name: String,
    pub(super) sent: Q,
    /// When the broker acknowledged `done` (the rejection window runs from there).
    pub(super) acked: Option<Instant>,
    pub(super) verdict: Verdict,
    /// Whether an `upload_result` was matched to this `done` already.
    pub(super) result_heard: bool,
}

/// A file whose `done` was confirmed and that left the window: an `upload_result` for
/// it may still come (matched here, so it is not taken for the next file's).
struct Settled {
    at: Instant,
    result_heard: bool,
}

pub(super) struct Window<P, Q> {
    pub(super) ahead: VecDeque<Ahead<P>>,
    pub(super) judging: VecDeque<Judging<Q>>,
    settled: VecDeque<Settled>,
    /// A wake-up heard while busy (Some(true): SIGUSR2, retry waiting files at once).
    pub(super) woken: Option<bool>,
}

impl<P, Q> Default for Window<P, Q> {
    fn default() -> Self {
        Window {
            ahead: VecDeque::new(),
            judging: VecDeque::new(),
            settled: VecDeque::new(),
            woken: None,
        }
    }
}

impl<P, Q> Window<P, Q> {
    /// Whether the entry named `name` is announced or judged now.
    pub(super) fn holds(&self, name: &str) -> bool {
        self.ahead.iter().any(|a| a.name == name) || self.judging.iter().any(|j| j.name == name)
    }

    /// Takes what the coordinator handed over; whether it withdraws `sending`, the file
    /// whose PUT runs.
    pub(super) fn hear(&mut self, signal: UploadSignal, sending: Option<&str>) -> bool {
        match signal {
            UploadSignal::TaskRsp(rsp) => {
                let ahead = self
                    .ahead
                    .iter_mut()
                    .find(|a| a.grant.is_none() && a.name == rsp.name && a.md5sum == rsp.md5sum);
                match ahead {
                    Some(a) => a.grant = Some((rsp.grant, Instant::now())),
                    None => log::debug!(
                        "ignoring create_upload_task_rsp for {} ({})",
                        rsp.name,
                        rsp.md5sum
                    ),
                }
                false
            }
            UploadSignal::Wake { reset_backoff } => {
                self.woken = Some(self.woken.unwrap_or(false) || reset_backoff);
                false
            }
            UploadSignal::ProgressRsp { code, to } => {
                let heard = Heard::Answer { code, to };
                for j in self
                    .judging
                    .iter_mut()
                    .filter(|j| j.verdict == Verdict::Open)
                {
                    j.verdict = verdict::after_done(&heard, &j.name);
                }
                sending.is_some_and(|name| verdict::withdraws(&heard, name))
            }
            UploadSignal::UploadResult(code) => {
                self.match_result(code);
                false
            }
        }
    }

    /// An `upload_result` answers the oldest `done` that has had none: a file settled
    /// already (nothing to decide), or one still judged.
    fn match_result(&mut self, code: i64) {
        let now = Instant::now();
        self.settled
            .retain(|s| now.saturating_duration_since(s.at) < REJECTION_WINDOW);
        if let Some(s) = self.settled.iter_mut().find(|s| !s.result_heard) {
            s.result_heard = true;
            return;
        }
        match self.judging.iter_mut().find(|j| !j.result_heard) {
            Some(j) => {
                j.result_heard = true;
                if j.verdict == Verdict::Open {
                    j.verdict = verdict::after_done(&Heard::Result(code), &j.name);
                }
            }
            None => log::debug!("ignoring upload_result {code}: no done awaits one"),
        }
    }

    /// A judged file leaves the window (confirmed, rejected, or its window passed); its
    /// `upload_result`, should one still come, is matched to it and decides nothing.
    pub(super) fn settled(&mut self, j: &Judging<Q>) {
        let now = Instant::now();
        self.settled
            .retain(|s| now.saturating_duration_since(s.at) < REJECTION_WINDOW);
        if !j.result_heard {
            self.settled.push_back(Settled {
                at: now,
                result_heard: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ProgressState, UploadTaskRsp};
    use crate::report::Sent;

    fn window(ahead: &[&str], judging: &[&str]) -> Window<(), ()> {
        let mut w = Window::default();
        for name in ahead {
            w.ahead.push_back(Ahead {
                name: name.to_string(),
                md5sum: format!("md5-{name}"),
                announced: Instant::now(),
                grant: None,
                file: (),
            });
        }
        for name in judging {
            w.judging.push_back(Judging {
                name: name.to_string(),
                sent: (),
                acked: Some(Instant::now()),
                verdict: Verdict::Open,
                result_heard: false,
            });
        }
        w
    }

    fn rsp(name: &str, md5sum: &str) -> UploadSignal {
        UploadSignal::TaskRsp(UploadTaskRsp {
            name: name.to_string(),
            md5sum: md5sum.to_string(),
            size: None,
            grant: UploadGrant::Url(format!("http://s/{name}")),
        })
    }

    fn answer(code: i64, name: &str, state: ProgressState) -> UploadSignal {
        UploadSignal::ProgressRsp {
            code,
            to: Some(Sent {
                name: name.to_string(),
                state,
            }),
        }
    }

    fn verdicts(w: &Window<(), ()>) -> Vec<Verdict> {
        w.judging.iter().map(|j| j.verdict).collect()
    }

    #[test]
    fn a_grant_goes_to_the_file_announced_with_that_name_and_md5_only() {
        let mut w = window(&["a", "b"], &[]);
        assert!(!w.hear(rsp("b", "md5-other"), None));
        assert!(
            w.ahead.iter().all(|a| a.grant.is_none()),
            "another MD5: ignored"
        );
        w.hear(rsp("b", "md5-b"), None);
        assert!(w.ahead[0].grant.is_none());
        assert!(w.ahead[1].grant.is_some());
    }

    #[test]
    fn the_answer_to_a_done_decides_that_file_only() {
        let mut w = window(&[], &["a", "b", "c"]);
        w.hear(answer(0, "b", ProgressState::Done), Some("d"));
        assert_eq!(
            verdicts(&w),
            [Verdict::Open, Verdict::Confirmed, Verdict::Open]
        );
        w.hear(answer(-1, "c", ProgressState::Done), Some("d"));
        assert_eq!(verdicts(&w)[2], Verdict::Rejected(-1));
        // A late 0 to an `uploading` report of a judged file decides nothing.
        w.hear(answer(0, "a", ProgressState::Uploading), Some("d"));
        assert_eq!(verdicts(&w)[0], Verdict::Open);
    }

    #[test]
    fn a_withdrawal_of_the_file_being_sent_is_not_a_verdict_on_the_others() {
        let mut w = window(&[], &["a"]);
        assert!(w.hear(answer(-3, "d", ProgressState::Uploading), Some("d")));
        assert_eq!(verdicts(&w), [Verdict::Open]);
        // A refusal answering no report: the file being sent is withdrawn and the judged
        // ones are rejected (kept and retried: nothing is lost by erring this way).
        let unasked = UploadSignal::ProgressRsp { code: -1, to: None };
        assert!(w.hear(unasked, Some("d")));
        assert_eq!(verdicts(&w), [Verdict::Rejected(-1)]);
    }

    #[test]
    fn an_upload_result_answers_the_oldest_done_that_had_none() {
        let mut w = window(&[], &["a", "b"]);
        w.hear(UploadSignal::UploadResult(0), None);
        assert_eq!(verdicts(&w), [Verdict::Confirmed, Verdict::Open]);
        w.hear(UploadSignal::UploadResult(-2), None);
        assert_eq!(verdicts(&w), [Verdict::Confirmed, Verdict::Rejected(-2)]);
        // Once nothing awaits one, it is ignored.
        w.hear(UploadSignal::UploadResult(-5), None);
        assert_eq!(verdicts(&w), [Verdict::Confirmed, Verdict::Rejected(-2)]);
    }

    #[test]
    fn an_upload_result_for_a_file_settled_already_is_not_taken_for_the_next() {
        let mut w = window(&[], &["a", "b"]);
        // `a` confirmed by the answer to its done, and gone from the window.
        w.hear(answer(0, "a", ProgressState::Done), None);
        let a = w.judging.pop_front().unwrap();
        w.settled(&a);
        // Its upload_result comes after: it must not reject `b`.
        w.hear(UploadSignal::UploadResult(-1), None);
        assert_eq!(verdicts(&w), [Verdict::Open]);
        w.hear(UploadSignal::UploadResult(0), None);
        assert_eq!(verdicts(&w), [Verdict::Confirmed]);
    }

    #[test]
    fn a_wake_up_heard_while_busy_is_kept_for_the_schedule() {
        let mut w = window(&[], &[]);
        w.hear(
            UploadSignal::Wake {
                reset_backoff: false,
            },
            None,
        );
        assert_eq!(w.woken, Some(false));
        w.hear(
            UploadSignal::Wake {
                reset_backoff: true,
            },
            None,
        );
        w.hear(
            UploadSignal::Wake {
                reset_backoff: false,
            },
            None,
        );
        assert_eq!(
            w.woken,
            Some(true),
            "a SIGUSR2 is not lost behind a plain wake"
        );
    }
}
