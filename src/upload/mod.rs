//! The `upload` thread: takes files from the outbox in order of arrival, announces each
//! (`create_upload_task`) a few files ahead, PUTs them one at a time to their presigned
//! URLs with `Content-MD5`, reports `uploading` → `done`/`fail`, and removes a file only
//! once its `done` was acknowledged and the platform did not reject it — collecting
//! those verdicts while the next file is sent. Anything else keeps the file and retries
//! it later with backoff — never in a hot loop.
//!
//! This file is the schedule (which entry, when, the retries and the kept records);
//! `window` holds the files announced ahead and those awaiting their verdict,
//! `conversation` speaks with the platform, `verdict` judges its answers (pure), `put`
//! sends the bytes and knows nothing of MQTT.

mod conversation;
mod put;
mod verdict;
mod window;

use conversation::{During, TICK};
use verdict::Verdict;
use window::{Ahead, Judging, Window, GRANT_MAX_AGE, REJECTION_WINDOW, WINDOW};

/// What the schedule keeps of a file announced ahead: the entry and its descriptor.
struct Outboxed {
    entry: Entry,
    opened: outbox::Opened,
}

/// What it keeps of a file sent: the same, and its queued `done`.
struct SentFile {
    entry: Entry,
    opened: outbox::Opened,
    done: crate::report::FinalQueued,
}

/// The upload thread's window.
type Files = Window<Outboxed, SentFile>;

use crate::backoff::Backoff;
use crate::config::{Config, Live};
use crate::journal::{
    unix_now, JournalStore, KeptUpload, UploadInFlight, UploadRetry, MAX_KEPT_UPLOADS,
};
use crate::mqtt::{MqttError, Publisher};
use crate::outbox::{self, Entry};
use crate::protocol::{
    check_url_scheme, Direction, ProgressState, Report, ResultCode, UploadTaskRsp,
};
use crate::random;
use crate::report::{Progress, Reporter, Sent};
use crate::shutdown::Shutdown;
use crate::transfer::{HttpClient, TransferError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The outbox is scanned at least this often, in case a file arrived without SIGUSR2.
const SCAN_INTERVAL: Duration = Duration::from_secs(60);
/// Retries of a file that failed: 2 s doubling to 5 min.
const RETRY_MIN: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// How soon an entry that `resagent upload` was still queueing is looked at again when
/// no SIGUSR2 says it is ready (a killed `upload` sends none); doubling to
/// [`SCAN_INTERVAL`] while it stays claimed.
const QUEUEING_RECHECK: Duration = Duration::from_secs(1);

/// What the coordinator hands the upload thread.
#[derive(Debug)]
pub(crate) enum UploadSignal {
    /// `create_upload_task_rsp`.
    TaskRsp(UploadTaskRsp),
    /// `report_upload_progress_rsp` with its `result_code`, and the report it answers
    /// (None: sent unasked), matched by the coordinator (`report::Awaiting`).
    ProgressRsp { code: i64, to: Option<Sent> },
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
        let mut window = Files::default();
        while !self.shutdown.is_set() {
            self.pump(&mut window, Duration::ZERO);
            self.settle(&mut window, &mut waiting);
            if let Some(reset) = window.woken.take() {
                if reset {
                    self.reset_backoff(&mut waiting);
                }
            }
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
            if !self.connected.load(Ordering::SeqCst) {
                // Announces made before the link went may never be answered.
                window.ahead.clear();
            } else {
                self.fill(&mut window, &entries, &mut waiting);
                // At most WINDOW verdicts owed: a kill re-sends at most those files.
                let head = if window.judging.len() < WINDOW {
                    window.ahead.pop_front()
                } else {
                    None
                };
                if let Some(head) = head {
                    let name = head.name.clone();
                    match self.send(head, &mut window) {
                        Ok(()) => {}
                        Err(Attempt::Stopped) => return,
                        Err(end) => self.after(&name, end, &mut waiting),
                    }
                    self.clear_in_flight();
                    continue;
                }
            }
            if !window.judging.is_empty() {
                // Verdicts are owed: listen for them, not for the next scan.
                self.pump(&mut window, TICK);
                continue;
            }
            let now = Instant::now();
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

    /// Carries out how an attempt on `name` ended short of `done`: a file still being
    /// queued is looked at again soon; anything else waits its backoff.
    fn after(&mut self, name: &str, end: Attempt, waiting: &mut HashMap<String, Waiting>) {
        let now = Instant::now();
        match end {
            Attempt::NotYet => {
                // Not a failure: no retry on record, no upload backoff.
                let w = waiting
                    .entry(name.to_string())
                    .or_insert_with(|| Waiting::new(now));
                w.next = now + w.recheck;
                w.recheck = (w.recheck * 2).min(SCAN_INTERVAL);
                log::debug!("{name} is still being queued; later");
            }
            Attempt::Retry(reason) => {
                let w = waiting
                    .entry(name.to_string())
                    .or_insert_with(|| Waiting::new(now));
                w.attempts += 1;
                let delay = w.backoff.next_delay(random::random_u64()).max(RETRY_MIN);
                w.next = Instant::now() + delay;
                log::warn!(
                    "upload of {name} failed ({reason}); retrying in {:.0} s",
                    delay.as_secs_f64()
                );
                self.note_retry(name, w, &reason.to_string());
            }
            Attempt::Uploaded => {
                waiting.remove(name);
            }
            Attempt::Stopped => {}
        }
    }

    /// SIGUSR2: every waiting file, and every kept entry's removal, is tried at once.
    fn reset_backoff(&mut self, waiting: &mut HashMap<String, Waiting>) {
        waiting.clear();
        let now = Instant::now();
        for (at, wait) in self.kept_retry.values_mut() {
            (*at, *wait) = (now, KEPT_RETRY_MIN);
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
                        self.reset_backoff(waiting);
                    }
                    return false;
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return true,
            }
        }
    }

    /// Announces the next due entries, in the outbox's order, until [`WINDOW`] are
    /// announced ahead. An entry that cannot be opened waits as after a failed attempt.
    fn fill(
        &mut self,
        window: &mut Files,
        entries: &[Entry],
        waiting: &mut HashMap<String, Waiting>,
    ) {
        let now = Instant::now();
        for entry in entries {
            if window.ahead.len() >= WINDOW {
                return;
            }
            let due = waiting.get(&entry.name).map_or(true, |w| w.next <= now);
            if !due || window.holds(&entry.name) {
                continue;
            }
            let opened = match outbox::open_entry(&self.config().outbox_dir, entry) {
                Ok(o) => o,
                Err(outbox::OutboxError::BeingQueued { .. }) => {
                    self.after(&entry.name, Attempt::NotYet, waiting);
                    continue;
                }
                Err(e) => {
                    self.after(&entry.name, Attempt::Retry(UploadError::Open(e)), waiting);
                    continue;
                }
            };
            match self.announce(&entry.name, &opened.md5sum, opened.size) {
                Ok(()) => window.ahead.push_back(Ahead {
                    name: entry.name.clone(),
                    md5sum: opened.md5sum.clone(),
                    announced: Instant::now(),
                    grant: None,
                    file: Outboxed {
                        entry: entry.clone(),
                        opened,
                    },
                }),
                Err(e) => {
                    self.after(&entry.name, Attempt::Retry(e), waiting);
                    return;
                }
            }
        }
    }

    /// The file at the head of the window: its grant, its PUT, its `done` queued (the
    /// verdict is collected by [`settle`](Self::settle) while later files go).
    fn send(&mut self, mut head: Ahead<Outboxed>, window: &mut Files) -> Result<(), Attempt> {
        let name = head.name.clone();
        let (size, md5sum) = (head.file.opened.size, head.md5sum.clone());
        self.set_in_flight(&name, &md5sum, size);
        if head
            .grant
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() > GRANT_MAX_AGE)
        {
            log::info!("{name}: its upload URL was granted too long ago; asking again");
            self.announce(&name, &md5sum, size)
                .map_err(Attempt::Retry)?;
            head.announced = Instant::now();
            head.grant = None;
        }
        let url = self.grant(&mut head, window)?;
        // Upload URLs obey allow_http like download URLs (docs/agent.md).
        if let Err(reason) = check_url_scheme(&url, self.config().allow_http) {
            let e = UploadError::UrlScheme(format!("upload URL refused: {reason}"));
            self.reporter.final_report(Report::fail(
                Direction::Upload,
                &name,
                0,
                ResultCode::InvalidTask,
                &e.to_string(),
            ));
            return Err(Attempt::Retry(e));
        }
        let Outboxed { entry, opened } = head.file;
        self.put(&entry, &opened.file, &url, size, &md5sum, window)?;
        let Some(done) = self
            .reporter
            .final_report_queued(Report::done(Direction::Upload, &name))
        else {
            return Err(Attempt::Retry(UploadError::DoneNotAcknowledged));
        };
        window.judging.push_back(Judging {
            name,
            sent: SentFile {
                entry,
                opened,
                done,
            },
            acked: None,
            verdict: Verdict::Open,
            result_heard: false,
        });
        Ok(())
    }

    /// Ends what can be ended of the judged files: `done` not acknowledged or rejected
    /// (the file stays, retried later), or confirmed — by the answer to `done`, or by
    /// [`REJECTION_WINDOW`] passing without a rejection — and then removed.
    fn settle(&mut self, window: &mut Files, waiting: &mut HashMap<String, Waiting>) {
        let mut i = 0;
        while i < window.judging.len() {
            let j = &mut window.judging[i];
            if j.acked.is_none() {
                match self.reporter.poll_final(&j.sent.done) {
                    None => {
                        i += 1;
                        continue;
                    }
                    Some(true) => j.acked = Some(Instant::now()),
                    Some(false) => {
                        let Some(j) = window.judging.remove(i) else {
                            break;
                        };
                        window.settled(&j);
                        let end = Attempt::Retry(UploadError::DoneNotAcknowledged);
                        self.after(&j.name, end, waiting);
                        continue;
                    }
                }
            }
            let passed = j.acked.is_some_and(|at| at.elapsed() >= REJECTION_WINDOW);
            let end = match j.verdict {
                Verdict::Rejected(result_code) => {
                    Attempt::Retry(UploadError::Rejected { result_code })
                }
                Verdict::Confirmed => Attempt::Uploaded,
                Verdict::Open if passed => Attempt::Uploaded,
                Verdict::Open => {
                    i += 1;
                    continue;
                }
            };
            let Some(j) = window.judging.remove(i) else {
                break;
            };
            window.settled(&j);
            if matches!(end, Attempt::Uploaded) {
                self.uploaded(&j);
            }
            self.after(&j.name, end, waiting);
        }
    }

    /// A confirmed upload leaves the outbox (or, where it cannot, is kept on record and
    /// never sent again).
    fn uploaded(&mut self, j: &Judging<SentFile>) {
        let (entry, opened) = (&j.sent.entry, &j.sent.opened);
        if let Err(e) = outbox::remove(&self.config().outbox_dir, entry, opened) {
            log::error!(
                "uploaded {}, but it cannot leave the outbox ({e}); it is not sent again, and its removal is tried again later",
                entry.name
            );
            self.keep(entry, opened, &e.to_string());
        }
        log::info!(
            "uploaded {} ({} bytes, md5 {})",
            entry.name,
            opened.size,
            opened.md5sum
        );
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

    /// The PUT, with `uploading` reports and the withdrawal check around it.
    fn put(
        &mut self,
        entry: &Entry,
        file: &std::fs::File,
        url: &str,
        size: u64,
        md5sum: &str,
        window: &mut Files,
    ) -> Result<(), Attempt> {
        let config = self.config();
        let http = HttpClient::new(&config);
        let mut during = During {
            uploader: self,
            window,
            name: &entry.name,
            progress: Progress::new(
                &self.reporter,
                Direction::Upload,
                &entry.name,
                config.progress_interval,
            ),
            withdrawn: false,
            reached: 0,
        };
        let result = put::put(
            &http,
            file,
            url,
            (size, md5sum),
            &config.max_bytes_per_s,
            &self.shutdown,
            &mut during,
        );
        if self.shutdown.is_set() {
            return Err(Attempt::Stopped);
        }
        if during.withdrawn {
            log::warn!(
                "the platform withdrew the upload of {}; the file stays queued",
                entry.name
            );
            return Err(Attempt::Retry(UploadError::Withdrawn));
        }
        let reached = during.reached;
        result.map_err(|source| {
            let e = UploadError::Put {
                name: entry.name.clone(),
                source,
            };
            self.reporter.final_report(Report::fail(
                Direction::Upload,
                &entry.name,
                reached,
                ResultCode::UploadFailed,
                &e.to_string(),
            ));
            Attempt::Retry(e)
        })
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
}
