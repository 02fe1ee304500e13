//! Configuration: the JSON file of docs/agent.md, the device credentials in Tencent's
//! `device_info.json` format (or inline), defaults for everything but the identity, and a
//! refusal naming the key for anything unknown or out of range.

mod folders;
mod identity;
mod keys;

pub(crate) use identity::parse_broker;
use keys::{kind, Keys, *};

use crate::protocol::{DeviceId, TaskLimits};
use crate::schedule::{Range, RateCap, Windows};
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
    /// The transfer rate cap, at all times or by local time of day (0: none).
    pub(crate) max_bytes_per_s: RateCap,
    /// When downloads may run (local time); empty: always.
    pub(crate) download_windows: Windows,
    pub(crate) keepalive: Duration,
    pub(crate) credential_lifetime: Duration,
    pub(crate) sign_method: SignMethod,
    pub(crate) allow_http: bool,
    pub(crate) plugin_sha256: Option<BTreeMap<String, String>>,
    /// Per plugin name, a JSON object handed to the plugin (docs/plugins.md).
    pub(crate) plugin_config: BTreeMap<String, Value>,
    /// Run (through `/bin/sh -c`) once a pending install was recorded and reported.
    pub(crate) reboot_command: Option<String>,
    /// Asked (`/bin/sh -c`) before the install chain: 0 go on, 75 later, else fail -5.
    pub(crate) install_gate_command: Option<String>,
    /// Asked before `reboot_command`, with the same exits.
    pub(crate) reboot_gate_command: Option<String>,
    /// How long a gate that said "later" (75) waits before it is asked again.
    pub(crate) gate_retry: Duration,
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

    /// How the daemon calls plugins under this configuration: `exe` re-run as each
    /// call's child, `plugin_timeout_s`, private folders in `state_dir`, `plugin_config`.
    pub(crate) fn plugin_host<'a>(
        &'a self,
        exe: &'a Path,
        shutdown: &'a crate::shutdown::Shutdown,
    ) -> crate::plugin::PluginHost<'a> {
        crate::plugin::PluginHost {
            exe,
            timeout: self.plugin_timeout,
            shutdown,
            state_dir: Some(&self.state_dir),
            plugin_config: Some(&self.plugin_config),
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

/// Loads and checks the configuration at `path`, with the credentials it points to.
pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
    let map = read_object(path)?;
    if let Some(key) = keys::unknown(&map) {
        return Err(ConfigError::UnknownKey {
            path: path.to_path_buf(),
            key: key.clone(),
        });
    }
    let keys = Keys { path, map: &map };
    let (credentials_path, (device, auth)) = read_credentials(&keys)?;
    let broker = match keys.string(BROKER.name)? {
        Some(uri) => parse_broker(&uri).map_err(|r| keys.invalid(BROKER.name, r))?,
        None => identity::default_broker(&device, &auth),
    };
    let (resource_dir, state_dir) = (keys.path(&RESOURCE_DIR)?, keys.path(&STATE_DIR)?);
    let (outbox_dir, plugin_dir) = (keys.path(&OUTBOX_DIR)?, keys.path(&PLUGIN_DIR)?);
    folders::check_folders(
        &keys,
        &[
            (RESOURCE_DIR.name, &resource_dir),
            (OUTBOX_DIR.name, &outbox_dir),
            (PLUGIN_DIR.name, &plugin_dir),
            (STATE_DIR.name, &state_dir),
        ],
    )?;
    Ok(Config {
        path: path.to_path_buf(),
        device,
        auth,
        credentials_path,
        broker,
        ca_file: keys.path(&CA_FILE)?,
        resource_dir,
        state_dir,
        outbox_dir,
        plugin_dir,
        pid_file: keys.path(&PID_FILE)?,
        poll_interval: keys.secs(&POLL_INTERVAL_S)?,
        poll_jitter: keys.secs(&POLL_JITTER_S)?,
        progress_interval: keys.secs(&PROGRESS_INTERVAL_S)?,
        transfer_timeout: keys.secs(&TRANSFER_TIMEOUT_S)?,
        plugin_timeout: keys.secs(&PLUGIN_TIMEOUT_S)?,
        max_resource_bytes: keys.number(&MAX_RESOURCE_BYTES)?,
        max_bytes_per_s: max_bytes_per_s(&keys)?,
        download_windows: download_windows(&keys)?,
        keepalive: keys.secs(&KEEPALIVE_S)?,
        credential_lifetime: keys.secs(&CREDENTIAL_LIFETIME_S)?,
        sign_method: sign_method(&keys)?,
        allow_http: keys.flag(&ALLOW_HTTP)?,
        plugin_sha256: plugin_sha256(&keys)?,
        plugin_config: plugin_config(&keys)?,
        reboot_command: keys.string(REBOOT_COMMAND.name)?,
        install_gate_command: keys.string(INSTALL_GATE_COMMAND.name)?,
        reboot_gate_command: keys.string(REBOOT_GATE_COMMAND.name)?,
        gate_retry: keys.secs(&GATE_RETRY_S)?,
        plugin_only: keys.patterns(PLUGIN_ONLY.name)?,
    })
}

/// The file holding the credentials (the configuration itself when the identity stands
/// inline) and the identity read from it.
fn read_credentials(keys: &Keys) -> Result<(PathBuf, (DeviceId, Auth)), ConfigError> {
    let path = keys.path;
    if keys.map.contains_key("productId") {
        return Ok((
            path.to_path_buf(),
            identity::read_identity(keys, path.parent())?,
        ));
    }
    let info = keys.path(&DEVICE_INFO)?;
    let info_map = read_object(&info)?;
    let info_keys = Keys {
        path: &info,
        map: &info_map,
    };
    let identity = identity::read_identity(&info_keys, info.parent())?;
    Ok((info, identity))
}

/// `download_windows`: a list of `"HH:MM-HH:MM"` (local time); absent: always.
fn download_windows(keys: &Keys) -> Result<Windows, ConfigError> {
    let name = DOWNLOAD_WINDOWS.name;
    let items = match keys.map.get(name) {
        None | Some(Value::Null) => return Ok(Windows::default()),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(keys.invalid(
                name,
                "an empty list would never download; leave the key out to download at any time",
            ))
        }
        Some(Value::Array(items)) => items,
        Some(v) => {
            return Err(keys.invalid(
                name,
                format!("expected a list of \"HH:MM-HH:MM\", found {}", kind(v)),
            ))
        }
    };
    let ranges = items
        .iter()
        .map(|v| match v {
            Value::String(s) => Range::parse(s).map_err(|e| keys.invalid(name, e)),
            v => Err(keys.invalid(name, format!("expected \"HH:MM-HH:MM\", found {}", kind(v)))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Windows::new(ranges))
}

/// `max_bytes_per_s`: a number, or a list of `{"from", "to", "bytes_per_s"}` (local
/// time; no cap outside them).
fn max_bytes_per_s(keys: &Keys) -> Result<RateCap, ConfigError> {
    let name = MAX_BYTES_PER_S.name;
    let items = match keys.map.get(name) {
        None | Some(Value::Null) => return Ok(RateCap::Always(0)),
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(v) => {
            return v.as_u64().map(RateCap::Always).ok_or_else(|| {
                keys.invalid(
                    name,
                    format!(
                        "expected a whole number or a list of {{\"from\", \"to\", \"bytes_per_s\"}}, found {}",
                        kind(v)
                    ),
                )
            })
        }
    };
    let slot = |i: usize, v: &Value| -> Result<(Range, u64), String> {
        let o = v
            .as_object()
            .ok_or_else(|| format!("entry {i} is not an object"))?;
        if let Some(k) = o
            .keys()
            .find(|k| !["from", "to", "bytes_per_s"].contains(&k.as_str()))
        {
            return Err(format!("entry {i}: unknown key `{k}`"));
        }
        let text = |k: &str| {
            o.get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("entry {i}: `{k}` must be \"HH:MM\""))
        };
        let range =
            Range::from_to(text("from")?, text("to")?).map_err(|e| format!("entry {i}: {e}"))?;
        let rate = o
            .get("bytes_per_s")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("entry {i}: `bytes_per_s` must be a whole number"))?;
        Ok((range, rate))
    };
    let slots = items
        .iter()
        .enumerate()
        .map(|(i, v)| slot(i, v).map_err(|e| keys.invalid(name, e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RateCap::Scheduled(slots))
}

fn sign_method(keys: &Keys) -> Result<SignMethod, ConfigError> {
    match keys.string(SIGN_METHOD.name)?.as_deref() {
        None | Some("hmacsha256") => Ok(SignMethod::HmacSha256),
        Some("hmacsha1") => Ok(SignMethod::HmacSha1),
        Some(other) => Err(keys.invalid(
            SIGN_METHOD.name,
            format!("`{other}` is not hmacsha256 or hmacsha1"),
        )),
    }
}

/// `plugin_sha256`: None when absent (every plugin of `plugin_dir` may load).
fn plugin_sha256(keys: &Keys) -> Result<Option<BTreeMap<String, String>>, ConfigError> {
    match keys.map.get(PLUGIN_SHA256.name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(pins)) => Ok(Some(parse_pins(keys, pins)?)),
        Some(v) => Err(keys.invalid(
            PLUGIN_SHA256.name,
            format!(
                "expected an object mapping file names to SHA-256, found {}",
                kind(v)
            ),
        )),
    }
}

/// `plugin_config`: an object per plugin name; the agent's own `timeout_s` in range.
fn plugin_config(keys: &Keys) -> Result<BTreeMap<String, Value>, ConfigError> {
    let entries = match keys.map.get(PLUGIN_CONFIG.name) {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(entries)) => entries,
        Some(v) => {
            return Err(keys.invalid(
                PLUGIN_CONFIG.name,
                format!(
                    "expected an object mapping plugin names to objects, found {}",
                    kind(v)
                ),
            ))
        }
    };
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
    Ok(out)
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
