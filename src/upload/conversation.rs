//! The upload thread's side of the MQTT conversation: `create_upload_task` and the wait
//! for its answer, the `uploading` reports and the withdrawal check while the PUT runs
//! (the PUT's [`Watch`]); every answer that is not awaited there goes to the
//! [`Window`]. What the answers mean is decided by the pure rules in
//! [`verdict`](super::verdict).

use super::put::Watch;
use super::window::Ahead;
use super::{Attempt, Files, Outboxed, UploadError, UploadSignal, Uploader};
use crate::protocol::{create_upload_task_message, percent, ProgressState, UploadGrant};
use crate::report::Progress;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

/// How long the platform has to answer `create_upload_task`.
const TASK_RSP_TIMEOUT: Duration = Duration::from_secs(30);
/// Granularity of waits, so a stop is noticed quickly.
pub(super) const TICK: Duration = Duration::from_millis(200);

impl Uploader {
    /// Hands `create_upload_task` to the broker without waiting: its answer, which
    /// implies delivery, is what counts (see [`grant`](Self::grant)).
    pub(super) fn announce(&self, name: &str, md5sum: &str, size: u64) -> Result<(), UploadError> {
        let msg = create_upload_task_message(name, md5sum, size);
        self.publisher
            .queue(&msg, 1)
            .map(drop)
            .map_err(UploadError::Announce)
    }

    /// The URL granted to `head`, waiting for the `create_upload_task_rsp` (at most
    /// [`TASK_RSP_TIMEOUT`] from its announce) while the window hears everything else.
    pub(super) fn grant(
        &mut self,
        head: &mut Ahead<Outboxed>,
        window: &mut Files,
    ) -> Result<String, Attempt> {
        let deadline = head.announced + TASK_RSP_TIMEOUT;
        loop {
            if let Some((grant, _)) = head.grant.take() {
                return match grant {
                    UploadGrant::Url(url) => Ok(url),
                    UploadGrant::Refused { result_code } => {
                        Err(Attempt::Retry(UploadError::Refused { result_code }))
                    }
                    UploadGrant::NoUrl => Err(Attempt::Retry(UploadError::NoUrl)),
                };
            }
            if self.shutdown.is_set() {
                return Err(Attempt::Stopped);
            }
            if Instant::now() >= deadline {
                return Err(Attempt::Retry(UploadError::NoAnswer {
                    secs: TASK_RSP_TIMEOUT.as_secs(),
                }));
            }
            match self.inbox.recv_timeout(TICK) {
                Ok(UploadSignal::TaskRsp(rsp))
                    if rsp.name == head.name && rsp.md5sum == head.md5sum =>
                {
                    head.grant = Some((rsp.grant, Instant::now()));
                }
                Ok(signal) => {
                    window.hear(signal, None);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(Attempt::Stopped),
            }
        }
    }

    /// Hands the window what came, waiting at most `wait` for the first signal.
    pub(super) fn pump(&mut self, window: &mut Files, wait: Duration) {
        let first = if wait.is_zero() {
            self.inbox.try_recv().ok()
        } else {
            self.inbox.recv_timeout(wait).ok()
        };
        let Some(first) = first else {
            return;
        };
        window.hear(first, None);
        while let Ok(signal) = self.inbox.try_recv() {
            window.hear(signal, None);
        }
    }
}

/// The conversation while the PUT of one file runs: `uploading` reports (throttled,
/// the percent recorded for `status`) and the stop check — the agent stopping, or the
/// platform withdrawing this upload; every other answer goes to the window (grants of
/// the files ahead, verdicts of those sent).
pub(super) struct During<'a> {
    pub(super) uploader: &'a Uploader,
    pub(super) window: &'a mut Files,
    pub(super) name: &'a str,
    pub(super) progress: Progress<'a>,
    pub(super) withdrawn: bool,
    /// The percent of the file sent so far (a `fail` says how far it got).
    pub(super) reached: u8,
}

impl Watch for During<'_> {
    fn sent(&mut self, sent: u64, size: u64) {
        let p = percent(sent, size);
        self.reached = p;
        if self.progress.report(ProgressState::Uploading, p) {
            self.uploader.journal.record(|j| {
                if let Some(u) = j.upload.as_mut() {
                    u.percent = p;
                }
            });
        }
    }

    fn stop(&mut self) -> bool {
        while let Ok(signal) = self.uploader.inbox.try_recv() {
            self.withdrawn |= self.window.hear(signal, Some(self.name));
        }
        self.withdrawn || self.uploader.shutdown.is_set()
    }
}
