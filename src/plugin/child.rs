//! The child side of a plugin call (`resagent __plugin MODE`): the only process that
//! loads plugin code, through `sys::plugin_abi` (which holds the `unsafe` of the
//! crossing into C; `lib.rs` denies it everywhere else). The agent starts it (see `host.rs`) with the sealed plugin image as stdin and a socket as
//! stdout; the child first makes itself a plain process (default signal dispositions,
//! an empty mask, no inherited descriptor beyond those three), reads its input from the
//! socket, keeps the socket as its answer channel (JSON lines, see [`ChildMessage`]) and
//! points its own stdout at stderr, so a `printf` in a plugin cannot corrupt the answer.
//! The C structs and symbol names come from `resagent-plugin-sdk`, the one Rust
//! definition of `plugins/include/resagent_plugin.h`.

use super::{CallInput, ChildMessage, Op, Probe, ABI_VERSION, MAX_PLUGIN_TEXT};
use crate::sys::plugin_abi::{self, CallArgs, HostFns, Loaded};
use std::ffi::{c_int, CString};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

/// Size of the `err` buffer handed to the plugin (the header promises at least 256).
const ERR_LEN: usize = 1024;
/// Largest input taken from the agent.
const MAX_INPUT: u64 = 1 << 20;

/// The answer channel to the agent (the socket that was stdout).
static CHANNEL: OnceLock<Mutex<std::fs::File>> = OnceLock::new();
/// The last percent sent: a plugin repeating a percent in a tight loop sends it once.
static LAST_PERCENT: AtomicU32 = AtomicU32::new(u32::MAX);

fn send(m: &ChildMessage) {
    if let Some(c) = CHANNEL.get() {
        let mut f = c.lock().unwrap_or_else(|p| p.into_inner());
        let line = serde_json::to_string(m).expect("message serialises");
        let _ = writeln!(f, "{line}");
    }
}

/// A C string from the plugin, lossily decoded and cut to [`MAX_PLUGIN_TEXT`] bytes.
fn plugin_text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    crate::protocol::truncate_for_log(&s, MAX_PLUGIN_TEXT)
}

/// What the plugin's `host->log`, `host->progress` and `host->atomic_replace` do.
const HOST_FNS: HostFns = HostFns {
    log: host_log,
    progress: host_progress,
    atomic_replace: host_atomic_replace,
};

fn host_log(level: c_int, message: &[u8]) {
    send(&ChildMessage::Log {
        level,
        message: plugin_text(message),
    });
}

fn host_progress(percent: u32) {
    let percent = percent.min(100);
    if LAST_PERCENT.swap(percent, Ordering::Relaxed) != percent {
        send(&ChildMessage::Progress { percent });
    }
}

fn host_atomic_replace(src: &Path, dest: &Path) -> c_int {
    match crate::fsutil::atomic_replace(src, dest) {
        Ok(()) => 0,
        Err(e) => -e.source.raw_os_error().unwrap_or(nix::libc::EIO),
    }
}

/// Fails the call with `reason` (a result the agent reads) and exit status 3.
fn fail(reason: String) -> ExitCode {
    send(&ChildMessage::Result { code: -1, reason });
    ExitCode::from(3)
}

/// Default dispositions for every signal and an empty mask: the agent blocks its
/// signals (a mask survives exec), Rust ignores SIGPIPE and catches SIGSEGV/SIGBUS for
/// its stack-overflow message — a plugin must see none of that (a raised SIGSEGV, SIGBUS
/// or SIGABRT is a crash).
fn plain_signals() {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
    for sig in 1..=nix::libc::SIGRTMAX() {
        if sig == nix::libc::SIGKILL || sig == nix::libc::SIGSTOP {
            continue;
        }
        crate::sys::default_signal(sig);
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Closes every descriptor but 0, 1 and 2: nothing of the agent (its MQTT socket) is
/// left for plugin code to reach.
fn close_inherited() {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds.into_iter().filter(|&fd| fd > 2) {
        // The read_dir handle itself is already closed; closing an fd that is gone is
        // harmless (EBADF).
        let _ = nix::unistd::close(fd);
    }
}

/// Entry point of `resagent __exec COMMAND`: a plain process (default signals, an empty
/// mask, no inherited descriptor beyond 0, 1 and 2) that becomes `/bin/sh -c COMMAND`.
pub(crate) fn exec_plain(command: &str) -> ExitCode {
    use std::os::unix::process::CommandExt;
    plain_signals();
    close_inherited();
    let e = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .exec();
    eprintln!("resagent: cannot run /bin/sh: {e}");
    ExitCode::from(127)
}

/// Signals the supervisor waits for: a child's end, and the ends of the call.
fn supervisor_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(sig);
    }
    set
}

/// How long the plugin has after a SIGTERM before everything of the call is killed
/// (within the agent's 3 s between SIGTERM and SIGKILL to the group).
const SUPERVISOR_GRACE: std::time::Duration = std::time::Duration::from_millis(2500);

/// Makes the call's helpers end with the call, whatever they do — a new session
/// (`setsid`), a double fork: this process becomes their subreaper and runs the plugin in
/// a fork (the worker); when the worker ends (or the call is ended), every descendant
/// left is killed and reaped, then this process exits as the worker did. Returns None
/// in the worker (or when supervision is not possible: the call then runs here, its
/// process group still killed by the agent). The trade-off: one fork per call, against
/// a helper outliving the call (and the agent) with whatever the plugin gave it.
fn supervise() -> Option<ExitCode> {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
    use nix::unistd::ForkResult;
    nix::sys::prctl::set_child_subreaper(true).ok()?;
    let set = supervisor_signals();
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    // Single-threaded here (nothing but the argument parsing ran, no plugin is loaded).
    match crate::sys::fork_single_threaded() {
        Ok(ForkResult::Child) => {
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
            None
        }
        Ok(ForkResult::Parent { child }) => Some(supervise_worker(child, &set)),
        Err(_) => {
            let _ = nix::sys::prctl::set_child_subreaper(false);
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            None
        }
    }
}

/// The supervisor's loop: reaps what ends, waits for the worker, then sweeps.
fn supervise_worker(worker: nix::unistd::Pid, set: &nix::sys::signal::SigSet) -> ExitCode {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut ended: Option<WaitStatus> = None;
    let mut term_at: Option<std::time::Instant> = None;
    loop {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(st @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)))
                    if pid == worker =>
                {
                    ended = Some(st)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if ended.is_some() {
            break;
        }
        if term_at.is_some_and(|t| t.elapsed() >= SUPERVISOR_GRACE) {
            let _ = kill(worker, Signal::SIGKILL);
        }
        let sig = crate::sys::sigtimedwait(set, std::time::Duration::from_millis(200));
        if sig.is_some_and(|sig| sig != nix::libc::SIGCHLD) && term_at.is_none() {
            term_at = Some(std::time::Instant::now());
            let _ = kill(worker, Signal::SIGTERM);
        }
    }
    let swept = sweep_descendants();
    if swept > 0 {
        if let Ok(fd) = crate::sys::dup_owned(1) {
            let channel = std::fs::File::from(fd);
            let _ = CHANNEL.set(Mutex::new(channel));
            send(&ChildMessage::Log {
                level: 2,
                message: format!(
                    "{swept} helper process(es) outlived the call (a new session or a double fork); killed"
                ),
            });
        }
    }
    match ended {
        Some(WaitStatus::Exited(_, code)) => ExitCode::from(code.clamp(0, 255) as u8),
        Some(WaitStatus::Signaled(_, sig, _)) => {
            // Ended as the worker did, so the agent tells a crash from an answer.
            crate::sys::default_signal(sig as i32);
            let _ = nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&nix::sys::signal::SigSet::empty()),
                None,
            );
            let _ = nix::sys::signal::raise(sig);
            ExitCode::from(128u8.saturating_add(sig as u8))
        }
        _ => ExitCode::from(3),
    }
}

/// Kills and reaps every process left below this one (a subreaper: orphans of the call
/// come here), round after round as their own children are orphaned in turn; how many.
fn sweep_descendants() -> usize {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let me = nix::unistd::getpid().as_raw();
    let mut killed = std::collections::HashSet::new();
    for _ in 0..200 {
        let children = children_of(me);
        if children.is_empty() {
            break;
        }
        for pid in children {
            let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            killed.insert(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        while let Ok(st) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if st == WaitStatus::StillAlive {
                break;
            }
        }
    }
    killed.len()
}

/// The processes whose parent is `parent` (from `/proc/PID/stat`: the field after the
/// command name, which may itself hold a `)`).
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Entry point of `resagent __plugin MODE`, MODE `probe` or a hook of [`Op`].
pub(crate) fn main(mode: &str) -> ExitCode {
    plain_signals();
    close_inherited();
    // If the agent dies, so does this child.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    if let Some(code) = supervise() {
        return code;
    }
    let input = match take_channel() {
        Ok(input) => input,
        Err(reason) => return fail(reason),
    };
    plugin_abi::set_host_fns(HOST_FNS);
    // The sealed image the agent checked is our stdin; load exactly that.
    let image = format!("/proc/self/fd/{}", std::io::stdin().as_raw_fd());
    let plugin = match plugin_abi::load(Path::new(&image)) {
        Ok(p) => p,
        Err(reason) => return fail(reason),
    };
    if mode == "probe" {
        send(&ChildMessage::Probe(probe(&plugin)));
        return ExitCode::SUCCESS;
    }
    if plugin.abi != ABI_VERSION {
        return fail(format!(
            "ABI version {}, expected {ABI_VERSION}",
            plugin.abi
        ));
    }
    let Some(op) = Op::from_mode(mode) else {
        return fail(format!("unknown mode `{mode}`"));
    };
    let args = match call_args(&input) {
        Ok(a) => a,
        Err(reason) => return fail(reason),
    };
    match plugin.call(op.hook().symbol, &args, ERR_LEN) {
        Some((code, err)) => {
            send(&ChildMessage::Result {
                code,
                reason: plugin_text(&err),
            });
            ExitCode::SUCCESS
        }
        None => fail(format!("does not export resagent_{mode}")),
    }
}

/// Takes the socket the agent handed over as stdout as the answer channel, reads the
/// call's input from it, and points stdout at stderr (a `printf` in a plugin cannot
/// corrupt the answer).
fn take_channel() -> Result<Vec<u8>, String> {
    let socket = crate::sys::dup_owned(1).map_err(|e| format!("no answer channel: {e}"))?;
    let mut channel = std::fs::File::from(socket);
    let mut input = Vec::new();
    let read = (&mut channel).take(MAX_INPUT).read_to_end(&mut input);
    let _ = CHANNEL.set(Mutex::new(channel));
    let _ = nix::unistd::dup2(2, 1);
    read.map_err(|_| "no input from the agent".to_string())?;
    Ok(input)
}

/// What the plugin says about itself: ABI, name, the hooks it exports, its claims.
fn probe(plugin: &Loaded) -> Probe {
    Probe {
        abi: plugin.abi,
        name: plugin
            .name
            .as_deref()
            .map_or_else(|| "unnamed".to_string(), plugin_text),
        exports: Op::ALL
            .into_iter()
            .filter(|op| plugin.exports(op.hook().symbol))
            .map(|op| op.as_str().to_string())
            .collect(),
        claims: plugin.claims().as_deref().map(plugin_text),
    }
}

/// The C strings of a call from the agent's description of it.
fn call_args(input: &[u8]) -> Result<CallArgs, String> {
    let args: CallInput =
        serde_json::from_slice(input).map_err(|e| format!("bad call description: {e}"))?;
    let c =
        |bytes: &[u8]| CString::new(bytes.to_vec()).map_err(|_| "a string holds NUL".to_string());
    let opt = |s: Option<&[u8]>| s.map(c).transpose();
    let r = &args.resource;
    Ok(CallArgs {
        name: c(r.name.as_bytes())?,
        path: opt(r.path.as_deref().map(|p| p.as_os_str().as_bytes()))?,
        dest: c(r.dest.as_os_str().as_bytes())?,
        md5sum: c(r.md5sum.as_bytes())?,
        size: r.size,
        installed_md5sum: opt(r.installed_md5sum.as_deref().map(str::as_bytes))?,
        config_json: opt(args.config_json.as_deref().map(str::as_bytes))?,
        private_dir: opt(args
            .private_dir
            .as_deref()
            .map(|p| p.as_os_str().as_bytes()))?,
    })
}
