//! Vendor plugins (docs/plugins.md): the checks a plugin and `plugin_dir` must pass,
//! pinning (failing closed), discovery in file-name order, and every probe and call made
//! in a child process — resagent re-executing itself with the internal `__plugin`
//! subcommand — under `plugin_timeout_s`, so a plugin that crashes, aborts or hangs fails
//! one call and never the agent. The daemon itself never loads a plugin: [`image`] seals
//! the checked bytes in memory, [`host`] runs the child as a plain process, and only the
//! child ([`child`]) loads them.

pub(crate) mod child;
pub(crate) mod glob;
mod host;
mod image;

use crate::shutdown::Shutdown;
use host::{run_child, ChildCall};
pub(crate) use image::Image;
use resagent_plugin_sdk::{Hook, HOOKS};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// The ABI version this resagent speaks (docs/plugins.md, "ABI version 1").
pub(crate) const ABI_VERSION: u32 = resagent_plugin_sdk::ABI_VERSION;
/// The internal subcommand the child runs.
pub(crate) const CHILD_COMMAND: &str = "__plugin";
/// The internal subcommand that runs a shell command as a plain process (see
/// [`plain_command`]).
pub(crate) const EXEC_COMMAND: &str = "__exec";

/// The variables a child keeps (docs/plugins.md, "A plain process"): a plugin call's or
/// `reboot_command`'s.
pub(crate) fn allowed_env(name: &str) -> bool {
    matches!(name, "PATH" | "LANG" | "TZ" | "RESAGENT_CONFIG") || name.starts_with("LC_")
}

/// `/bin/sh -c command` as a plain process, like a plugin's child: resagent re-runs
/// itself (`/proc/self/exe`, right even when the binary was replaced on disk) as
/// `__exec`, which restores default signals, closes every inherited descriptor (the MQTT
/// socket Paho opened without close-on-exec) and execs the shell; the environment is
/// the allow-list, and it runs in a process group of its own.
pub(crate) fn plain_command(command: &str) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg(EXEC_COMMAND)
        .arg("--")
        .arg(command)
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| k.to_str().is_some_and(allowed_env)))
        .process_group(0);
    cmd
}
/// The key of a `plugin_config` entry that bounds that plugin's calls (seconds).
pub(crate) const PLUGIN_TIMEOUT_KEY: &str = "timeout_s";
/// The bound of a probe (loading the library and reading its exports, at start and on
/// SIGHUP): a plugin whose initialisers take longer is refused rather than holding the
/// scan — and the tasks that wait for it — for `plugin_timeout_s`.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
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
    /// `plugin_sha256` lists a plugin that is not in `plugin_dir`.
    #[error("{file}: pinned in plugin_sha256 but not in plugin_dir")]
    PinnedAbsent { file: String },
    /// It reports another ABI version.
    #[error("{}: ABI version {abi}, this resagent speaks {ABI_VERSION}", path.display())]
    Abi { path: PathBuf, abi: u32 },
}

/// What a plugin says about itself when probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Probe {
    pub(crate) abi: u32,
    pub(crate) name: String,
    /// The call hooks it exports ([`HOOKS`] names).
    pub(crate) exports: Vec<String>,
    /// What `resagent_plugin_claims` returns, if exported.
    #[serde(default)]
    pub(crate) claims: Option<String>,
}

/// A plugin that passed every check, with its sealed bytes.
#[derive(Debug, Clone)]
pub(crate) struct Plugin {
    pub(crate) path: PathBuf,
    /// What `resagent_plugin_name` returns.
    pub(crate) name: String,
    pub(crate) image: Image,
    /// The call hooks it exports.
    pub(crate) hooks: Vec<Op>,
    /// The patterns of the resource names it owns.
    pub(crate) claims: Vec<String>,
}

impl Plugin {
    /// Whether this plugin owns resource `name` (`resagent_plugin_claims`).
    pub(crate) fn claims(&self, name: &str) -> bool {
        glob::any_matches(&self.claims, name)
    }

    /// Whether it exports the hook of `op`.
    pub(crate) fn has(&self, op: Op) -> bool {
        self.hooks.contains(&op)
    }

    /// What it exports, for `plugin check`: its hooks in table order, then `claims`.
    pub(crate) fn exports(&self) -> Vec<&'static str> {
        let claims = (!self.claims.is_empty()).then_some("claims");
        Op::ALL
            .into_iter()
            .filter(|op| self.has(*op))
            .map(Op::as_str)
            .chain(claims)
            .collect()
    }
}

/// The plugins of `plugin_dir`, in file-name order, and the pinned plugins that are
/// missing or refused.
#[derive(Debug, Clone, Default)]
pub(crate) struct PluginSet {
    pub(crate) plugins: Vec<Plugin>,
    /// One line per pinned plugin that did not load: while any is here, downloads fail
    /// -9 (docs/plugins.md, "Fail closed on pins").
    pub(crate) pin_problems: Vec<String>,
}

impl PluginSet {
    pub(crate) fn validators(&self) -> impl Iterator<Item = &Plugin> {
        self.plugins.iter().filter(|p| p.has(Op::Validate))
    }
    pub(crate) fn installers(&self) -> impl Iterator<Item = &Plugin> {
        self.plugins.iter().filter(|p| p.has(Op::Install))
    }
    /// The first plugin that claims resource `name`.
    pub(crate) fn owner_of(&self, name: &str) -> Option<&Plugin> {
        self.plugins.iter().find(|p| p.claims(name))
    }
    /// The plugin called `name` (as `resagent_plugin_name` returns it).
    pub(crate) fn named(&self, name: &str) -> Option<&Plugin> {
        self.plugins.iter().find(|p| p.name == name)
    }
}

/// What a plugin call is about (the child builds `struct resagent_resource` from it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResourceArgs {
    pub(crate) name: String,
    /// None for `confirm` (the file is long gone).
    pub(crate) path: Option<PathBuf>,
    pub(crate) dest: PathBuf,
    pub(crate) md5sum: String,
    pub(crate) size: u64,
    pub(crate) installed_md5sum: Option<String>,
}

/// Everything the child needs for one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CallInput {
    pub(crate) resource: ResourceArgs,
    /// The plugin's `plugin_config` entry, as JSON text.
    pub(crate) config_json: Option<String>,
    /// `state_dir/plugins/NAME/`.
    pub(crate) private_dir: Option<PathBuf>,
}

/// Which entry point to call: a name for each row of the SDK's [`HOOKS`] table, in its
/// order (everything else about a hook — its symbol, its mode, whether it may answer
/// "pending" — is read from the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Validate = 0,
    Install = 1,
    Installed = 2,
    Confirm = 3,
}

impl Op {
    /// Every hook, in table order.
    pub(crate) const ALL: [Op; HOOKS.len()] =
        [Op::Validate, Op::Install, Op::Installed, Op::Confirm];

    /// Its row of the table.
    pub(crate) fn hook(self) -> &'static Hook {
        &HOOKS[self as usize]
    }

    pub(crate) fn as_str(self) -> &'static str {
        self.hook().name
    }

    pub(crate) fn from_mode(mode: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == mode)
    }
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    /// The plugin returned 0.
    Ok,
    /// The plugin returned 1: not its resource (or, for `installed`, no opinion).
    Declined,
    /// The plugin returned 2 (`RESAGENT_PENDING`): effective after a reboot.
    Pending,
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

/// What calls need from the agent: where to find resagent, the limits, and what each
/// plugin is given (its `plugin_config` entry and a private folder in `state_dir`).
pub(crate) struct PluginHost<'a> {
    /// resagent's own executable, re-run as each call's child.
    pub(crate) exe: &'a Path,
    pub(crate) timeout: Duration,
    pub(crate) shutdown: &'a Shutdown,
    /// `state_dir`, for `state_dir/plugins/NAME/` (None: no private folders).
    pub(crate) state_dir: Option<&'a Path>,
    pub(crate) plugin_config: Option<&'a BTreeMap<String, Value>>,
}

impl PluginHost<'_> {
    /// Checks, seals and probes the plugin at `path`: the verdict the daemon would reach.
    pub(crate) fn inspect(
        &self,
        path: &Path,
        pins: Option<&BTreeMap<String, String>>,
    ) -> Result<Plugin, PluginError> {
        let image = image::load(path)?;
        check_pin(path, &image.sha256, pins)?;
        let load = |reason: String| PluginError::Load {
            path: path.to_path_buf(),
            reason,
        };
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let call = ChildCall {
            exe: self.exe,
            image: &image,
            label: &label,
            mode: "probe",
            input: b"",
            timeout: self.timeout.min(PROBE_TIMEOUT),
            shutdown: self.shutdown,
        };
        let run = run_child(&call, |_| {}).map_err(load)?;
        if run.interrupted {
            return Err(load("probe interrupted: the agent is stopping".into()));
        }
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
        let hooks: Vec<Op> = Op::ALL
            .into_iter()
            .filter(|op| probe.exports.iter().any(|e| e == op.as_str()))
            .collect();
        if !hooks.contains(&Op::Validate) && !hooks.contains(&Op::Install) {
            return Err(load(
                "exports neither resagent_validate nor resagent_install".into(),
            ));
        }
        Ok(Plugin {
            path: path.to_path_buf(),
            name: probe.name,
            image,
            hooks,
            claims: probe
                .claims
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        })
    }

    /// Every `*.so` in `dir` that passes the checks, in file-name order; each refusal is
    /// logged with its reason, and a pinned plugin that did not load is recorded.
    pub(crate) fn scan(&self, dir: &Path, pins: Option<&BTreeMap<String, String>>) -> PluginSet {
        let mut set = PluginSet::default();
        let mut refused: BTreeMap<String, String> = BTreeMap::new();
        let files = match image::check_dir(dir).and_then(|()| list(dir)) {
            Ok(files) => files,
            Err(e) => {
                log::error!("plugin_dir refused: {e}");
                for file in pins.into_iter().flat_map(|p| p.keys()) {
                    refused.insert(file.clone(), format!("{file}: not loaded: {e}"));
                }
                Vec::new()
            }
        };
        for f in files {
            if self.shutdown.is_set() {
                break;
            }
            let file = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match self.inspect(&f, pins) {
                Ok(p) => {
                    log::info!(
                        "plugin {} loaded from {} ({})",
                        p.name,
                        f.display(),
                        p.exports().join(", ")
                    );
                    set.plugins.push(p);
                }
                Err(e) => {
                    log::error!("plugin refused: {e}");
                    refused.insert(file, e.to_string());
                }
            }
        }
        for file in pins.into_iter().flat_map(|p| p.keys()) {
            let loaded = set.plugins.iter().any(|p| {
                p.path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy() == *file)
            });
            if loaded {
                continue;
            }
            let problem = refused
                .remove(file)
                .unwrap_or_else(|| PluginError::PinnedAbsent { file: file.clone() }.to_string());
            log::error!("pinned plugin not loaded, downloads fail until it is: {problem}");
            set.pin_problems.push(problem);
        }
        set
    }

    /// The pinned plugins of `dir` that the file checks or their pin refuse, or that are
    /// absent — without loading any (`plugin check`'s view of failing closed).
    pub(crate) fn pin_problems(dir: &Path, pins: &BTreeMap<String, String>) -> Vec<String> {
        if let Err(e) = image::check_dir(dir) {
            return pins
                .keys()
                .map(|f| format!("{f}: not loaded: {e}"))
                .collect();
        }
        pins.keys()
            .filter_map(|file| {
                let path = dir.join(file);
                if std::fs::symlink_metadata(&path).is_err() {
                    return Some(PluginError::PinnedAbsent { file: file.clone() }.to_string());
                }
                image::load(&path)
                    .and_then(|image| check_pin(&path, &image.sha256, Some(pins)))
                    .err()
                    .map(|e| e.to_string())
            })
            .collect()
    }

    /// Calls `op` of `plugin` about `resource` in a child; `on_progress` gets its progress.
    pub(crate) fn call(
        &self,
        plugin: &Plugin,
        op: Op,
        resource: &ResourceArgs,
        on_progress: impl FnMut(u32),
    ) -> CallOutcome {
        let plugin_name = || plugin.name.clone();
        let input = CallInput {
            resource: resource.clone(),
            config_json: self
                .plugin_config
                .and_then(|c| c.get(&plugin.name))
                .map(Value::to_string),
            private_dir: self.private_dir(&plugin.name),
        };
        let input = serde_json::to_vec(&input).expect("call input serialises");
        let call = ChildCall {
            exe: self.exe,
            image: &plugin.image,
            label: &plugin.name,
            mode: op.as_str(),
            input: &input,
            timeout: self.timeout_of(&plugin.name),
            shutdown: self.shutdown,
        };
        let run = match run_child(&call, on_progress) {
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
            Some((2, _)) if op.hook().may_pend => CallOutcome::Pending,
            Some((code, reason)) if code >= 0 => CallOutcome::Failed(PluginFailure::Refused {
                plugin: plugin_name(),
                reason: format!("{} returned {code}{}", op.as_str(), with_reason(&reason)),
            }),
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

    /// The bound of one call of plugin `name`: its `plugin_config` entry's `timeout_s`
    /// when set (an update framework's install, followed to its end, may take longer
    /// than other plugins may), else `plugin_timeout_s`.
    fn timeout_of(&self, name: &str) -> Duration {
        self.plugin_config
            .and_then(|c| c.get(name))
            .and_then(|v| v.get(PLUGIN_TIMEOUT_KEY))
            .and_then(Value::as_u64)
            .map_or(self.timeout, Duration::from_secs)
    }

    /// `state_dir/plugins/NAME/`, created 0700; None when the name is not a safe folder
    /// name or the folder cannot be made (logged).
    fn private_dir(&self, name: &str) -> Option<PathBuf> {
        let state_dir = self.state_dir?;
        if crate::protocol::validate_name(name).is_err() || name.starts_with('.') {
            log::warn!("plugin name `{name}` is no folder name: no private folder");
            return None;
        }
        let dir = state_dir.join("plugins").join(name);
        match crate::fsutil::ensure_dir(&dir, 0o700) {
            Ok(()) => Some(dir),
            Err(e) => {
                log::error!("plugin {name}: {e}");
                None
            }
        }
    }
}

fn with_reason(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

/// The `*.so` files of `dir`, sorted by name.
fn list(dir: &Path) -> Result<Vec<PathBuf>, PluginError> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "so"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(PluginError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    files.sort();
    Ok(files)
}

/// The pin of `plugin_sha256` for `path`, when pins are configured.
fn check_pin(
    path: &Path,
    sha: &str,
    pins: Option<&BTreeMap<String, String>>,
) -> Result<(), PluginError> {
    let Some(pins) = pins else { return Ok(()) };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match pins.get(&file_name) {
        None => Err(PluginError::NotPinned {
            path: path.to_path_buf(),
        }),
        Some(expected) if expected != sha => Err(PluginError::HashMismatch {
            path: path.to_path_buf(),
            expected: expected.clone(),
            actual: sha.to_string(),
        }),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_refuse_unlisted_and_mismatched() {
        let p = Path::new("/x/10-x.so");
        assert!(check_pin(p, "aa", None).is_ok());
        let mut pins = BTreeMap::new();
        assert!(matches!(
            check_pin(p, "aa", Some(&pins)),
            Err(PluginError::NotPinned { .. })
        ));
        pins.insert("10-x.so".to_string(), "bb".to_string());
        assert!(matches!(
            check_pin(p, "aa", Some(&pins)),
            Err(PluginError::HashMismatch { .. })
        ));
        assert!(check_pin(p, "bb", Some(&pins)).is_ok());
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
