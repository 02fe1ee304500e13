//! The command line (docs/agent.md, "Command line"): parses the arguments and runs one
//! command. Exit status: 0 success, 1 runtime failure, 2 usage or configuration error.

use crate::config::{self, ConfigError};
use crate::outbox::{self, Handover, OutboxError};
use crate::plugin::{Op, PluginHost};
use crate::shutdown::Shutdown;
use crate::{daemon, pidfile, plugin, status};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// `println!` that ends quietly when stdout is closed (`resagent status | head -1`):
/// the rest is dropped and the command still ends 0, instead of a panic on EPIPE.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!`, likewise.
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

const USAGE: &str = "\
resagent — resource agent for Tencent Cloud IoT Hub

Usage:
  resagent run    [-c CONFIG]            run the daemon in the foreground
  resagent upload [-c CONFIG] FILE [--name NAME] [--move]
                                         queue FILE for upload (a copy; --move hands it over)
  resagent check  [-c CONFIG] [--now]    ask the running daemon for a download task now;
                                         a task waiting for its window or gate goes now
  resagent status [-c CONFIG] [--json]   show connection, transfers and installed resources
  resagent plugin check PLUGIN.so [-c CONFIG]
                                         load a plugin as the daemon would; print its verdict,
                                         the SHA-256 to pin, and pinned plugins not loading
  resagent plugin run PLUGIN.so FILE [--name NAME] [--dest DIR] [-c CONFIG]
                                         validate, then install FILE with the plugin, in a
                                         child, as the daemon would (no broker needed)
  resagent plugin confirm PLUGIN.so NAME [--md5 MD5] [-c CONFIG]
                                         ask the plugin whether the image `plugin run` left
                                         pending (or MD5) runs now, as the daemon would
                                         after a reboot (0 runs, 1 did not take, 3 pending)
  resagent retry NAME [-c CONFIG]        forget that NAME rolled back: the next offer of it
                                         installs it again
  resagent --version | --help

CONFIG defaults to $RESAGENT_CONFIG, else /etc/resagent/config.json.
Signals to `run`: TERM/INT stop, HUP reload, USR1 check for tasks, USR2 scan the outbox.
Logging follows RUST_LOG (default: info).";

/// A parsed command line.
#[derive(Debug)]
enum Command {
    Run {
        config: Option<PathBuf>,
    },
    Check {
        config: Option<PathBuf>,
    },
    Retry {
        config: Option<PathBuf>,
        name: String,
    },
    Upload {
        config: Option<PathBuf>,
        file: PathBuf,
        name: Option<String>,
        how: Handover,
    },
    Status {
        config: Option<PathBuf>,
        json: bool,
    },
    PluginCheck {
        config: Option<PathBuf>,
        file: PathBuf,
    },
    PluginRun {
        config: Option<PathBuf>,
        plugin: PathBuf,
        file: PathBuf,
        name: Option<String>,
        dest: Option<PathBuf>,
    },
    PluginConfirm {
        config: Option<PathBuf>,
        plugin: PathBuf,
        name: String,
        md5: Option<String>,
    },
    /// Internal: one plugin call in a child process (see `plugin::child`).
    PluginChild {
        mode: String,
    },
    /// Internal: `/bin/sh -c COMMAND` as a plain process (`reboot_command`).
    Exec {
        command: String,
    },
    Help,
    Version,
}

/// A usage error: exit 2 with this message.
struct Usage(String);

impl From<lexopt::Error> for Usage {
    fn from(e: lexopt::Error) -> Self {
        Usage(e.to_string())
    }
}

fn parse_args() -> Result<Command, Usage> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let sub = match parser.next()? {
        None => return Err(Usage("a command is required".into())),
        Some(Long("help") | Short('h')) => return Ok(Command::Help),
        Some(Long("version") | Short('V')) => return Ok(Command::Version),
        Some(Value(v)) => v.string()?,
        Some(other) => return Err(other.unexpected().into()),
    };
    if sub == "delta" {
        // What a vendor tries first: patches are made on the build machine, not here.
        return Err(Usage(
            "patches are made by `resagent-delta make BASE TARGET -o PATCH`, a build-machine \
             binary of this workspace; the agent only applies them"
                .into(),
        ));
    }
    let mut config = None;
    let mut json = false;
    let mut file = None;
    let mut name = None;
    let mut how = Handover::Copy;
    let mut positional: Vec<String> = Vec::new();
    let mut dest = None;
    let mut second_file = None;
    let mut md5 = None;
    let is_plugin = sub == "plugin" || sub == plugin::CHILD_COMMAND;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('c') | Long("config") => config = Some(PathBuf::from(parser.value()?)),
            Long("json") if sub == "status" => json = true,
            Long("name") if sub == "upload" || sub == "plugin" => {
                name = Some(parser.value()?.string()?)
            }
            Long("dest") if sub == "plugin" => dest = Some(PathBuf::from(parser.value()?)),
            Long("md5") if sub == "plugin" => md5 = Some(parser.value()?.string()?),
            Long("move") if sub == "upload" => how = Handover::Move,
            // SIGUSR1 always lifts windows and gates for the task in flight; `--now`
            // says so at the call site (and in scripts).
            Long("now") if sub == "check" => {}
            Value(v) if sub == "upload" && file.is_none() => file = Some(PathBuf::from(v)),
            Value(v) if sub == "retry" && name.is_none() => name = Some(v.string()?),
            Value(v) if sub == plugin::EXEC_COMMAND && name.is_none() => name = Some(v.string()?),
            Value(v) if is_plugin && positional.is_empty() => positional.push(v.string()?),
            Value(v) if is_plugin && file.is_none() => file = Some(PathBuf::from(v)),
            Value(v) if sub == "plugin" && second_file.is_none() => {
                second_file = Some(PathBuf::from(v))
            }
            Long("help") | Short('h') => return Ok(Command::Help),
            other => return Err(other.unexpected().into()),
        }
    }
    match sub.as_str() {
        "run" => Ok(Command::Run { config }),
        "check" => Ok(Command::Check { config }),
        "retry" => Ok(Command::Retry {
            config,
            name: name
                .ok_or_else(|| Usage("retry needs the NAME of a rolled-back image".into()))?,
        }),
        "status" => Ok(Command::Status { config, json }),
        "plugin" if positional.first().map(String::as_str) == Some("check") => {
            Ok(Command::PluginCheck {
                config,
                file: file.ok_or_else(|| Usage("plugin check needs a PLUGIN.so".into()))?,
            })
        }
        "plugin" if positional.first().map(String::as_str) == Some("run") => {
            match (file, second_file) {
                (Some(plugin), Some(file)) => Ok(Command::PluginRun {
                    config,
                    plugin,
                    file,
                    name,
                    dest,
                }),
                _ => Err(Usage("plugin run needs a PLUGIN.so and a FILE".into())),
            }
        }
        "plugin" if positional.first().map(String::as_str) == Some("confirm") => {
            match (file, second_file.map(|n| n.to_string_lossy().into_owned())) {
                (Some(plugin), Some(name)) => Ok(Command::PluginConfirm {
                    config,
                    plugin,
                    name,
                    md5,
                }),
                _ => Err(Usage("plugin confirm needs a PLUGIN.so and a NAME".into())),
            }
        }
        "plugin" => Err(Usage(
            "usage: resagent plugin check PLUGIN.so | plugin run PLUGIN.so FILE | plugin confirm PLUGIN.so NAME".into(),
        )),
        c if c == plugin::EXEC_COMMAND => match name {
            Some(command) => Ok(Command::Exec { command }),
            None => Err(Usage("internal command".into())),
        },
        c if c == plugin::CHILD_COMMAND => match positional.pop() {
            Some(mode) => Ok(Command::PluginChild { mode }),
            None => Err(Usage("internal command".into())),
        },
        "upload" => Ok(Command::Upload {
            config,
            file: file.ok_or_else(|| Usage("upload needs a FILE".into()))?,
            name,
            how,
        }),
        other => Err(Usage(format!("unknown command `{other}`"))),
    }
}

/// Runs the command given on the command line; its exit status.
pub fn main() -> ExitCode {
    crate::logging::init();
    let command = match parse_args() {
        Ok(c) => c,
        Err(Usage(msg)) => {
            eprintln!("resagent: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            say!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            say!("resagent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run { config } => match daemon::run(&config::config_path(config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(daemon::DaemonError::Config(e)) => config_error(&e),
            Err(e @ daemon::DaemonError::NotWritable { .. }) => {
                log::error!("{e}");
                ExitCode::from(2)
            }
            Err(e) => {
                log::error!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Check { config } => with_config(config, |c| {
            let pid = pidfile::signal_daemon(&c.state_dir, nix::sys::signal::Signal::SIGUSR1)
                .map_err(|e| e.to_string())?;
            say!(
                "asked resagent (pid {pid}) to check for a download task; a task waiting for \
                 its download window or an install gate goes now"
            );
            Ok(())
        }),
        Command::Retry { config, name } => with_config(config, |c| retry(c, &name)),
        Command::Upload {
            config,
            file,
            name,
            how,
        } => upload(config, &file, name.as_deref(), how),
        Command::PluginCheck { config, file } => plugin_check(config, &file),
        Command::PluginRun {
            config,
            plugin,
            file,
            name,
            dest,
        } => plugin_run(config, &plugin, &file, name, dest),
        Command::PluginConfirm {
            config,
            plugin,
            name,
            md5,
        } => plugin_confirm(config, &plugin, &name, md5),
        Command::PluginChild { mode } => plugin::child::main(&mode),
        Command::Exec { command } => plugin::child::exec_plain(&command),
        Command::Status { config, json } => with_config(config, |c| {
            let view = status::gather(c).map_err(|e| e.to_string())?;
            if json {
                say!("{:#}", status::render_json(&view));
            } else {
                say_raw!("{}", status::render_text(&view));
            }
            Ok(())
        }),
    }
}

/// `resagent retry NAME`: a request file in `state_dir/retry/` that the daemon takes at
/// its start and on SIGUSR1 (sent now when it runs): the rollback of NAME is forgotten,
/// and the platform's next offer of it installs it again.
fn retry(c: &config::Config, name: &str) -> Result<(), String> {
    crate::protocol::validate_name(name).map_err(|e| format!("retry: {e}"))?;
    let dir = c.state_dir.join(daemon::RETRY_DIR);
    crate::fsutil::ensure_dir(&dir, 0o700).map_err(|e| e.to_string())?;
    crate::fsutil::atomically_write_file_sync(&dir.join(name), b"", 0o600)
        .map_err(|e| e.to_string())?;
    match pidfile::signal_daemon(&c.state_dir, nix::sys::signal::Signal::SIGUSR1) {
        Ok(pid) => say!("asked resagent (pid {pid}) to install {name} again at its next offer"),
        Err(_) => say!("{name} is installed again at the next offer after resagent starts"),
    }
    Ok(())
}

/// `resagent upload`: queue the file, then tell the daemon (if one runs).
fn upload(
    config: Option<PathBuf>,
    file: &std::path::Path,
    name: Option<&str>,
    how: Handover,
) -> ExitCode {
    let config = match config::load(&config::config_path(config)) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let (entry, md5sum) = match outbox::enqueue(&config.outbox_dir, file, name, how) {
        Ok(q) => q,
        Err(OutboxError::InvalidName(reason)) => {
            eprintln!("resagent: {reason}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("resagent: {e}");
            return ExitCode::from(1);
        }
    };
    say!(
        "queued {} ({} bytes, md5 {md5sum}) in {}",
        entry.name,
        entry.size,
        config.outbox_dir.display()
    );
    match pidfile::signal_daemon(&config.state_dir, nix::sys::signal::Signal::SIGUSR2) {
        Ok(pid) => say!("told resagent (pid {pid}) to upload it"),
        Err(e) => say!("{e}; it is uploaded when the daemon starts"),
    }
    ExitCode::SUCCESS
}

/// What `plugin check` and `plugin run` read from the configuration, when there is one.
struct PluginSettings {
    pins: Option<BTreeMap<String, String>>,
    timeout: Duration,
    state_dir: Option<PathBuf>,
    plugin_dir: Option<PathBuf>,
    plugin_config: BTreeMap<String, serde_json::Value>,
}

/// The plugin settings of the configuration; an explicit `-c` that cannot be read is
/// exit 2, a default one that is missing means defaults (said).
fn plugin_settings(config: Option<PathBuf>) -> Result<PluginSettings, ExitCode> {
    let explicit = config.is_some();
    match config::load(&config::config_path(config)) {
        Ok(c) => Ok(PluginSettings {
            pins: c.plugin_sha256,
            timeout: c.plugin_timeout,
            state_dir: Some(c.state_dir),
            plugin_dir: Some(c.plugin_dir),
            plugin_config: c.plugin_config,
        }),
        Err(e) if explicit => Err(config_error(&e)),
        Err(e) => {
            say!("note:     no configuration read ({e}); plugin_sha256 not checked");
            Ok(PluginSettings {
                pins: None,
                timeout: Duration::from_secs(300),
                state_dir: None,
                plugin_dir: None,
                plugin_config: BTreeMap::new(),
            })
        }
    }
}

/// The plugin settings and resagent's own executable (re-run as the plugin child).
fn plugin_setup(config: Option<PathBuf>) -> Result<(PluginSettings, PathBuf), ExitCode> {
    let settings = plugin_settings(config)?;
    let exe = std::env::current_exe().map_err(|e| {
        eprintln!("resagent: cannot find my own executable: {e}");
        ExitCode::from(1)
    })?;
    Ok((settings, exe))
}

/// `resagent plugin check`: the daemon's checks and a load in a child; exit 0 when the
/// daemon would use the plugin, 1 when it would refuse it (or a pinned plugin of its
/// folder does not load).
fn plugin_check(config: Option<PathBuf>, file: &Path) -> ExitCode {
    let (settings, exe) = match plugin_setup(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let shutdown = Shutdown::new();
    let host = PluginHost {
        exe: &exe,
        timeout: settings.timeout,
        shutdown: &shutdown,
        state_dir: None,
        plugin_config: None,
    };
    say!("plugin:   {}", file.display());
    let verdict = match host.inspect(file, settings.pins.as_ref()) {
        Ok(p) => {
            let sha = &p.image.sha256;
            say!("name:     {}", p.name);
            say!("exports:  {}", p.exports().join(", "));
            if !p.claims.is_empty() {
                say!("claims:   {}", p.claims.join(" "));
            }
            say!("sha256:   {sha}");
            let file_name = file.file_name().unwrap_or_default().to_string_lossy();
            say!("pin:      \"plugin_sha256\": {{\"{file_name}\": \"{sha}\"}}");
            say!("verdict:  loads (ABI {})", plugin::ABI_VERSION);
            ExitCode::SUCCESS
        }
        Err(e) => {
            say!("verdict:  refused: {e}");
            ExitCode::from(1)
        }
    };
    // With pins, every pinned plugin of plugin_dir must load (fail closed): say which
    // would not.
    if let (Some(pins), Some(dir)) = (settings.pins.as_ref(), settings.plugin_dir.as_ref()) {
        let problems = PluginHost::pin_problems(dir, pins);
        for problem in &problems {
            say!("pinned:   not loading: {problem}");
        }
        if !problems.is_empty() {
            say!("          (the daemon fails every download -9 until these load)");
        }
    }
    verdict
}

/// `resagent plugin run`: validate, then install `file`, with `plugin`, in a child, as
/// the daemon would; exit 0 when installed or pending, 1 otherwise.
fn plugin_run(
    config: Option<PathBuf>,
    plugin_file: &Path,
    file: &Path,
    name: Option<String>,
    dest: Option<PathBuf>,
) -> ExitCode {
    let (settings, exe) = match plugin_setup(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (name, md5sum, size) = match resource_of(file, name) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let state_dir = settings
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".resagent-plugin-run"));
    let shutdown = Shutdown::new();
    let host = desk_host(&settings, &exe, &shutdown, &state_dir);
    let plugin = match desk_plugin(&host, plugin_file, &settings) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let resource = plugin::ResourceArgs {
        name: name.clone(),
        path: Some(file.to_path_buf()),
        dest: dest.unwrap_or_else(|| PathBuf::from(".")).join(&name),
        md5sum,
        size,
        installed_md5sum: None,
    };
    say!("plugin:   {} ({})", plugin.name, plugin_file.display());
    say!("resource: {name} ({size} bytes, md5 {})", resource.md5sum);
    let progress = |p: u32| say!("progress: {p}%");
    if plugin.has(Op::Validate) {
        match host.call(&plugin, plugin::Op::Validate, &resource, progress) {
            plugin::CallOutcome::Ok | plugin::CallOutcome::Declined => {
                say!("validate: accepted")
            }
            other => {
                say!("validate: {}", describe_outcome(&other));
                say!("verdict:  refused (the daemon reports fail -9)");
                return ExitCode::from(1);
            }
        }
    }
    if !plugin.has(Op::Install) {
        say!("verdict:  accepted (validate only; the next installer places it)");
        return ExitCode::SUCCESS;
    }
    let outcome = host.call(&plugin, plugin::Op::Install, &resource, progress);
    say!("install:  {}", describe_outcome(&outcome));
    if matches!(outcome, plugin::CallOutcome::Pending) {
        // What `plugin confirm` asks about after the reboot.
        let record = desk_pending(&state_dir, &name);
        let saved = record
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&record, format!("{} {size}\n", resource.md5sum)));
        if let Err(e) = saved {
            say!("note:     cannot record the pending install for plugin confirm: {e}");
        }
    }
    install_verdict(&outcome, plugin.claims(&name), &name)
}

/// The plugin host of the desk commands (`plugin run`, `plugin confirm`): the daemon's
/// child process and bounds, the configuration's `plugin_config`.
fn desk_host<'a>(
    settings: &'a PluginSettings,
    exe: &'a Path,
    shutdown: &'a Shutdown,
    state_dir: &'a Path,
) -> PluginHost<'a> {
    PluginHost {
        exe,
        timeout: settings.timeout,
        shutdown,
        state_dir: Some(state_dir),
        plugin_config: Some(&settings.plugin_config),
    }
}

/// `plugin_file` loaded with the daemon's checks (pins included); exit 1, said, if not.
fn desk_plugin(
    host: &PluginHost<'_>,
    plugin_file: &Path,
    settings: &PluginSettings,
) -> Result<plugin::Plugin, ExitCode> {
    host.inspect(plugin_file, settings.pins.as_ref())
        .map_err(|e| {
            say!("verdict:  refused: {e}");
            ExitCode::from(1)
        })
}

/// Where `plugin run` records an install left pending (MD5 and size), for `plugin
/// confirm`.
fn desk_pending(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("desk-pending").join(name)
}

/// `resagent plugin confirm`: asks `plugin` whether the image it left pending for `name`
/// (recorded by `plugin run`, or given by `--md5`) runs now — the daemon's question in
/// the next boot. Exit 0 confirmed, 1 did not take (or no confirm hook), 3 still pending.
fn plugin_confirm(
    config: Option<PathBuf>,
    plugin_file: &Path,
    name: &str,
    md5: Option<String>,
) -> ExitCode {
    let (settings, exe) = match plugin_setup(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Err(reason) = crate::protocol::validate_name(name) {
        eprintln!("resagent: {reason}");
        return ExitCode::from(2);
    }
    let state_dir = settings
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".resagent-plugin-run"));
    let record = desk_pending(&state_dir, name);
    let recorded = std::fs::read_to_string(&record).ok();
    let mut fields = recorded.as_deref().unwrap_or("").split_whitespace();
    let (md5sum, size) = match (md5, fields.next(), fields.next()) {
        (Some(m), _, _) => (m, 0),
        (None, Some(m), s) => (m.to_string(), s.and_then(|s| s.parse().ok()).unwrap_or(0)),
        (None, None, _) => {
            eprintln!(
                "resagent: no install of {name} left pending by `plugin run` here ({}); give --md5 MD5",
                record.display()
            );
            return ExitCode::from(2);
        }
    };
    let shutdown = Shutdown::new();
    let host = desk_host(&settings, &exe, &shutdown, &state_dir);
    let plugin = match desk_plugin(&host, plugin_file, &settings) {
        Ok(p) => p,
        Err(code) => return code,
    };
    say!("plugin:   {} ({})", plugin.name, plugin_file.display());
    say!("resource: {name} (md5 {md5sum})");
    if !plugin.has(Op::Confirm) {
        say!("verdict:  this plugin exports no resagent_confirm (the daemon reports fail -5 for its pending installs)");
        return ExitCode::from(1);
    }
    let resource = plugin::ResourceArgs {
        name: name.to_string(),
        path: None,
        dest: PathBuf::from(".").join(name),
        md5sum,
        size,
        installed_md5sum: None,
    };
    let outcome = host.call(&plugin, Op::Confirm, &resource, |_| {});
    say!("confirm:  {}", describe_outcome(&outcome));
    match outcome {
        plugin::CallOutcome::Ok => {
            let _ = std::fs::remove_file(&record);
            say!("verdict:  the new image runs (the daemon reports done)");
            ExitCode::SUCCESS
        }
        plugin::CallOutcome::Pending | plugin::CallOutcome::Declined => {
            say!("verdict:  still pending (the daemon asks again every 60 s and on SIGUSR1)");
            ExitCode::from(3)
        }
        _ => {
            say!("verdict:  did not take (the daemon reports fail -5 and remembers the rollback)");
            ExitCode::from(1)
        }
    }
}

/// The name `plugin run` gives the file (`--name`, else its file name), its MD5 and
/// size; the exit code when the name is unsafe (2) or the file unreadable (1).
fn resource_of(file: &Path, name: Option<String>) -> Result<(String, String, u64), ExitCode> {
    let name = name.unwrap_or_else(|| {
        file.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    if let Err(reason) = crate::protocol::validate_name(&name) {
        eprintln!("resagent: --name: {reason}");
        return Err(ExitCode::from(2));
    }
    match std::fs::File::open(file).and_then(|mut f| {
        let size = f.metadata()?.len();
        crate::digest::md5_reader(&mut f).map(|m| (m, size))
    }) {
        Ok((md5sum, size)) => Ok((name, md5sum, size)),
        Err(e) => {
            eprintln!("resagent: cannot read {}: {e}", file.display());
            Err(ExitCode::from(1))
        }
    }
}

/// What the daemon would make of an install's outcome, said, and the exit code.
fn install_verdict(outcome: &plugin::CallOutcome, claimed: bool, name: &str) -> ExitCode {
    match outcome {
        plugin::CallOutcome::Ok => {
            say!("verdict:  installed (the daemon reports done)");
            ExitCode::SUCCESS
        }
        plugin::CallOutcome::Pending => {
            say!("verdict:  pending a reboot (the daemon reports burning 100, then asks resagent_confirm in the next boot)");
            ExitCode::SUCCESS
        }
        plugin::CallOutcome::Declined if claimed => {
            say!("verdict:  not installed: {name} is claimed by this plugin, which declined (the daemon reports fail -5)");
            ExitCode::from(1)
        }
        plugin::CallOutcome::Declined => {
            say!("verdict:  declined (the daemon would ask the next plugin, then its default installer)");
            ExitCode::from(1)
        }
        _ => {
            say!("verdict:  failed (the daemon reports fail -5)");
            ExitCode::from(1)
        }
    }
}

fn describe_outcome(o: &plugin::CallOutcome) -> String {
    match o {
        plugin::CallOutcome::Ok => "ok".into(),
        plugin::CallOutcome::Declined => "declined".into(),
        plugin::CallOutcome::Pending => "pending (RESAGENT_PENDING)".into(),
        plugin::CallOutcome::Failed(f) => format!("failed: {f}"),
        plugin::CallOutcome::Interrupted => "interrupted".into(),
    }
}

/// Loads the configuration (exit 2 when it is wrong) and runs `f` (exit 1 on failure).
fn with_config(
    path: Option<PathBuf>,
    f: impl FnOnce(&config::Config) -> Result<(), String>,
) -> ExitCode {
    let config = match config::load(&config::config_path(path)) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    match f(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("resagent: {msg}");
            ExitCode::from(1)
        }
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("resagent: configuration error: {e}");
    ExitCode::from(2)
}
