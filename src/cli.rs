//! The command line (docs/agent.md, "Command line"): parses the arguments and runs one
//! command. Exit status: 0 success, 1 runtime failure, 2 usage or configuration error.

use crate::config::{self, ConfigError};
use crate::outbox::{self, Handover, OutboxError};
use crate::{daemon, pidfile, plugin, status};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
resagent — resource agent for Tencent Cloud IoT Hub

Usage:
  resagent run    [-c CONFIG]            run the daemon in the foreground
  resagent upload [-c CONFIG] FILE [--name NAME] [--move]
                                         queue FILE for upload (a copy; --move hands it over)
  resagent check  [-c CONFIG]            ask the running daemon for a download task now
  resagent status [-c CONFIG] [--json]   show connection, transfers and installed resources
  resagent plugin check PLUGIN.so [-c CONFIG]
                                         load a plugin as the daemon would; print its verdict
                                         and the SHA-256 to pin
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
    /// Internal: one plugin call in a child process (see `plugin::child`).
    PluginChild {
        mode: String,
        file: PathBuf,
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
    let mut config = None;
    let mut json = false;
    let mut file = None;
    let mut name = None;
    let mut how = Handover::Copy;
    let mut positional: Vec<String> = Vec::new();
    let is_plugin = sub == "plugin" || sub == plugin::CHILD_COMMAND;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('c') | Long("config") => config = Some(PathBuf::from(parser.value()?)),
            Long("json") if sub == "status" => json = true,
            Long("name") if sub == "upload" => name = Some(parser.value()?.string()?),
            Long("move") if sub == "upload" => how = Handover::Move,
            Value(v) if sub == "upload" && file.is_none() => file = Some(PathBuf::from(v)),
            Value(v) if is_plugin && positional.is_empty() => positional.push(v.string()?),
            Value(v) if is_plugin && file.is_none() => file = Some(PathBuf::from(v)),
            Long("help") | Short('h') => return Ok(Command::Help),
            other => return Err(other.unexpected().into()),
        }
    }
    match sub.as_str() {
        "run" => Ok(Command::Run { config }),
        "check" => Ok(Command::Check { config }),
        "status" => Ok(Command::Status { config, json }),
        "plugin" if positional.first().map(String::as_str) == Some("check") => {
            Ok(Command::PluginCheck {
                config,
                file: file.ok_or_else(|| Usage("plugin check needs a PLUGIN.so".into()))?,
            })
        }
        "plugin" => Err(Usage("usage: resagent plugin check PLUGIN.so".into())),
        c if c == plugin::CHILD_COMMAND => match (positional.pop(), file) {
            (Some(mode), Some(file)) => Ok(Command::PluginChild { mode, file }),
            _ => Err(Usage("internal command".into())),
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
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("resagent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run { config } => match daemon::run(&config::config_path(config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(daemon::DaemonError::Config(e)) => config_error(&e),
            Err(e) => {
                log::error!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Check { config } => with_config(config, |c| {
            let pid = pidfile::signal_daemon(&c.pid_file, nix::sys::signal::Signal::SIGUSR1)
                .map_err(|e| e.to_string())?;
            println!("asked resagent (pid {pid}) to check for a download task");
            Ok(())
        }),
        Command::Upload {
            config,
            file,
            name,
            how,
        } => upload(config, &file, name.as_deref(), how),
        Command::PluginCheck { config, file } => plugin_check(config, &file),
        Command::PluginChild { mode, file } => plugin::child::main(&mode, &file),
        Command::Status { config, json } => with_config(config, |c| {
            let view = status::gather(c).map_err(|e| e.to_string())?;
            if json {
                println!("{:#}", status::render_json(&view));
            } else {
                print!("{}", status::render_text(&view));
            }
            Ok(())
        }),
    }
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
    println!(
        "queued {} ({} bytes, md5 {md5sum}) in {}",
        entry.name,
        entry.size,
        config.outbox_dir.display()
    );
    match pidfile::signal_daemon(&config.pid_file, nix::sys::signal::Signal::SIGUSR2) {
        Ok(pid) => println!("told resagent (pid {pid}) to upload it"),
        Err(e) => println!("{e}; it is uploaded when the daemon starts"),
    }
    ExitCode::SUCCESS
}

/// `resagent plugin check`: the daemon's checks and a load in a child; exit 0 when the
/// daemon would use the plugin, 1 when it would refuse it.
fn plugin_check(config: Option<PathBuf>, file: &std::path::Path) -> ExitCode {
    let explicit = config.is_some();
    let (pins, timeout) = match config::load(&config::config_path(config)) {
        Ok(c) => (c.plugin_sha256, c.plugin_timeout),
        Err(e) if explicit => return config_error(&e),
        Err(e) => {
            println!("note:     no configuration read ({e}); plugin_sha256 not checked");
            (None, std::time::Duration::from_secs(300))
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("resagent: cannot find my own executable: {e}");
            return ExitCode::from(1);
        }
    };
    println!("plugin:   {}", file.display());
    match plugin::inspect(&exe, file, pins.as_ref(), timeout) {
        Ok((p, sha)) => {
            let exports: Vec<&str> = [("validate", p.validate), ("install", p.install)]
                .iter()
                .filter(|(_, has)| *has)
                .map(|(n, _)| *n)
                .collect();
            println!("name:     {}", p.name);
            println!("exports:  {}", exports.join(", "));
            println!("sha256:   {sha}");
            let file_name = file.file_name().unwrap_or_default().to_string_lossy();
            println!("pin:      \"plugin_sha256\": {{\"{file_name}\": \"{sha}\"}}");
            println!("verdict:  loads (ABI {})", plugin::ABI_VERSION);
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("verdict:  refused: {e}");
            ExitCode::from(1)
        }
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
