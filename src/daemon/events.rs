//! The coordinator's loop and everything but the download tasks: the connection, the
//! signals (SIGHUP's new configuration and plugin scan, SIGUSR1, SIGUSR2), the messages
//! from the platform, the status line, the stop.

use super::*;

impl Coordinator {
    pub(super) fn run(&mut self, inbox: Receiver<Event>) {
        self.record_connection(ConnState::Disconnected);
        self.take_retry_requests();
        // Pending installs are asked first (before the first task poll); then a download
        // interrupted by a kill or a reboot resumes, connected or not.
        self.confirm_due = !self.journal.snapshot().pending.is_empty();
        self.started_up = !self.confirm_due;
        self.start_next();
        let mut next_poll = Instant::now() + self.config.poll_interval;
        let mut first_connect = true;
        let mut next_ping = self.notifier.ping_every().map(|p| Instant::now() + p);
        loop {
            let mut wait = next_poll.saturating_duration_since(Instant::now());
            if self.journal.unsaved() {
                wait = wait.min(JOURNAL_RETRY);
            }
            if let Some(at) = next_ping {
                wait = wait.min(at.saturating_duration_since(Instant::now()));
            }
            if let Some(at) = self.confirm_again {
                wait = wait.min(at.saturating_duration_since(Instant::now()));
            }
            let event = inbox.recv_timeout(wait);
            if self.confirm_again.is_some_and(|at| Instant::now() >= at) {
                self.confirm_again = None;
                self.confirm_due = true;
                self.start_next();
            }
            if let (Some(at), Some(every)) = (next_ping, self.notifier.ping_every()) {
                if Instant::now() >= at {
                    self.notifier.watchdog(self.in_flight.is_some());
                    next_ping = Some(Instant::now() + every);
                }
            }
            // Not on every event (a storm of messages): the status reads the journal.
            if self.notifier.status_due() {
                self.notifier.status(&self.status_line());
            }
            match event {
                Ok(Event::Signal(Request::Stop)) => break,
                Ok(Event::Signal(r)) => self.on_signal(r),
                Ok(Event::Link(LinkEvent::Connected)) => {
                    // The first poll after start waits a random time within
                    // poll_jitter_s, so a fleet powered on together does not ask together.
                    let jitter = if first_connect {
                        let max = self.config.poll_jitter.as_millis() as u64;
                        Duration::from_millis(random::random_u64() % (max + 1))
                    } else {
                        Duration::ZERO
                    };
                    first_connect = false;
                    self.on_connected(jitter.is_zero());
                    next_poll = Instant::now()
                        + if jitter.is_zero() {
                            self.config.poll_interval
                        } else {
                            log::info!(
                                "first task poll in {:.1} s (poll_jitter_s)",
                                jitter.as_secs_f64()
                            );
                            jitter
                        };
                }
                Ok(Event::Link(LinkEvent::Disconnected)) => {
                    self.connected.store(false, Ordering::SeqCst);
                    self.reporter.session_lost();
                    self.record_connection(ConnState::Disconnected);
                }
                Ok(Event::Link(LinkEvent::Message(bytes))) => self.on_message(&bytes),
                Ok(Event::Link(LinkEvent::Oversized(len))) => log::warn!(
                    "refused a message from the platform: {len} bytes is over the {MAX_MESSAGE_BYTES} byte limit"
                ),
                Ok(Event::Plugins(scan, set)) => self.on_plugins(scan, set),
                Ok(Event::DownloadFinished(task, outcome)) => {
                    self.on_download_finished(task.as_ref(), outcome)
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.journal.retry_save();
                    if Instant::now() >= next_poll {
                        self.ask_for_task("poll");
                        next_poll = Instant::now() + self.config.poll_interval;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.stop();
    }

    pub(super) fn stop(&mut self) {
        log::info!("stopping");
        self.notifier.stopping();
        self.shutdown.trigger();
        if let Some(handle) = self.in_flight.as_mut().and_then(|r| r.thread.take()) {
            let deadline = Instant::now() + STOP_GRACE;
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !handle.is_finished() {
                log::warn!(
                    "the download did not reach a chunk boundary within {:.1} s; stopping without it (the journal is consistent)",
                    STOP_GRACE.as_secs_f32()
                );
            }
        }
        self.publisher.disconnect();
        self.record_connection(ConnState::Disconnected);
        log::info!("stopped");
    }

    /// What systemd shows for the agent: the connection, and the download in flight
    /// with its percent (from the bytes staged).
    pub(super) fn status_line(&self) -> String {
        let link = if self.connected.load(Ordering::SeqCst) {
            format!("connected to {}", self.config.broker.uri())
        } else {
            format!("not connected ({})", self.config.broker.uri())
        };
        let journal = self.journal.snapshot();
        let Some(d) = journal.download else {
            return format!("{link}; idle");
        };
        if d.phase == journal::Phase::Verified {
            return format!("{link}; installing {}", d.task.name);
        }
        let staged =
            std::fs::metadata(install::paths(&self.config.resource_dir, &d.task.name).staging)
                .map(|m| m.len())
                .unwrap_or(0);
        format!(
            "{link}; downloading {} {}%",
            d.task.name,
            protocol::percent(staged, d.task.size)
        )
    }

    pub(super) fn record_connection(&self, state: ConnState) {
        let broker = self.config.broker.uri();
        let now = journal::unix_now();
        self.journal.record(|j| {
            if j.connection.state != state || j.connection.broker != broker {
                j.connection.state = state;
                j.connection.broker = broker;
                j.connection.since = now;
            }
        });
    }

    /// A connection was accepted; `ask`: poll for a task now (not on the first connect
    /// after start, whose poll is jittered).
    pub(super) fn on_connected(&mut self, ask: bool) {
        self.connected.store(true, Ordering::SeqCst);
        self.record_connection(ConnState::Connected);
        for acked in self.reporter.resend_unacked() {
            if reboot::is_pending_report(&acked) {
                reboot::after_acknowledged(
                    &self.config,
                    &self.journal,
                    &self.reporter,
                    &self.shutdown,
                    &acked.name,
                );
            }
        }
        if ask {
            self.ask_for_task("connect");
        }
        self.to_uploader(UploadSignal::Wake {
            reset_backoff: false,
        });
    }

    pub(super) fn to_uploader(&self, signal: UploadSignal) {
        if let Err(e) = self.uploads.try_send(signal) {
            log::debug!("upload thread busy; dropped {e:?}");
        }
    }

    pub(super) fn on_signal(&mut self, request: Request) {
        match request {
            Request::Stop => {}
            Request::Reload => self.reload(),
            Request::CheckTasks => {
                // Also "now": a task waiting for its download window or for a gate goes.
                if let Some(r) = &self.in_flight {
                    r.go_now.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                self.take_retry_requests();
                if !self.journal.snapshot().pending.is_empty() {
                    self.confirm_due = true;
                    self.start_next();
                }
                self.ask_for_task("SIGUSR1")
            }
            Request::ScanOutbox => self.to_uploader(UploadSignal::Wake {
                reset_backoff: true,
            }),
        }
    }

    /// SIGHUP: a new configuration takes effect for the next task; a change of broker or
    /// identity needs a restart, which is said.
    pub(super) fn reload(&mut self) {
        match config::load(&self.config.path) {
            Ok(new) => {
                if new.broker != self.config.broker
                    || new.device != self.config.device
                    || new.auth != self.config.auth
                {
                    log::warn!(
                        "SIGHUP: broker or credentials changed; they take effect after a restart"
                    );
                }
                log::info!("SIGHUP: configuration {} re-read", new.path.display());
                self.config = Arc::new(new);
                self.live.set(self.config.clone());
                self.rescan_plugins();
            }
            Err(e) => log::error!("SIGHUP: keeping the current configuration: {e}"),
        }
    }

    /// Scans `plugin_dir` (each plugin is probed in a child) on a thread of its own: the
    /// coordinator goes on feeding the watchdog and answering the platform while a slow
    /// plugin is probed (each probe is bounded, `plugin::PROBE_TIMEOUT`). The set is used
    /// from the next task on.
    pub(super) fn rescan_plugins(&mut self) {
        self.scans += 1;
        self.scanning = true;
        let scan = self.scans;
        let (config, exe, shutdown) =
            (self.config.clone(), self.exe.clone(), self.shutdown.clone());
        let tx = self.events.clone();
        let job = move || {
            let host = config.plugin_host(&exe, &shutdown);
            host.scan(&config.plugin_dir, config.plugin_sha256.as_ref())
        };
        let spawned = std::thread::Builder::new().name("plugins".into()).spawn({
            let job = job.clone();
            move || {
                let _ = tx.send(Event::Plugins(scan, job()));
            }
        });
        if let Err(e) = spawned {
            log::warn!("cannot start the plugin scan thread ({e}); scanning here");
            self.on_plugins(scan, job());
        }
    }

    /// The plugins a scan found: used from the next task on (an older scan's set, which
    /// a later SIGHUP overtook, is dropped).
    pub(super) fn on_plugins(&mut self, scan: u64, set: PluginSet) {
        if scan != self.scans {
            return;
        }
        let problems = set.pin_problems.clone();
        self.journal.record(|j| j.pinned_not_loaded = problems);
        self.plugins = Arc::new(set);
        self.scanning = false;
        self.start_next();
    }

    pub(super) fn ask_for_task(&mut self, why: &str) {
        if !self.started_up {
            log::info!(
                "asking for a download task once pending installs were asked to confirm ({why})"
            );
            self.poll_owed = true;
            return;
        }
        if !self.connected.load(Ordering::SeqCst) {
            log::info!("not connected; asking for a download task after the next connect ({why})");
            return;
        }
        log::debug!("asking for a download task ({why})");
        if let Err(e) = self
            .publisher
            .publish(&protocol::get_download_task_message(), 1)
        {
            log::warn!("get_download_task not sent: {e}");
        }
    }

    pub(super) fn on_message(&mut self, bytes: &[u8]) {
        match protocol::parse_down(bytes, &self.config.task_limits()) {
            Ok(DownMessage::DownloadTask(task)) => self.on_task(task),
            Ok(DownMessage::NoDownloadTask) => log::debug!("the platform has no download task"),
            Ok(DownMessage::DownloadProgressRsp {
                result_code,
                result_msg,
            }) => self.on_download_rsp(result_code, &result_msg),
            Ok(DownMessage::UploadTaskRsp(rsp)) => self.to_uploader(UploadSignal::TaskRsp(rsp)),
            Ok(DownMessage::UploadProgressRsp {
                result_code,
                result_msg,
            }) => {
                // Matched here, in arrival order, to the report it answers; the upload
                // thread judges what that means (`upload::verdict`).
                let to = self.reporter.answered(Direction::Upload);
                if result_code != 0 {
                    let about = to.as_ref().map_or(String::from("unasked"), |s| {
                        format!("about {} {}", s.name, s.state)
                    });
                    log::warn!(
                        "the platform answered an upload report ({about}) with {result_code}: {result_msg}"
                    );
                }
                self.to_uploader(UploadSignal::ProgressRsp {
                    code: result_code,
                    to,
                });
            }
            Ok(DownMessage::UploadResult { result_code }) => {
                self.to_uploader(UploadSignal::UploadResult(result_code))
            }
            Err(bad) => {
                log::warn!("refused a message from the platform: {}", bad.reason);
                if let (Some(name), Some(Direction::Download)) = (&bad.name, bad.direction) {
                    self.reporter.final_report(Report::fail(
                        Direction::Download,
                        name,
                        0,
                        ResultCode::InvalidTask,
                        &bad.reason,
                    ));
                }
            }
        }
    }
}
