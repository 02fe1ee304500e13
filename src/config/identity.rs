//! The device identity (Tencent's `device_info` keys, in their own file or inline) and
//! the broker it connects to.

use super::keys::Keys;
use super::{Auth, Broker, ConfigError, Secret};
use crate::protocol::DeviceId;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The identity from Tencent's device_info keys; relative certificate paths are taken
/// from the folder of the file that names them.
pub(super) fn read_identity(
    keys: &Keys,
    base: Option<&Path>,
) -> Result<(DeviceId, Auth), ConfigError> {
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
pub(super) fn default_broker(device: &DeviceId, auth: &Auth) -> Broker {
    let tls = matches!(auth, Auth::Cert { .. });
    Broker {
        tls,
        host: format!("{}.iotcloud.tencentdevices.com", device.product_id),
        port: if tls { 8883 } else { 1883 },
    }
}
