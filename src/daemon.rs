//! `resagent run`: the coordinator. One named thread per concern — `signals`, `mqtt`,
//! `download` — feeds one bounded event channel; this thread owns the decisions (which
//! task runs, when to ask for tasks, what a message means) and the shutdown handle.

use crate::config::{self, Config, ConfigError};
use crate::download::{Downloader, Outcome};
use crate::fsutil::{self, FsError};
use crate::install;
use crate::journal::{self, ConnState, JournalError, JournalStore};
use crate::mqtt::{LinkEvent, MqttError, Publisher, Session};
use crate::notify::Notifier;
use crate::pidfile::{Instance, PidError};
use crate::plugin::{Op, PluginHost, PluginSet};
use crate::protocol::{self, Direction, DownMessage, Report, ResultCode, Task, MAX_MESSAGE_BYTES};
use crate::random;
use crate::reboot;
use crate::report::Reporter;
use crate::shutdown::Shutdown;
use crate::signals::{self, Request};
use crate::status;
use crate::tasks::{self, Offer};
use crate::upload::{UploadSignal, Uploader};
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Capacity of the event channel: the MQTT thread waits when the coordinator lags
/// (Paho keeps queueing meanwhile), so a storm of messages cannot grow this queue.
const EVENT_QUEUE: usize = 256;
/// Capacity of the channel to the upload thread; when it is full (the thread is busy
/// and a storm of answers arrives) the coordinator drops rather than waits.
const UPLOAD_QUEUE: usize = 64;
/// The longest a stop may take (docs/agent.md: exit within 5 s of SIGTERM).
const STOP_DEADLINE: Duration = Duration::from_millis(4500);
/// How often a journal that could not be saved is tried again (docs/agent.md, "What
/// never wedges").
const JOURNAL_RETRY: Duration = Duration::from_secs(5);
/// How often installs still pending after a reboot are asked to confirm again (an update
/// daemon that comes up after the agent; docs/agent.md, "Installs pending a reboot").
const CONFIRM_AGAIN: Duration = Duration::from_secs(60);
/// The folder of `resagent retry NAME` requests, in `state_dir`.
pub(crate) const RETRY_DIR: &str = "retry";
/// How long a stop waits for the download thread to reach a chunk boundary; the journal
/// is consistent at every instant, so the process may exit without it.
/// A plugin call gets SIGTERM and, 3 s later, SIGKILL: this covers that and stays within
/// the 5 s that a stop may take.
const STOP_GRACE: Duration = Duration::from_millis(3500);

/// Why the daemon could not start or had to stop.
#[derive(Debug, Error)]
pub(crate) enum DaemonError {
    /// Signals could not be blocked, so the signal thread cannot own them.
    #[error("cannot block signals: {0}")]
    Signals(nix::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pid(#[from] PidError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    /// The path of resagent's own executable (re-run for plugin calls) is unknown.
    #[error("cannot find resagent's own executable: {0}")]
    OwnExe(std::io::Error),
    /// A thread could not be started.
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        name: &'static str,
        source: std::io::Error,
    },
}

/// Everything the coordinator hears about.
enum Event {
    Link(LinkEvent),
    Signal(Request),
    /// A plugin scan ended (its number, the set it found).
    Plugins(u64, PluginSet),
    /// The download thread finished `task` (None: the confirmation of pending installs,
    /// `Outcome::Pending` when some are still pending).
    DownloadFinished(Option<Task>, Outcome),
}

/// Runs the daemon until SIGTERM or SIGINT. Call before any thread exists.
pub(crate) fn run(config_path: &Path) -> Result<(), DaemonError> {
    signals::block().map_err(DaemonError::Signals)?;
    let config = config::load(config_path)?;
    if let Some(file) = config::world_readable_secret(&config) {
        log::warn!(
            "{} holds the device's secret and is readable by every user: chmod 600 it",
            file.display()
        );
    }
    fsutil::ensure_configured_dir(&config.state_dir, 0o700)?;
    fsutil::ensure_configured_dir(&config.resource_dir, 0o755)?;
    let _instance = Instance::claim(&config.state_dir, &config.pid_file)?;
    let journal = Arc::new(JournalStore::open(&config.journal_path())?);
    for dropped in journal.record(|j| tasks::sanitize(j, &config.task_limits())) {
        log::error!(
            "journal {}: dropped {dropped}",
            config.journal_path().display()
        );
    }
    let exe = std::env::current_exe().map_err(DaemonError::OwnExe)?;
    let session = Session::new(&config)?;
    let publisher = session.publisher();
    let reporter = Arc::new(Reporter::new(publisher.clone(), journal.clone()));
    let shutdown = Shutdown::new();
    let (events, inbox) = mpsc::sync_channel(EVENT_QUEUE);

    let tx = events.clone();
    let stop = shutdown.clone();
    signals::spawn(move |r| {
        // A stop takes effect at once, even while the coordinator waits on something
        // (the plugin probes at start or on SIGHUP), and ends the process in time
        // whatever the broker does.
        if r == Request::Stop {
            stop.trigger();
            start_stop_deadline();
        }
        tx.send(Event::Signal(r)).is_ok()
    })
    .map_err(|source| DaemonError::Thread {
        name: "signals",
        source,
    })?;
    spawn_mqtt(session, &events, &shutdown)?;
    let config = Arc::new(config);
    let connected = Arc::new(AtomicBool::new(false));
    let (uploads, upload_inbox) = mpsc::sync_channel(UPLOAD_QUEUE);
    let live = Arc::new(config::Live::new(config.clone()));
    let uploader = Uploader {
        live: live.clone(),
        journal: journal.clone(),
        reporter: reporter.clone(),
        publisher: publisher.clone(),
        shutdown: shutdown.clone(),
        connected: connected.clone(),
        inbox: upload_inbox,
        kept_retry: Default::default(),
    };
    std::thread::Builder::new()
        .name("upload".into())
        .spawn(move || uploader.run())
        .map_err(|source| DaemonError::Thread {
            name: "upload",
            source,
        })?;
    log::info!(
        "resagent {} started for {} (broker {})",
        env!("CARGO_PKG_VERSION"),
        config.device.client_id(),
        config.broker.uri()
    );
    let mut notifier = Notifier::from_env();
    // The journal is open and the first connection attempt has started.
    notifier.ready(&format!("started; connecting to {}", config.broker.uri()));
    let mut coordinator = Coordinator {
        notifier,
        config,
        live,
        journal,
        reporter,
        publisher,
        shutdown,
        events,
        in_flight: None,
        confirm_due: false,
        confirm_again: None,
        started_up: false,
        poll_owed: false,
        connected,
        uploads,
        plugins: Arc::new(PluginSet::default()),
        scanning: false,
        scans: 0,
        exe,
    };
    coordinator.rescan_plugins();
    coordinator.run(inbox);
    Ok(())
}

/// Ends the process [`STOP_DEADLINE`] after a stop began, if it has not ended by then
/// (a broker that stopped answering keeps a QoS 1 publish or the DISCONNECT waiting).
/// Nothing is lost: every state change is in the journal before it counts, and final
/// reports not acknowledged are sent again by the next run.
fn start_stop_deadline() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("stop-deadline".into())
            .spawn(|| {
                std::thread::sleep(STOP_DEADLINE);
                log::error!(
                    "stopping took over {} s (the broker does not answer); exiting now",
                    STOP_DEADLINE.as_secs_f32()
                );
                std::process::exit(0);
            });
    });
}

/// Starts the `mqtt` thread: the session's connect/reconnect loop, feeding `events`.
fn spawn_mqtt(
    session: Session,
    events: &SyncSender<Event>,
    shutdown: &Shutdown,
) -> Result<(), DaemonError> {
    let tx = events.clone();
    let stop = shutdown.clone();
    std::thread::Builder::new()
        .name("mqtt".into())
        .spawn(move || session.run(&stop, |e| tx.send(Event::Link(e)).is_ok()))
        .map_err(|source| DaemonError::Thread {
            name: "mqtt",
            source,
        })?;
    Ok(())
}

/// The download in flight: its task, the flag that cancels it, and its thread.
struct Running {
    /// None: the confirmation of pending installs.
    task: Option<Task>,
    cancel: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Coordinator {
    config: Arc<Config>,
    /// The same configuration, shared with the upload thread.
    live: Arc<config::Live>,
    journal: Arc<JournalStore>,
    reporter: Arc<Reporter>,
    publisher: Publisher,
    shutdown: Shutdown,
    events: SyncSender<Event>,
    in_flight: Option<Running>,
    /// systemd's notify socket and watchdog (nothing without `NOTIFY_SOCKET`).
    notifier: Notifier,
    /// Pending installs are to be asked to confirm as soon as the download thread is free.
    confirm_due: bool,
    /// When to ask again, while some are still pending.
    confirm_again: Option<Instant>,
    /// The start-up confirmation has run: task polls wait for it (a pending install is
    /// answered before the platform is asked for a task).
    started_up: bool,
    /// A task poll that waited for the start-up confirmation.
    poll_owed: bool,
    /// Shared with the upload thread, which uploads only while connected.
    connected: Arc<AtomicBool>,
    uploads: SyncSender<UploadSignal>,
    plugins: Arc<PluginSet>,
    /// A scan runs (at start, after SIGHUP): until it ends nothing starts on the download
    /// thread (the next task uses the plugins as scanned now), and a plugin's install
    /// record is not taken as present without asking it.
    scanning: bool,
    /// Scans started; only the latest one's set is used.
    scans: u64,
    /// resagent's own executable, re-run for each plugin call.
    exe: PathBuf,
}

impl Coordinator {
    fn run(&mut self, inbox: Receiver<Event>) {
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

    fn stop(&mut self) {
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
    fn status_line(&self) -> String {
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

    fn record_connection(&self, state: ConnState) {
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
    fn on_connected(&mut self, ask: bool) {
        self.connected.store(true, Ordering::SeqCst);
        self.record_connection(ConnState::Connected);
        for acked in self.reporter.resend_unacked() {
            if reboot::is_pending_report(&acked) {
                reboot::after_acknowledged(
                    &self.config,
                    &self.journal,
                    &self.reporter,
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

    fn to_uploader(&self, signal: UploadSignal) {
        if let Err(e) = self.uploads.try_send(signal) {
            log::debug!("upload thread busy; dropped {e:?}");
        }
    }

    fn on_signal(&mut self, request: Request) {
        match request {
            Request::Stop => {}
            Request::Reload => self.reload(),
            Request::CheckTasks => {
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
    fn reload(&mut self) {
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
    fn rescan_plugins(&mut self) {
        self.scans += 1;
        self.scanning = true;
        let scan = self.scans;
        let (config, exe, shutdown) =
            (self.config.clone(), self.exe.clone(), self.shutdown.clone());
        let tx = self.events.clone();
        let job = move || {
            let host = PluginHost {
                exe: &exe,
                timeout: config.plugin_timeout,
                shutdown: &shutdown,
                state_dir: Some(&config.state_dir),
                plugin_config: Some(&config.plugin_config),
            };
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
    fn on_plugins(&mut self, scan: u64, set: PluginSet) {
        if scan != self.scans {
            return;
        }
        let problems = set.pin_problems.clone();
        self.journal.record(|j| j.pinned_not_loaded = problems);
        self.plugins = Arc::new(set);
        self.scanning = false;
        self.start_next();
    }

    /// `resagent retry NAME` requests (files in `state_dir/retry/`): the rollbacks of
    /// those names are forgotten, so the platform's next offer installs them again.
    fn take_retry_requests(&self) {
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

    fn ask_for_task(&mut self, why: &str) {
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

    fn on_message(&mut self, bytes: &[u8]) {
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

    /// A refusal of `task` (`fail` -11 with `reason`) — unless a task of that name is in
    /// flight: the platform knows tasks by name only, so a `fail` for it followed by the
    /// running task's own `done` would contradict itself. Then it is only logged; the
    /// platform offers it again.
    fn refuse(&self, task: &Task, reason: &str) {
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

    fn on_task(&mut self, task: Task) {
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
    fn on_download_rsp(&mut self, code: i64, msg: &str) {
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

    fn on_download_finished(&mut self, task: Option<&Task>, outcome: Outcome) {
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
    fn start_next(&mut self) {
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
        let downloader = Downloader {
            config: self.config.clone(),
            journal: self.journal.clone(),
            reporter: self.reporter.clone(),
            shutdown: self.shutdown.clone(),
            cancel: cancel.clone(),
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
