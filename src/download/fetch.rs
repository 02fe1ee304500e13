//! The attempt loop of one download: brings the staging file to the complete,
//! MD5-checked resource. Each attempt is one GET from the bytes on disk, its body copied
//! through the [`Pipeline`]; after it, [`Retry`] decides what happens next and this loop
//! only acts (resume, wait, start over, fail). Progress is reported as `downloading`.

use super::follow::Follow;
use super::partial_response;
use super::pipeline::{Chunk, Pipeline};
use super::retry::{range_ignored, Decision, Retry, RetryPolicy};
use super::staging::Staging;
use super::{DownloadError, Downloader, Stop};
use crate::install::Paths;
use crate::journal;
use crate::pace::ScheduledPace;
use crate::protocol::{percent, redact_url, Direction, ProgressState, Report, Task};
use crate::random;
use crate::report::Progress;
use crate::transfer::{is_timeout, HttpClient, TransferError};
use std::io::Read;
use std::sync::Arc;

/// Brings `paths.staging` to the complete resource of `task`, its MD5 checked. With
/// `follow`, a reader hears of every byte written (and the fetch ends early, as
/// interrupted, once that reader needs no more).
pub(super) fn fetch(
    d: &Downloader,
    task: &Task,
    paths: &Paths,
    follow: Option<&Arc<Follow>>,
) -> Result<(), Stop> {
    let etag = d.journal.snapshot().download.and_then(|dl| dl.etag);
    let mut staging = Staging::open(
        &d.config.resource_dir,
        &paths.staging,
        task.size,
        etag,
        || d.tick(),
    )?;
    if let Some(f) = follow {
        staging.follow_with(f.clone());
    }
    check_free_space(d, task, staging.len())?;
    let http = HttpClient::new(&d.config);
    let mut progress = Progress::new(
        &d.reporter,
        Direction::Download,
        &task.name,
        d.config.progress_interval,
    );
    let mut retry = Retry::new(RetryPolicy::download(), staging.len() > 0);
    loop {
        check_stop(d, &staging)?;
        crate::notify::beat();
        if staging.len() < task.size {
            wait_for_window(d, task, &staging)?;
        }
        if staging.len() == task.size {
            if verified(task, &mut retry, &mut staging)? {
                return Ok(());
            }
            continue;
        }
        // A certificate checked by a clock from 1970 is "not yet valid": wait for it.
        if !crate::clock::wait_until_set(&d.shutdown, &format!("downloading {}", task.name)) {
            return Err(Stop::Interrupted);
        }
        let before = staging.len();
        let error = match attempt(d, task, &http, &mut staging, &mut progress) {
            Ok(Attempted::Whole) => None,
            Ok(Attempted::WindowClosed) => {
                log::info!(
                    "{}: the download window closed; paused at byte {} of {}",
                    task.name,
                    staging.len(),
                    task.size
                );
                continue;
            }
            Err(Stop::Failed(DownloadError::Transfer { source, .. })) => Some(source),
            Err(stop) => return Err(stop),
        };
        let progressed = staging.len() > before;
        let decision = retry.after_attempt(progressed, error.as_ref(), random::random_u64());
        act(d, task, &mut staging, decision, error)?;
    }
}

/// How an attempt that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempted {
    /// The body arrived to its end.
    Whole,
    /// `download_windows` closed: stopped at a chunk boundary, the bytes kept; the
    /// next window resumes with Range.
    WindowClosed,
}

/// How often a wait for a window reads the wall clock again: a clock set late (boards
/// without a battery) or corrected by NTP moves the wait with it.
const WINDOW_LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Outside `download_windows` (docs/agent.md, "When the device downloads"): it hears
/// `downloading` at the bytes staged with the next window as `result_msg`, `status`
/// shows it, and the transfer waits, feeding the watchdog; a stop, a withdrawal or
/// SIGUSR1 (`resagent check`) ends the wait. A window that opens is followed by the
/// usual jitter (`poll_jitter_s`): a fleet whose window opens at one minute does not
/// reach the storage in the same second.
fn wait_for_window(d: &Downloader, task: &Task, staging: &Staging) -> Result<(), Stop> {
    let windows = &d.config.download_windows;
    // Without windows no clock is read (the time zone file is stat'ed by each read).
    if windows.always() || d.go_now() {
        return Ok(());
    }
    let now = crate::sys::local_second_now();
    if windows.is_open(now) {
        return Ok(());
    }
    let why = format!(
        "waiting for the download window {}",
        crate::schedule::describe_wait(windows, now)
    );
    log::info!("{}: {why}", task.name);
    let mut report = Report::progress(
        Direction::Download,
        &task.name,
        ProgressState::Downloading,
        percent(staging.len(), task.size),
    );
    report.result_msg = why.clone();
    d.reporter.progress(&report);
    // For `status`: the window, not a countdown that would be stale when read.
    let held = match windows.next(now) {
        Some(w) => format!("waiting for the download window {}", w.label()),
        None => format!("waiting for a download window ({})", windows.labels()),
    };
    d.hold(task, Some(&held));
    let overridden = loop {
        if d.go_now() {
            break true;
        }
        if windows.is_open(crate::sys::local_second_now()) {
            break false;
        }
        d.wait(WINDOW_LOOK_EVERY)?;
    };
    d.hold(task, None);
    if overridden {
        log::info!(
            "{}: going now (SIGUSR1): the window is lifted for this task",
            task.name
        );
        return Ok(());
    }
    let jitter = d.config.poll_jitter.as_millis() as u64;
    let delay = std::time::Duration::from_millis(random::random_u64() % jitter.max(1));
    log::info!(
        "{}: the download window opened; starting in {:.1} s",
        task.name,
        delay.as_secs_f64()
    );
    d.wait(delay)
}

/// When, on the monotonic clock, the open window closes (None: it does not, or the
/// windows are lifted for this task).
fn window_closes_at(d: &Downloader) -> Option<std::time::Instant> {
    if d.go_now() || d.config.download_windows.always() {
        return None;
    }
    let secs = d
        .config
        .download_windows
        .closes_in(crate::sys::local_second_now())?;
    Some(std::time::Instant::now() + std::time::Duration::from_secs(u64::from(secs)))
}

/// All bytes are staged: whether their MD5 is the task's (true), or the part was
/// dropped to start over once (false); a mismatch after that fails -4.
fn verified(task: &Task, retry: &mut Retry, staging: &mut Staging) -> Result<bool, Stop> {
    let got = staging.md5_hex();
    match retry.after_md5(got == task.md5sum) {
        Decision::Verified => Ok(true),
        Decision::StartOver => {
            log::warn!(
                "{}: MD5 mismatch after a resumed download; starting over",
                task.name
            );
            staging.restart()?;
            Ok(false)
        }
        _ => Err(DownloadError::Md5 {
            name: task.name.clone(),
            expected: task.md5sum.clone(),
            got,
        }
        .into()),
    }
}

/// Carries out what the retry rules decided after an attempt that ended with `error`.
fn act(
    d: &Downloader,
    task: &Task,
    staging: &mut Staging,
    decision: Decision,
    error: Option<TransferError>,
) -> Result<(), Stop> {
    let have = staging.len();
    match (decision, error) {
        (Decision::Resume, Some(e)) => {
            log::warn!("{}: {e}; resuming at byte {have}", task.name)
        }
        (Decision::Resume | Decision::Verified, None) => {}
        (Decision::RetryAfter(delay), e) => {
            let reason = e.map(|e| e.to_string()).unwrap_or_default();
            log::warn!(
                "{}: {reason}; retrying at byte {have} in {:.1} s",
                task.name,
                delay.as_secs_f64()
            );
            // The platform hears why nothing moves (the staged bytes stay).
            let mut report = Report::progress(
                Direction::Download,
                &task.name,
                ProgressState::Downloading,
                percent(have, task.size),
            );
            report.result_msg = format!("retrying in {:.0} s: {reason}", delay.as_secs_f64());
            d.reporter.progress(&report);
            d.wait(delay)?;
        }
        (Decision::StartOver, e) => {
            if let Some(TransferError::ResumeRefused { reason, .. }) = &e {
                log::warn!("{}: {reason}; starting over from byte 0", task.name);
            }
            staging.restart()?;
        }
        (Decision::GiveUp { attempts }, Some(source)) => {
            return Err(DownloadError::GaveUp {
                name: task.name.clone(),
                attempts,
                source,
            }
            .into())
        }
        (_, Some(source)) => {
            return Err(DownloadError::Transfer {
                name: task.name.clone(),
                source,
            }
            .into())
        }
        (_, None) => {}
    }
    Ok(())
}

/// A withdrawal, a stop, or a follower that needs no more bytes (reported by the
/// follower's side; here it ends the fetch as interrupted).
fn check_stop(d: &Downloader, staging: &Staging) -> Result<(), Stop> {
    d.check_stop()?;
    if staging.follower_done() {
        return Err(Stop::Interrupted);
    }
    Ok(())
}

/// Free space on the destination's file system against the bytes still to fetch.
fn check_free_space(d: &Downloader, task: &Task, have: u64) -> Result<(), DownloadError> {
    let needed = task.size - have;
    let dir = &d.config.resource_dir;
    match crate::fsutil::free_space(dir) {
        Ok(free) if free < needed => Err(DownloadError::NoSpace {
            name: task.name.clone(),
            needed,
            free,
            dir: dir.clone(),
        }),
        Ok(_) => Ok(()),
        Err(e) => {
            log::warn!("free-space check skipped: {e}");
            Ok(())
        }
    }
}

/// Records, in one journal write, the response's ETag (a resume goes on only with
/// the same content) and when this attempt started (`status`'s rate and ETA).
fn note_attempt(d: &Downloader, task: &Task, have: u64, etag: Option<String>) {
    let now = journal::unix_now_ms();
    d.journal.record(|j| {
        if let Some(dl) = j.download.as_mut().filter(|dl| dl.task.same_content(task)) {
            dl.attempt_started_ms = now;
            dl.attempt_start_bytes = have;
            dl.etag = etag;
        }
    });
}

/// One GET from the bytes on disk and the streaming of its body into the staging file.
fn attempt(
    d: &Downloader,
    task: &Task,
    http: &HttpClient,
    staging: &mut Staging,
    progress: &mut Progress,
) -> Result<Attempted, Stop> {
    let offset = staging.len();
    log::info!(
        "downloading {} from {} at byte {offset} of {}",
        task.name,
        redact_url(&task.url),
        task.size
    );
    let transfer = |source| DownloadError::Transfer {
        name: task.name.clone(),
        source,
    };
    let body = http
        .get_resource(&task.url, offset, staging.etag())
        .map_err(transfer)?;
    // The answer is judged here, by the side that asked (docs/protocol.md, "HTTP rules").
    let start = partial_response::judge(
        &partial_response::Request {
            url: &body.url,
            offset,
            etag: staging.etag(),
            size: task.size,
        },
        &partial_response::Answer {
            status: body.status,
            content_range: body.content_range.as_deref(),
            content_length: body.content_length,
            etag: body.etag.as_deref(),
        },
    )
    .map_err(transfer)?;
    if range_ignored(offset, start) {
        log::warn!(
            "{}: the server ignored Range; starting over from byte 0",
            task.name
        );
        staging.restart()?;
    }
    staging.set_etag(body.etag.clone());
    note_attempt(d, task, staging.len(), body.etag);
    progress.report(
        ProgressState::Downloading,
        percent(staging.len(), task.size),
    );
    stream(d, task, body.reader, staging, progress)
}

/// Copies the body into the staging file, hashing as it goes, cut off at `size` + 1.
/// The staging file's MD5 always ends up covering exactly the bytes written, whatever
/// stops the copy.
fn stream(
    d: &Downloader,
    task: &Task,
    reader: Box<dyn Read + Send + Sync>,
    staging: &mut Staging,
    progress: &mut Progress,
) -> Result<Attempted, Stop> {
    let hashed = staging.take_md5();
    // `size` + 1: one byte too many is how an over-long body is noticed (saturating: a
    // size near u64::MAX must not wrap to a limit of 0).
    let limit = (task.size - staging.len()).saturating_add(1);
    let mut pipe = match Pipeline::start(reader.take(limit), hashed) {
        Ok(p) => p,
        Err((hashed, e)) => {
            staging.put_md5(hashed);
            return Err(DownloadError::Thread(e).into());
        }
    };
    let copied = copy_chunks(d, task, &mut pipe, staging, progress);
    staging.put_md5(pipe.finish());
    let attempted = copied?;
    staging.sync()?;
    Ok(attempted)
}

fn copy_chunks(
    d: &Downloader,
    task: &Task,
    pipe: &mut Pipeline,
    staging: &mut Staging,
    progress: &mut Progress,
) -> Result<Attempted, Stop> {
    let shown = redact_url(&task.url);
    let transfer = |source| DownloadError::Transfer {
        name: task.name.clone(),
        source,
    };
    let mut pace = ScheduledPace::new(&d.config.max_bytes_per_s);
    let mut flusher = staging.flusher();
    let mut closes_at = window_closes_at(d);
    loop {
        check_stop(d, staging)?;
        crate::notify::beat();
        if closes_at.is_some_and(|t| std::time::Instant::now() >= t) {
            // The monotonic estimate is due: the wall clock decides (it may have been
            // set or corrected meanwhile).
            if d.go_now()
                || d.config
                    .download_windows
                    .is_open(crate::sys::local_second_now())
            {
                closes_at = window_closes_at(d);
            } else {
                return Ok(Attempted::WindowClosed);
            }
        }
        let (buf, n) = match pipe.next(|| d.check_stop().is_err() || staging.follower_done()) {
            // A stop while the server is silent: the check above returns it.
            None => continue,
            Some(Chunk::Data(buf, n)) => (buf, n),
            Some(Chunk::End) => break,
            Some(Chunk::Failed(e)) if is_timeout(&e) => {
                return Err(transfer(TransferError::Timeout {
                    url: shown,
                    secs: d.config.transfer_timeout.as_secs(),
                })
                .into())
            }
            Some(Chunk::Failed(e)) => {
                return Err(transfer(TransferError::Interrupted {
                    url: shown,
                    reason: e.to_string(),
                })
                .into())
            }
        };
        if staging.len() + n as u64 > task.size {
            return Err(DownloadError::TooLong {
                name: task.name.clone(),
                size: task.size,
            }
            .into());
        }
        staging.write(&buf[..n])?;
        pipe.consume(buf, n);
        flusher.wrote(n as u64);
        progress.report(
            ProgressState::Downloading,
            percent(staging.len(), task.size),
        );
        pace.after(n as u64, &d.shutdown);
    }
    if staging.len() < task.size {
        return Err(transfer(TransferError::Interrupted {
            url: shown,
            reason: format!("body ended at byte {} of {}", staging.len(), task.size),
        })
        .into());
    }
    Ok(Attempted::Whole)
}
