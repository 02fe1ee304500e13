//! Vendor plugins (docs/plugins.md): the checks a plugin file must pass, discovery in file-name
//! order, and every call made in a child process — resagent re-executing itself with the
//! internal `__plugin` subcommand — under `plugin_timeout_s`, so a plugin that crashes,
//! aborts or hangs fails one call and never the agent. The daemon itself never loads a
//! plugin; only the child does (see [`child`]).

pub(crate) mod child;

use crate::shutdown::Shutdown;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The ABI version this resagent speaks (docs/plugins.md, "The ABI, version 1").
pub(crate) const ABI_VERSION: u32 = resagent_plugin_sdk::ABI_VERSION;
/// The internal subcommand the child runs.
pub(crate) const CHILD_COMMAND: &str = "__plugin";
/// How long a plugin's child has between SIGTERM and SIGKILL when the agent stops.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// Longest log line or reason taken from a plugin.
pub(crate) const MAX_PLUGIN_TEXT: usize = 1024;

/// Why a plugin file is refused; each names the file.
#[derive(Debug, Error)]
pub(crate) enum PluginError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A symlink, a folder, a device…
    #[error("{}: not a regular file", path.display())]
    NotRegular { path: PathBuf },
    /// Writable by group or others: anyone could swap the code the agent runs.
    #[error("{}: writable by group or others (mode {mode:o})", path.display())]
    Writable { path: PathBuf, mode: u32 },
    /// Owned by someone else than root or the agent's user.
    #[error("{}: owned by uid {uid}, neither root nor the agent's user", path.display())]
    Owner { path: PathBuf, uid: u32 },
    /// `plugin_sha256` is set and does not list this file.
    #[error("{}: not listed in plugin_sha256", path.display())]
    NotPinned { path: PathBuf },
    /// `plugin_sha256` lists another hash for this file.
    #[error("{}: SHA-256 {actual} differs from the pinned {expected}", path.display())]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// Loading it in a child failed: not a shared library, missing symbols, a crash.
    #[error("{}: {reason}", path.display())]
    Load { path: PathBuf, reason: String },
    /// It reports another ABI version.
    #[error("{}: ABI version {abi}, this resagent speaks {ABI_VERSION}", path.display())]
    Abi { path: PathBuf, abi: u32 },
}

/// What a plugin says about itself when probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Probe {
    pub(crate) abi: u32,
    pub(crate) name: String,
    pub(crate) validate: bool,
    pub(crate) install: bool,
}

/// A plugin that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plugin {
    pub(crate) path: PathBuf,
    pub(crate) name: String,
    pub(crate) validate: bool,
    pub(crate) install: bool,
}

/// The plugins of `plugin_dir`, in file-name order.
#[derive(Debug, Clone, Default)]
pub(crate) struct PluginSet {
    pub(crate) plugins: Vec<Plugin>,
}

impl PluginSet {
    pub(crate) fn validators(&self) -> impl Iterator<Item = &Plugin> {
        self.plugins.iter().filter(|p| p.validate)
    }
    pub(crate) fn installers(&self) -> impl Iterator<Item = &Plugin> {
        self.plugins.iter().filter(|p| p.install)
    }
}

/// What a plugin call is about (the child builds `struct resagent_resource` from it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResourceArgs {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) dest: PathBuf,
    pub(crate) md5sum: String,
    pub(crate) size: u64,
    pub(crate) installed_md5sum: Option<String>,
}

/// Which entry point to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Validate,
    Install,
}

impl Op {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Validate => "validate",
            Op::Install => "install",
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    /// The plugin returned 0.
    Ok,
    /// The plugin returned 1: not its resource.
    Declined,
    /// The plugin failed, crashed, hung or could not run.
    Failed(PluginFailure),
    /// The agent is stopping: the call was ended and is made again after the restart.
    Interrupted,
}

/// Why a plugin call failed, one variant per way; each names the plugin, as the
/// platform sees it in `result_msg` (`plugin NAME: REASON`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum PluginFailure {
    /// The child could not be started or talked to.
    #[error("plugin {plugin}: {reason}")]
    Spawn { plugin: String, reason: String },
    /// The plugin returned a negative value with a reason.
    #[error("plugin {plugin}: {reason}")]
    Refused { plugin: String, reason: String },
    /// The plugin returned a negative value and wrote no reason.
    #[error("plugin {plugin}: {op} failed with {code}")]
    Code {
        plugin: String,
        op: &'static str,
        code: i32,
    },
    /// The child ended without an answer: a crash, an exit, a timeout.
    #[error("plugin {plugin}: {how}")]
    NoAnswer { plugin: String, how: String },
}

/// A line of the child's protocol (child → agent), one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ChildMessage {
    Log { level: i32, message: String },
    Progress { percent: u32 },
    Probe(Probe),
    Result { code: i32, reason: String },
}

/// The file checks of docs/plugins.md, and the pin when `pins` is set. Returns the SHA-256.
pub(crate) fn check_file(
    path: &Path,
    pins: Option<&BTreeMap<String, String>>,
) -> Result<String, PluginError> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| PluginError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(PluginError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(PluginError::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    let uid = meta.uid();
    if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
        return Err(PluginError::Owner {
            path: path.to_path_buf(),
            uid,
        });
    }
    let sha = sha256_file(path)?;
    if let Some(pins) = pins {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match pins.get(&file_name) {
            None => {
                return Err(PluginError::NotPinned {
                    path: path.to_path_buf(),
                })
            }
            Some(expected) if *expected != sha => {
                return Err(PluginError::HashMismatch {
                    path: path.to_path_buf(),
                    expected: expected.clone(),
                    actual: sha,
                })
            }
            Some(_) => {}
        }
    }
    Ok(sha)
}

fn sha256_file(path: &Path) -> Result<String, PluginError> {
    std::fs::File::open(path)
        .and_then(|mut f| crate::digest::sha256_reader(&mut f))
        .map_err(|source| PluginError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Checks `path` and probes it in a child: the verdict the daemon would reach.
pub(crate) fn inspect(
    exe: &Path,
    path: &Path,
    pins: Option<&BTreeMap<String, String>>,
    timeout: Duration,
) -> Result<(Plugin, String), PluginError> {
    let sha = check_file(path, pins)?;
    let load = |reason: String| PluginError::Load {
        path: path.to_path_buf(),
        reason,
    };
    let run =
        run_child(exe, path, "probe", None, timeout, &Shutdown::new(), |_| {}).map_err(load)?;
    let probe = match (run.probe, run.result) {
        (Some(p), _) => p,
        (None, Some((_, reason))) => return Err(load(reason)),
        (None, None) => return Err(load(run.status)),
    };
    if probe.abi != ABI_VERSION {
        return Err(PluginError::Abi {
            path: path.to_path_buf(),
            abi: probe.abi,
        });
    }
    if !probe.validate && !probe.install {
        return Err(load(
            "exports neither resagent_validate nor resagent_install".into(),
        ));
    }
    Ok((
        Plugin {
            path: path.to_path_buf(),
            name: probe.name,
            validate: probe.validate,
            install: probe.install,
        },
        sha,
    ))
}

/// Every `*.so` in `dir` that passes the checks, in file-name order; each refusal is
/// logged with its reason.
pub(crate) fn scan(
    exe: &Path,
    dir: &Path,
    pins: Option<&BTreeMap<String, String>>,
    timeout: Duration,
) -> PluginSet {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "so"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            log::error!("cannot read plugin_dir {}: {e}", dir.display());
            Vec::new()
        }
    };
    files.sort();
    let mut plugins = Vec::new();
    for f in files {
        match inspect(exe, &f, pins, timeout) {
            Ok((p, _)) => {
                log::info!(
                    "plugin {} loaded from {} ({})",
                    p.name,
                    f.display(),
                    match (p.validate, p.install) {
                        (true, true) => "validate, install",
                        (true, false) => "validate",
                        _ => "install",
                    }
                );
                plugins.push(p);
            }
            Err(e) => log::error!("plugin refused: {e}"),
        }
    }
    PluginSet { plugins }
}

/// Calls `op` of `plugin` on `resource` in a child; `on_progress` gets its progress.
pub(crate) fn call(
    exe: &Path,
    plugin: &Plugin,
    op: Op,
    resource: &ResourceArgs,
    timeout: Duration,
    shutdown: &Shutdown,
    on_progress: impl FnMut(u32),
) -> CallOutcome {
    let input = serde_json::to_vec(resource).expect("resource serialises");
    let plugin_name = || plugin.name.clone();
    let run = match run_child(
        exe,
        &plugin.path,
        op.as_str(),
        Some(&input),
        timeout,
        shutdown,
        on_progress,
    ) {
        Ok(r) => r,
        Err(reason) => {
            return CallOutcome::Failed(PluginFailure::Spawn {
                plugin: plugin_name(),
                reason,
            })
        }
    };
    if run.interrupted {
        return CallOutcome::Interrupted;
    }
    match run.result {
        Some((0, _)) => CallOutcome::Ok,
        Some((1, _)) => CallOutcome::Declined,
        Some((code, reason)) if reason.is_empty() => CallOutcome::Failed(PluginFailure::Code {
            plugin: plugin_name(),
            op: op.as_str(),
            code,
        }),
        Some((_, reason)) => CallOutcome::Failed(PluginFailure::Refused {
            plugin: plugin_name(),
            reason,
        }),
        None => CallOutcome::Failed(PluginFailure::NoAnswer {
            plugin: plugin_name(),
            how: run.status,
        }),
    }
}

/// What a child run produced.
struct ChildRun {
    probe: Option<Probe>,
    result: Option<(i32, String)>,
    /// How the child ended, in words ("killed by SIGSEGV", "timed out after 5 s").
    status: String,
    interrupted: bool,
}

/// Runs `resagent __plugin MODE FILE` with `input` on stdin, relaying its log lines and
/// progress, under `timeout`; on shutdown: SIGTERM, then SIGKILL after [`TERM_GRACE`].
fn run_child(
    exe: &Path,
    plugin: &Path,
    mode: &str,
    input: Option<&[u8]>,
    timeout: Duration,
    shutdown: &Shutdown,
    mut on_progress: impl FnMut(u32),
) -> Result<ChildRun, String> {
    let mut child = Command::new(exe)
        .arg(CHILD_COMMAND)
        .arg(mode)
        .arg(plugin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that dies before reading is reported through its exit status.
        let _ = stdin.write_all(input.unwrap_or(b"{}"));
    }
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::Builder::new()
        .name("plugin-io".into())
        .spawn(move || {
            for line in BufReader::new(stdout.take(1 << 20)).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<ChildMessage>(&line) {
                    Ok(m) => {
                        if tx.send(m).is_err() {
                            break;
                        }
                    }
                    Err(_) => log::debug!("plugin child: unexpected line"),
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let plugin_name = plugin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let started = Instant::now();
    let mut run = ChildRun {
        probe: None,
        result: None,
        status: String::new(),
        interrupted: false,
    };
    let mut handle = |m: ChildMessage, run: &mut ChildRun| match m {
        ChildMessage::Log { level, message } => {
            let level = match level {
                1 => log::Level::Error,
                2 => log::Level::Warn,
                3 => log::Level::Info,
                _ => log::Level::Debug,
            };
            log::log!(level, "[{plugin_name}] {message}");
        }
        ChildMessage::Progress { percent } => on_progress(percent.min(100)),
        ChildMessage::Probe(p) => run.probe = Some(p),
        ChildMessage::Result { code, reason } => run.result = Some((code, reason)),
    };
    let status = loop {
        while let Ok(m) = rx.recv_timeout(Duration::from_millis(20)) {
            handle(m, &mut run);
        }
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if shutdown.is_set() {
            run.interrupted = true;
            break terminate(&mut child);
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            run.status = format!("timed out after {} s", timeout.as_secs());
            let _ = reader.join();
            return Ok(run);
        }
    };
    let _ = reader.join();
    while let Ok(m) = rx.try_recv() {
        handle(m, &mut run);
    }
    run.status = describe(status);
    Ok(run)
}

/// SIGTERM, then SIGKILL after [`TERM_GRACE`].
fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return st;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child
        .wait()
        .unwrap_or_else(|_| std::process::ExitStatus::from_raw(9))
}

fn describe(status: std::process::ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| format!("signal {sig}"));
        format!("crashed ({name})")
    } else {
        match status.code() {
            Some(0) => "ended without an answer".to_string(),
            Some(c) => format!("exited with status {c} without an answer"),
            None => "ended".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_checks_refuse_writable_symlinked_and_unpinned() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("10-x.so");
        std::fs::write(&f, b"not really").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sha = check_file(&f, None).unwrap();
        assert_eq!(sha.len(), 64);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(matches!(
            check_file(&f, None),
            Err(PluginError::Writable { .. })
        ));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o757)).unwrap();
        assert!(matches!(
            check_file(&f, None),
            Err(PluginError::Writable { .. })
        ));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = d.path().join("20-link.so");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(matches!(
            check_file(&link, None),
            Err(PluginError::NotRegular { .. })
        ));
        let mut pins = BTreeMap::new();
        assert!(matches!(
            check_file(&f, Some(&pins)),
            Err(PluginError::NotPinned { .. })
        ));
        pins.insert("10-x.so".to_string(), "0".repeat(64));
        assert!(matches!(
            check_file(&f, Some(&pins)),
            Err(PluginError::HashMismatch { .. })
        ));
        pins.insert("10-x.so".to_string(), sha.clone());
        assert_eq!(check_file(&f, Some(&pins)).unwrap(), sha);
    }

    #[test]
    fn child_messages_have_a_stable_shape() {
        let m = ChildMessage::Result {
            code: -1,
            reason: "bad".into(),
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"result":{"code":-1,"reason":"bad"}}"#
        );
        let p: ChildMessage = serde_json::from_str(r#"{"progress":{"percent":40}}"#).unwrap();
        assert_eq!(p, ChildMessage::Progress { percent: 40 });
    }
}
