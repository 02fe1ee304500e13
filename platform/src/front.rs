//! The signed login, checked as Tencent checks it: a small MQTT front on the port devices
//! dial, with mosquitto behind it. It reads a connection's first packet (CONNECT), checks
//! the client id, the username and the password's HMAC against the devices it knows,
//! and then either answers CONNACK "refused" and closes, or hands that CONNECT and every
//! byte after it, both ways, to the broker unchanged.
//!
//! Why a front and not a mosquitto auth plugin: a plugin is C against mosquitto's
//! version-specific plugin API, built per distribution; this is ~300 lines of the
//! platform's own Rust, the same on every machine, and it logs *why* a login failed.
//! The cost is one relay hop on loopback per device connection.
//!
//! The rules (docs/protocol.md, "Connection"), each a [`Refusal`]:
//! - the client id is `${productId}${deviceName}` of a device given to the platform;
//! - the username is `${clientId};${sdkappid};${connid};${expiry}` with that client id,
//!   and `expiry` (Unix seconds) is not in the past;
//! - the password is `hex(HMAC(key, username));hmacsha256` (or `;hmacsha1`), the key
//!   being the device secret base64-decoded.

use hmac::{Hmac, Mac};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A CONNECT larger than this is refused unread (a real one is a few hundred bytes).
const MAX_CONNECT_BYTES: usize = 16 * 1024;
/// A client that does not send its CONNECT within this is dropped.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// What the front reads from a CONNECT packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// 3 (MQTT 3.1) or 4 (3.1.1): the CONNACK is shaped the same for both.
    pub level: u8,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

/// Why a login was refused: one line for the platform's log and the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not an MQTT CONNECT the front can read.
    Malformed(String),
    /// No device with this client id was given to the platform.
    UnknownDevice(String),
    NoUsername,
    NoPassword,
    /// The username is not `CLIENTID;SDKAPPID;CONNID;EXPIRY` for this client id.
    BadUsername(String),
    /// The username's expiry (Unix seconds) has passed.
    Expired {
        expiry: u64,
        now: u64,
    },
    /// The password does not end in `;hmacsha256` or `;hmacsha1`.
    UnknownMethod(String),
    /// The HMAC does not match this device's secret.
    BadSignature,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed(why) => write!(f, "not a readable MQTT CONNECT: {why}"),
            Refusal::UnknownDevice(id) => write!(f, "no device with client id `{id}`"),
            Refusal::NoUsername => write!(f, "no username (the signed login needs one)"),
            Refusal::NoPassword => write!(f, "no password (the signed login needs one)"),
            Refusal::BadUsername(u) => write!(
                f,
                "username `{u}` is not CLIENTID;SDKAPPID;CONNID;EXPIRY for this client id"
            ),
            Refusal::Expired { expiry, now } => {
                write!(f, "signature expired at {expiry} (now {now})")
            }
            Refusal::UnknownMethod(m) => {
                write!(f, "sign method `{m}` is not hmacsha256 or hmacsha1")
            }
            Refusal::BadSignature => write!(f, "signature does not match the device secret"),
        }
    }
}

impl Refusal {
    /// The CONNACK return code: 5 "not authorized" for an unknown device, 4 "bad user
    /// name or password" for a device whose login is wrong, 2 "identifier rejected"
    /// never (the client id is judged as part of the login).
    pub fn connack_code(&self) -> u8 {
        match self {
            Refusal::UnknownDevice(_) => 5,
            _ => 4,
        }
    }
}

/// Reads the CONNECT packet in `packet` (fixed header included).
pub fn parse_connect(packet: &[u8]) -> Result<Connect, String> {
    let mut r = Reader { b: packet, at: 0 };
    let kind = r.byte()?;
    if kind != 0x10 {
        return Err(format!(
            "first packet type {:#04x}, not CONNECT (0x10)",
            kind
        ));
    }
    let len = r.varint()?;
    if r.b.len() - r.at != len {
        return Err(format!(
            "remaining length {len} but {} bytes follow",
            r.b.len() - r.at
        ));
    }
    let proto = r.string()?;
    let level = r.byte()?;
    match (proto.as_str(), level) {
        ("MQTT", 4) | ("MQIsdp", 3) => {}
        (p, l) => return Err(format!("protocol `{p}` level {l} (not MQTT 3.1/3.1.1)")),
    }
    let flags = r.byte()?;
    let _keepalive = r.take(2)?;
    let client_id = r.string()?;
    if flags & 0x04 != 0 {
        let _will_topic = r.string()?;
        let _will_message = r.binary()?;
    }
    let username = if flags & 0x80 != 0 {
        Some(r.string()?)
    } else {
        None
    };
    let password = if flags & 0x40 != 0 {
        Some(r.binary()?.to_vec())
    } else {
        None
    };
    Ok(Connect {
        level,
        client_id,
        username,
        password,
    })
}

/// Judges a login. `secrets` maps client ids (`${productId}${deviceName}`) to device
/// secrets (base64, as the console shows them).
pub fn check(c: &Connect, secrets: &HashMap<String, String>, now_unix: u64) -> Result<(), Refusal> {
    let secret = secrets
        .get(&c.client_id)
        .ok_or_else(|| Refusal::UnknownDevice(c.client_id.clone()))?;
    let username = c.username.as_deref().ok_or(Refusal::NoUsername)?;
    let password = c.password.as_deref().ok_or(Refusal::NoPassword)?;
    let parts: Vec<&str> = username.split(';').collect();
    let expiry = match parts.as_slice() {
        [id, app, connid, expiry]
            if *id == c.client_id && !app.is_empty() && !connid.is_empty() =>
        {
            expiry
                .parse::<u64>()
                .map_err(|_| Refusal::BadUsername(username.to_string()))?
        }
        _ => return Err(Refusal::BadUsername(username.to_string())),
    };
    if expiry < now_unix {
        return Err(Refusal::Expired {
            expiry,
            now: now_unix,
        });
    }
    let password = std::str::from_utf8(password).map_err(|_| Refusal::BadSignature)?;
    let (mac_hex, method) = password
        .rsplit_once(';')
        .ok_or_else(|| Refusal::UnknownMethod(String::new()))?;
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret)
        .map_err(|_| Refusal::BadSignature)?;
    let want = match method {
        "hmacsha256" => {
            let mut m =
                Hmac::<sha2::Sha256>::new_from_slice(&key).map_err(|_| Refusal::BadSignature)?;
            m.update(username.as_bytes());
            hex::encode(m.finalize().into_bytes())
        }
        "hmacsha1" => {
            let mut m =
                Hmac::<sha1::Sha1>::new_from_slice(&key).map_err(|_| Refusal::BadSignature)?;
            m.update(username.as_bytes());
            hex::encode(m.finalize().into_bytes())
        }
        other => return Err(Refusal::UnknownMethod(other.to_string())),
    };
    if !mac_hex.eq_ignore_ascii_case(&want) {
        return Err(Refusal::BadSignature);
    }
    Ok(())
}

/// A login the front judged, for the platform's log, the page and tests.
#[derive(Debug, Clone)]
pub struct Login {
    pub client_id: String,
    /// `None`: accepted and relayed to the broker.
    pub refused: Option<Refusal>,
}

/// The front: a listener that checks each connection's login and relays it to the broker.
pub struct Front {
    pub port: u16,
    logins: Arc<Mutex<Vec<Login>>>,
    stopped: Arc<AtomicBool>,
    relayed: Arc<Mutex<Vec<TcpStream>>>,
}

impl Front {
    /// Listens on `listen` (e.g. `127.0.0.1:0`) and relays accepted logins to the broker
    /// at `upstream` (`HOST:PORT`).
    pub fn start(
        listen: &str,
        upstream: &str,
        secrets: HashMap<String, String>,
    ) -> std::io::Result<Front> {
        let listener = TcpListener::bind(listen)?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let logins = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let relayed = Arc::new(Mutex::new(Vec::new()));
        let (log, stop, streams) = (logins.clone(), stopped.clone(), relayed.clone());
        let secrets = Arc::new(secrets);
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // Not blocking, so a stop is seen while nobody connects.
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let (log, streams, secrets) = (log.clone(), streams.clone(), secrets.clone());
                let upstream = upstream.clone();
                std::thread::spawn(move || serve(client, &upstream, &secrets, &log, &streams));
            }
        });
        Ok(Front {
            port,
            logins,
            stopped,
            relayed,
        })
    }

    /// Every login judged so far, oldest first.
    pub fn logins(&self) -> Vec<Login> {
        self.logins.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Stops listening and cuts every relayed connection.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Ok(mut s) = self.relayed.lock() {
            for s in s.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    mut client: TcpStream,
    upstream: &str,
    secrets: &HashMap<String, String>,
    log: &Mutex<Vec<Login>>,
    streams: &Mutex<Vec<TcpStream>>,
) {
    let _ = client.set_nonblocking(false);
    let _ = client.set_read_timeout(Some(CONNECT_WITHIN));
    let packet = match read_packet(&mut client) {
        Ok(p) => p,
        Err(why) => {
            log::warn!("MQTT login refused: {}", Refusal::Malformed(why));
            return;
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (client_id, verdict) = match parse_connect(&packet) {
        Ok(c) => (c.client_id.clone(), check(&c, secrets, now)),
        Err(why) => (String::new(), Err(Refusal::Malformed(why))),
    };
    match verdict {
        Err(refusal) => {
            log::warn!("MQTT login of `{client_id}` refused: {refusal}");
            // CONNACK: no session present, the return code; then close.
            let _ = client.write_all(&[0x20, 0x02, 0x00, refusal.connack_code()]);
            let _ = client.shutdown(Shutdown::Both);
            if let Ok(mut l) = log.lock() {
                l.push(Login {
                    client_id,
                    refused: Some(refusal),
                });
            }
        }
        Ok(()) => {
            let _ = client.set_read_timeout(None);
            let Ok(mut server) = TcpStream::connect(upstream) else {
                // The broker is down: the client sees its connection closed, as without us.
                let _ = client.shutdown(Shutdown::Both);
                return;
            };
            let _ = server.set_nodelay(true);
            let _ = client.set_nodelay(true);
            if let Ok(mut l) = log.lock() {
                l.push(Login {
                    client_id,
                    refused: None,
                });
            }
            if server.write_all(&packet).is_err() {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                return;
            };
            if let (Ok(mut s), Ok(c3), Ok(s3)) =
                (streams.lock(), client.try_clone(), server.try_clone())
            {
                s.push(c3);
                s.push(s3);
            }
            let mut down = (c2, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut down.0, &mut down.1);
                let _ = down.1.shutdown(Shutdown::Both);
            });
            let mut up = (s2, client);
            let _ = std::io::copy(&mut up.0, &mut up.1);
            let _ = up.1.shutdown(Shutdown::Both);
        }
    }
}

/// Reads one MQTT packet: the type byte, the remaining length, the rest.
fn read_packet(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut packet = vec![0u8; 1];
    s.read_exact(&mut packet)
        .map_err(|e| format!("reading: {e}"))?;
    let mut len = 0usize;
    for i in 0..4 {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).map_err(|e| format!("reading: {e}"))?;
        packet.push(b[0]);
        len |= usize::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            if len > MAX_CONNECT_BYTES {
                return Err(format!(
                    "a first packet of {len} bytes (at most {MAX_CONNECT_BYTES})"
                ));
            }
            let start = packet.len();
            packet.resize(start + len, 0);
            s.read_exact(&mut packet[start..])
                .map_err(|e| format!("reading: {e}"))?;
            return Ok(packet);
        }
    }
    Err("remaining length longer than 4 bytes".into())
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len());
        let end = end.ok_or_else(|| format!("cut short at byte {}", self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn varint(&mut self) -> Result<usize, String> {
        let mut len = 0usize;
        for i in 0..4 {
            let b = self.byte()?;
            len |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(len);
            }
        }
        Err("remaining length longer than 4 bytes".into())
    }
    fn binary(&mut self) -> Result<&'a [u8], String> {
        let n = self.take(2)?;
        let n = usize::from(u16::from_be_bytes([n[0], n[1]]));
        self.take(n)
    }
    fn string(&mut self) -> Result<String, String> {
        let b = self.binary()?;
        String::from_utf8(b.to_vec()).map_err(|_| "a string that is not UTF-8".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "dGVzdC1kZXZpY2Utc2VjcmV0"; // "test-device-secret"

    fn secrets() -> HashMap<String, String> {
        HashMap::from([("PRODdev1".to_string(), SECRET.to_string())])
    }

    fn signed(username: &str, method: &str) -> Vec<u8> {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD
            .decode(SECRET)
            .unwrap();
        let mac = match method {
            "hmacsha1" => {
                let mut m = Hmac::<sha1::Sha1>::new_from_slice(&key).unwrap();
                m.update(username.as_bytes());
                hex::encode(m.finalize().into_bytes())
            }
            _ => {
                let mut m = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
                m.update(username.as_bytes());
                hex::encode(m.finalize().into_bytes())
            }
        };
        format!("{mac};{method}").into_bytes()
    }

    fn login(username: &str, password: Vec<u8>) -> Connect {
        Connect {
            level: 4,
            client_id: "PRODdev1".into(),
            username: Some(username.into()),
            password: Some(password),
        }
    }

    /// A CONNECT as a client sends it: 3.1.1, clean session, username and password.
    fn packet(client_id: &str, user: &str, pass: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        let put = |b: &mut Vec<u8>, s: &[u8]| {
            b.extend_from_slice(&(s.len() as u16).to_be_bytes());
            b.extend_from_slice(s);
        };
        put(&mut body, b"MQTT");
        body.extend_from_slice(&[4, 0xc2, 0, 60]);
        put(&mut body, client_id.as_bytes());
        put(&mut body, user.as_bytes());
        put(&mut body, pass);
        let mut p = vec![0x10];
        let mut n = body.len();
        loop {
            let mut b = (n & 0x7f) as u8;
            n >>= 7;
            if n > 0 {
                b |= 0x80;
            }
            p.push(b);
            if n == 0 {
                break;
            }
        }
        p.extend_from_slice(&body);
        p
    }

    #[test]
    fn a_connect_is_read_with_its_login() {
        let c = parse_connect(&packet("PRODdev1", "u", b"p")).unwrap();
        assert_eq!(c.client_id, "PRODdev1");
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_deref(), Some(&b"p"[..]));
    }

    #[test]
    fn a_cut_or_foreign_packet_is_malformed() {
        let p = packet("PRODdev1", "u", b"p");
        assert!(parse_connect(&p[..p.len() - 1]).is_err());
        assert!(parse_connect(&[0x30, 0]).is_err());
        assert!(parse_connect(b"GET / HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn a_correct_signature_is_accepted_with_either_method() {
        let u = "PRODdev1;12010126;abcde;2000000000";
        assert_eq!(
            check(
                &login(u, signed(u, "hmacsha256")),
                &secrets(),
                1_700_000_000
            ),
            Ok(())
        );
        assert_eq!(
            check(&login(u, signed(u, "hmacsha1")), &secrets(), 1_700_000_000),
            Ok(())
        );
    }

    #[test]
    fn a_wrong_secret_is_a_bad_signature() {
        let u = "PRODdev1;12010126;abcde;2000000000";
        let mut other = secrets();
        other.insert("PRODdev1".into(), "b3RoZXItc2VjcmV0".into());
        let r = check(&login(u, signed(u, "hmacsha256")), &other, 1_700_000_000);
        assert_eq!(r, Err(Refusal::BadSignature));
        assert_eq!(Refusal::BadSignature.connack_code(), 4);
    }

    #[test]
    fn an_expired_signature_is_refused() {
        let u = "PRODdev1;12010126;abcde;1600000000";
        let r = check(
            &login(u, signed(u, "hmacsha256")),
            &secrets(),
            1_700_000_000,
        );
        assert!(matches!(
            r,
            Err(Refusal::Expired {
                expiry: 1_600_000_000,
                ..
            })
        ));
    }

    #[test]
    fn a_malformed_username_or_method_is_refused() {
        for u in [
            "PRODdev1;12010126;abcde",
            "OTHERdev;1;a;2000000000",
            "PRODdev1;1;a;soon",
        ] {
            let r = check(&login(u, signed(u, "hmacsha256")), &secrets(), 1);
            assert!(matches!(r, Err(Refusal::BadUsername(_))), "{u}: {r:?}");
        }
        let u = "PRODdev1;12010126;abcde;2000000000";
        let r = check(&login(u, b"abc;md5".to_vec()), &secrets(), 1);
        assert_eq!(r, Err(Refusal::UnknownMethod("md5".into())));
    }

    #[test]
    fn an_unknown_device_or_missing_login_is_refused() {
        let mut c = login("x", b"y".to_vec());
        c.client_id = "NOPEdev".into();
        assert_eq!(
            check(&c, &secrets(), 1),
            Err(Refusal::UnknownDevice("NOPEdev".into()))
        );
        assert_eq!(Refusal::UnknownDevice(String::new()).connack_code(), 5);
        let mut c = login("x", b"y".to_vec());
        c.password = None;
        assert_eq!(check(&c, &secrets(), 1), Err(Refusal::NoPassword));
        c.username = None;
        assert_eq!(check(&c, &secrets(), 1), Err(Refusal::NoUsername));
    }
}
