//! The coordinator's download decisions: a task offered (installed already, refused,
//! waiting, or started), answers to download reports (withdrawal), `resagent retry`
//! requests, and which task runs next on the download thread.

use super::*;

impl Coordinator {
    /// `resagent retry NAME` requests (files in `state_dir/retry/`): the rollbacks of
    /// those names are forgotten, so the platform's next offer installs them again.
    pub(super) fn take_retry_requests(&self) {
        let dir = self.config.state_dir.join(RETRY_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let _ = std::fs::remove_file(entry.path());
            if protocol::validate_name(&name).is_err() {
                log::warn!("ignored a retry request with an unsafe name");
                continue;
            }
            if self.journal.record(|j| tasks::forget_rollback(j, &name)) {
                log::info!(
                    "{name}: its rollback is forgotten on request; the next offer installs it"
                );
            } else {
                log::info!("{name}: retry requested, but no rollback of it is recorded");
            }
        }
    }

    /// A refusal of `task` (`fail` -11 with `reason`) — unless a task of that name is in
    /// flight: the platform knows tasks by name only, so a `fail` for it followed by the
    /// running task's own `done` would contradict itself. Then it is only logged; the
    /// platform offers it again.
    pub(super) fn refuse(&self, task: &Task, reason: &str) {
        let in_flight = self
            .journal
            .snapshot()
            .download
            .is_some_and(|d| d.task.name == task.name);
        if in_flight {
            log::warn!("{reason}; not reported: {} is in flight", task.name);
            return;
        }
        self.reporter.final_report(Report::fail(
            Direction::Download,
            &task.name,
            0,
            ResultCode::Other,
            reason,
        ));
    }

    pub(super) fn on_task(&mut self, task: Task) {
        let resource_dir = self.config.resource_dir.clone();
        let offered = task.clone();
        let plugins = (!self.scanning).then(|| self.plugins.clone());
        // A resource installed by a plugin that answers `resagent_installed` is asked
        // on the download thread (a child call): it is not taken as present here (nor
        // any plugin's record while a scan runs).
        let still_present = move |name: &str, i: &journal::Installed| {
            let ask_plugin = match (&i.plugin, &plugins) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(p), Some(set)) => set.named(p).is_some_and(|p| p.has(Op::Installed)),
            };
            !ask_plugin && install::still_present(&resource_dir, name, i)
        };
        match self
            .journal
            .accept(|j| tasks::offer(j, offered, still_present))
        {
            Ok(Offer::Start) => {
                log::info!("task {} ({} bytes) accepted", task.name, task.size);
                self.start_next();
            }
            Ok(Offer::Queued) => log::info!("task {} waits for the download in flight", task.name),
            Ok(Offer::ReplacedWaiting) => {
                log::info!("task {} replaces the waiting one of that name", task.name)
            }
            Ok(Offer::AlreadyInstalled) => {
                log::info!(
                    "{} with md5 {} is installed already",
                    task.name,
                    task.md5sum
                );
                self.reporter
                    .final_report(Report::done(Direction::Download, &task.name));
            }
            Ok(Offer::DuplicateOfInFlight) => {
                log::debug!("task {} is in flight already", task.name)
            }
            Ok(Offer::PendingReboot(p)) => {
                log::info!(
                    "{} with md5 {} is written and waits for a reboot; nothing to fetch",
                    task.name,
                    task.md5sum
                );
                let report =
                    reboot::pending_report(&task.name, &p.plugin, p.reboot_error.as_deref());
                if self.reporter.final_report(report) {
                    reboot::after_acknowledged(
                        &self.config,
                        &self.journal,
                        &self.reporter,
                        &self.shutdown,
                        &task.name,
                    );
                }
            }
            Ok(Offer::RolledBack(r)) => {
                let reason = format!(
                    "{} (md5 {}) rolled back on this device at {}: {}; not installed again (`resagent retry {}` on the device allows it)",
                    r.name,
                    r.md5sum,
                    status::utc_time(r.at),
                    r.reason,
                    r.name
                );
                self.reporter.final_report(Report::fail(
                    Direction::Download,
                    &task.name,
                    0,
                    ResultCode::InstallFailed,
                    &reason,
                ));
            }
            Ok(Offer::QueueFull) => {
                let reason = format!(
                    "task {} refused: {} tasks wait already",
                    task.name,
                    tasks::MAX_WAITING
                );
                self.refuse(&task, &reason);
            }
            Err(e) => {
                // Nothing of the task stays in memory: it is refused, never in limbo.
                let reason = format!("task {} not recorded: {e}", task.name);
                self.refuse(&task, &reason);
            }
        }
    }

    /// An answer to a download report: matched to the report it answers, in order
    /// (`report::Awaiting`). A non-zero answer to a report of the task in flight, or to
    /// none (sent unasked), withdraws it; one to a report about another name (a refused
    /// task's `fail`) never does.
    pub(super) fn on_download_rsp(&mut self, code: i64, msg: &str) {
        let answers = self.reporter.answered(Direction::Download).map(|s| s.name);
        if code == 0 {
            return;
        }
        let Some(Running {
            task: Some(task),
            cancel,
            ..
        }) = &self.in_flight
        else {
            log::info!("result_code {code} ({msg}) answers a report; no download in flight");
            return;
        };
        match answers {
            // Its own report's answer, or one that answers no report of this session
            // (sent unasked, e.g. while the server is silent and nothing is reported):
            // either way about the download in flight.
            Some(name) if name != task.name => log::info!(
                "result_code {code} ({msg}) answers the report about {name}: {} goes on",
                task.name
            ),
            _ => {
                log::warn!(
                    "the platform withdrew {} (result_code {code}: {msg})",
                    task.name
                );
                cancel.store(true, Ordering::SeqCst);
            }
        }
    }

    pub(super) fn on_download_finished(&mut self, task: Option<&Task>, outcome: Outcome) {
        match task {
            Some(task) => log::debug!("{}: {outcome:?}", task.name),
            None => {
                if outcome == Outcome::Pending {
                    self.confirm_again = Some(Instant::now() + CONFIRM_AGAIN);
                }
                if outcome != Outcome::Interrupted && !self.started_up {
                    self.started_up = true;
                    if std::mem::take(&mut self.poll_owed) {
                        self.ask_for_task("after the start-up confirmation");
                    }
                }
            }
        }
        self.in_flight = None;
        if outcome != Outcome::Interrupted {
            self.start_next();
        }
    }

    /// Starts, on the download thread, the confirmation of pending installs (once per
    /// start), else the journal's download in flight (or the first waiting one), if
    /// nothing runs there.
    pub(super) fn start_next(&mut self) {
        if self.in_flight.is_some() || self.shutdown.is_set() || self.scanning {
            return;
        }
        let confirm =
            std::mem::take(&mut self.confirm_due) && !self.journal.snapshot().pending.is_empty();
        let task = if confirm {
            None
        } else {
            match self.journal.record(tasks::next) {
                Some(t) => Some(t),
                None => return,
            }
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let go_now = Arc::new(AtomicBool::new(false));
        let downloader = Downloader {
            config: self.config.clone(),
            journal: self.journal.clone(),
            reporter: self.reporter.clone(),
            shutdown: self.shutdown.clone(),
            cancel: cancel.clone(),
            go_now: go_now.clone(),
            plugins: self.plugins.clone(),
            exe: self.exe.clone(),
        };
        let tx = self.events.clone();
        let job = task.clone();
        let spawned = std::thread::Builder::new()
            .name("download".into())
            .spawn(move || {
                let outcome = match &job {
                    Some(task) => downloader.run(task),
                    None if downloader.confirm_pending() => Outcome::Pending,
                    None => Outcome::Installed,
                };
                let _ = tx.send(Event::DownloadFinished(job, outcome));
            });
        match spawned {
            Ok(handle) => {
                self.in_flight = Some(Running {
                    task,
                    cancel,
                    go_now,
                    thread: Some(handle),
                })
            }
            Err(e) => {
                log::error!("cannot start the download thread: {e}");
                // Task polls must not wait for a confirmation that never started.
                self.started_up = true;
            }
        }
    }
}
