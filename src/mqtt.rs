//! The MQTT session with the platform (Paho C through the `paho-mqtt` sync API): signed
//! credentials recomputed for every connect, TLS with a CA file and a client certificate,
//! one thread that connects, subscribes, forwards what arrives, and reconnects forever
//! with capped exponential backoff and jitter.

use crate::backoff::Backoff;
use crate::config::{Auth, Config, SignMethod};
use crate::protocol::{DeviceId, MAX_MESSAGE_BYTES, SDK_APP_ID};
use crate::random;
use crate::shutdown::Shutdown;
use serde_json::Value;
use std::time::Duration;
use thiserror::Error;

/// How long a QoS 1 publish or a subscribe may wait for the broker's answer.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connect attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How often an idle connection thread wakes to double-check the link (Paho reports a
/// loss itself; this is a fallback). Kept long: an idle agent should not wake the CPU.
/// A stop does not wait for this thread: the coordinator disconnects and the process ends.
const LINK_CHECK: Duration = Duration::from_secs(30);

/// Errors of the MQTT session, naming the operation.
#[derive(Debug, Error)]
pub(crate) enum MqttError {
    /// The device secret is not base64, so no password can be signed.
    #[error("deviceSecret is not valid base64")]
    BadSecret,
    /// OpenSSL could not compute the password's HMAC.
    #[error("cannot sign the MQTT password: {0}")]
    Sign(String),
    /// Paho refused to create the client (a malformed broker URI).
    #[error("cannot create the MQTT client for {uri}: {source}")]
    Create {
        uri: String,
        source: paho_mqtt::Error,
    },
    /// The TLS files could not be used.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// A publish was not acknowledged (not connected, or no PUBACK in time).
    #[error("publish to {topic}: {source}")]
    Publish {
        topic: String,
        source: paho_mqtt::Error,
    },
}

/// The signed MQTT username and password of one connect (docs/protocol.md, "Connection").
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) username: String,
    /// None in certificate mode, where the TLS client certificate authenticates.
    pub(crate) password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// `${productId}${deviceName};12010126;${connid};${expiry}`.
pub(crate) fn username(device: &DeviceId, connid: &str, expiry_unix: u64) -> String {
    format!("{};{SDK_APP_ID};{connid};{expiry_unix}", device.client_id())
}

/// Lowercase hex HMAC of `username` keyed with the base64-decoded secret, then
/// `;hmacsha256` or `;hmacsha1`.
pub(crate) fn sign_password(
    secret_b64: &str,
    username: &str,
    method: SignMethod,
) -> Result<String, MqttError> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret_b64.as_bytes())
        .map_err(|_| MqttError::BadSecret)?;
    let digest = match method {
        SignMethod::HmacSha256 => openssl::hash::MessageDigest::sha256(),
        SignMethod::HmacSha1 => openssl::hash::MessageDigest::sha1(),
    };
    let mac = openssl::pkey::PKey::hmac(&key)
        .and_then(|key| {
            let mut signer = openssl::sign::Signer::new(digest, &key)?;
            signer.update(username.as_bytes())?;
            signer.sign_to_vec()
        })
        .map_err(|e| MqttError::Sign(e.to_string()))?;
    let digest = hex::encode(mac);
    Ok(format!("{digest};{}", method.as_str()))
}

/// Fresh credentials for one connect: a new connid and an expiry `lifetime` from now.
pub(crate) fn credentials(config: &Config, now_unix: u64) -> Result<Credentials, MqttError> {
    let user = username(
        &config.device,
        &random::alphanumeric(5),
        now_unix + config.credential_lifetime.as_secs(),
    );
    let password = match &config.auth {
        Auth::Key { device_secret } => Some(sign_password(
            device_secret.expose(),
            &user,
            config.sign_method,
        )?),
        Auth::Cert { .. } => None,
    };
    Ok(Credentials {
        username: user,
        password,
    })
}

/// What the connection thread tells the rest of the agent.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// Connected and subscribed to the down topic.
    Connected,
    /// The session was lost; the thread reconnects on its own.
    Disconnected,
    /// A message on the down topic (not yet parsed: untrusted bytes).
    Message(Vec<u8>),
    /// A message over [`MAX_MESSAGE_BYTES`], of this many bytes: not copied.
    Oversized(usize),
}

/// Publishes on the up topic; cheap to clone and shared by every thread.
#[derive(Clone)]
pub(crate) struct Publisher {
    client: paho_mqtt::AsyncClient,
    topic: String,
}

impl Publisher {
    /// Publishes `msg` with `qos`. QoS 1 returns once the broker acknowledged it (at most
    /// [`REQUEST_TIMEOUT`]); QoS 0 (intermediate progress) is handed to Paho and not
    /// waited for, so a slow or stalled broker never holds a transfer.
    pub(crate) fn publish(&self, msg: &Value, qos: i32) -> Result<(), MqttError> {
        self.queue(msg, qos)?.wait()
    }

    /// Hands `msg` to Paho without waiting: messages go on the wire in the order of
    /// these calls, whichever thread makes them (what `report::Awaiting` relies on).
    pub(crate) fn queue(&self, msg: &Value, qos: i32) -> Result<Queued, MqttError> {
        let m = paho_mqtt::Message::new(self.topic.clone(), msg.to_string(), qos);
        if !self.client.is_connected() {
            return Err(MqttError::Publish {
                topic: self.topic.clone(),
                source: paho_mqtt::Error::Disconnected,
            });
        }
        let token = self.client.publish(m);
        Ok(Queued {
            token: (qos != 0).then_some(token),
            topic: self.topic.clone(),
        })
    }
}

/// A message handed to Paho; QoS 1 ones carry the token of their acknowledgement.
pub(crate) struct Queued {
    token: Option<paho_mqtt::DeliveryToken>,
    topic: String,
}

impl Queued {
    /// Whether the broker acknowledged it yet, without waiting: None while it has not
    /// (QoS 0: at once).
    pub(crate) fn poll(&self) -> Option<Result<(), MqttError>> {
        let Some(token) = self.token.as_ref() else {
            return Some(Ok(()));
        };
        // A clone of the token waits a millisecond: an ack seen then is certain, a
        // "not yet" only means "ask again" (the wait's timer may win a tie).
        match token.clone().wait_for(Duration::from_millis(1)) {
            Err(paho_mqtt::Error::Timeout) => None,
            Ok(()) => Some(Ok(())),
            Err(source) => Some(Err(MqttError::Publish {
                topic: self.topic.clone(),
                source,
            })),
        }
    }

    /// Waits for the broker's acknowledgement (QoS 1, at most [`REQUEST_TIMEOUT`]);
    /// QoS 0 is done once queued.
    pub(crate) fn wait(self) -> Result<(), MqttError> {
        match self.token {
            None => Ok(()),
            Some(token) => token
                .wait_for(REQUEST_TIMEOUT)
                .map_err(|source| MqttError::Publish {
                    topic: self.topic,
                    source,
                }),
        }
    }
}

impl Publisher {
    /// Ends the session cleanly (DISCONNECT), waiting at most a second: a broker that
    /// stopped answering must not hold the stop (the client's own wait is longer).
    pub(crate) fn disconnect(&self) {
        let client = self.client.clone();
        let (done, finished) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("disconnect".into())
            .spawn(move || {
                let _ = client
                    .disconnect(
                        paho_mqtt::DisconnectOptionsBuilder::new()
                            .timeout(Duration::from_millis(500))
                            .finalize(),
                    )
                    .wait_for(Duration::from_secs(1));
                let _ = done.send(());
            });
        if spawned.is_ok() {
            let _ = finished.recv_timeout(Duration::from_secs(1));
        }
    }
}

/// The session: a Paho client and what is needed to (re)connect it.
pub(crate) struct Session {
    client: paho_mqtt::AsyncClient,
    config: Config,
}

impl Session {
    pub(crate) fn new(config: &Config) -> Result<Session, MqttError> {
        let uri = config.broker.uri();
        let create = paho_mqtt::CreateOptionsBuilder::new()
            .server_uri(&uri)
            .client_id(config.device.client_id())
            .persistence(paho_mqtt::PersistenceType::None)
            .finalize();
        let client = paho_mqtt::AsyncClient::new(create)
            .map_err(|source| MqttError::Create { uri, source })?;
        Ok(Session {
            client,
            config: config.clone(),
        })
    }

    pub(crate) fn publisher(&self) -> Publisher {
        Publisher {
            client: self.client.clone(),
            topic: self.config.device.up_topic(),
        }
    }

    fn connect_options(&self) -> Result<paho_mqtt::ConnectOptions, MqttError> {
        let creds = credentials(&self.config, crate::journal::unix_now())?;
        let mut b = paho_mqtt::ConnectOptionsBuilder::new_v3();
        b.keep_alive_interval(self.config.keepalive)
            .clean_session(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_name(creds.username);
        if let Some(p) = creds.password {
            b.password(p);
        }
        if self.config.broker.tls {
            b.ssl_options(self.ssl_options()?);
        }
        Ok(b.finalize())
    }

    fn ssl_options(&self) -> Result<paho_mqtt::SslOptions, MqttError> {
        let tls = |e: paho_mqtt::Error, what: &str, path: &std::path::Path| {
            MqttError::Tls(format!("{what} {}: {e}", path.display()))
        };
        let mut b = paho_mqtt::SslOptionsBuilder::new();
        b.trust_store(&self.config.ca_file)
            .map_err(|e| tls(e, "ca_file", &self.config.ca_file))?;
        if let Auth::Cert {
            cert_file,
            key_file,
        } = &self.config.auth
        {
            b.key_store(cert_file)
                .map_err(|e| tls(e, "devCertFile", cert_file))?;
            b.private_key(key_file)
                .map_err(|e| tls(e, "devPrivateKeyFile", key_file))?;
        }
        b.enable_server_cert_auth(true).verify(true);
        Ok(b.finalize())
    }

    /// Connects, subscribes and forwards until `shutdown`; reconnects after every loss.
    /// `deliver` gets every event; it returning false also ends the loop.
    pub(crate) fn run(self, shutdown: &Shutdown, mut deliver: impl FnMut(LinkEvent) -> bool) {
        let rx = self.client.start_consuming();
        let uri = self.config.broker.uri();
        let down = self.config.device.down_topic();
        let mut backoff = Backoff::reconnect();
        while !shutdown.is_set() {
            // The login is signed with an expiry, checked against the broker's clock.
            if !crate::clock::wait_until_set(shutdown, "signing the MQTT login") {
                break;
            }
            match self.connect_and_subscribe(&down) {
                Ok(()) => {
                    log::info!("connected to {uri} as {}", self.config.device.client_id());
                    backoff.reset();
                    if !deliver(LinkEvent::Connected) {
                        break;
                    }
                    if !self.pump(&rx, shutdown, &mut deliver) {
                        break;
                    }
                    if shutdown.is_set() {
                        break; // our own disconnect at stop, not a loss
                    }
                    log::warn!("lost the connection to {uri}");
                    if !deliver(LinkEvent::Disconnected) {
                        break;
                    }
                }
                Err(reason) => log::warn!("connect to {uri} failed: {reason}"),
            }
            let delay = backoff.next_delay(random::random_u64());
            log::info!("reconnecting to {uri} in {:.1} s", delay.as_secs_f64());
            shutdown.sleep(delay);
        }
        self.publisher().disconnect();
    }

    fn connect_and_subscribe(&self, down: &str) -> Result<(), String> {
        let opts = self.connect_options().map_err(|e| e.to_string())?;
        self.client
            .connect(opts)
            .wait_for(CONNECT_TIMEOUT + REQUEST_TIMEOUT)
            .map_err(|e| self.explain_connect_error(e))?;
        nodelay_to(self.config.broker.port);
        if let Err(e) = self.client.subscribe(down, 1).wait_for(REQUEST_TIMEOUT) {
            let _ = self.client.disconnect(None).wait_for(REQUEST_TIMEOUT);
            return Err(format!("subscribe to {down}: {e}"));
        }
        Ok(())
    }

    /// Paho's errors say little about TLS or a refused login; say what to check.
    fn explain_connect_error(&self, e: paho_mqtt::Error) -> String {
        use paho_mqtt::{ConnectReturnCode as Rc, Error as E};
        if let E::ConnectReturn(Rc::BadUserNameOrPassword | Rc::NotAuthorized) = e {
            // The secret itself is never logged; the clock is named because a signature
            // carries an expiry, and a device clock far off makes it expired.
            return format!(
                "{e}: the platform refused the signed login of {} — check productId, \
                 deviceName and the device secret (and the clock: the signature expires)",
                self.config.device.client_id()
            );
        }
        if self.config.broker.tls {
            let client_cert = match &self.config.auth {
                Auth::Cert { cert_file, .. } => {
                    format!(", client certificate {}", cert_file.display())
                }
                Auth::Key { .. } => String::new(),
            };
            format!(
                "{e} (TLS: the broker's certificate is checked against ca_file {}{client_cert}; \
                 a wrong CA, an expired certificate or a host name mismatch ends here)",
                self.config.ca_file.display()
            )
        } else {
            e.to_string()
        }
    }

    /// Forwards messages until the connection is lost (true) or the agent stops (false).
    fn pump(
        &self,
        rx: &paho_mqtt::Receiver<Option<paho_mqtt::Message>>,
        shutdown: &Shutdown,
        deliver: &mut impl FnMut(LinkEvent) -> bool,
    ) -> bool {
        loop {
            match rx.recv_timeout(LINK_CHECK) {
                Ok(Some(msg)) => {
                    // Paho holds the message once; one over the limit is refused here,
                    // before any copy of ours (docs/protocol.md, "Bad input").
                    let len = msg.payload().len();
                    let event = if len > MAX_MESSAGE_BYTES {
                        LinkEvent::Oversized(len)
                    } else {
                        LinkEvent::Message(msg.payload().to_vec())
                    };
                    drop(msg);
                    if !deliver(event) {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(_) if shutdown.is_set() => return false,
                Err(_) => {
                    if !self.client.is_connected() {
                        return true;
                    }
                }
            }
        }
    }
}

/// Sets TCP_NODELAY on this process's TCP sockets connected to port `port` — the MQTT
/// connection Paho just opened (Paho has no option for it): with Nagle on, every
/// PUBLISH that follows a PUBACK within the broker's delayed-ACK time (40 ms on Linux)
/// waits for it, which made each upload of a batch ~80 ms slower. Best effort: a socket
/// not found keeps Nagle, which costs latency, never correctness.
fn nodelay_to(port: u16) {
    use nix::sys::socket::{getpeername, SockaddrStorage};
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in fds.flatten() {
        // Descriptors that are no sockets (or not connected) fail getpeername: skipped.
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(peer) = getpeername::<SockaddrStorage>(fd) else {
            continue;
        };
        let peer_port = peer
            .as_sockaddr_in()
            .map(|a| a.port())
            .or_else(|| peer.as_sockaddr_in6().map(|a| a.port()));
        if peer_port == Some(port) {
            if let Err(e) = crate::sys::set_tcp_nodelay(fd) {
                log::debug!("TCP_NODELAY on the MQTT socket: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "dGVzdC1kZXZpY2Utc2VjcmV0"; // base64("test-device-secret")
    const USER: &str = "ABCDEF1234dev1;12010126;Xy3Qz;1764115200";

    /// Vectors computed outside this code:
    /// `printf %s "$USER" | openssl dgst -sha256 -mac HMAC -macopt hexkey:$(printf %s "$SECRET" | base64 -d | xxd -p)`
    #[test]
    fn password_matches_openssl_hmac_sha256() {
        assert_eq!(
            sign_password(SECRET, USER, SignMethod::HmacSha256).unwrap(),
            "99789d58ef072465986dead89577df26c8aed6edcccd73d9b7147a24889a91df;hmacsha256"
        );
    }

    #[test]
    fn password_matches_openssl_hmac_sha1() {
        assert_eq!(
            sign_password(SECRET, USER, SignMethod::HmacSha1).unwrap(),
            "526c5ffa553c0bfc986bf7eb2c508c310e044a21;hmacsha1"
        );
    }

    #[test]
    fn username_has_the_documented_fields() {
        let id = DeviceId {
            product_id: "ABCDEF1234".into(),
            device_name: "dev1".into(),
        };
        assert_eq!(username(&id, "Xy3Qz", 1764115200), USER);
    }
}
