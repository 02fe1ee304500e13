//! systemd's notify protocol, spoken directly (docs/agent.md, "Running under systemd"):
//! datagrams of `KEY=VALUE` lines to the socket named by `NOTIFY_SOCKET` (a path, or
//! `@name` in the abstract namespace) — `READY=1`, `STATUS=…`, `WATCHDOG=1`. No
//! libsystemd: a SysV image has no `NOTIFY_SOCKET`, and then nothing is sent.
//!
//! The watchdog is fed from the coordinator's loop, and only while the download thread,
//! when one runs, has shown a sign of life recently ([`beat`]): a wedged coordinator or
//! a wedged download thread stops the pings, and systemd restarts the agent.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since [`epoch`] of the download thread's last sign of life.
static HEARTBEAT_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The download thread is alive (called between chunks and while it waits on a plugin).
pub(crate) fn beat() {
    HEARTBEAT_MS.store(epoch().elapsed().as_millis() as u64, Ordering::Relaxed);
}

/// How long ago the download thread last showed a sign of life.
pub(crate) fn since_beat() -> Duration {
    let now = epoch().elapsed().as_millis() as u64;
    Duration::from_millis(now.saturating_sub(HEARTBEAT_MS.load(Ordering::Relaxed)))
}

/// The connection to systemd, when there is one.
pub(crate) struct Notifier {
    socket: Option<(UnixDatagram, String)>,
    /// Half of `WATCHDOG_USEC`, when the watchdog is on for this process.
    ping_every: Option<Duration>,
    /// The whole `WATCHDOG_USEC`: how stale the download thread may be.
    watchdog: Option<Duration>,
    last_status: String,
    /// When the status was last computed.
    status_at: Option<Instant>,
}

/// How often the status is computed at most.
const STATUS_EVERY: Duration = Duration::from_millis(500);

impl Notifier {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (if set, it must be ours).
    pub(crate) fn from_env() -> Notifier {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let socket = var("NOTIFY_SOCKET").and_then(|addr| match UnixDatagram::unbound() {
            Ok(s) => Some((s, addr)),
            Err(e) => {
                log::warn!("NOTIFY_SOCKET: {e}");
                None
            }
        });
        let for_us =
            var("WATCHDOG_PID").map_or(true, |p| p.parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = var("WATCHDOG_USEC")
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us && socket.is_some())
            .map(Duration::from_micros);
        Notifier {
            socket,
            ping_every: watchdog.map(|w| w / 2),
            watchdog,
            last_status: String::new(),
            status_at: None,
        }
    }

    fn send(&self, message: &str) {
        let Some((socket, addr)) = &self.socket else {
            return;
        };
        let sent = if let Some(name) = addr.strip_prefix('@') {
            abstract_addr(name).and_then(|a| socket.send_to_addr(message.as_bytes(), &a))
        } else {
            socket.send_to(message.as_bytes(), addr)
        };
        if let Err(e) = sent {
            log::debug!("NOTIFY_SOCKET {addr}: {e}");
        }
    }

    /// `READY=1` with the current status.
    pub(crate) fn ready(&mut self, status: &str) {
        self.last_status = status.to_string();
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// Whether a `STATUS=` is worth computing now: only with a notify socket, and at
    /// most every [`STATUS_EVERY`] (the caller's status reads the journal and a file).
    pub(crate) fn status_due(&self) -> bool {
        self.socket.is_some()
            && self
                .status_at
                .map_or(true, |at| at.elapsed() >= STATUS_EVERY)
    }

    /// `STATUS=…`, when it changed.
    pub(crate) fn status(&mut self, status: &str) {
        self.status_at = Some(Instant::now());
        if status != self.last_status {
            self.last_status = status.to_string();
            self.send(&format!("STATUS={status}"));
        }
    }

    /// How often the coordinator should call [`Notifier::watchdog`] (None: no watchdog).
    pub(crate) fn ping_every(&self) -> Option<Duration> {
        self.ping_every
    }

    /// `WATCHDOG=1`, unless the download thread (`downloading`: one runs) has been
    /// silent for the whole watchdog period; whether a ping was sent.
    pub(crate) fn watchdog(&self, downloading: bool) -> bool {
        let Some(limit) = self.watchdog else {
            return false;
        };
        if downloading && since_beat() > limit {
            log::error!(
                "the download thread has shown no sign of life for {} s; not feeding the watchdog",
                since_beat().as_secs()
            );
            return false;
        }
        self.send("WATCHDOG=1");
        true
    }

    /// `STOPPING=1`.
    pub(crate) fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

fn abstract_addr(name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_age() {
        beat();
        assert!(since_beat() < Duration::from_secs(1));
    }
}
