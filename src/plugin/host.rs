//! The agent's side of one plugin call: starts `resagent __plugin MODE` as a plain
//! process (its own process group, an environment allow-list, the sealed plugin image as
//! stdin, a socket as stdout that carries the call's input one way and the child's JSON
//! lines the other), relays its log lines and progress, and ends it — SIGTERM, then
//! SIGKILL 3 s later, to the whole group — on a timeout or a stop. When the call ends,
//! whatever the plugin left running in its group is killed too, so no helper can hold
//! the agent. The output is read line by line whatever its volume: the answer is never
//! lost behind it, and log lines past a bound are counted rather than logged.

use super::image::Image;
use super::{allowed_env, ChildMessage, Probe, CHILD_COMMAND};
use crate::shutdown::Shutdown;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a plugin's group has between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// Longest line read from the child; a longer one is skipped.
const MAX_LINE: u64 = 64 * 1024;
/// Log lines of one call written to the agent's log; the rest are counted.
const MAX_LOG_LINES: u32 = 200;
/// How often the call's state is looked at when no line arrives.
const TICK: Duration = Duration::from_millis(50);

/// What a child run produced.
#[derive(Debug, Default)]
pub(super) struct ChildRun {
    pub(super) probe: Option<Probe>,
    pub(super) result: Option<(i32, String)>,
    /// How the child ended, in words ("crashed (SIGSEGV)", "timed out after 5 s").
    pub(super) status: String,
    pub(super) interrupted: bool,
}

/// One run of `resagent __plugin MODE` on a plugin image.
#[derive(Clone, Copy)]
pub(super) struct ChildCall<'a> {
    /// resagent's own executable.
    pub(super) exe: &'a Path,
    pub(super) image: &'a Image,
    /// Names the plugin in the log lines relayed.
    pub(super) label: &'a str,
    pub(super) mode: &'a str,
    /// JSON for the child (nothing for a probe).
    pub(super) input: &'a [u8],
    pub(super) timeout: Duration,
    pub(super) shutdown: &'a Shutdown,
}

/// Runs `call`; `on_progress` gets the plugin's progress.
pub(super) fn run_child(
    call: &ChildCall,
    on_progress: impl FnMut(u32),
) -> Result<ChildRun, String> {
    let (mut child, ours) = spawn(call)?;
    let group = Pid::from_raw(child.id() as i32);
    // The input is small (a resource description); a child that dies before reading
    // it is reported through its exit status.
    let _ = (&ours).write_all(call.input);
    let _ = ours.shutdown(std::net::Shutdown::Write);

    let (tx, rx) = mpsc::sync_channel::<ChildMessage>(256);
    let reading = ours.try_clone().map_err(|e| e.to_string())?;
    let reader = std::thread::Builder::new()
        .name("plugin-io".into())
        .spawn(move || read_lines(reading, &tx))
        .map_err(|e| e.to_string())?;

    let mut collect = Collect {
        label: call.label,
        logged: 0,
        on_progress,
        run: ChildRun::default(),
    };
    let ended = wait_for_end(call, group, &rx, &mut collect);
    if ended.is_some() {
        // SIGTERM to the whole group; SIGKILL once the grace is over.
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + TERM_GRACE;
        while !leader_exited(group) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Whatever is left of the group (helpers the plugin forked) goes now, before the
    // leader is reaped, so the group's id cannot have been reused.
    let _ = killpg(group, Signal::SIGKILL);
    let status = child.wait().map_err(|e| e.to_string())?;
    // Everyone holding the socket is gone; a reader still blocked (a descriptor passed
    // out of the group) is released by closing our side.
    let deadline = Instant::now() + Duration::from_secs(1);
    while !reader.is_finished() && Instant::now() < deadline {
        while let Ok(m) = rx.try_recv() {
            collect.take(m);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = ours.shutdown(std::net::Shutdown::Both);
    while let Ok(m) = rx.recv() {
        collect.take(m);
    }
    let _ = reader.join();
    Ok(collect.finish(ended, status))
}

/// Starts `resagent __plugin MODE` as a plain child in its own process group: the sealed
/// image as stdin, one end of a socket pair as stdout (returned: the other end), the
/// environment cut to the allow-list.
fn spawn(call: &ChildCall) -> Result<(std::process::Child, UnixStream), String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let stdin = call.image.dup().map_err(|e| format!("plugin image: {e}"))?;
    let child = Command::new(call.exe)
        .arg(CHILD_COMMAND)
        .arg(call.mode)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        .stderr(Stdio::inherit())
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| k.to_str().is_some_and(allowed_env)))
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", call.exe.display()))?;
    Ok((child, ours))
}

/// Takes the child's messages until its leader ends (None), the agent stops
/// (`Some("")`) or the call times out (`Some(reason)`).
fn wait_for_end(
    call: &ChildCall,
    group: Pid,
    rx: &mpsc::Receiver<ChildMessage>,
    collect: &mut Collect<impl FnMut(u32)>,
) -> Option<String> {
    let started = Instant::now();
    loop {
        // Waiting on a plugin is a sign of life for the watchdog; its timeout is what
        // bounds the call.
        crate::notify::beat();
        match rx.recv_timeout(TICK) {
            Ok(m) => {
                collect.take(m);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The reader is done (all output read): wait without spinning.
            Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(TICK),
        }
        if leader_exited(group) {
            return None;
        }
        if call.shutdown.is_set() {
            collect.run.interrupted = true;
            return Some(String::new());
        }
        if started.elapsed() >= call.timeout {
            return Some(format!("timed out after {} s", call.timeout.as_secs()));
        }
    }
}

/// What a call's messages amount to: its log lines (bounded), progress, probe, result.
struct Collect<'a, P: FnMut(u32)> {
    label: &'a str,
    logged: u32,
    on_progress: P,
    run: ChildRun,
}

impl<P: FnMut(u32)> Collect<'_, P> {
    fn take(&mut self, m: ChildMessage) {
        match m {
            ChildMessage::Log { level, message } => {
                self.logged += 1;
                if self.logged <= MAX_LOG_LINES {
                    let level = match level {
                        1 => log::Level::Error,
                        2 => log::Level::Warn,
                        3 => log::Level::Info,
                        _ => log::Level::Debug,
                    };
                    log::log!(level, "[{}] {message}", self.label);
                }
            }
            ChildMessage::Progress { percent } => (self.on_progress)(percent.min(100)),
            ChildMessage::Probe(p) => self.run.probe = Some(p),
            ChildMessage::Result { code, reason } => self.run.result = Some((code, reason)),
        }
    }

    /// The run, its status said by why it `ended` or else by the exit `status`.
    fn finish(mut self, ended: Option<String>, status: std::process::ExitStatus) -> ChildRun {
        if self.logged > MAX_LOG_LINES {
            log::info!(
                "[{}] {} more log lines of this call not shown",
                self.label,
                self.logged - MAX_LOG_LINES
            );
        }
        self.run.status = match ended {
            Some(reason) if !reason.is_empty() => reason,
            _ => describe(status),
        };
        self.run
    }
}

/// Whether the group's leader has ended (without reaping it).
fn leader_exited(pid: Pid) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    !matches!(waitid(Id::Pid(pid), flags), Ok(WaitStatus::StillAlive))
}

/// Reads the child's JSON lines until the end, forwarding each; a line longer than
/// [`MAX_LINE`] or not a message is skipped.
fn read_lines(stream: UnixStream, tx: &mpsc::SyncSender<ChildMessage>) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.by_ref().take(MAX_LINE).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') && line.len() as u64 >= MAX_LINE {
            // Skip the rest of an over-long line.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                match reader.by_ref().take(MAX_LINE).read_until(b'\n', &mut rest) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if rest.last() == Some(&b'\n') => break,
                    Ok(_) => {}
                }
            }
            log::debug!("plugin child: a line over {MAX_LINE} bytes skipped");
            continue;
        }
        match serde_json::from_slice::<ChildMessage>(&line) {
            Ok(m) => {
                if tx.send(m).is_err() {
                    return;
                }
            }
            Err(_) => log::debug!("plugin child: unexpected line"),
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        let name = Signal::try_from(sig)
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
    fn the_environment_allow_list() {
        for ok in [
            "PATH",
            "LANG",
            "LC_ALL",
            "LC_CTYPE",
            "TZ",
            "RESAGENT_CONFIG",
        ] {
            assert!(allowed_env(ok), "{ok}");
        }
        for no in [
            "https_proxy",
            "HOME",
            "RUST_LOG",
            "LD_PRELOAD",
            "RESAGENT_X",
            "NOTIFY_SOCKET",
        ] {
            assert!(!allowed_env(no), "{no}");
        }
    }
}
