//! The `resagent` command: parses the command line (agent.md, "Command line") and calls
//! the library. Exit status: 0 success, 1 runtime failure, 2 usage or configuration error.

use resagent::config::{self, ConfigError};
use resagent::outbox::{self, Handover, OutboxError};
use resagent::{daemon, pidfile, status};
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
    while let Some(arg) = parser.next()? {
        match arg {
            Short('c') | Long("config") => config = Some(PathBuf::from(parser.value()?)),
            Long("json") if sub == "status" => json = true,
            Long("name") if sub == "upload" => name = Some(parser.value()?.string()?),
            Long("move") if sub == "upload" => how = Handover::Move,
            Value(v) if sub == "upload" && file.is_none() => file = Some(PathBuf::from(v)),
            Long("help") | Short('h') => return Ok(Command::Help),
            other => return Err(other.unexpected().into()),
        }
    }
    match sub.as_str() {
        "run" => Ok(Command::Run { config }),
        "check" => Ok(Command::Check { config }),
        "status" => Ok(Command::Status { config, json }),
        "upload" => Ok(Command::Upload {
            config,
            file: file.ok_or_else(|| Usage("upload needs a FILE".into()))?,
            name,
            how,
        }),
        other => Err(Usage(format!("unknown command `{other}`"))),
    }
}

fn main() -> ExitCode {
    resagent::logging::init();
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
