//! The configuration keys: one table ([`KEYS`]) of every key with how it is read and
//! its default. The unknown-key check, the typed reads in `load` and a test that
//! docs/configuration.md lists exactly these keys with these defaults all derive from
//! it; a new key is a row here (a `const` and its place in [`KEYS`]), its field in
//! `Config` and its line in `load` (docs/architecture.md, "How to add…").

use super::ConfigError;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One key of the configuration file.
#[derive(Debug, Clone, Copy)]
pub(super) struct Key {
    pub(super) name: &'static str,
    pub(super) kind: Kind,
}

/// How a key's value is read, with its default.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    /// A path; the default path.
    Path(&'static str),
    /// A whole number within bounds.
    Number { default: u64, min: u64, max: u64 },
    /// Seconds within bounds.
    Secs { default: u64, min: u64, max: u64 },
    /// true or false.
    Flag(bool),
    /// Read by code of its own in `load`; its default as docs/configuration.md says it
    /// (read only by the test that holds the documentation to this table).
    Own(#[cfg_attr(not(test), allow(dead_code))] &'static str),
    /// Part of the device identity, which may stand inline instead of in `device_info`;
    /// documented in prose, no default.
    Identity,
}

impl Key {
    /// The default as docs/configuration.md's table shows it.
    #[cfg(test)]
    pub(super) fn shown_default(&self) -> Option<String> {
        match self.kind {
            Kind::Path(p) => Some(format!("`{p}`")),
            Kind::Number { default, .. } | Kind::Secs { default, .. } => Some(default.to_string()),
            Kind::Flag(b) => Some(b.to_string()),
            Kind::Own(text) => Some(text.to_string()),
            Kind::Identity => None,
        }
    }
}

const DAY: u64 = 86_400;
const fn secs(name: &'static str, default: u64, min: u64, max: u64) -> Key {
    Key {
        name,
        kind: Kind::Secs { default, min, max },
    }
}
const fn path(name: &'static str, default: &'static str) -> Key {
    Key {
        name,
        kind: Kind::Path(default),
    }
}
const fn own(name: &'static str, shown_default: &'static str) -> Key {
    Key {
        name,
        kind: Kind::Own(shown_default),
    }
}
const fn identity(name: &'static str) -> Key {
    Key {
        name,
        kind: Kind::Identity,
    }
}

pub(super) const DEVICE_INFO: Key = path("device_info", "/etc/resagent/device_info.json");
pub(super) const BROKER: Key = own(
    "broker",
    "`tcp://PRODUCTID.iotcloud.tencentdevices.com:1883` (KEY), `ssl://…:8883` (CERT)",
);
pub(super) const CA_FILE: Key = path("ca_file", "/etc/ssl/certs/ca-certificates.crt");
pub(super) const RESOURCE_DIR: Key = path("resource_dir", "/var/lib/resagent/resources");
pub(super) const STATE_DIR: Key = path("state_dir", "/var/lib/resagent");
pub(super) const OUTBOX_DIR: Key = path("outbox_dir", "/var/spool/resagent/outbox");
pub(super) const PLUGIN_DIR: Key = path("plugin_dir", "/usr/lib/resagent/plugins");
pub(super) const PID_FILE: Key = path("pid_file", "/run/resagent.pid");
pub(super) const POLL_INTERVAL_S: Key = secs("poll_interval_s", 3600, 1, 30 * DAY);
pub(super) const POLL_JITTER_S: Key = secs("poll_jitter_s", 30, 0, 3600);
pub(super) const PROGRESS_INTERVAL_S: Key = secs("progress_interval_s", 1, 0, 3600);
pub(super) const TRANSFER_TIMEOUT_S: Key = secs("transfer_timeout_s", 60, 1, DAY);
pub(super) const PLUGIN_TIMEOUT_S: Key = secs("plugin_timeout_s", 300, 1, DAY);
pub(super) const PLUGIN_SHA256: Key = own("plugin_sha256", "absent");
pub(super) const MAX_RESOURCE_BYTES: Key = Key {
    name: "max_resource_bytes",
    kind: Kind::Number {
        default: 16 << 30,
        min: 0,
        max: u64::MAX,
    },
};
pub(super) const MAX_BYTES_PER_S: Key = own("max_bytes_per_s", "0");
pub(super) const DOWNLOAD_WINDOWS: Key = own("download_windows", "absent: always");
pub(super) const INSTALL_GATE_COMMAND: Key = own("install_gate_command", "absent");
pub(super) const REBOOT_GATE_COMMAND: Key = own("reboot_gate_command", "absent");
pub(super) const GATE_RETRY_S: Key = secs("gate_retry_s", 300, 1, DAY);
pub(super) const KEEPALIVE_S: Key = secs("keepalive_s", 240, 0, 900);
pub(super) const CREDENTIAL_LIFETIME_S: Key = secs("credential_lifetime_s", 3600, 60, 365 * DAY);
pub(super) const SIGN_METHOD: Key = own("sign_method", "`hmacsha256`");
pub(super) const ALLOW_HTTP: Key = Key {
    name: "allow_http",
    kind: Kind::Flag(false),
};
pub(super) const PLUGIN_CONFIG: Key = own("plugin_config", "absent");
pub(super) const PLUGIN_ONLY: Key = own("plugin_only", "absent");
pub(super) const REBOOT_COMMAND: Key = own("reboot_command", "absent");

/// Every key of the configuration file, in docs/configuration.md's order; anything else
/// is refused (a typo must not silently fall back to a default).
pub(super) const KEYS: &[Key] = &[
    DEVICE_INFO,
    BROKER,
    CA_FILE,
    RESOURCE_DIR,
    STATE_DIR,
    OUTBOX_DIR,
    PLUGIN_DIR,
    PID_FILE,
    POLL_INTERVAL_S,
    POLL_JITTER_S,
    PROGRESS_INTERVAL_S,
    TRANSFER_TIMEOUT_S,
    PLUGIN_TIMEOUT_S,
    PLUGIN_SHA256,
    MAX_RESOURCE_BYTES,
    MAX_BYTES_PER_S,
    DOWNLOAD_WINDOWS,
    KEEPALIVE_S,
    CREDENTIAL_LIFETIME_S,
    SIGN_METHOD,
    ALLOW_HTTP,
    PLUGIN_CONFIG,
    PLUGIN_ONLY,
    REBOOT_COMMAND,
    INSTALL_GATE_COMMAND,
    REBOOT_GATE_COMMAND,
    GATE_RETRY_S,
    identity("auth_mode"),
    identity("productId"),
    identity("deviceName"),
    identity("key_deviceinfo"),
    identity("cert_deviceinfo"),
];

/// The first key of `map` that is not in [`KEYS`].
pub(super) fn unknown(map: &Map<String, Value>) -> Option<&String> {
    map.keys()
        .find(|k| !KEYS.iter().any(|key| key.name == k.as_str()))
}

/// Typed access to the keys of one JSON object, with errors naming file and key.
pub(super) struct Keys<'a> {
    pub(super) path: &'a Path,
    pub(super) map: &'a Map<String, Value>,
}

impl<'a> Keys<'a> {
    pub(super) fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    pub(super) fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(Value::String(_)) => Err(self.invalid(key, "must not be empty")),
            Some(v) => Err(self.invalid(key, format!("expected a string, found {}", kind(v)))),
        }
    }

    /// A folder or file named by a [`Kind::Path`] key, its default when absent.
    pub(super) fn path(&self, key: &Key) -> Result<PathBuf, ConfigError> {
        let default = match key.kind {
            Kind::Path(default) => default,
            _ => "",
        };
        Ok(PathBuf::from(
            self.string(key.name)?
                .unwrap_or_else(|| default.to_string()),
        ))
    }

    /// A whole number of a [`Kind::Number`] or [`Kind::Secs`] key, within its bounds.
    pub(super) fn number(&self, key: &Key) -> Result<u64, ConfigError> {
        let (default, min, max) = match key.kind {
            Kind::Number { default, min, max } | Kind::Secs { default, min, max } => {
                (default, min, max)
            }
            _ => (0, 0, u64::MAX),
        };
        let name = key.name;
        let v = match self.map.get(name) {
            None | Some(Value::Null) => return Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| {
                self.invalid(name, format!("expected a whole number, found {}", kind(v)))
            })?,
        };
        if v < min || v > max {
            return Err(self.invalid(name, format!("{v} is outside {min}..={max}")));
        }
        Ok(v)
    }

    /// The seconds of a [`Kind::Secs`] key.
    pub(super) fn secs(&self, key: &Key) -> Result<Duration, ConfigError> {
        self.number(key).map(Duration::from_secs)
    }

    /// A list of shell patterns (`plugin_only`): strings, not empty, no white space.
    pub(super) fn patterns(&self, key: &str) -> Result<Vec<String>, ConfigError> {
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

    /// The value of a [`Kind::Flag`] key.
    pub(super) fn flag(&self, key: &Key) -> Result<bool, ConfigError> {
        let default = matches!(key.kind, Kind::Flag(true));
        match self.map.get(key.name) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.invalid(
                key.name,
                format!("expected true or false, found {}", kind(v)),
            )),
        }
    }
}

pub(super) fn kind(v: &Value) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The key table of `file` (docs/configuration.md, the README): each row's key and
    /// default cell.
    fn documented_in(file: &str) -> Vec<(String, String)> {
        let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
            .unwrap_or_default();
        doc.lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|rest| {
                let (key, rest) = rest.split_once("` | ")?;
                if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return None; // a command or a folder, not a key
                }
                let default = rest.split(" | ").next()?;
                Some((key.to_string(), default.trim().to_string()))
            })
            .collect()
    }

    #[test]
    fn the_documentation_lists_exactly_these_keys_with_these_defaults() {
        let doc = documented_in("docs/configuration.md");
        assert!(!doc.is_empty(), "docs/configuration.md has no key table");
        let table: Vec<(String, String)> = KEYS
            .iter()
            .filter_map(|k| Some((k.name.to_string(), k.shown_default()?)))
            .collect();
        assert_eq!(
            doc, table,
            "docs/configuration.md's table and config::keys::KEYS differ"
        );
        // The README's table may order them otherwise.
        let sorted = |mut v: Vec<(String, String)>| {
            v.sort();
            v
        };
        assert_eq!(
            sorted(documented_in("README.md")),
            sorted(table),
            "the README's key table and config::keys::KEYS differ"
        );
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
        )
        .unwrap_or_default();
        for k in KEYS.iter().filter(|k| matches!(k.kind, Kind::Identity)) {
            assert!(
                text.contains(&format!("\"{}\"", k.name)) || text.contains(&format!("`{}", k.name)),
                "{} undocumented",
                k.name
            );
        }
    }

    #[test]
    fn every_key_is_listed_once() {
        for (i, k) in KEYS.iter().enumerate() {
            assert!(
                !KEYS[i + 1..].iter().any(|o| o.name == k.name),
                "{} twice",
                k.name
            );
        }
    }
}
