//! Real parts for tests, the benchmark and demos: a mosquitto broker on a free loopback
//! port (started, stopped and restarted on the same port), a relay in front of it that
//! times connections, and deterministic test files.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A mosquitto process on loopback.
pub struct Mosquitto {
    pub port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// Plain MQTT on a free port, plus `extra` configuration (more listeners).
    pub fn start(dir: &Path, extra: &str) -> Mosquitto {
        let port = free_port();
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            // `user root`: when the tests run as root (CI), mosquitto would otherwise drop to
            // its own user and could not read the test certificates in our 0700 temp folder.
            format!("user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra}"),
        )
        .unwrap();
        Self::with_conf(port, conf)
    }

    /// Starts mosquitto with a configuration written by the caller (TLS tests).
    pub fn with_conf(port: u16, conf: PathBuf) -> Mosquitto {
        let mut m = Mosquitto {
            port,
            conf,
            child: None,
        };
        m.launch();
        m
    }

    fn launch(&mut self) {
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto runs (apt-get install mosquitto)");
        self.child = Some(child);
        assert!(
            wait_port(self.port, Duration::from_secs(10)),
            "mosquitto did not listen on {}",
            self.port
        );
    }

    pub fn uri(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// The broker's process id (a test may SIGSTOP it: a broker that stops answering).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Same port, new process (a broker restart).
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("mosquitto")
}

/// A small deterministic generator (xorshift64) for tests and the bench: random content,
/// random instants, arbitrary inputs. The state must not be 0.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 for `n` = 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Deterministic pseudo-random content ([`XorShift`]), written in chunks.
pub fn write_random(path: &Path, size: u64, seed: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = XorShift(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
    let mut left = size;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            let bytes = x.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Copies `from` to `to`, each chunk written `delay` after it was read: a reader thread
/// stamps the chunks, a writer thread waits out each stamp.
fn relay_delayed(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    use std::io::Read;
    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((std::time::Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for (at, bytes) in rx {
            std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()));
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

/// A TCP relay on loopback in front of `upstream` (a broker, the storage) that notes
/// when each connection reached it — a fleet's reconnect instants, measured where no
/// message can be lost (while the upstream is down, a client's connection is accepted and
/// dropped: a failed connect) — and that can be taken down itself: then its port refuses
/// connections and those it relayed are cut (a storage server, a router or a link that
/// goes away and comes back).
pub struct Relay {
    pub port: u16,
    connected_at: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    /// Listens on a free loopback port and relays each connection to `upstream`.
    pub fn start(upstream: u16) -> Relay {
        Relay::start_delayed(upstream, Duration::ZERO)
    }

    /// Like [`start`](Self::start), every byte delivered `one_way` after it arrived, in
    /// each direction (a link's latency, not its rate: a cellular link to a broker).
    pub fn start_delayed(upstream: u16, one_way: Duration) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connected_at = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (log, flag) = (connected_at.clone(), down.clone());
        std::thread::spawn(move || {
            let mut listener = Some(listener);
            let mut relayed: Vec<TcpStream> = Vec::new();
            loop {
                if flag.load(Ordering::SeqCst) {
                    // Down: no listener (connections are refused), relayed ones cut.
                    listener = None;
                    for s in relayed.drain(..) {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                if listener.is_none() {
                    listener = TcpListener::bind(("127.0.0.1", port)).ok();
                }
                let Some(l) = &listener else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                // Not blocking, so a `down` is seen while nobody connects.
                l.set_nonblocking(true).unwrap();
                let Ok((client, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue; // the upstream is down: the client sees the connection fail
                };
                log.lock().unwrap().push(unix_ms());
                relayed.push(client.try_clone().unwrap());
                relayed.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    if one_way.is_zero() {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    } else {
                        relay_delayed(from, to, one_way);
                    }
                }
            }
        });
        Relay {
            port,
            connected_at,
            down,
        }
    }

    /// Takes the relay down (`true`) or up again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// `task` (a download task of the local platform) with its URL through this relay.
    pub fn route(&self, task: &serde_json::Value) -> serde_json::Value {
        let mut t = task.clone();
        let url = t["url"].as_str().unwrap_or("").to_string();
        let path = url
            .strip_prefix("http://")
            .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or("/");
        t["url"] = serde_json::json!(format!("http://127.0.0.1:{}{path}", self.port));
        t
    }

    /// When connections reached the upstream, Unix ms, from `since` on.
    pub fn connections_since(&self, since: u64) -> Vec<u64> {
        self.connected_at
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|t| *t >= since)
            .collect()
    }
}
