//! The upload thread's side of the MQTT conversation: `create_upload_task` and its
//! answer, the `uploading` reports and the withdrawal check while the PUT runs (the
//! PUT's [`Watch`]), and the wait for the verdict after `done`. What the answers mean is
//! decided by the pure rules in [`verdict`](super::verdict).

use super::put::Watch;
use super::verdict::{self, Heard, Verdict};
use super::{Attempt, UploadError, UploadSignal, Uploader};
use crate::protocol::{create_upload_task_message, percent, ProgressState, UploadGrant};
use crate::report::Progress;
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

/// How long the platform has to answer `create_upload_task`.
const TASK_RSP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after `done` a rejection (`_rsp` or `upload_result`) still counts (docs/protocol.md).
const REJECTION_WINDOW: Duration = Duration::from_secs(5);
/// Granularity of waits, so a stop is noticed quickly.
pub(super) const TICK: Duration = Duration::from_millis(200);

impl Uploader {
    /// `create_upload_task`, then the matching `create_upload_task_rsp`'s URL.
    pub(super) fn announce(
        &mut self,
        name: &str,
        md5sum: &str,
        size: u64,
    ) -> Result<String, Attempt> {
        self.drain();
        let msg = create_upload_task_message(name, md5sum, size);
        if let Err(e) = self.publisher.publish(&msg, 1) {
            return Err(Attempt::Retry(UploadError::Announce(e)));
        }
        let deadline = Instant::now() + TASK_RSP_TIMEOUT;
        loop {
            if self.shutdown.is_set() {
                return Err(Attempt::Stopped);
            }
            if Instant::now() >= deadline {
                return Err(Attempt::Retry(UploadError::NoAnswer {
                    secs: TASK_RSP_TIMEOUT.as_secs(),
                }));
            }
            match self.inbox.recv_timeout(TICK) {
                Ok(UploadSignal::TaskRsp(rsp)) if rsp.name == name && rsp.md5sum == md5sum => {
                    return match rsp.grant {
                        UploadGrant::Url(url) => Ok(url),
                        UploadGrant::Refused { result_code } => {
                            Err(Attempt::Retry(UploadError::Refused { result_code }))
                        }
                        UploadGrant::NoUrl => Err(Attempt::Retry(UploadError::NoUrl)),
                    };
                }
                Ok(UploadSignal::TaskRsp(rsp)) => {
                    log::debug!(
                        "ignoring create_upload_task_rsp for {} ({})",
                        rsp.name,
                        rsp.md5sum
                    )
                }
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(Attempt::Stopped),
            }
        }
    }

    /// The platform's verdict on `done` of `name` (docs/protocol.md, "The verdict after
    /// `done`"): what [`verdict::after_done`] decides of each answer within
    /// [`REJECTION_WINDOW`], and of those already queued when it ends (a thread that
    /// lagged behind its inbox still reads them). A rejection's code, or None: the
    /// upload stands.
    pub(super) fn verdict(&mut self, name: &str) -> Option<i64> {
        let deadline = Instant::now() + REJECTION_WINDOW;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let signal = if left.is_zero() || self.shutdown.is_set() {
                match self.inbox.try_recv() {
                    Ok(signal) => signal,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return None,
                }
            } else {
                match self.inbox.recv_timeout(left.min(TICK)) {
                    Ok(signal) => signal,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return None,
                }
            };
            let Some(heard) = signal.heard() else {
                continue;
            };
            match verdict::after_done(&heard, name) {
                Verdict::Confirmed => return None,
                Verdict::Rejected(code) => return Some(code),
                Verdict::Open => {}
            }
        }
    }

    /// Drops what was queued for earlier messages (answers were matched already).
    pub(super) fn drain(&mut self) {
        while self.inbox.try_recv().is_ok() {}
    }
}

impl UploadSignal {
    /// What the platform said, if this is an answer about uploads.
    fn heard(self) -> Option<Heard> {
        match self {
            UploadSignal::ProgressRsp { code, to } => Some(Heard::Answer { code, to }),
            UploadSignal::UploadResult(code) => Some(Heard::Result(code)),
            UploadSignal::TaskRsp(_) | UploadSignal::Wake { .. } => None,
        }
    }
}

/// The conversation while the PUT of one file runs: `uploading` reports (throttled,
/// the percent recorded for `status`) and the stop check — the agent stopping, or the
/// platform withdrawing this upload.
pub(super) struct During<'a> {
    pub(super) uploader: &'a Uploader,
    pub(super) name: &'a str,
    pub(super) progress: Progress<'a>,
    pub(super) withdrawn: bool,
}

impl Watch for During<'_> {
    fn sent(&mut self, sent: u64, size: u64) {
        let p = percent(sent, size);
        if self.progress.report(ProgressState::Uploading, p) {
            self.uploader.journal.record(|j| {
                if let Some(u) = j.upload.as_mut() {
                    u.percent = p;
                }
            });
        }
    }

    fn stop(&mut self) -> bool {
        // Answers that came meanwhile; other signals are dropped, as after any message.
        while let Ok(signal) = self.uploader.inbox.try_recv() {
            if let Some(heard) = signal.heard() {
                self.withdrawn |= verdict::withdraws(&heard, self.name);
            }
        }
        self.withdrawn || self.uploader.shutdown.is_set()
    }
}
