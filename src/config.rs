//! Configuration: the JSON file of docs/agent.md, the device credentials in Tencent's
//! `device_info.json` format (or inline), defaults for everything but the identity, and a
//! refusal naming the key for anything unknown or out of range.

use crate::protocol::{DeviceId, TaskLimits};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Where the configuration is looked for when neither `-c` nor `RESAGENT_CONFIG` is given.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "/etc/resagent/config.json";
/// The environment variable that overrides [`DEFAULT_CONFIG_PATH`].
pub(crate) const CONFIG_ENV: &str = "RESAGENT_CONFIG";

/// Keys of the configuration file; anything else is refused (a typo must not silently
/// fall back to a default).
const KNOWN_KEYS: &[&str] = &[
    "device_info",
    "broker",
    "ca_file",
    "resource_dir",
    "state_dir",
    "outbox_dir",
    "plugin_dir",
    "pid_file",
    "poll_interval_s",
    "progress_interval_s",
    "transfer_timeout_s",
    "plugin_timeout_s",
    "plugin_config",
    "poll_jitter_s",
    "reboot_command",
    "max_resource_bytes",
    "max_bytes_per_s",
    "keepalive_s",
    "credential_lifetime_s",
    "sign_method",
    "allow_http",
    "plugin_sha256",
    "plugin_only",
    // The device identity may stand inline instead of in `device_info`.
    "auth_mode",
    "productId",
    "deviceName",
    "key_deviceinfo",
    "cert_deviceinfo",
];

/// Errors reading the configuration; each names the file and, where one is at fault, the key.
#[derive(Debug, Error)]
pub(crate) enum ConfigError {
    /// The configuration or credentials file is missing or unreadable.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a JSON object.
    #[error("{} is not valid JSON: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    /// A key that resagent does not know (often a typo).
    #[error("{}: unknown key `{key}`", path.display())]
    UnknownKey { path: PathBuf, key: String },
    /// A key whose value has the wrong type or is out of range.
    #[error("{}: key `{key}`: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// A key that has no default is absent.
    #[error("{}: key `{key}` is required: {why}", path.display())]
    Missing {
        path: PathBuf,
        key: String,
        why: String,
    },
}

/// A secret string (the device secret, a password) that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(s: String) -> Self {
        Secret(s)
    }
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How the device proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    /// `auth_mode: KEY`: the MQTT password is an HMAC keyed with the device secret.
    Key { device_secret: Secret },
    /// `auth_mode: CERT`: a TLS client certificate authenticates.
    Cert {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

/// HMAC used for the MQTT password (docs/protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignMethod {
    HmacSha256,
    HmacSha1,
}

impl SignMethod {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SignMethod::HmacSha256 => "hmacsha256",
            SignMethod::HmacSha1 => "hmacsha1",
        }
    }
}

/// The broker to connect to, normalised to Paho's `tcp://` or `ssl://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Broker {
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Broker {
    pub(crate) fn uri(&self) -> String {
        let scheme = if self.tls { "ssl" } else { "tcp" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// The complete, checked configuration of the agent.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The file this was read from (for messages and SIGHUP).
    pub(crate) path: PathBuf,
    pub(crate) device: DeviceId,
    pub(crate) auth: Auth,
    /// The file holding the credentials (the config itself when they stand inline).
    pub(crate) credentials_path: PathBuf,
    pub(crate) broker: Broker,
    pub(crate) ca_file: PathBuf,
    pub(crate) resource_dir: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) outbox_dir: PathBuf,
    pub(crate) plugin_dir: PathBuf,
    pub(crate) pid_file: PathBuf,
    pub(crate) poll_interval: Duration,
    /// The first task poll after start waits a random time within this.
    pub(crate) poll_jitter: Duration,
    pub(crate) progress_interval: Duration,
    pub(crate) transfer_timeout: Duration,
    pub(crate) plugin_timeout: Duration,
    pub(crate) max_resource_bytes: u64,
    pub(crate) max_bytes_per_s: u64,
    pub(crate) keepalive: Duration,
    pub(crate) credential_lifetime: Duration,
    pub(crate) sign_method: SignMethod,
    pub(crate) allow_http: bool,
    pub(crate) plugin_sha256: Option<BTreeMap<String, String>>,
    /// Per plugin name, a JSON object handed to the plugin (docs/plugins.md).
    pub(crate) plugin_config: BTreeMap<String, Value>,
    /// Run (through `/bin/sh -c`) once a pending install was recorded and reported.
    pub(crate) reboot_command: Option<String>,
    /// Shell patterns of names only a plugin may install (never the default installer).
    pub(crate) plugin_only: Vec<String>,
}

impl Config {
    pub(crate) fn task_limits(&self) -> TaskLimits {
        TaskLimits {
            max_resource_bytes: self.max_resource_bytes,
            allow_http: self.allow_http,
        }
    }

    /// The journal: the task in flight, the waiting tasks, the installed resources.
    pub(crate) fn journal_path(&self) -> PathBuf {
        self.state_dir.join("journal.json")
    }
}

/// The configuration path: `-c` if given, else `RESAGENT_CONFIG`, else the default.
pub(crate) fn config_path(cli: Option<PathBuf>) -> PathBuf {
    cli.or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

/// Reads a JSON object from `path`.
fn read_object(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let text = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let value: Value = serde_json::from_slice(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ConfigError::Parse {
            path: path.to_path_buf(),
            reason: "the top level is not a JSON object".into(),
        }),
    }
}

/// Typed access to the keys of one JSON object, with errors naming file and key.
struct Keys<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl<'a> Keys<'a> {
    fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(Value::String(_)) => Err(self.invalid(key, "must not be empty")),
            Some(v) => Err(self.invalid(key, format!("expected a string, found {}", kind(v)))),
        }
    }

    fn path_or(&self, key: &str, default: &str) -> Result<PathBuf, ConfigError> {
        Ok(PathBuf::from(
            self.string(key)?.unwrap_or_else(|| default.to_string()),
        ))
    }

    fn u64_in(&self, key: &str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        let v = match self.map.get(key) {
            None | Some(Value::Null) => return Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| {
                self.invalid(key, format!("expected a whole number, found {}", kind(v)))
            })?,
        };
        if v < min || v > max {
            return Err(self.invalid(key, format!("{v} is outside {min}..={max}")));
        }
        Ok(v)
    }

    fn secs_in(
        &self,
        key: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<Duration, ConfigError> {
        self.u64_in(key, default, min, max).map(Duration::from_secs)
    }

    /// A list of shell patterns (`plugin_only`): strings, not empty, no white space.
    fn patterns(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        let items = match self.map.get(key) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(v) => {
                return Err(self.invalid(
                    key,
                    format!("expected an array of shell patterns, found {}", kind(v)),
                ))
            }
        };
        items
            .iter()
            .map(|v| match v {
                Value::String(s) if !s.is_empty() && !s.contains(char::is_whitespace) => {
                    Ok(s.clone())
                }
                Value::String(s) => {
                    Err(self.invalid(key, format!("pattern `{s}` is empty or holds white space")))
                }
                v => Err(self.invalid(
                    key,
                    format!("expected a shell pattern (a string), found {}", kind(v)),
                )),
            })
            .collect()
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.invalid(key, format!("expected true or false, found {}", kind(v)))),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() && n.as_i64().unwrap_or(0) < 0 => "a negative number",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Loads and checks the configuration at `path`, with the credentials it points to.
pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
    let map = read_object(path)?;
    if let Some(key) = map.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(ConfigError::UnknownKey {
            path: path.to_path_buf(),
            key: key.clone(),
        });
    }
    let keys = Keys { path, map: &map };

    let (credentials_path, identity) = if map.contains_key("productId") {
        (path.to_path_buf(), read_identity(&keys, path.parent())?)
    } else {
        let info = keys.path_or("device_info", "/etc/resagent/device_info.json")?;
        let info_map = read_object(&info)?;
        let info_keys = Keys {
            path: &info,
            map: &info_map,
        };
        let identity = read_identity(&info_keys, info.parent())?;
        (info, identity)
    };
    let (device, auth) = identity;

    let broker = match keys.string("broker")? {
        Some(uri) => parse_broker(&uri).map_err(|r| keys.invalid("broker", r))?,
        None => default_broker(&device, &auth),
    };
    let sign_method = match keys.string("sign_method")?.as_deref() {
        None | Some("hmacsha256") => SignMethod::HmacSha256,
        Some("hmacsha1") => SignMethod::HmacSha1,
        Some(other) => {
            return Err(keys.invalid(
                "sign_method",
                format!("`{other}` is not hmacsha256 or hmacsha1"),
            ))
        }
    };
    let plugin_sha256 = match map.get("plugin_sha256") {
        None | Some(Value::Null) => None,
        Some(Value::Object(pins)) => Some(parse_pins(&keys, pins)?),
        Some(v) => {
            return Err(keys.invalid(
                "plugin_sha256",
                format!(
                    "expected an object mapping file names to SHA-256, found {}",
                    kind(v)
                ),
            ))
        }
    };

    let plugin_config = match map.get("plugin_config") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(entries)) => {
            let mut out = BTreeMap::new();
            for (name, value) in entries {
                if !value.is_object() {
                    return Err(keys.invalid(
                        &format!("plugin_config.{name}"),
                        format!("expected an object, found {}", kind(value)),
                    ));
                }
                let timeout_key = crate::plugin::PLUGIN_TIMEOUT_KEY;
                if let Some(t) = value.get(timeout_key) {
                    if !t.as_u64().is_some_and(|t| (1..=86_400).contains(&t)) {
                        return Err(keys.invalid(
                            &format!("plugin_config.{name}.{timeout_key}"),
                            format!("expected seconds in 1..=86400, found {t}"),
                        ));
                    }
                }
                out.insert(name.clone(), value.clone());
            }
            out
        }
        Some(v) => {
            return Err(keys.invalid(
                "plugin_config",
                format!(
                    "expected an object mapping plugin names to objects, found {}",
                    kind(v)
                ),
            ))
        }
    };

    check_folders(
        &keys,
        &[
            (
                "resource_dir",
                &keys.path_or("resource_dir", DEFAULT_RESOURCE_DIR)?,
            ),
            (
                "outbox_dir",
                &keys.path_or("outbox_dir", DEFAULT_OUTBOX_DIR)?,
            ),
            (
                "plugin_dir",
                &keys.path_or("plugin_dir", DEFAULT_PLUGIN_DIR)?,
            ),
            ("state_dir", &keys.path_or("state_dir", DEFAULT_STATE_DIR)?),
        ],
    )?;

    const DAY: u64 = 86_400;
    Ok(Config {
        path: path.to_path_buf(),
        device,
        auth,
        credentials_path,
        broker,
        ca_file: keys.path_or("ca_file", "/etc/ssl/certs/ca-certificates.crt")?,
        resource_dir: keys.path_or("resource_dir", DEFAULT_RESOURCE_DIR)?,
        state_dir: keys.path_or("state_dir", DEFAULT_STATE_DIR)?,
        outbox_dir: keys.path_or("outbox_dir", DEFAULT_OUTBOX_DIR)?,
        plugin_dir: keys.path_or("plugin_dir", DEFAULT_PLUGIN_DIR)?,
        pid_file: keys.path_or("pid_file", "/run/resagent.pid")?,
        poll_interval: keys.secs_in("poll_interval_s", 3600, 1, 30 * DAY)?,
        poll_jitter: keys.secs_in("poll_jitter_s", 30, 0, 3600)?,
        progress_interval: keys.secs_in("progress_interval_s", 1, 0, 3600)?,
        transfer_timeout: keys.secs_in("transfer_timeout_s", 60, 1, DAY)?,
        plugin_timeout: keys.secs_in("plugin_timeout_s", 300, 1, DAY)?,
        max_resource_bytes: keys.u64_in("max_resource_bytes", 16 << 30, 0, u64::MAX)?,
        max_bytes_per_s: keys.u64_in("max_bytes_per_s", 0, 0, u64::MAX)?,
        keepalive: keys.secs_in("keepalive_s", 240, 0, 900)?,
        credential_lifetime: keys.secs_in("credential_lifetime_s", 3600, 60, 365 * DAY)?,
        sign_method,
        allow_http: keys.bool_or("allow_http", false)?,
        plugin_sha256,
        plugin_config,
        reboot_command: keys.string("reboot_command")?,
        plugin_only: keys.patterns("plugin_only")?,
    })
}

/// The identity from Tencent's device_info keys; relative certificate paths are taken
/// from the folder of the file that names them.
fn read_identity(keys: &Keys, base: Option<&Path>) -> Result<(DeviceId, Auth), ConfigError> {
    let required = |key: &str| -> Result<String, ConfigError> {
        keys.string(key)?.ok_or_else(|| ConfigError::Missing {
            path: keys.path.to_path_buf(),
            key: key.to_string(),
            why: "the device identity has no default".into(),
        })
    };
    let product_id = required("productId")?;
    let device_name = required("deviceName")?;
    for (key, v) in [("productId", &product_id), ("deviceName", &device_name)] {
        if v.contains(['/', '+', '#', '\0']) {
            return Err(keys.invalid(key, "must not contain `/`, `+`, `#` or NUL"));
        }
    }
    let mode = keys.string("auth_mode")?.unwrap_or_else(|| "KEY".into());
    let nested = |outer: &str, inner: &str| -> Result<String, ConfigError> {
        let key = format!("{outer}.{inner}");
        match keys.map.get(outer).and_then(|o| o.get(inner)) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => Err(keys.invalid(&key, "expected a non-empty string")),
            None => Err(ConfigError::Missing {
                path: keys.path.to_path_buf(),
                key,
                why: format!("auth_mode is {mode}"),
            }),
        }
    };
    let resolve = |p: String| match base {
        Some(dir) if Path::new(&p).is_relative() => dir.join(p),
        _ => PathBuf::from(p),
    };
    let auth = match mode.to_ascii_uppercase().as_str() {
        "KEY" => {
            let secret = nested("key_deviceinfo", "deviceSecret")?;
            use base64::Engine;
            if base64::engine::general_purpose::STANDARD
                .decode(secret.as_bytes())
                .is_err()
            {
                return Err(keys.invalid(
                    "key_deviceinfo.deviceSecret",
                    "is not valid base64 (the platform issues it base64-encoded)",
                ));
            }
            Auth::Key {
                device_secret: Secret::new(secret),
            }
        }
        "CERT" => Auth::Cert {
            cert_file: resolve(nested("cert_deviceinfo", "devCertFile")?),
            key_file: resolve(nested("cert_deviceinfo", "devPrivateKeyFile")?),
        },
        other => return Err(keys.invalid("auth_mode", format!("`{other}` is not KEY or CERT"))),
    };
    Ok((
        DeviceId {
            product_id,
            device_name,
        },
        auth,
    ))
}

const DEFAULT_RESOURCE_DIR: &str = "/var/lib/resagent/resources";
const DEFAULT_STATE_DIR: &str = "/var/lib/resagent";
const DEFAULT_OUTBOX_DIR: &str = "/var/spool/resagent/outbox";
const DEFAULT_PLUGIN_DIR: &str = "/usr/lib/resagent/plugins";

/// `path` with `.` and `..` resolved lexically (the folders may not exist yet).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Where `path` really is: the longest part of it that exists, with its symbolic links
/// resolved, then the rest as written (a folder not created yet). Folders are compared
/// so: `plugin_dir` as a symlink to `resource_dir` is the same folder, whatever the text.
fn resolved(path: &Path) -> PathBuf {
    let path = lexical(path);
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return path,
        }
    }
}

/// Folders that would let one feed another are refused (docs/agent.md, "What never
/// wedges"): no two may be the same, and nothing may live inside `resource_dir` or
/// `outbox_dir`, whose entries are named by the network and by users (a task `x.so`
/// landing in `plugin_dir`, a resource unpacked into the outbox). `resource_dir` inside
/// `state_dir` (the default layout) is fine: the agent names everything it writes there.
fn check_folders(keys: &Keys, dirs: &[(&str, &PathBuf)]) -> Result<(), ConfigError> {
    for (i, (a, pa)) in dirs.iter().enumerate() {
        for (b, pb) in dirs.iter().skip(i + 1) {
            let (la, lb) = (resolved(pa), resolved(pb));
            let receives = |name: &str| matches!(name, "resource_dir" | "outbox_dir");
            let problem = if la == lb {
                Some(format!("{a} and {b} are the same folder {}", la.display()))
            } else if receives(a) && lb.starts_with(&la) {
                Some(format!(
                    "{b} {} lies inside {a} {}",
                    lb.display(),
                    la.display()
                ))
            } else if receives(b) && la.starts_with(&lb) {
                Some(format!(
                    "{a} {} lies inside {b} {}",
                    la.display(),
                    lb.display()
                ))
            } else {
                None
            };
            if let Some(p) = problem {
                return Err(keys.invalid(b, format!("{p}: one would feed the other")));
            }
        }
    }
    Ok(())
}

fn parse_pins(
    keys: &Keys,
    pins: &Map<String, Value>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for (file, hash) in pins {
        let key = format!("plugin_sha256.{file}");
        let hash = hash
            .as_str()
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| keys.invalid(&key, "expected 64 hex characters (a SHA-256)"))?;
        out.insert(file.clone(), hash.to_ascii_lowercase());
    }
    Ok(out)
}

/// Parses `tcp://`, `ssl://`, `mqtt://` or `mqtts://` URLs.
pub(crate) fn parse_broker(uri: &str) -> Result<Broker, String> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| format!("`{uri}` is not a URL like ssl://host:8883"))?;
    let tls = match scheme {
        "tcp" | "mqtt" => false,
        "ssl" | "mqtts" => true,
        other => return Err(format!("scheme `{other}` is not tcp, ssl, mqtt or mqtts")),
    };
    let rest = rest.trim_end_matches('/');
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{uri}`: unclosed `[`"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("`{uri}`: bad port"))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("`{uri}`: unexpected `{after}`")),
        };
        (host.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| format!("`{uri}`: bad port `{p}`"))?,
            ),
            None => (rest.to_string(), default_port),
        }
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!("`{uri}` has no valid host"));
    }
    Ok(Broker { tls, host, port })
}

/// The platform's broker for this product (docs/protocol.md): 1883 for key auth, TLS on 8883
/// for certificate auth.
fn default_broker(device: &DeviceId, auth: &Auth) -> Broker {
    let tls = matches!(auth, Auth::Cert { .. });
    Broker {
        tls,
        host: format!("{}.iotcloud.tencentdevices.com", device.product_id),
        port: if tls { 8883 } else { 1883 },
    }
}

/// The file holding the device's secret (the credentials in KEY mode, the private key in
/// CERT mode) when others than its owner can read it; the caller warns about it.
pub(crate) fn world_readable_secret(config: &Config) -> Option<PathBuf> {
    let secret_file = match &config.auth {
        Auth::Key { .. } => &config.credentials_path,
        Auth::Cert { key_file, .. } => key_file,
    };
    let readable_by_others = std::fs::metadata(secret_file)
        .map(|m| m.permissions().mode() & 0o004 != 0)
        .unwrap_or(false);
    readable_by_others.then(|| secret_file.clone())
}

/// The configuration in force, shared by the threads that act on it: SIGHUP replaces
/// it here once, and each thread reads it at its next step. Shared rather than queued,
/// so a thread busy with a long transfer (its queue full of answers) cannot miss it.
pub(crate) struct Live(std::sync::RwLock<std::sync::Arc<Config>>);

impl Live {
    pub(crate) fn new(config: std::sync::Arc<Config>) -> Self {
        Live(std::sync::RwLock::new(config))
    }

    /// The configuration now in force.
    pub(crate) fn get(&self) -> std::sync::Arc<Config> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set(&self, config: std::sync::Arc<Config>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = config;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(dir: &Path, name: &str, v: Value) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, v.to_string()).unwrap();
        p
    }

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_minimal_config_is_just_the_identity() {
        let d = tmp();
        let p = write(
            d.path(),
            "c.json",
            serde_json::json!({"productId":"P1","deviceName":"d1","key_deviceinfo":{"deviceSecret":"c2VjcmV0"}}),
        );
        let c = load(&p).unwrap();
        assert_eq!(c.device.client_id(), "P1d1");
        assert_eq!(c.broker.uri(), "tcp://P1.iotcloud.tencentdevices.com:1883");
        assert_eq!(c.keepalive, Duration::from_secs(240));
        assert_eq!(c.resource_dir, PathBuf::from("/var/lib/resagent/resources"));
        assert_eq!(c.sign_method, SignMethod::HmacSha256);
        assert!(!c.allow_http);
        assert!(c.plugin_only.is_empty());
    }

    #[test]
    fn tencent_device_info_in_cert_mode_resolves_relative_paths() {
        let d = tmp();
        write(
            d.path(),
            "device_info.json",
            serde_json::json!({"auth_mode":"CERT","productId":"P1","deviceName":"d1","region":"china",
              "productSecret":"x","cert_deviceinfo":{"devCertFile":"d.crt","devPrivateKeyFile":"/abs/d.key"},
              "key_deviceinfo":{"deviceSecret":"YOUR_IOT_PSK"},"subDev":{"sub_dev_num":0}}),
        );
        let p = write(
            d.path(),
            "c.json",
            serde_json::json!({"device_info": d.path().join("device_info.json")}),
        );
        let c = load(&p).unwrap();
        assert_eq!(
            c.auth,
            Auth::Cert {
                cert_file: d.path().join("d.crt"),
                key_file: PathBuf::from("/abs/d.key")
            }
        );
        assert_eq!(c.broker.uri(), "ssl://P1.iotcloud.tencentdevices.com:8883");
    }

    #[test]
    fn unknown_keys_are_named() {
        let d = tmp();
        let p = write(
            d.path(),
            "c.json",
            serde_json::json!({"productId":"P","deviceName":"d","key_deviceinfo":{"deviceSecret":"eA=="},"poll_intervall_s":5}),
        );
        let e = load(&p).unwrap_err();
        assert!(matches!(&e, ConfigError::UnknownKey { key, .. } if key == "poll_intervall_s"));
        assert!(e.to_string().contains("poll_intervall_s"));
    }

    #[test]
    fn folders_that_would_feed_one_another_are_refused() {
        let d = tmp();
        let base = serde_json::json!({"productId":"P","deviceName":"d","key_deviceinfo":{"deviceSecret":"eA=="}});
        let with = |extra: serde_json::Value| {
            let mut v = base.clone();
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            load(&write(d.path(), "c.json", v))
        };
        for (extra, key) in [
            (
                serde_json::json!({"resource_dir": "/x/p", "plugin_dir": "/x/p/"}),
                "plugin_dir",
            ),
            (
                serde_json::json!({"resource_dir": "/x/r", "outbox_dir": "/x/r/../r"}),
                "outbox_dir",
            ),
            (
                serde_json::json!({"resource_dir": "/x/r", "plugin_dir": "/x/r/plugins"}),
                "plugin_dir",
            ),
            (
                serde_json::json!({"outbox_dir": "/x/o", "state_dir": "/x/o/state"}),
                "state_dir",
            ),
            (
                serde_json::json!({"resource_dir": "/x/s", "state_dir": "/x/s"}),
                "state_dir",
            ),
        ] {
            let e = with(extra.clone()).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Invalid { key: k, .. } if k == key),
                "{extra}: {e}"
            );
            assert!(e.to_string().contains("feed"), "{e}");
        }
        // The default layout (resources inside the state folder) is fine.
        with(serde_json::json!({})).unwrap();
        with(serde_json::json!({"state_dir": "/x/s", "resource_dir": "/x/s/resources"})).unwrap();
    }

    #[test]
    fn out_of_range_and_wrong_types_name_the_key() {
        let d = tmp();
        for (k, v) in [
            ("keepalive_s", serde_json::json!(901)),
            ("poll_interval_s", serde_json::json!("60")),
            ("allow_http", serde_json::json!(1)),
            ("sign_method", serde_json::json!("md5")),
            ("broker", serde_json::json!("http://x")),
            ("transfer_timeout_s", serde_json::json!(-1)),
            ("plugin_only", serde_json::json!("*.swu")),
            ("plugin_only", serde_json::json!(["*.swu", ""])),
            ("plugin_only", serde_json::json!(["*.swu *.raucb"])),
            ("plugin_only", serde_json::json!([7])),
            (
                "plugin_config",
                serde_json::json!({"rauc": {"timeout_s": 0}}),
            ),
        ] {
            let mut cfg = serde_json::json!({"productId":"P","deviceName":"d","key_deviceinfo":{"deviceSecret":"eA=="}});
            cfg[k] = v;
            let p = write(d.path(), "c.json", cfg);
            let e = load(&p).unwrap_err();
            assert!(e.to_string().contains(k), "{e}");
        }
    }

    #[test]
    fn missing_files_are_named() {
        let e = load(Path::new("/nonexistent/resagent.json")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/resagent.json"));
        let d = tmp();
        let p = write(
            d.path(),
            "c.json",
            serde_json::json!({"device_info": "/nonexistent/di.json"}),
        );
        assert!(load(&p)
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/di.json"));
    }

    #[test]
    fn brokers_parse() {
        assert_eq!(parse_broker("mqtts://h:1").unwrap().uri(), "ssl://h:1");
        assert_eq!(parse_broker("mqtt://h").unwrap().uri(), "tcp://h:1883");
        assert_eq!(
            parse_broker("ssl://[::1]:8883").unwrap().uri(),
            "ssl://[::1]:8883"
        );
        assert!(parse_broker("h:1").is_err());
        assert!(parse_broker("ws://h:1").is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
