//! The device's own say before an install and before a reboot (docs/agent.md, "When the device downloads", gates):
//! `install_gate_command` is asked before the validate/install chain, and
//! `reboot_gate_command` before `reboot_command`, each through `/bin/sh -c` with the
//! resource in its environment (`RESAGENT_NAME`, `RESAGENT_PATH`, `RESAGENT_MD5`,
//! `RESAGENT_GATE`). Exit 0 goes on; 75 (`EX_TEMPFAIL`) is "not now" (asked again after
//! `gate_retry_s`); anything else refuses, and the task fails -5 with the gate's first
//! line. [`verdict`] is the pure rule (a test each); [`ask`] runs the command like
//! `reboot_command` (a process group of its own, the environment's allow-list), bounded
//! in time (`plugin_timeout_s`) and output (4 KiB read of each stream), and kills it —
//! the whole group — when the agent stops, so a gate never blocks a stop.

use crate::shutdown::Shutdown;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// "Not now": sysexits.h's `EX_TEMPFAIL`.
pub(crate) const EX_TEMPFAIL: i32 = 75;
/// Bytes read of each of the gate's output streams; the rest is read and dropped.
const MAX_OUTPUT: usize = 4096;
/// Longest line taken from a gate into a report.
const MAX_LINE: usize = 200;

/// Which gate: in messages and in `RESAGENT_GATE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Install,
    Reboot,
}

impl Which {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Which::Install => "install",
            Which::Reboot => "reboot",
        }
    }
}

/// How the gate's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(i32),
    /// Killed after this long.
    TimedOut(Duration),
    /// It could not be started (the reason).
    NotStarted(String),
}

/// What the gate said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Go,
    /// Not now: the reason (its first line of output).
    Later(String),
    /// No: the reason, for the `fail -5`.
    Refused(String),
}

/// The rule: exit 0 goes, 75 waits, anything else (a signal, a timeout, a gate that
/// cannot run) refuses; the reason is the first non-empty line of standard output, else
/// of standard error, else what the exit was.
pub(crate) fn verdict(which: Which, exit: &Exit, stdout: &[u8], stderr: &[u8]) -> Verdict {
    let line = first_line(stdout).or_else(|| first_line(stderr));
    let gate = which.as_str();
    match exit {
        Exit::Code(0) => Verdict::Go,
        Exit::Code(EX_TEMPFAIL) => Verdict::Later(
            line.unwrap_or_else(|| format!("{gate} gate: not now (exit {EX_TEMPFAIL})")),
        ),
        Exit::Code(c) => Verdict::Refused(match line {
            Some(l) => format!("{gate} gate refused (exit {c}): {l}"),
            None => format!("{gate} gate refused (exit {c})"),
        }),
        Exit::Signal(s) => Verdict::Refused(format!("{gate} gate killed by signal {s}")),
        Exit::TimedOut(t) => Verdict::Refused(format!(
            "{gate} gate gave no answer within {} s; killed",
            t.as_secs()
        )),
        Exit::NotStarted(why) => Verdict::Refused(format!("{gate} gate could not run: {why}")),
    }
}

/// The first non-empty line of `out`, trimmed, control characters shown as `?`, at most
/// [`MAX_LINE`] characters.
fn first_line(out: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(out);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    Some(
        line.chars()
            .take(MAX_LINE)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect(),
    )
}

/// The agent is stopping: the gate was killed, nothing decided.
#[derive(Debug)]
pub(crate) struct Stopped;

/// Runs `command` with `env` and judges it. Bounded by `timeout`; a stop kills it.
pub(crate) fn ask(
    command: &str,
    which: Which,
    env: &[(&str, String)],
    timeout: Duration,
    shutdown: &Shutdown,
) -> Result<Verdict, Stopped> {
    let mut cmd = crate::plugin::plain_command(command);
    cmd.env("RESAGENT_GATE", which.as_str())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Ok(verdict(which, &Exit::NotStarted(e.to_string()), &[], &[])),
    };
    let readers = [
        child.stdout.take().map(|s| bounded_reader(Box::new(s))),
        child.stderr.take().map(|s| bounded_reader(Box::new(s))),
    ];
    let started = Instant::now();
    let exit = loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                use std::os::unix::process::ExitStatusExt;
                break match (st.code(), st.signal()) {
                    (Some(c), _) => Exit::Code(c),
                    (None, Some(s)) => Exit::Signal(s),
                    (None, None) => Exit::Signal(0),
                };
            }
            Ok(None) => {}
            Err(e) => break Exit::NotStarted(e.to_string()),
        }
        if shutdown.is_set() {
            kill_group(&mut child);
            return Err(Stopped);
        }
        if started.elapsed() >= timeout {
            kill_group(&mut child);
            break Exit::TimedOut(timeout);
        }
        shutdown.sleep(Duration::from_millis(20));
    };
    // The streams end with the process (or its killed group); a grandchild that kept
    // them open is not waited for beyond a second.
    let [out, err] = readers.map(|r| {
        r.and_then(|rx| rx.recv_timeout(Duration::from_secs(1)).ok())
            .unwrap_or_default()
    });
    Ok(verdict(which, &exit, &out, &err))
}

/// Reads at most [`MAX_OUTPUT`] bytes of `stream` on a thread (dropping the rest, so
/// the gate never blocks on a full pipe); the bytes arrive on the channel at its end.
fn bounded_reader(mut stream: Box<dyn Read + Send>) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = std::thread::Builder::new()
        .name("gate-output".into())
        .spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 1024];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            let _ = tx.send(kept);
        });
    rx
}

/// SIGKILL to the gate's process group (it is the leader), then reaps it.
fn kill_group(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_0_goes() {
        assert_eq!(
            verdict(Which::Install, &Exit::Code(0), b"ok\n", b""),
            Verdict::Go
        );
    }

    #[test]
    fn exit_75_waits_with_the_first_line() {
        assert_eq!(
            verdict(
                Which::Install,
                &Exit::Code(75),
                b"\n  milling until 14:00 \nmore",
                b""
            ),
            Verdict::Later("milling until 14:00".into())
        );
        assert_eq!(
            verdict(Which::Reboot, &Exit::Code(75), b"", b"busy\n"),
            Verdict::Later("busy".into()),
            "standard error when standard output is silent"
        );
        assert_eq!(
            verdict(Which::Reboot, &Exit::Code(75), b"", b""),
            Verdict::Later("reboot gate: not now (exit 75)".into())
        );
    }

    #[test]
    fn any_other_end_refuses_with_the_reason() {
        assert_eq!(
            verdict(Which::Install, &Exit::Code(3), b"door open\n", b""),
            Verdict::Refused("install gate refused (exit 3): door open".into())
        );
        assert_eq!(
            verdict(Which::Install, &Exit::Signal(9), b"", b""),
            Verdict::Refused("install gate killed by signal 9".into())
        );
        assert!(matches!(
            verdict(Which::Reboot, &Exit::TimedOut(Duration::from_secs(30)), b"", b""),
            Verdict::Refused(r) if r.contains("within 30 s")
        ));
        assert!(matches!(
            verdict(Which::Install, &Exit::NotStarted("ENOENT".into()), b"", b""),
            Verdict::Refused(r) if r.contains("could not run: ENOENT")
        ));
    }

    #[test]
    fn a_line_is_bounded_and_has_no_control_characters() {
        let long = vec![b'x'; 5000];
        let Verdict::Later(l) = verdict(Which::Install, &Exit::Code(75), &long, b"") else {
            panic!()
        };
        assert_eq!(l.len(), MAX_LINE);
        let Verdict::Later(l) = verdict(Which::Install, &Exit::Code(75), b"a\x1b[31mb", b"") else {
            panic!()
        };
        assert_eq!(l, "a?[31mb");
    }
}
