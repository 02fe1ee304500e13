//! One download task's life, from the journal's task in flight to its one final report:
//! a task already installed is `done` at once; otherwise [`fetch`] brings the staging
//! file to the complete, MD5-checked resource (the attempt loop, acting on the pure rules
//! of [`retry`] over a [`staging::Staging`], copying through a [`pipeline`]), the journal
//! marks it verified, and the validate/install chain (`install::chain`) installs it.
//! Every way a task ends passes through [`Downloader::run`]'s one match, which sends the
//! single `done` or `fail` (or nothing, for a cancel or a stop) — the only place a
//! download's final report is made.

mod delta;
mod fetch;
mod follow;
mod partial_response;
mod pipeline;
mod retry;
mod staging;

use crate::boot;
use crate::config::Config;
use crate::fsutil::FsError;
use crate::install::chain::{Chain, ChainEnd, ChainStop, InstalledBy};
use crate::install::{self, Paths};
use crate::journal::{self, InFlight, Journal, JournalStore, Phase};
use crate::plugin::glob;
use crate::plugin::{CallOutcome, Op, PluginFailure, PluginHost, PluginSet, ResourceArgs};
use crate::protocol::{percent, Direction, ProgressState, Report, ResultCode, Task};
use crate::rdelta;
use crate::reboot;
use crate::report::{Progress, Reporter};
use crate::shutdown::Shutdown;
use crate::tasks;
use crate::transfer::TransferError;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use thiserror::Error;

/// Install attempts a task may begin; one more cut short fails it -5 (an install that
/// reboots the device, or crashes the agent, must not loop).
const MAX_INSTALL_ATTEMPTS: u32 = 2;

/// How a task ended, for the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Installed and `done` reported.
    Installed,
    /// Written by a plugin, effective after a reboot: `burning` 100 reported, the task
    /// waits in the journal for the plugin's confirmation.
    Pending,
    /// `fail` reported.
    Failed,
    /// The platform withdrew the task: staged bytes removed, nothing reported.
    Cancelled,
    /// The agent is stopping: the task stays in the journal and resumes after restart.
    Interrupted,
}

/// Why a task did not install: one variant per failure site, with its data, and the
/// result code it is reported with ([`DownloadError::result_code`]). The messages reach
/// the platform as `result_msg`: they name the resource, never a full URL.
#[derive(Debug, Error)]
pub(crate) enum DownloadError {
    /// Less free space than the bytes still to fetch.
    #[error("{name}: needs {needed} more bytes, {} has {free} free", dir.display())]
    NoSpace {
        name: String,
        needed: u64,
        free: u64,
        dir: PathBuf,
    },
    /// The complete file does not have the task's MD5.
    #[error("{name}: MD5 mismatch: expected {expected}, got {got}")]
    Md5 {
        name: String,
        expected: String,
        got: String,
    },
    /// The server sent more than `size` bytes; cut off at `size` + 1.
    #[error("{name}: the server sent more than the task's {size} bytes; cut off")]
    TooLong { name: String, size: u64 },
    /// The staging file could not be prepared, written, read back or synced.
    #[error("{0}")]
    Staging(FsError),
    /// The transfer failed with an answer that will not change (404, 403, a size that
    /// disagrees, a stall retried once).
    #[error("{name}: {source}")]
    Transfer { name: String, source: TransferError },
    /// Transient failures in a row without progress.
    #[error("{name}: {source} (after {attempts} attempts)")]
    GaveUp {
        name: String,
        attempts: u32,
        source: TransferError,
    },
    /// The hashing thread could not start.
    #[error("cannot start the MD5 thread: {0}")]
    Thread(std::io::Error),
    /// A validate plugin refused the resource.
    #[error("{0}")]
    Rejected(PluginFailure),
    /// The install plugin that took the resource failed.
    #[error("{0}")]
    PluginInstall(PluginFailure),
    /// A pinned plugin is absent or refused: nothing is installed until it loads.
    #[error("pinned plugins not loaded: {}", problems.join("; "))]
    PinnedNotLoaded { problems: Vec<String> },
    /// The name matches `plugin_only` and no loaded plugin claims it: nothing is fetched
    /// or placed.
    #[error("{name} matches plugin_only pattern `{pattern}` and no loaded plugin claims it; not installed")]
    PluginOnly { name: String, pattern: String },
    /// The install was cut short (a reboot or a crash) as often as it may be.
    #[error("{name}: install interrupted {attempts} times: reboot or crash during install")]
    InstallInterrupted { name: String, attempts: u32 },
    /// The plugin claiming the resource declined it (or exports no install).
    #[error("plugin {plugin}: {name} is claimed by this plugin, which did not install it")]
    ClaimedNotInstalled { plugin: String, name: String },
    /// `install_gate_command` said no (its first line of output).
    #[error("{name}: {reason}")]
    Gate { name: String, reason: String },
    /// The default installer could not place the file.
    #[error("install {name}: {source}")]
    Install { name: String, source: FsError },
    /// A patch whose header cannot be read or is not for this agent.
    #[error("{name}: unreadable patch header: {reason}")]
    DeltaHeader { name: String, reason: String },
    /// A patch whose base is missing or not the one it was made against.
    #[error("{name}: base {base} is not the one the patch was made against: expected md5 {expected}, found {found}")]
    DeltaBase {
        name: String,
        base: String,
        expected: String,
        found: String,
    },
    /// A patch body that does not decode.
    #[error("{name}: the patch {reason}")]
    DeltaBody { name: String, reason: String },
    /// A patch that rebuilds something other than its target.
    #[error("{name}: the patch rebuilt {got}, not the target's {expected}")]
    DeltaTarget {
        name: String,
        expected: String,
        got: String,
    },
    /// The staged patch or the rebuilt file could not be read or written.
    #[error("{name}: {reason}")]
    Delta { name: String, reason: String },
}

impl DownloadError {
    /// The result code of docs/protocol.md, "Result codes".
    pub(crate) fn result_code(&self) -> ResultCode {
        match self {
            DownloadError::NoSpace { .. } => ResultCode::NoSpace,
            DownloadError::Md5 { .. }
            | DownloadError::TooLong { .. }
            | DownloadError::DeltaBody { .. }
            | DownloadError::DeltaTarget { .. } => ResultCode::Mismatch,
            DownloadError::DeltaHeader { .. } => ResultCode::InvalidTask,
            DownloadError::DeltaBase { .. } => ResultCode::BaseMismatch,
            DownloadError::Delta { .. } => ResultCode::InstallFailed,
            DownloadError::Staging(e) if install::is_no_space(&e.source) => ResultCode::NoSpace,
            DownloadError::Staging(_) => ResultCode::InstallFailed,
            DownloadError::Transfer { source, .. } | DownloadError::GaveUp { source, .. } => {
                source.result_code()
            }
            DownloadError::Thread(_) => ResultCode::Other,
            DownloadError::Rejected(_)
            | DownloadError::PinnedNotLoaded { .. }
            | DownloadError::PluginOnly { .. } => ResultCode::ValidateRejected,
            DownloadError::PluginInstall(_)
            | DownloadError::InstallInterrupted { .. }
            | DownloadError::ClaimedNotInstalled { .. }
            | DownloadError::Gate { .. }
            | DownloadError::Install { .. } => ResultCode::InstallFailed,
        }
    }
}

impl From<FsError> for DownloadError {
    fn from(e: FsError) -> Self {
        DownloadError::Staging(e)
    }
}

/// Why the work on a task stopped before it was installed.
#[derive(Debug)]
pub(crate) enum Stop {
    Failed(DownloadError),
    /// The platform withdrew the task.
    Cancelled,
    /// The agent is stopping.
    Interrupted,
}

impl<E: Into<DownloadError>> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop::Failed(e.into())
    }
}

/// What one download needs; built by the coordinator for each task.
pub(crate) struct Downloader {
    pub(crate) config: Arc<Config>,
    pub(crate) journal: Arc<JournalStore>,
    pub(crate) reporter: Arc<Reporter>,
    pub(crate) shutdown: Shutdown,
    pub(crate) cancel: Arc<AtomicBool>,
    /// Set by SIGUSR1 (`resagent check`): this task goes now, whatever
    /// `download_windows` or a gate says (once: the next task gets a new flag).
    pub(crate) go_now: Arc<AtomicBool>,
    /// The plugins as last scanned (start, SIGHUP).
    pub(crate) plugins: Arc<PluginSet>,
    /// resagent's own executable, re-run as the plugins' child process.
    pub(crate) exe: PathBuf,
}

impl Downloader {
    /// Runs `task` (the journal's download in flight) to its end and reports that end.
    pub(crate) fn run(&self, task: &Task) -> Outcome {
        crate::notify::beat();
        // A hold recorded by a run that was stopped is asked again, not shown as true.
        if self
            .journal
            .snapshot()
            .download
            .is_some_and(|d| d.held.is_some())
        {
            self.hold(task, None);
        }
        let paths = install::paths(&self.config.resource_dir, &task.name);
        match self.bring_and_install(task, &paths) {
            Ok((ChainEnd::Installed(by), as_)) => self.report_installed(task, &as_, by),
            Ok((ChainEnd::Pending { plugin }, as_)) => self.report_pending(task, &as_, &plugin),
            Err(Stop::Interrupted) => {
                log::info!("{}: stopped; it resumes after restart", task.name);
                Outcome::Interrupted
            }
            Err(Stop::Cancelled) => {
                self.discard_staged(task, &paths);
                self.journal.record(|j| tasks::clear_in_flight(j, task));
                log::info!(
                    "{}: cancelled by the platform; staged bytes removed",
                    task.name
                );
                Outcome::Cancelled
            }
            Err(Stop::Failed(e)) => self.report_failed(task, &paths, &e),
        }
    }

    /// Brings the task's file and installs it; the end, and the resource installed (the
    /// task itself, or the target a patch rebuilt).
    fn bring_and_install(&self, task: &Task, paths: &Paths) -> Result<(ChainEnd, Task), Stop> {
        if let Some(by) = self.already_installed(task, paths)? {
            log::info!(
                "{} with md5 {} is installed already",
                task.name,
                task.md5sum
            );
            return Ok((ChainEnd::Installed(by), task.clone()));
        }
        // A patch is held to the rule of what it rebuilds: `fw.swu.rdelta` with the
        // SWUpdate plugin gone must not reach the default installer as `fw.swu`.
        let names = [Some(task.name.as_str()), rdelta::base_name(&task.name)];
        for name in names.into_iter().flatten() {
            let Some(pattern) = glob::first_match_ignoring_case(&self.config.plugin_only, name)
            else {
                continue;
            };
            if self.plugins.owner_of(name).is_none() {
                return Err(DownloadError::PluginOnly {
                    name: name.to_string(),
                    pattern: pattern.to_string(),
                }
                .into());
            }
        }
        if !self.plugins.pin_problems.is_empty() {
            return Err(DownloadError::PinnedNotLoaded {
                problems: self.plugins.pin_problems.clone(),
            }
            .into());
        }
        let in_flight = self
            .journal
            .snapshot()
            .download
            .filter(|d| d.task.same_content(task));
        let phase = in_flight.as_ref().map(|d| d.phase).unwrap_or_default();
        if phase == Phase::Verified {
            if let Some(d) = in_flight.as_ref().filter(|d| d.install_attempts > 0) {
                if let Some(name) = &d.install_plugin {
                    if let Some(by) = self.installed_after_cut(task, paths, name)? {
                        return Ok((ChainEnd::Installed(by), task.clone()));
                    }
                }
                if d.install_attempts >= MAX_INSTALL_ATTEMPTS {
                    return Err(DownloadError::InstallInterrupted {
                        name: task.name.clone(),
                        attempts: d.install_attempts,
                    }
                    .into());
                }
                log::warn!(
                    "{}: the install was cut short (a reboot or a crash during attempt {}); trying once more",
                    task.name,
                    d.install_attempts
                );
            }
        }
        let verified = phase == Phase::Verified && self.staged_file_complete(paths, task)?;
        if phase == Phase::Verified
            && !verified
            && self.plugins.owner_of(&task.name).is_none()
            && self.installed_before_kill(paths, task)?
        {
            return Ok((ChainEnd::Installed(InstalledBy::Default), task.clone()));
        }
        if rdelta::base_name(&task.name).is_some() {
            let rebuilt = if verified {
                delta::rebuild(self, task, &paths.staging)?
            } else {
                delta::fetch_and_rebuild(self, task, paths)?
            };
            return self.install_patch(task, paths, rebuilt);
        }
        if !verified {
            fetch::fetch(self, task, paths, None)?;
            self.mark_verified(task);
        }
        Ok((self.install(task, task, paths)?, task.clone()))
    }

    /// The journal: the task's bytes are all staged and their MD5 checked.
    fn mark_verified(&self, task: &Task) {
        self.journal.record(|j| {
            if let Some(d) = in_flight_of(j, task) {
                d.phase = Phase::Verified;
            }
        });
    }

    /// A rebuilt patch: installs its target under its own name (the reports stay under
    /// the patch's name); the staged patch goes once it is installed.
    fn install_patch(
        &self,
        task: &Task,
        paths: &Paths,
        rebuilt: delta::Rebuilt,
    ) -> Result<(ChainEnd, Task), Stop> {
        let (end, target) = match rebuilt {
            delta::Rebuilt::Already(target) => {
                log::info!(
                    "{}: {} is its target already (md5 {})",
                    task.name,
                    target.name,
                    target.md5sum
                );
                let plugin = self
                    .journal
                    .snapshot()
                    .installed
                    .get(&target.name)
                    .and_then(|i| i.plugin.clone());
                let by = plugin.map_or(InstalledBy::Default, InstalledBy::Plugin);
                (ChainEnd::Installed(by), target)
            }
            delta::Rebuilt::Ready(target) => {
                log::info!(
                    "{}: rebuilt {} ({} bytes, md5 {})",
                    task.name,
                    target.name,
                    target.size,
                    target.md5sum
                );
                let target_paths = install::paths(&self.config.resource_dir, &target.name);
                // A failed install leaves nothing of the rebuilt file behind (a kill
                // or a stop re-applies the staged patch anyway).
                let end = self.install(task, &target, &target_paths).map_err(|stop| {
                    install::discard_staging(&target_paths.staging);
                    stop
                })?;
                (end, target)
            }
        };
        if matches!(end, ChainEnd::Installed(_)) {
            install::discard_staging(&paths.staging);
        }
        Ok((end, target))
    }

    /// After an install attempt that has no outcome: whether install plugin `name`, the
    /// one it called, says it took (`resagent_installed`). None: unknown — the install is
    /// tried again (or fails). (The default installer's rename is recognised by the
    /// file's MD5, in `bring_and_install`; it is not counted as an attempt.)
    fn installed_after_cut(
        &self,
        task: &Task,
        paths: &Paths,
        name: &str,
    ) -> Result<Option<InstalledBy>, Stop> {
        let Some(plugin) = self.plugins.named(name).filter(|p| p.has(Op::Installed)) else {
            return Ok(None);
        };
        let resource = self.resource_args(task, paths, None);
        match self
            .plugin_host()
            .call(plugin, Op::Installed, &resource, |_| {})
        {
            CallOutcome::Ok => {
                log::info!(
                    "{}: plugin {name} says the interrupted install took",
                    task.name
                );
                Ok(Some(InstalledBy::Plugin(name.to_string())))
            }
            CallOutcome::Interrupted => Err(Stop::Interrupted),
            _ => Ok(None),
        }
    }

    /// Whether the task is what is installed already, so nothing is transferred: the
    /// journal's record says so, and the plugin that installed it (when it answers
    /// `resagent_installed`) agrees — a rolled-back or reflashed image is installed again.
    fn already_installed(&self, task: &Task, paths: &Paths) -> Result<Option<InstalledBy>, Stop> {
        let journal = self.journal.snapshot();
        let Some(i) = journal.installed.get(&task.name) else {
            return Ok(None);
        };
        if i.md5sum != task.md5sum {
            return Ok(None);
        }
        let Some(name) = &i.plugin else {
            let present = install::still_present(&self.config.resource_dir, &task.name, i);
            return Ok(present.then_some(InstalledBy::Default));
        };
        let by = InstalledBy::Plugin(name.clone());
        let Some(plugin) = self.plugins.named(name).filter(|p| p.has(Op::Installed)) else {
            // The record decides — unless the plugin installed something else since.
            return Ok((!i.superseded).then_some(by));
        };
        let resource = self.resource_args(task, paths, None);
        match self
            .plugin_host()
            .call(plugin, Op::Installed, &resource, |_| {})
        {
            CallOutcome::Ok | CallOutcome::Declined | CallOutcome::Pending => Ok(Some(by)),
            CallOutcome::Interrupted => Err(Stop::Interrupted),
            CallOutcome::Failed(f) => {
                log::warn!(
                    "{}: recorded as installed, but {f}; installing it again",
                    task.name
                );
                Ok(None)
            }
        }
    }

    /// How plugins are called for this agent.
    fn plugin_host(&self) -> PluginHost<'_> {
        self.config.plugin_host(&self.exe, &self.shutdown)
    }

    /// The resource as plugins see it; `path` is the verified file (None: gone).
    fn resource_args(&self, task: &Task, paths: &Paths, path: Option<PathBuf>) -> ResourceArgs {
        ResourceArgs {
            name: task.name.clone(),
            path,
            dest: paths.dest.clone(),
            md5sum: task.md5sum.clone(),
            size: task.size,
            installed_md5sum: self
                .journal
                .snapshot()
                .installed
                .get(&task.name)
                .map(|i| i.md5sum.clone()),
        }
    }

    /// The validate/install chain on the verified file of resource `as_` (the task
    /// itself, or a patch's target), reporting `burning` under the task's name.
    fn install(&self, task: &Task, as_: &Task, paths: &Paths) -> Result<ChainEnd, Stop> {
        if self.shutdown.is_set() {
            return Err(Stop::Interrupted);
        }
        self.install_gate(task, as_, paths)?;
        let mut progress = Progress::new(
            &self.reporter,
            Direction::Download,
            &task.name,
            self.config.progress_interval,
        );
        progress.report(ProgressState::Burning, 0);
        let resource = self.resource_args(as_, paths, Some(paths.staging.clone()));
        let host = self.plugin_host();
        let chain = Chain {
            plugins: &self.plugins,
            host: &host,
        };
        // On disk before an install plugin runs: an install that reboots the device (or
        // a crash) is known as cut short at the next start, and tried at most twice. The
        // default installer (one rename, recognised by its MD5 after a kill) and the
        // validators are not counted.
        let mut counted = false;
        chain
            .run(
                &resource,
                paths,
                |p| {
                    progress.report(ProgressState::Burning, p);
                },
                |plugin| {
                    let first = !std::mem::replace(&mut counted, true);
                    self.journal.record(|j| {
                        if let Some(d) = in_flight_of(j, task) {
                            d.install_attempts += u32::from(first);
                            d.install_plugin = Some(plugin.to_string());
                        }
                    })
                },
            )
            .map_err(|stop| match stop {
                ChainStop::Interrupted => Stop::Interrupted,
                ChainStop::Rejected(f) => DownloadError::Rejected(f).into(),
                ChainStop::PluginFailed(f) => DownloadError::PluginInstall(f).into(),
                ChainStop::ClaimedNotInstalled { plugin } => DownloadError::ClaimedNotInstalled {
                    plugin,
                    name: as_.name.clone(),
                }
                .into(),
                ChainStop::DefaultFailed(source) => DownloadError::Install {
                    name: as_.name.clone(),
                    source,
                }
                .into(),
            })
    }

    /// Records the install of `as_` (the task, or a patch's target) and reports `done`
    /// for the task, in one journal write.
    fn report_installed(&self, task: &Task, as_: &Task, by: InstalledBy) -> Outcome {
        let now = journal::unix_now();
        let place = match &by {
            InstalledBy::Plugin(p) => format!("by plugin {p}"),
            InstalledBy::Default => {
                format!("at {}", self.config.resource_dir.join(&as_.name).display())
            }
        };
        log::info!(
            "{} installed {place} ({} bytes, md5 {})",
            as_.name,
            as_.size,
            as_.md5sum
        );
        self.reporter
            .final_report_with(Report::done(Direction::Download, &task.name), |j| {
                tasks::installed(j, as_, by.plugin(), now);
                if as_.name != task.name {
                    // A patch: `installed` cleared its target; the task in flight, or
                    // the install pending under its name, is the patch.
                    tasks::clear_in_flight(j, task);
                    if j.pending
                        .get(&task.name)
                        .is_some_and(|p| p.task.same_content(task))
                    {
                        j.pending.remove(&task.name);
                    }
                }
            });
        Outcome::Installed
    }

    /// Records the pending install (the task leaves the queue) and reports `burning` 100
    /// "reboot pending", in one journal write (sent again after a connect until it is
    /// acknowledged); its first acknowledgement runs `reboot_command`, if configured.
    /// `written` is what the plugin wrote: the task, or the target a patch rebuilt.
    fn report_pending(&self, task: &Task, written: &Task, plugin: &str) -> Outcome {
        let now = journal::unix_now();
        log::info!(
            "{} written by plugin {plugin}; it takes effect after a reboot",
            task.name
        );
        let boot_id = match boot::current() {
            Ok(id) => Some(id),
            Err(e) => {
                // Never confirmed by the clock alone in this boot: see boot::earlier_boot.
                log::error!("{e}; the pending install is judged by the clock");
                None
            }
        };
        let report = reboot::pending_report(&task.name, plugin, None);
        let acked = self.reporter.final_report_with(report, |j| {
            tasks::pending(j, task, written, plugin, boot_id, now)
        });
        if acked {
            reboot::after_acknowledged(
                &self.config,
                &self.journal,
                &self.reporter,
                &self.shutdown,
                &task.name,
            );
        } else {
            log::warn!(
                "{}: the pending report was not acknowledged; it is sent again after the next connect",
                task.name
            );
        }
        Outcome::Pending
    }

    /// Asks the plugin of each pending install made in an earlier boot whether its image
    /// runs now: `done`, `fail` -5 with the plugin's reason (the image is then remembered
    /// as rolled back), or still pending. An install made in this boot is not asked: a
    /// restart of the agent is not a reboot. Whether any install of an earlier boot is
    /// still pending (then the coordinator asks again later).
    pub(crate) fn confirm_pending(&self) -> bool {
        let mut still = false;
        for (name, pending) in self.journal.snapshot().pending {
            if self.shutdown.is_set() {
                return true;
            }
            if !boot::earlier_boot(pending.boot_id.as_deref(), pending.since) {
                // Not asked again on a timer: the boot changes only with a restart.
                log::info!("{name}: written in this boot; waiting for a reboot");
                continue;
            }
            let Some(plugin) = self.plugins.named(&pending.plugin) else {
                log::error!(
                    "{name}: pending a confirmation by plugin {}, which is not loaded; still pending",
                    pending.plugin
                );
                still = true;
                continue;
            };
            crate::notify::beat();
            // A patch's pending install is its target's: the plugin knows that name and MD5.
            let written = pending.target.as_ref().unwrap_or(&pending.task);
            let paths = install::paths(&self.config.resource_dir, &written.name);
            let resource = self.resource_args(written, &paths, None);
            let outcome = if plugin.has(Op::Confirm) {
                self.plugin_host()
                    .call(plugin, Op::Confirm, &resource, |_| {})
            } else {
                CallOutcome::Failed(PluginFailure::Refused {
                    plugin: plugin.name.clone(),
                    reason: "returned pending but exports no resagent_confirm".into(),
                })
            };
            let task = &pending.task;
            match outcome {
                CallOutcome::Ok => {
                    log::info!("{name}: plugin {} confirms the new image runs", plugin.name);
                    self.report_installed(task, written, InstalledBy::Plugin(plugin.name.clone()));
                }
                CallOutcome::Pending | CallOutcome::Declined => {
                    log::info!("{name}: still pending (plugin {})", plugin.name);
                    still = true;
                }
                CallOutcome::Interrupted => return true,
                CallOutcome::Failed(f) => {
                    let e = DownloadError::PluginInstall(f);
                    log::error!("{name}: the pending install did not take: {e}");
                    let reason = e.to_string();
                    let report =
                        Report::fail(Direction::Download, &name, 100, e.result_code(), &reason);
                    let now = journal::unix_now();
                    self.reporter.final_report_with(report, |j| {
                        tasks::rolled_back(j, task, &reason, now);
                        if written != task {
                            // The full image of that content is refused again too.
                            tasks::rolled_back(j, written, &reason, now);
                        }
                    });
                }
            }
        }
        still
    }

    /// Drops the staged bytes, clears the task and reports `fail`, in one journal write.
    fn report_failed(&self, task: &Task, paths: &Paths, e: &DownloadError) -> Outcome {
        let code = e.result_code();
        log::error!("{} failed ({}): {e}", task.name, code.code());
        let done = std::fs::metadata(&paths.staging)
            .map(|m| m.len())
            .unwrap_or(0);
        self.discard_staged(task, paths);
        let report = Report::fail(
            Direction::Download,
            &task.name,
            percent(done, task.size),
            code,
            &e.to_string(),
        );
        self.reporter
            .final_report_with(report, |j| tasks::clear_in_flight(j, task));
        Outcome::Failed
    }

    /// Drops what the task staged: its bytes and, for a patch, the target it was
    /// rebuilding (a kill mid-apply leaves one that no later run of this task removes).
    fn discard_staged(&self, task: &Task, paths: &Paths) {
        install::discard_staging(&paths.staging);
        if let Some(base) = rdelta::base_name(&task.name) {
            install::discard_staging(&install::paths(&self.config.resource_dir, base).staging);
        }
    }

    /// Waits `delay` before a retry, looking every 200 ms for a withdrawal or a stop and
    /// showing the watchdog a sign of life (a wait may last minutes).
    fn wait(&self, delay: std::time::Duration) -> Result<(), Stop> {
        let until = std::time::Instant::now() + delay;
        loop {
            self.check_stop()?;
            crate::notify::beat();
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            self.shutdown
                .sleep(left.min(std::time::Duration::from_millis(200)));
        }
    }

    /// Between two chunks of a long read (a staged part, a verified file, a destination
    /// read back after a restart: gigabytes may take minutes): a sign of life for the
    /// watchdog, and the read ends on a withdrawal or a stop.
    fn tick(&self) -> Result<(), Stop> {
        crate::notify::beat();
        self.check_stop()
    }

    /// The MD5 of the file at `path`, read through [`tick`](Self::tick); None when it
    /// cannot be read.
    fn md5_of(&self, path: &std::path::Path) -> Result<Option<String>, Stop> {
        let Ok(mut file) = std::fs::File::open(path) else {
            return Ok(None);
        };
        let mut md5 = crate::digest::Md5::new();
        match crate::digest::hash_prefix_ticking(&mut file, u64::MAX, &mut md5, || self.tick()) {
            Ok(_) => Ok(Some(md5.hex())),
            Err(crate::digest::ChunkError::Read(_)) => Ok(None),
            Err(crate::digest::ChunkError::Sink(stop)) => Err(stop),
        }
    }

    /// Whether the staging file left from before a restart is the verified resource: its
    /// size, and its MD5 read again (the journal said "verified", the disk must agree).
    fn staged_file_complete(&self, paths: &Paths, task: &Task) -> Result<bool, Stop> {
        let sized = std::fs::symlink_metadata(&paths.staging)
            .map(|m| m.is_file() && m.len() == task.size)
            .unwrap_or(false);
        if !sized {
            return Ok(false);
        }
        Ok(match self.md5_of(&paths.staging)? {
            Some(md5) if md5 == task.md5sum => true,
            Some(md5) => {
                log::warn!(
                    "{}: the staged file has md5 {md5}, not {}; fetching it again",
                    task.name,
                    task.md5sum
                );
                false
            }
            None => false,
        })
    }

    /// After a kill between the install's rename and the journal write, the new file is
    /// already at its destination: recognise it by its MD5 instead of believing the old.
    fn installed_before_kill(&self, paths: &Paths, task: &Task) -> Result<bool, Stop> {
        let in_place = self
            .md5_of(&paths.dest)?
            .is_some_and(|md5| md5 == task.md5sum);
        if in_place {
            log::info!("{}: already in place from before the restart", task.name);
        }
        Ok(in_place)
    }

    /// A cancel by the platform or a stop of the agent, checked between chunks.
    /// `install_gate_command`, asked before the chain until it says go (0) or no (any
    /// exit but 75). "Not now" (75) is reported as `burning` 0 with the gate's line, shown
    /// by `status`, and asked again after `gate_retry_s`; SIGUSR1 goes on without it.
    fn install_gate(&self, task: &Task, as_: &Task, paths: &Paths) -> Result<(), Stop> {
        use crate::gate::{self, Verdict, Which};
        let Some(command) = &self.config.install_gate_command else {
            return Ok(());
        };
        let env = [
            ("RESAGENT_NAME", as_.name.clone()),
            ("RESAGENT_PATH", paths.staging.display().to_string()),
            ("RESAGENT_MD5", as_.md5sum.clone()),
        ];
        loop {
            if self.go_now() {
                log::info!(
                    "{}: installing now (SIGUSR1): the install gate is not asked",
                    task.name
                );
                self.hold(task, None);
                return Ok(());
            }
            let asked = gate::ask(
                command,
                Which::Install,
                &env,
                self.config.plugin_timeout,
                &self.shutdown,
            );
            match asked.map_err(|_| Stop::Interrupted)? {
                Verdict::Go => {
                    self.hold(task, None);
                    return Ok(());
                }
                Verdict::Refused(reason) => {
                    self.hold(task, None);
                    return Err(DownloadError::Gate {
                        name: as_.name.clone(),
                        reason,
                    }
                    .into());
                }
                Verdict::Later(line) => {
                    let retry = self.config.gate_retry;
                    log::info!(
                        "{}: the install gate says not now: {line}; asking again in {} s",
                        task.name,
                        retry.as_secs()
                    );
                    let mut report = Report::progress(
                        Direction::Download,
                        &task.name,
                        ProgressState::Burning,
                        0,
                    );
                    report.result_msg = format!("install gate: not now: {line}");
                    self.reporter.progress(&report);
                    self.hold(
                        task,
                        Some(&format!("the install gate says not now: {line}")),
                    );
                    self.wait_or_go(retry)?;
                }
            }
        }
    }

    /// Waits `delay` like [`wait`](Self::wait), ended early by SIGUSR1.
    fn wait_or_go(&self, delay: std::time::Duration) -> Result<(), Stop> {
        let until = std::time::Instant::now() + delay;
        while !self.go_now() {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            self.wait(left.min(std::time::Duration::from_secs(1)))?;
        }
        Ok(())
    }

    /// Whether SIGUSR1 lifted the windows and gates for this task.
    fn go_now(&self) -> bool {
        self.go_now.load(Ordering::SeqCst)
    }

    /// What `status` shows as the reason the task waits (None: it does not).
    fn hold(&self, task: &Task, why: Option<&str>) {
        self.journal.record(|j| {
            if let Some(dl) = in_flight_of(j, task) {
                dl.held = why.map(str::to_string);
            }
        });
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
}

/// The journal's download in flight, if it is `task`.
fn in_flight_of<'a>(j: &'a mut Journal, task: &Task) -> Option<&'a mut InFlight> {
    j.download.as_mut().filter(|d| d.task.same_content(task))
}
