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
use crate::plugin::{Op, PluginSet};
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
    /// A folder the agent writes is not writable (checked at start).
    #[error("{key} {} is not writable: {source}", dir.display())]
    NotWritable {
        key: &'static str,
        dir: PathBuf,
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        name: &'static str,
        source: std::io::Error,
    },
}

/// The folders the agent writes must take a file, checked once at start: a
/// configuration that names a read-only folder (a hardened unit's `ReadWritePaths`
/// without it, a read-only partition) would otherwise fail every task later with no word
/// now. `state_dir` and `resource_dir` stop the start (exit 2, naming the key); the
/// outbox only gets a warning — it may be a file system remounted read-only after an
/// I/O error, and downloads should go on meanwhile (uploads wait and retry).
fn check_folders(config: &Config) -> Result<(), DaemonError> {
    for (key, dir) in [
        ("state_dir", &config.state_dir),
        ("resource_dir", &config.resource_dir),
    ] {
        fsutil::check_writable(dir).map_err(|source| DaemonError::NotWritable {
            key,
            dir: dir.clone(),
            source,
        })?;
    }
    if config.outbox_dir.is_dir() {
        if let Err(e) = fsutil::check_writable(&config.outbox_dir) {
            log::warn!(
                "outbox_dir {} is not writable ({e}): uploads wait until it is",
                config.outbox_dir.display()
            );
        }
    }
    Ok(())
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
    check_folders(&config)?;
    let _instance = Instance::claim(&config.state_dir, &config.pid_file)?;
    let journal = open_journal(&config)?;
    let exe = std::env::current_exe().map_err(DaemonError::OwnExe)?;
    let session = Session::new(&config)?;
    let publisher = session.publisher();
    let reporter = Arc::new(Reporter::new(publisher.clone(), journal.clone()));
    let shutdown = Shutdown::new();
    let (events, inbox) = mpsc::sync_channel(EVENT_QUEUE);

    spawn_signals(&events, &shutdown)?;
    spawn_mqtt(session, &events, &shutdown)?;
    let config = Arc::new(config);
    let connected = Arc::new(AtomicBool::new(false));
    let (uploads, upload_inbox) = mpsc::sync_channel(UPLOAD_QUEUE);
    let live = Arc::new(config::Live::new(config.clone()));
    spawn_uploader(Uploader {
        live: live.clone(),
        journal: journal.clone(),
        reporter: reporter.clone(),
        publisher: publisher.clone(),
        shutdown: shutdown.clone(),
        connected: connected.clone(),
        inbox: upload_inbox,
        kept_retry: Default::default(),
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

/// The journal, opened and read back; what of it is unsafe is dropped, each with a line.
fn open_journal(config: &Config) -> Result<Arc<JournalStore>, DaemonError> {
    let journal = Arc::new(JournalStore::open(&config.journal_path())?);
    for dropped in journal.record(|j| tasks::sanitize(j, &config.task_limits())) {
        log::error!(
            "journal {}: dropped {dropped}",
            config.journal_path().display()
        );
    }
    Ok(journal)
}

/// Starts the `signals` thread, feeding `events`.
fn spawn_signals(events: &SyncSender<Event>, shutdown: &Shutdown) -> Result<(), DaemonError> {
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
    .map(drop)
    .map_err(|source| DaemonError::Thread {
        name: "signals",
        source,
    })
}

/// Starts the `upload` thread.
fn spawn_uploader(uploader: Uploader) -> Result<(), DaemonError> {
    std::thread::Builder::new()
        .name("upload".into())
        .spawn(move || uploader.run())
        .map(drop)
        .map_err(|source| DaemonError::Thread {
            name: "upload",
            source,
        })
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

/// The download in flight: its task, the flags that cancel it and that lift its
/// windows and gates (SIGUSR1), and its thread.
struct Running {
    /// None: the confirmation of pending installs.
    task: Option<Task>,
    cancel: Arc<AtomicBool>,
    go_now: Arc<AtomicBool>,
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

mod downloads;
mod events;
