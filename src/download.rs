//! One download task from start to final report: free-space check, a streaming GET that
//! hashes MD5 as bytes arrive, resume with Range after any interruption (re-hashing the
//! part on disk first), size and MD5 checks, the install, and exactly one final report.

use crate::config::Config;
use crate::digest::Md5;
use crate::install::{self, Paths};
use crate::journal::{self, JournalStore, Phase};
use crate::plugin::{self, CallOutcome, Op, Plugin, PluginSet, ResourceArgs};
use crate::protocol::{percent, redact_url, Direction, ProgressState, Report, ResultCode, Task};
use crate::report::{Reporter, Throttle};
use crate::shutdown::Shutdown;
use crate::tasks;
use crate::transfer::{is_timeout, HttpClient, TransferError};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Size of one read from the network and one write to the staging file.
const CHUNK: usize = 128 * 1024;
/// Failed attempts in a row, without a byte of progress, before a transient error
/// (connection refused, 5xx, a broken connection) becomes final.
const MAX_FAILURES_WITHOUT_PROGRESS: u32 = 4;
/// Read timeouts in a row without progress before the task fails with -1: the first
/// stall is retried once with a resumed request (protocol.md).
const MAX_STALLS: u32 = 2;

/// How a task ended, for the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Installed and `done` reported.
    Installed,
    /// `fail` reported.
    Failed,
    /// The platform withdrew the task: staged bytes removed, nothing reported.
    Cancelled,
    /// The agent is stopping: the task stays in the journal and resumes after restart.
    Interrupted,
}

/// Why a download loop stopped before the file was complete and verified.
enum Stop {
    Fail(ResultCode, String),
    Cancelled,
    Interrupted,
}

/// What one download needs; built by the coordinator for each task.
pub(crate) struct Downloader {
    pub(crate) config: Arc<Config>,
    pub(crate) journal: Arc<JournalStore>,
    pub(crate) reporter: Arc<Reporter>,
    pub(crate) shutdown: Shutdown,
    pub(crate) cancel: Arc<AtomicBool>,
    /// The plugins as last scanned (start, SIGHUP).
    pub(crate) plugins: Arc<PluginSet>,
    /// resagent's own executable, re-run as the plugins' child process.
    pub(crate) exe: PathBuf,
}

impl Downloader {
    /// Runs `task` (the journal's download in flight) to its end.
    pub(crate) fn run(&self, task: &Task) -> Outcome {
        let paths = install::paths(&self.config.resource_dir, &task.name);
        if let Some(plugin) = self.already_installed(task) {
            log::info!(
                "{} with md5 {} is installed already",
                task.name,
                task.md5sum
            );
            return self.finish_installed(task, plugin);
        }
        let phase = self
            .journal
            .snapshot()
            .download
            .filter(|d| d.task.same_content(task))
            .map(|d| d.phase)
            .unwrap_or_default();
        let verified = phase == Phase::Verified && self.staged_file_complete(&paths, task);
        if phase == Phase::Verified && !verified && self.installed_before_kill(&paths, task) {
            return self.finish_installed(task, None);
        }
        if !verified {
            match self.fetch(task, &paths) {
                Ok(()) => {}
                Err(stop) => return self.stopped(task, &paths, stop),
            }
            let marked = self.journal.update(|j| {
                if let Some(d) = j.download.as_mut().filter(|d| d.task.same_content(task)) {
                    d.phase = Phase::Verified;
                }
            });
            if let Err(e) = marked {
                log::error!("{}: {e}", task.name);
            }
        }
        self.install(task, &paths)
    }

    /// A task that waited behind another version of its name may find itself installed
    /// (and the file in place) by the time it runs: then there is nothing to transfer.
    /// Returns the install plugin that took it (None: the default installer).
    fn already_installed(&self, task: &Task) -> Option<Option<String>> {
        let journal = self.journal.snapshot();
        let i = journal.installed.get(&task.name)?;
        let present = install::still_present(&self.config.resource_dir, &task.name, i);
        (i.md5sum == task.md5sum && present).then(|| i.plugin.clone())
    }

    fn staged_file_complete(&self, paths: &Paths, task: &Task) -> bool {
        std::fs::symlink_metadata(&paths.staging)
            .map(|m| m.is_file() && m.len() == task.size)
            .unwrap_or(false)
    }

    /// After a kill between the install's rename and the journal write, the new file is
    /// already at its destination: recognise it by its MD5 instead of believing the old.
    fn installed_before_kill(&self, paths: &Paths, task: &Task) -> bool {
        match install::md5_file(&paths.dest) {
            Ok(md5) if md5 == task.md5sum => {
                log::info!("{}: already in place from before the restart", task.name);
                true
            }
            _ => false,
        }
    }

    /// The validate chain, then the first install plugin that does not decline, else the
    /// default installer (plugins.md, "How the agent calls them").
    fn install(&self, task: &Task, paths: &Paths) -> Outcome {
        if self.shutdown.is_set() {
            return Outcome::Interrupted;
        }
        let mut throttle = Throttle::new(self.config.progress_interval);
        self.report_burning(task, 0, &mut throttle);
        let resource = ResourceArgs {
            name: task.name.clone(),
            path: paths.staging.clone(),
            dest: paths.dest.clone(),
            md5sum: task.md5sum.clone(),
            size: task.size,
            installed_md5sum: self
                .journal
                .snapshot()
                .installed
                .get(&task.name)
                .map(|i| i.md5sum.clone()),
        };
        for p in self.plugins.validators() {
            match self.call_plugin(p, Op::Validate, &resource, task, &mut throttle) {
                CallOutcome::Ok | CallOutcome::Declined => {}
                CallOutcome::Interrupted => return Outcome::Interrupted,
                CallOutcome::Failed(reason) => {
                    return self.stopped(
                        task,
                        paths,
                        Stop::Fail(ResultCode::ValidateRejected, reason),
                    )
                }
            }
        }
        for p in self.plugins.installers() {
            match self.call_plugin(p, Op::Install, &resource, task, &mut throttle) {
                CallOutcome::Declined => {}
                CallOutcome::Ok => {
                    install::discard_staging(&paths.staging);
                    return self.finish_installed(task, Some(p.name.clone()));
                }
                CallOutcome::Interrupted => return Outcome::Interrupted,
                CallOutcome::Failed(reason) => {
                    return self.stopped(task, paths, Stop::Fail(ResultCode::InstallFailed, reason))
                }
            }
        }
        match install::install_default(paths) {
            Ok(()) => self.finish_installed(task, None),
            Err(e) => {
                install::discard_staging(&paths.staging);
                self.stopped(
                    task,
                    paths,
                    Stop::Fail(
                        ResultCode::InstallFailed,
                        format!("install {}: {e}", task.name),
                    ),
                )
            }
        }
    }

    fn call_plugin(
        &self,
        plugin: &Plugin,
        op: Op,
        resource: &ResourceArgs,
        task: &Task,
        throttle: &mut Throttle,
    ) -> CallOutcome {
        log::info!("{}: plugin {} {}", task.name, plugin.name, op.as_str());
        let outcome = plugin::call(
            &self.exe,
            plugin,
            op,
            resource,
            self.config.plugin_timeout,
            &self.shutdown,
            |p| self.report_burning(task, p.min(100) as u8, throttle),
        );
        log::info!(
            "{}: plugin {} {}: {outcome:?}",
            task.name,
            plugin.name,
            op.as_str()
        );
        outcome
    }

    fn report_burning(&self, task: &Task, percent: u8, throttle: &mut Throttle) {
        if throttle.due(ProgressState::Burning, percent, Instant::now()) {
            self.reporter.progress(&Report::progress(
                Direction::Download,
                &task.name,
                ProgressState::Burning,
                percent,
            ));
        }
    }

    fn finish_installed(&self, task: &Task, plugin: Option<String>) -> Outcome {
        let now = journal::unix_now();
        let by = match &plugin {
            Some(p) => format!("by plugin {p}"),
            None => format!("at {}", self.config.resource_dir.join(&task.name).display()),
        };
        log::info!(
            "{} installed {by} ({} bytes, md5 {})",
            task.name,
            task.size,
            task.md5sum
        );
        self.reporter
            .final_report_with(Report::done(Direction::Download, &task.name), |j| {
                tasks::installed(j, task, plugin, now)
            });
        Outcome::Installed
    }

    /// Ends a task that did not install: the staged bytes go (except when stopping, so
    /// the task resumes), the journal forgets it, and a `fail` is reported.
    fn stopped(&self, task: &Task, paths: &Paths, stop: Stop) -> Outcome {
        let (code, msg) = match stop {
            Stop::Interrupted => {
                log::info!("{}: stopped; it resumes after restart", task.name);
                return Outcome::Interrupted;
            }
            Stop::Cancelled => {
                install::discard_staging(&paths.staging);
                if let Err(e) = self.journal.update(|j| tasks::clear_in_flight(j, task)) {
                    log::error!("{}: {e}", task.name);
                }
                log::info!(
                    "{}: cancelled by the platform; staged bytes removed",
                    task.name
                );
                return Outcome::Cancelled;
            }
            Stop::Fail(code, msg) => (code, msg),
        };
        log::error!("{} failed ({}): {msg}", task.name, code.code());
        let done = std::fs::metadata(&paths.staging)
            .map(|m| m.len())
            .unwrap_or(0);
        install::discard_staging(&paths.staging);
        let report = Report::fail(
            Direction::Download,
            &task.name,
            percent(done, task.size),
            code,
            &msg,
        );
        self.reporter
            .final_report_with(report, |j| tasks::clear_in_flight(j, task));
        Outcome::Failed
    }

    fn check_stop(&self) -> Result<(), Stop> {
        if self.cancel.load(Ordering::SeqCst) {
            Err(Stop::Cancelled)
        } else if self.shutdown.is_set() {
            Err(Stop::Interrupted)
        } else {
            Ok(())
        }
    }

    /// Brings the staging file to the complete, MD5-checked resource.
    fn fetch(&self, task: &Task, paths: &Paths) -> Result<(), Stop> {
        let write_fail = |e: crate::fsutil::FsError| {
            let code = if install::is_no_space(&e.source) {
                ResultCode::NoSpace
            } else {
                ResultCode::InstallFailed
            };
            Stop::Fail(code, e.to_string())
        };
        install::prepare_staging_dir(&self.config.resource_dir).map_err(write_fail)?;
        let (mut file, mut have) = install::open_staging(&paths.staging).map_err(write_fail)?;
        let mut md5 = Md5::new();
        if have > task.size {
            have = 0;
        }
        let resumed_from = self.rehash(&mut file, &mut have, &mut md5, paths)?;
        self.check_free_space(task, have)?;
        let http = HttpClient::new(&self.config);
        let mut etag = self.journal.snapshot().download.and_then(|d| d.etag);
        let mut throttle = Throttle::new(self.config.progress_interval);
        let mut failures = 0u32;
        let mut stalls = 0u32;
        let mut restarted_after_mismatch = resumed_from == 0;
        loop {
            self.check_stop()?;
            if have == task.size {
                let got = md5.hex();
                if got == task.md5sum {
                    return Ok(());
                }
                if !restarted_after_mismatch {
                    // The resumed part may not be what the server has now: one clean start.
                    log::warn!(
                        "{}: MD5 mismatch after a resumed download; starting over",
                        task.name
                    );
                    restarted_after_mismatch = true;
                    self.restart(&mut file, &mut have, &mut md5, &mut etag, paths)?;
                    continue;
                }
                return Err(Stop::Fail(
                    ResultCode::Mismatch,
                    format!(
                        "{}: MD5 mismatch: expected {}, got {got}",
                        task.name, task.md5sum
                    ),
                ));
            }
            let attempt_start = have;
            let result = self.attempt(
                task,
                &http,
                &mut file,
                &mut have,
                &mut md5,
                &mut etag,
                &mut throttle,
                paths,
            );
            let progressed = have > attempt_start;
            if progressed {
                failures = 0;
                stalls = 0;
            }
            match result {
                Ok(()) => {}
                Err(AttemptError::Stop(stop)) => return Err(stop),
                Err(AttemptError::Transfer(TransferError::ResumeRefused { reason, .. })) => {
                    log::warn!("{}: {reason}; starting over from byte 0", task.name);
                    self.restart(&mut file, &mut have, &mut md5, &mut etag, paths)?;
                    failures += 1;
                }
                Err(AttemptError::Transfer(e)) if matches!(e, TransferError::Timeout { .. }) => {
                    if !progressed {
                        stalls += 1;
                    }
                    if stalls >= MAX_STALLS {
                        return Err(Stop::Fail(e.result_code(), format!("{}: {e}", task.name)));
                    }
                    log::warn!("{}: {e}; resuming at byte {have}", task.name);
                }
                Err(AttemptError::Transfer(e)) if e.is_transient() => {
                    if !progressed {
                        failures += 1;
                    }
                    if failures >= MAX_FAILURES_WITHOUT_PROGRESS {
                        return Err(Stop::Fail(
                            e.result_code(),
                            format!("{}: {e} (after {failures} attempts)", task.name),
                        ));
                    }
                    let delay = Duration::from_secs(1 << failures.min(5));
                    log::warn!(
                        "{}: {e}; retrying at byte {have} in {} s",
                        task.name,
                        delay.as_secs()
                    );
                    self.shutdown.sleep(delay);
                }
                Err(AttemptError::Transfer(e)) => {
                    return Err(Stop::Fail(e.result_code(), format!("{}: {e}", task.name)))
                }
            }
        }
    }

    /// Hashes the bytes already in the staging file (a resume after a restart); returns
    /// the offset resumed from.
    fn rehash(
        &self,
        file: &mut File,
        have: &mut u64,
        md5: &mut Md5,
        paths: &Paths,
    ) -> Result<u64, Stop> {
        let io_fail = |op: &str, e: io::Error| {
            Stop::Fail(
                ResultCode::InstallFailed,
                format!("{op} {}: {e}", paths.staging.display()),
            )
        };
        if *have > 0 {
            file.seek(SeekFrom::Start(0))
                .map_err(|e| io_fail("seek", e))?;
            let hashed = install::hash_prefix(file, *have, md5).map_err(|e| io_fail("read", e))?;
            *have = hashed;
            log::info!("resuming {} at byte {hashed}", paths.staging.display());
        }
        file.set_len(*have).map_err(|e| io_fail("truncate", e))?;
        file.seek(SeekFrom::Start(*have))
            .map_err(|e| io_fail("seek", e))?;
        Ok(*have)
    }

    /// Drops what was downloaded: the next request starts from byte 0.
    fn restart(
        &self,
        file: &mut File,
        have: &mut u64,
        md5: &mut Md5,
        etag: &mut Option<String>,
        paths: &Paths,
    ) -> Result<(), Stop> {
        *have = 0;
        *md5 = Md5::new();
        *etag = None;
        self.rehash(file, have, md5, paths).map(|_| ())
    }

    /// Free space on the destination's file system against the bytes still to fetch.
    fn check_free_space(&self, task: &Task, have: u64) -> Result<(), Stop> {
        let needed = task.size - have;
        match crate::fsutil::free_space(&self.config.resource_dir) {
            Ok(free) if free < needed => Err(Stop::Fail(
                ResultCode::NoSpace,
                format!(
                    "{}: needs {needed} more bytes, {} has {free} free",
                    task.name,
                    self.config.resource_dir.display()
                ),
            )),
            Ok(_) => Ok(()),
            Err(e) => {
                log::warn!("free-space check skipped: {e}");
                Ok(())
            }
        }
    }

    /// Records, in one journal write, the response's ETag (a resume goes on only with
    /// the same content) and when this attempt started (`status`'s rate and ETA).
    fn note_attempt(&self, task: &Task, have: u64, etag: Option<String>) {
        let now = journal::unix_now_ms();
        let noted = self.journal.update(|j| {
            if let Some(d) = j.download.as_mut().filter(|d| d.task.same_content(task)) {
                d.attempt_started_ms = now;
                d.attempt_start_bytes = have;
                d.etag = etag;
            }
        });
        if let Err(e) = noted {
            log::error!("{}: {e}", task.name);
        }
    }

    /// One GET and the streaming of its body into the staging file.
    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        task: &Task,
        http: &HttpClient,
        file: &mut File,
        have: &mut u64,
        md5: &mut Md5,
        etag: &mut Option<String>,
        throttle: &mut Throttle,
        paths: &Paths,
    ) -> Result<(), AttemptError> {
        let offset = *have;
        log::info!(
            "downloading {} from {} at byte {offset} of {}",
            task.name,
            redact_url(&task.url),
            task.size
        );
        let body = http.get_resource(&task.url, offset, etag.as_deref(), task.size)?;
        if body.start == 0 && offset > 0 {
            log::warn!(
                "{}: the server ignored Range; starting over from byte 0",
                task.name
            );
            self.restart(file, have, md5, etag, paths)?;
        }
        *etag = body.etag.clone();
        self.note_attempt(task, *have, body.etag);
        self.report_downloading(task, *have, throttle);
        self.stream(task, body.reader, file, have, md5, throttle, paths)
    }

    fn report_downloading(&self, task: &Task, have: u64, throttle: &mut Throttle) {
        let p = percent(have, task.size);
        if throttle.due(ProgressState::Downloading, p, Instant::now()) {
            self.reporter.progress(&Report::progress(
                Direction::Download,
                &task.name,
                ProgressState::Downloading,
                p,
            ));
        }
    }

    /// Copies the body into the staging file, hashing as it goes, cut off at `size` + 1.
    /// Reading, writing and hashing run on three threads (see [`Pipeline`]); `md5` always
    /// ends up covering exactly the bytes written, whatever stops the copy.
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        task: &Task,
        reader: Box<dyn Read + Send + Sync>,
        file: &mut File,
        have: &mut u64,
        md5: &mut Md5,
        throttle: &mut Throttle,
        paths: &Paths,
    ) -> Result<(), AttemptError> {
        let hashed = std::mem::replace(md5, Md5::new());
        let pipe = match Pipeline::start(reader.take(task.size - *have + 1), hashed) {
            Ok(p) => p,
            Err((hashed, e)) => {
                *md5 = hashed;
                return Err(Stop::Fail(
                    ResultCode::Other,
                    format!("cannot start the MD5 thread: {e}"),
                )
                .into());
            }
        };
        let copied = self.copy_chunks(task, &pipe, file, have, throttle, paths);
        *md5 = pipe.finish();
        copied?;
        file.sync_all().map_err(|e| {
            AttemptError::Stop(Stop::Fail(
                ResultCode::InstallFailed,
                format!("fsync {}: {e}", paths.staging.display()),
            ))
        })
    }

    fn copy_chunks(
        &self,
        task: &Task,
        pipe: &Pipeline,
        file: &mut File,
        have: &mut u64,
        throttle: &mut Throttle,
        paths: &Paths,
    ) -> Result<(), AttemptError> {
        let shown = redact_url(&task.url);
        let mut pace = crate::pace::Pace::new(self.config.max_bytes_per_s);
        let mut flusher = crate::fsutil::Flusher::new(file);
        loop {
            self.check_stop()?;
            let (buf, n) = match pipe.next() {
                Chunk::Data(buf, n) => (buf, n),
                Chunk::End => break,
                Chunk::Failed(e) if is_timeout(&e) => {
                    return Err(TransferError::Timeout {
                        url: shown,
                        secs: self.config.transfer_timeout.as_secs(),
                    }
                    .into())
                }
                Chunk::Failed(e) => {
                    return Err(TransferError::Interrupted {
                        url: shown,
                        reason: e.to_string(),
                    }
                    .into())
                }
            };
            if *have + n as u64 > task.size {
                return Err(Stop::Fail(
                    ResultCode::Mismatch,
                    format!(
                        "{}: the server sent more than the task's {} bytes; cut off",
                        task.name, task.size
                    ),
                )
                .into());
            }
            file.write_all(&buf[..n]).map_err(|e| {
                let code = if install::is_no_space(&e) {
                    ResultCode::NoSpace
                } else {
                    ResultCode::InstallFailed
                };
                Stop::Fail(code, format!("write {}: {e}", paths.staging.display()))
            })?;
            pipe.hash(buf, n);
            flusher.wrote(n as u64);
            *have += n as u64;
            self.report_downloading(task, *have, throttle);
            pace.after(n as u64, &self.shutdown);
        }
        if *have < task.size {
            return Err(TransferError::Interrupted {
                url: shown,
                reason: format!("body ended at byte {} of {}", *have, task.size),
            }
            .into());
        }
        Ok(())
    }
}

/// Buffers in flight between the pipeline's threads (their memory is all it holds).
const PIPELINE_BUFFERS: usize = 4;

/// What the reading thread hands over.
enum Chunk {
    Data(Vec<u8>, usize),
    End,
    Failed(io::Error),
}

/// Reads the body on one thread and hashes on another while the caller writes, so the
/// network, MD5 and the disk work at once: a download takes as long as the slowest of
/// them, not their sum. A fixed set of buffers circulates reader → writer → hasher →
/// reader, so memory does not depend on the resource's size.
struct Pipeline {
    chunks: std::sync::mpsc::Receiver<Chunk>,
    to_hash: Option<std::sync::mpsc::SyncSender<(Vec<u8>, usize)>>,
    hasher: Option<std::thread::JoinHandle<Option<Md5>>>,
}

impl Pipeline {
    /// Starts the threads; if the hasher cannot start, the MD5 state comes back.
    fn start(mut body: impl Read + Send + 'static, md5: Md5) -> Result<Pipeline, (Md5, io::Error)> {
        use std::sync::mpsc::sync_channel;
        let (to_hash, hash_rx) = sync_channel::<(Vec<u8>, usize)>(PIPELINE_BUFFERS);
        let (start_tx, start_rx) = sync_channel::<Md5>(1);
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(PIPELINE_BUFFERS);
        for _ in 0..PIPELINE_BUFFERS {
            let _ = free_tx.send(vec![0u8; CHUNK]);
        }
        let (chunk_tx, chunks) = sync_channel::<Chunk>(PIPELINE_BUFFERS);
        // The reader may stay blocked on a silent socket until its read timeout; it is
        // not joined, and ends on its own once the socket errs or nobody listens.
        let _ = std::thread::Builder::new()
            .name("download-read".into())
            .spawn(move || loop {
                let Ok(mut buf) = free_rx.recv() else { return };
                let read = loop {
                    match body.read(&mut buf) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        other => break other,
                    }
                };
                let (chunk, last) = match read {
                    Ok(0) => (Chunk::End, true),
                    Ok(n) => (Chunk::Data(buf, n), false),
                    Err(e) => (Chunk::Failed(e), true),
                };
                if chunk_tx.send(chunk).is_err() || last {
                    return;
                }
            });
        let hasher = std::thread::Builder::new()
            .name("download-md5".into())
            .spawn(move || {
                let mut md5 = start_rx.recv().ok()?;
                while let Ok((buf, n)) = hash_rx.recv() {
                    md5.consume(&buf[..n]);
                    let _ = free_tx.send(buf);
                }
                Some(md5)
            });
        let hasher = match hasher {
            Ok(h) => h,
            Err(e) => return Err((md5, e)),
        };
        let _ = start_tx.send(md5);
        Ok(Pipeline {
            chunks,
            to_hash: Some(to_hash),
            hasher: Some(hasher),
        })
    }

    fn next(&self) -> Chunk {
        self.chunks.recv().unwrap_or_else(|_| {
            Chunk::Failed(io::Error::other("the reading thread ended unexpectedly"))
        })
    }

    /// Hands a written chunk to the hasher (which then recycles the buffer).
    fn hash(&self, buf: Vec<u8>, n: usize) {
        if let Some(tx) = &self.to_hash {
            let _ = tx.send((buf, n));
        }
    }

    /// Waits for the hasher to take in every chunk handed to it; its MD5 state.
    fn finish(mut self) -> Md5 {
        self.to_hash = None;
        self.hasher
            .take()
            .and_then(|h| h.join().ok().flatten())
            .expect("the MD5 thread returns its state (it cannot panic)")
    }
}

/// An attempt ends in a final stop or a transfer error the loop may retry.
enum AttemptError {
    Stop(Stop),
    Transfer(TransferError),
}

impl From<Stop> for AttemptError {
    fn from(s: Stop) -> Self {
        AttemptError::Stop(s)
    }
}

impl From<TransferError> for AttemptError {
    fn from(e: TransferError) -> Self {
        AttemptError::Transfer(e)
    }
}
