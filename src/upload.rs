//! The `upload` thread: takes files from the outbox one at a time in order of arrival,
//! announces each (`create_upload_task`), PUTs it to the presigned URL with
//! `Content-MD5`, reports `uploading` → `done`/`fail`, and removes it only once the
//! `done` was acknowledged and the platform did not reject it. Anything else keeps the
//! file and retries it later with backoff — never in a hot loop.

use crate::backoff::Backoff;
use crate::config::{Config, Live};
use crate::fsutil;
use crate::journal::{
    unix_now, JournalStore, KeptUpload, UploadInFlight, UploadRetry, MAX_KEPT_UPLOADS,
};
use crate::mqtt::{MqttError, Publisher};
use crate::outbox::{self, Entry};
use crate::protocol::{
    check_url_scheme, percent, Direction, ProgressState, Report, ResultCode, UploadGrant,
    UploadTaskRsp,
};
use crate::random;
use crate::report::{Progress, Reporter};
use crate::shutdown::Shutdown;
use crate::transfer::{HttpClient, TransferError};
use serde_json::json;
use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long the platform has to answer `create_upload_task`.
const TASK_RSP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after `done` a rejection (`_rsp` or `upload_result`) still counts (docs/protocol.md).
const REJECTION_WINDOW: Duration = Duration::from_secs(5);
/// The outbox is scanned at least this often, in case a file arrived without SIGUSR2.
const SCAN_INTERVAL: Duration = Duration::from_secs(60);
/// Retries of a file that failed: 2 s doubling to 5 min.
const RETRY_MIN: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// How soon an entry that `resagent upload` was still queueing is looked at again when
/// no SIGUSR2 says it is ready (a killed `upload` sends none); doubling to
/// [`SCAN_INTERVAL`] while it stays claimed.
const QUEUEING_RECHECK: Duration = Duration::from_secs(1);
/// Granularity of waits, so a stop is noticed quickly.
const TICK: Duration = Duration::from_millis(200);

/// What the coordinator hands the upload thread.
#[derive(Debug)]
pub(crate) enum UploadSignal {
    /// `create_upload_task_rsp`.
    TaskRsp(UploadTaskRsp),
    /// `report_upload_progress_rsp` with its `result_code`, and its number in the count
    /// of answers (`answers` once it is counted).
    ProgressRsp { code: i64, seq: u64 },
    /// `upload_result` with its `result_code`.
    UploadResult(i64),
    /// Scan the outbox now; `reset_backoff` (SIGUSR2) retries waiting files at once.
    Wake { reset_backoff: bool },
}

/// How one attempt ended.
enum Attempt {
    Uploaded,
    /// `resagent upload` still queues the file (its MD5 not saved yet): looked at again
    /// on its SIGUSR2, or after [`QUEUEING_RECHECK`] should it never come.
    NotYet,
    /// The file stays in the outbox and is tried again after a delay.
    Retry(UploadError),
    Stopped,
}

/// Why an upload attempt did not end confirmed, one variant per failure site.
#[derive(Debug, Error)]
enum UploadError {
    /// The outbox entry could not be opened or read (or is no regular file any more).
    #[error("{0}")]
    Open(outbox::OutboxError),
    /// `create_upload_task` was not acknowledged by the broker.
    #[error("create_upload_task not sent: {0}")]
    Announce(MqttError),
    /// The platform did not answer `create_upload_task`.
    #[error("no create_upload_task_rsp within {secs} s")]
    NoAnswer { secs: u64 },
    /// The platform refused the task.
    #[error("platform refused the upload (result_code {result_code})")]
    Refused { result_code: i64 },
    /// The platform accepted the task without a URL.
    #[error("platform answered without a url")]
    NoUrl,
    /// The URL's scheme is not allowed (`allow_http`); reported `fail` -10.
    #[error("{0}")]
    UrlScheme(String),
    /// The platform withdrew the upload during the PUT.
    #[error("withdrawn by the platform")]
    Withdrawn,
    /// The PUT failed (reported `fail` -8).
    #[error("{name}: {source}")]
    Put { name: String, source: TransferError },
    /// The broker did not acknowledge `done`.
    #[error("the done report was not acknowledged")]
    DoneNotAcknowledged,
    /// The platform rejected the upload after `done`.
    #[error("the platform rejected the upload (result_code {result_code})")]
    Rejected { result_code: i64 },
}

pub(crate) struct Uploader {
    /// The configuration in force (SIGHUP replaces it; read at each step).
    pub(crate) live: Arc<Live>,
    pub(crate) journal: Arc<JournalStore>,
    pub(crate) reporter: Arc<Reporter>,
    pub(crate) publisher: Publisher,
    pub(crate) shutdown: Shutdown,
    pub(crate) connected: Arc<AtomicBool>,
    /// Set by the coordinator when the platform answers a progress report with a
    /// non-zero code while a PUT runs.
    pub(crate) cancel: Arc<AtomicBool>,
    /// Every `report_upload_progress_rsp` the coordinator received, counted: the
    /// verdict on `done` is the answer after those to this upload's `uploading` reports.
    pub(crate) answers: Arc<AtomicU64>,
    /// `uploading` reports sent for the upload in flight.
    pub(crate) reports: AtomicU64,
    pub(crate) inbox: Receiver<UploadSignal>,
    /// Uploaded entries that could not be removed: when to try removing each again, and
    /// the wait after that ([`KEPT_RETRY_MIN`] doubling to [`KEPT_RETRY_MAX`]).
    pub(crate) kept_retry: HashMap<String, (Instant, Duration)>,
}

/// The first retry of removing an uploaded entry that could not be removed.
const KEPT_RETRY_MIN: Duration = Duration::from_secs(1);
/// The longest wait between those retries.
const KEPT_RETRY_MAX: Duration = Duration::from_secs(3600);

/// Per-file retry state.
struct Waiting {
    next: Instant,
    backoff: Backoff,
    attempts: u32,
    /// The next wait for an entry still being queued: [`QUEUEING_RECHECK`] doubling to
    /// [`SCAN_INTERVAL`] (a file its writer keeps locked should not wake the thread
    /// every second).
    recheck: Duration,
}

impl Waiting {
    fn new(now: Instant) -> Waiting {
        Waiting {
            next: now,
            backoff: Backoff::new(RETRY_MIN, RETRY_MAX),
            attempts: 0,
            recheck: QUEUEING_RECHECK,
        }
    }
}

impl Uploader {
    /// The configuration in force now.
    fn config(&self) -> Arc<Config> {
        self.live.get()
    }

    pub(crate) fn run(mut self) {
        // An upload in flight when the agent was killed is simply announced again.
        self.clear_in_flight();
        outbox::remove_abandoned_copies(&self.config().outbox_dir);
        let mut waiting: HashMap<String, Waiting> = HashMap::new();
        while !self.shutdown.is_set() {
            let entries = match outbox::scan(&self.config().outbox_dir) {
                Ok(e) => e,
                Err(e) => {
                    log::error!(
                        "cannot scan the outbox {}: {e}",
                        self.config().outbox_dir.display()
                    );
                    Vec::new()
                }
            };
            let entries = self.skip_kept(entries);
            waiting.retain(|name, _| entries.iter().any(|e| &e.name == name));
            self.sync_retries(&waiting);
            let now = Instant::now();
            let due = entries
                .iter()
                .find(|e| waiting.get(&e.name).map_or(true, |w| w.next <= now));
            match due {
                Some(entry) if self.connected.load(Ordering::SeqCst) => {
                    match self.attempt(entry) {
                        Attempt::Uploaded => {
                            waiting.remove(&entry.name);
                        }
                        Attempt::NotYet => {
                            // Not a failure: no retry on record, no upload backoff.
                            let w = waiting
                                .entry(entry.name.clone())
                                .or_insert_with(|| Waiting::new(now));
                            w.next = now + w.recheck;
                            w.recheck = (w.recheck * 2).min(SCAN_INTERVAL);
                            log::debug!("{} is still being queued; later", entry.name);
                        }
                        Attempt::Retry(reason) => {
                            let w = waiting
                                .entry(entry.name.clone())
                                .or_insert_with(|| Waiting::new(now));
                            w.attempts += 1;
                            let delay = w.backoff.next_delay(random::random_u64()).max(RETRY_MIN);
                            w.next = Instant::now() + delay;
                            log::warn!(
                                "upload of {} failed ({reason}); retrying in {:.0} s",
                                entry.name,
                                delay.as_secs_f64()
                            );
                            self.note_retry(&entry.name, w, &reason.to_string());
                        }
                        Attempt::Stopped => return,
                    }
                    self.clear_in_flight();
                }
                _ => {
                    let next = waiting
                        .values()
                        .map(|w| w.next)
                        .chain(self.kept_retry.values().map(|(at, _)| *at))
                        .min();
                    let until = next.map_or(now + SCAN_INTERVAL, |n| n.min(now + SCAN_INTERVAL));
                    if self.idle_until(until, &mut waiting) {
                        return;
                    }
                }
            }
        }
    }

    /// Waits for a wake-up or `until`; returns true when stopping.
    fn idle_until(&mut self, until: Instant, waiting: &mut HashMap<String, Waiting>) -> bool {
        loop {
            if self.shutdown.is_set() {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // One long wait: an idle agent should not wake the CPU. A stop does not wait
            // for this thread (the process ends), so no short polling is needed here.
            match self.inbox.recv_timeout(left) {
                Ok(UploadSignal::Wake { reset_backoff }) => {
                    if reset_backoff {
                        waiting.clear();
                        let now = Instant::now();
                        for (at, wait) in self.kept_retry.values_mut() {
                            (*at, *wait) = (now, KEPT_RETRY_MIN);
                        }
                    }
                    return false;
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return true,
            }
        }
    }

    fn attempt(&mut self, entry: &Entry) -> Attempt {
        let opened = match outbox::open_entry(&self.config().outbox_dir, entry) {
            Ok(o) => o,
            Err(outbox::OutboxError::BeingQueued { .. }) => return Attempt::NotYet,
            Err(e) => return Attempt::Retry(UploadError::Open(e)),
        };
        let (size, md5sum) = (opened.size, opened.md5sum.clone());
        self.set_in_flight(&entry.name, &md5sum, size);
        let url = match self.announce(&entry.name, &md5sum, size) {
            Ok(url) => url,
            Err(a) => return a,
        };
        // Upload URLs obey allow_http like download URLs (docs/agent.md).
        if let Err(reason) = check_url_scheme(&url, self.config().allow_http) {
            let e = UploadError::UrlScheme(format!("upload URL refused: {reason}"));
            self.reporter.final_report(Report::fail(
                Direction::Upload,
                &entry.name,
                0,
                ResultCode::InvalidTask,
                &e.to_string(),
            ));
            return Attempt::Retry(e);
        }
        let answers_before = self.answers.load(Ordering::SeqCst);
        self.reports.store(0, Ordering::SeqCst);
        match self.put(entry, &opened.file, &url, size, &md5sum) {
            Ok(()) => {}
            Err(a) => return a,
        }
        let reports = self.reports.load(Ordering::SeqCst);
        self.drain();
        if !self
            .reporter
            .final_report(Report::done(Direction::Upload, &entry.name))
        {
            return Attempt::Retry(UploadError::DoneNotAcknowledged);
        }
        if let Some(result_code) = self.verdict(answers_before, reports) {
            return Attempt::Retry(UploadError::Rejected { result_code });
        }
        if let Err(e) = outbox::remove(&self.config().outbox_dir, entry, &opened) {
            log::error!(
                "uploaded {}, but it cannot leave the outbox ({e}); it is not sent again, and its removal is tried again later",
                entry.name
            );
            self.keep(entry, &opened, &e.to_string());
        }
        log::info!("uploaded {} ({size} bytes, md5 {md5sum})", entry.name);
        Attempt::Uploaded
    }

    /// Remembers an uploaded entry that could not be removed (a read-only outbox): it is
    /// never sent again while the same file stays (docs/agent.md, "Files").
    fn keep(&mut self, entry: &Entry, opened: &outbox::Opened, reason: &str) {
        let kept = KeptUpload {
            name: entry.name.clone(),
            dev: opened.dev,
            ino: opened.ino,
            size: opened.size,
            ctime_ns: opened.ctime_ns,
            reason: reason.to_string(),
        };
        self.journal.record(|j| {
            j.uploaded_kept.retain(|k| k.name != kept.name);
            j.uploaded_kept.push(kept);
            let excess = j.uploaded_kept.len().saturating_sub(MAX_KEPT_UPLOADS);
            j.uploaded_kept.drain(..excess);
        });
        self.kept_retry.insert(
            entry.name.clone(),
            (Instant::now() + KEPT_RETRY_MIN, KEPT_RETRY_MIN),
        );
    }

    /// The entries to upload: those uploaded already whose removal failed are left out
    /// (never sent again), and their removal is tried again when due; records of files
    /// that are gone, or were removed now, are forgotten.
    fn skip_kept(&mut self, entries: Vec<Entry>) -> Vec<Entry> {
        let records = self.journal.snapshot().uploaded_kept;
        if records.is_empty() {
            self.kept_retry.clear();
            return entries;
        }
        let same = |k: &KeptUpload, e: &Entry| {
            k.name == e.name
                && k.dev == e.dev
                && k.ino == e.ino
                && k.size == e.size
                && k.ctime_ns == e.ctime_ns
        };
        let (kept, rest): (Vec<Entry>, Vec<Entry>) = entries
            .into_iter()
            .partition(|e| records.iter().any(|k| same(k, e)));
        let now = Instant::now();
        let outbox_dir = self.config().outbox_dir.clone();
        let mut removed: Vec<String> = Vec::new();
        for e in &kept {
            let (at, wait) = self
                .kept_retry
                .entry(e.name.clone())
                .or_insert((now, KEPT_RETRY_MIN));
            if *at > now {
                continue;
            }
            match outbox::remove_if(&outbox_dir, e, e.dev, e.ino) {
                Ok(()) => {
                    log::info!("{}: uploaded earlier, now removed from the outbox", e.name);
                    removed.push(e.name.clone());
                }
                Err(err) => {
                    *wait = (*wait * 2).min(KEPT_RETRY_MAX);
                    *at = now + *wait;
                    log::debug!("{}: still cannot leave the outbox: {err}", e.name);
                }
            }
        }
        let stays =
            |name: &str| kept.iter().any(|e| e.name == name) && !removed.iter().any(|r| r == name);
        self.journal
            .record(|j| j.uploaded_kept.retain(|k| stays(&k.name)));
        self.kept_retry.retain(|name, _| stays(name));
        rest
    }

    /// `create_upload_task`, then the matching `create_upload_task_rsp`'s URL.
    fn announce(&mut self, name: &str, md5sum: &str, size: u64) -> Result<String, Attempt> {
        self.drain();
        let msg =
            json!({"type": "create_upload_task", "size": size, "name": name, "md5sum": md5sum});
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

    fn put(
        &mut self,
        entry: &Entry,
        file: &std::fs::File,
        url: &str,
        size: u64,
        md5sum: &str,
    ) -> Result<(), Attempt> {
        let http = HttpClient::new(&self.config());
        self.cancel.store(false, Ordering::SeqCst);
        let body = ProgressBody {
            inner: file.take(size),
            sent: 0,
            dropped: 0,
            size,
            uploader: self,
            progress: Progress::new(
                &self.reporter,
                Direction::Upload,
                &entry.name,
                self.config().progress_interval,
            ),
            pace: crate::pace::Pace::new(self.config().max_bytes_per_s),
        };
        // ureq copies the body with a small stack buffer; a large buffer in front means
        // fewer, larger reads of the file (and of the progress and stop checks).
        let body = std::io::BufReader::with_capacity(128 * 1024, body);
        let result = http.put(url, body, size, md5sum);
        if self.shutdown.is_set() {
            return Err(Attempt::Stopped);
        }
        if self.cancel.load(Ordering::SeqCst) {
            log::warn!(
                "the platform withdrew the upload of {}; the file stays queued",
                entry.name
            );
            return Err(Attempt::Retry(UploadError::Withdrawn));
        }
        result.map_err(|source| {
            let e = UploadError::Put {
                name: entry.name.clone(),
                source,
            };
            self.reporter.final_report(Report::fail(
                Direction::Upload,
                &entry.name,
                0,
                ResultCode::UploadFailed,
                &e.to_string(),
            ));
            Attempt::Retry(e)
        })
    }

    /// The platform's verdict on `done` (docs/protocol.md, "The verdict after `done`"):
    /// the first answer to it — the answer after those owed to this upload's `reports`
    /// `uploading` reports, counted from `answers_before` — or an `upload_result`, within
    /// [`REJECTION_WINDOW`]. 0 confirms at once; a non-zero code rejects (returned), and
    /// a non-zero answer after `done` is taken as a rejection whichever report it
    /// answers, so it is never lost behind an earlier answer. No verdict: the upload
    /// stands (None).
    fn verdict(&mut self, answers_before: u64, reports: u64) -> Option<i64> {
        let deadline = Instant::now() + REJECTION_WINDOW;
        loop {
            let answered = self.answers.load(Ordering::SeqCst) - answers_before;
            if answered > reports {
                // The answer to `done` is in; a refusal among the answers counted is
                // already queued (the coordinator queues before it counts).
                while let Ok(signal) = self.inbox.try_recv() {
                    match signal {
                        UploadSignal::ProgressRsp { code, .. } if code != 0 => return Some(code),
                        UploadSignal::UploadResult(code) if code != 0 => return Some(code),
                        _ => {}
                    }
                }
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.shutdown.is_set() {
                return None;
            }
            match self.inbox.recv_timeout(left.min(TICK)) {
                Ok(UploadSignal::ProgressRsp { code, .. }) if code != 0 => return Some(code),
                // The answer to `done` itself (known by its number, without waiting for
                // the count to catch up): confirmed.
                Ok(UploadSignal::ProgressRsp { seq, .. })
                    if seq.saturating_sub(answers_before) > reports =>
                {
                    return None
                }
                Ok(UploadSignal::UploadResult(code)) => return (code != 0).then_some(code),
                _ => {}
            }
        }
    }

    /// Drops answers that belong to earlier messages.
    fn drain(&mut self) {
        while self.inbox.try_recv().is_ok() {}
    }

    /// Records the upload starting (0 %), for `status`.
    fn set_in_flight(&self, name: &str, md5sum: &str, size: u64) {
        let upload = UploadInFlight {
            name: name.to_string(),
            md5sum: md5sum.to_string(),
            size,
            state: ProgressState::Uploading,
            percent: 0,
        };
        self.journal.record(|j| j.upload = Some(upload));
    }

    fn clear_in_flight(&self) {
        self.journal.record(|j| j.upload = None);
    }

    fn note_retry(&self, name: &str, w: &Waiting, reason: &str) {
        let next_at = unix_now() + w.next.saturating_duration_since(Instant::now()).as_secs();
        let retry = UploadRetry {
            attempts: w.attempts,
            next_at,
            reason: reason.to_string(),
        };
        self.journal.record(|j| {
            j.upload_retries.insert(name.to_string(), retry);
        });
    }

    /// Forgets, in the journal, retries of files no longer waiting.
    fn sync_retries(&self, waiting: &HashMap<String, Waiting>) {
        self.journal.record(|j| {
            j.upload_retries
                .retain(|name, _| waiting.contains_key(name))
        });
    }

    /// Reports `uploading` at `sent` of `size` (throttled) and records the percent.
    fn progress(&self, progress: &mut Progress, sent: u64, size: u64) {
        let p = percent(sent, size);
        if progress.report(ProgressState::Uploading, p) {
            self.reports.fetch_add(1, Ordering::SeqCst);
            self.journal.record(|j| {
                if let Some(u) = j.upload.as_mut() {
                    u.percent = p;
                }
            });
        }
    }
}

/// The PUT body: the file, counted for progress, paced under `max_bytes_per_s`, and cut
/// short (an error) when the agent stops or the platform withdraws the upload. What was
/// sent is dropped from the page cache every [`fsutil::FLUSH_EVERY`] bytes: the file is
/// read once (a retry reads it from the disk again) and removed after, and a large upload
/// should not evict what the device's programs use.
struct ProgressBody<'a> {
    inner: io::Take<&'a std::fs::File>,
    sent: u64,
    /// Bytes from the start already dropped from the page cache.
    dropped: u64,
    size: u64,
    uploader: &'a Uploader,
    progress: Progress<'a>,
    pace: crate::pace::Pace,
}

impl Read for ProgressBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.uploader.shutdown.is_set() || self.uploader.cancel.load(Ordering::SeqCst) {
            // Not `Interrupted`: readers retry those.
            return Err(io::Error::other("upload stopped"));
        }
        if self.sent == 0 {
            self.uploader.progress(&mut self.progress, 0, self.size);
        }
        let n = self.inner.read(buf)?;
        self.sent += n as u64;
        if self.sent - self.dropped >= fsutil::FLUSH_EVERY {
            // Best effort: the file is only read, so its pages are clean.
            let _ =
                fsutil::drop_cached(self.inner.get_ref(), self.dropped, self.sent - self.dropped);
            self.dropped = self.sent;
        }
        self.uploader
            .progress(&mut self.progress, self.sent, self.size);
        self.pace.after(n as u64, &self.uploader.shutdown);
        Ok(n)
    }
}
