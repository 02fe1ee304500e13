//! The child side of a plugin call (`resagent __plugin MODE`): the only place that loads
//! plugin code and crosses into C, so all of resagent's `unsafe` lives here — with one
//! small exceptions kept here too, so that it stays the only file: two system calls nix
//! does not wrap ([`set_tcp_nodelay`] for the MQTT socket Paho opens,
//! [`start_writeback`] for files being written). The agent
//! starts it (see `host.rs`) with the sealed plugin image as stdin and a socket as
//! stdout; the child first makes itself a plain process (default signal dispositions,
//! an empty mask, no inherited descriptor beyond those three), reads its input from the
//! socket, keeps the socket as its answer channel (JSON lines, see [`ChildMessage`]) and
//! points its own stdout at stderr, so a `printf` in a plugin cannot corrupt the answer.
//! The C structs and symbol names come from `resagent-plugin-sdk`, the one Rust
//! definition of `plugins/include/resagent_plugin.h`.

use super::{CallInput, ChildMessage, Op, Probe, ABI_VERSION, MAX_PLUGIN_TEXT};
use resagent_plugin_sdk::{
    AbiFn, CallFn, Host, NameFn, Resource, SYMBOL_ABI, SYMBOL_CLAIMS, SYMBOL_CONFIRM,
    SYMBOL_INSTALL, SYMBOL_INSTALLED, SYMBOL_NAME, SYMBOL_VALIDATE,
};
use std::ffi::{c_char, c_int, CStr, CString};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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

extern "C" fn host_log(level: c_int, message: *const c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: the header requires a NUL-terminated string valid for the call.
    let text = unsafe { CStr::from_ptr(message) };
    send(&ChildMessage::Log {
        level,
        message: plugin_text(text.to_bytes()),
    });
}

extern "C" fn host_progress(percent: u32) {
    let percent = percent.min(100);
    if LAST_PERCENT.swap(percent, Ordering::Relaxed) != percent {
        send(&ChildMessage::Progress { percent });
    }
}

extern "C" fn host_atomic_replace(src: *const c_char, dest: *const c_char) -> c_int {
    if src.is_null() || dest.is_null() {
        return -nix::libc::EINVAL;
    }
    // SAFETY: the header requires NUL-terminated strings valid for the call.
    let (src, dest) = unsafe { (CStr::from_ptr(src), CStr::from_ptr(dest)) };
    let src = Path::new(std::ffi::OsStr::from_bytes(src.to_bytes()));
    let dest = Path::new(std::ffi::OsStr::from_bytes(dest.to_bytes()));
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
        // SAFETY: SIG_DFL installs no handler of ours; the process is single-threaded
        // here, before any plugin code runs. The C library refuses the two real-time
        // signals it reserves for itself (EINVAL), which is fine: no plugin uses them.
        unsafe { nix::libc::signal(sig, nix::libc::SIG_DFL) };
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

/// Entry point of `resagent __plugin MODE`, MODE one of probe, validate, install,
/// installed, confirm.
pub(crate) fn main(mode: &str) -> ExitCode {
    plain_signals();
    close_inherited();
    // If the agent dies, so does this child.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    // SAFETY: descriptor 1 is the socket the agent handed over as stdout; it is owned
    // here from now on (a duplicate stays as fd 1 until it is pointed at stderr).
    let socket = match nix::unistd::dup(1) {
        // SAFETY: `dup` returned a new descriptor that nothing else owns.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        Err(e) => {
            eprintln!("resagent plugin child: {e}");
            return ExitCode::from(3);
        }
    };
    let mut channel = std::fs::File::from(socket);
    let mut input = Vec::new();
    let read = (&mut channel).take(MAX_INPUT).read_to_end(&mut input);
    let _ = CHANNEL.set(Mutex::new(channel));
    let _ = nix::unistd::dup2(2, 1);
    if read.is_err() {
        return fail("no input from the agent".into());
    }

    // The sealed image the agent checked is our stdin; load exactly that.
    let image = format!("/proc/self/fd/{}", std::io::stdin().as_raw_fd());
    // SAFETY: loading runs the library's initialisers; running untrusted plugin code is
    // the purpose of this child process, which the agent isolates and times out.
    let lib = match unsafe { libloading::Library::new(&image) } {
        Ok(l) => l,
        Err(e) => return fail(format!("cannot load: {e}")),
    };
    // SAFETY: the symbol types are those of resagent_plugin.h; a plugin exporting these
    // names with other signatures breaks the ABI contract it claims by exporting them.
    let (abi_fn, name_fn) =
        unsafe { (lib.get::<AbiFn>(SYMBOL_ABI), lib.get::<NameFn>(SYMBOL_NAME)) };
    let (abi_fn, name_fn) = match (abi_fn, name_fn) {
        (Ok(a), Ok(n)) => (a, n),
        (Err(_), _) => return fail("does not export resagent_plugin_abi".into()),
        (_, Err(_)) => return fail("does not export resagent_plugin_name".into()),
    };
    // SAFETY: both are plain C functions without arguments (resagent_plugin.h).
    let (abi, name_ptr) = unsafe { (abi_fn(), name_fn()) };
    let name = if name_ptr.is_null() {
        "unnamed".to_string()
    } else {
        // SAFETY: the header requires a static NUL-terminated name.
        plugin_text(unsafe { CStr::from_ptr(name_ptr) }.to_bytes())
    };
    // SAFETY: as above, the types are those of the header.
    let entry = |symbol: &[u8]| unsafe { lib.get::<CallFn>(symbol) }.ok();
    let (validate, install) = (entry(SYMBOL_VALIDATE), entry(SYMBOL_INSTALL));
    let (installed, confirm) = (entry(SYMBOL_INSTALLED), entry(SYMBOL_CONFIRM));
    if mode == "probe" {
        // SAFETY: as above.
        let claims = match unsafe { lib.get::<NameFn>(SYMBOL_CLAIMS) } {
            // SAFETY: a plain C function without arguments returning a static string
            // (resagent_plugin.h) or NULL.
            Ok(f) => match unsafe { f() } {
                p if p.is_null() => None,
                // SAFETY: as above, NUL-terminated and static.
                p => Some(plugin_text(unsafe { CStr::from_ptr(p) }.to_bytes())),
            },
            Err(_) => None,
        };
        send(&ChildMessage::Probe(Probe {
            abi,
            name,
            validate: validate.is_some(),
            install: install.is_some(),
            installed: installed.is_some(),
            confirm: confirm.is_some(),
            claims,
        }));
        return ExitCode::SUCCESS;
    }
    if abi != ABI_VERSION {
        return fail(format!("ABI version {abi}, expected {ABI_VERSION}"));
    }
    let Some(op) = Op::from_mode(mode) else {
        return fail(format!("unknown mode `{mode}`"));
    };
    let function = match op {
        Op::Validate => validate,
        Op::Install => install,
        Op::Installed => installed,
        Op::Confirm => confirm,
    };
    let Some(function) = function else {
        return fail(format!("does not export resagent_{mode}"));
    };
    let args: CallInput = match serde_json::from_slice(&input) {
        Ok(a) => a,
        Err(e) => return fail(format!("bad call description: {e}")),
    };
    let c =
        |bytes: &[u8]| CString::new(bytes.to_vec()).map_err(|_| "a string holds NUL".to_string());
    let opt = |s: Option<&[u8]>| s.map(c).transpose();
    let r = &args.resource;
    let strings = (|| {
        Ok::<_, String>((
            c(r.name.as_bytes())?,
            opt(r.path.as_deref().map(|p| p.as_os_str().as_bytes()))?,
            c(r.dest.as_os_str().as_bytes())?,
            c(r.md5sum.as_bytes())?,
            opt(r.installed_md5sum.as_deref().map(str::as_bytes))?,
            opt(args.config_json.as_deref().map(str::as_bytes))?,
            opt(args
                .private_dir
                .as_deref()
                .map(|p| p.as_os_str().as_bytes()))?,
        ))
    })();
    let (name_c, path_c, dest_c, md5_c, installed_c, config_c, private_c) = match strings {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    let resource = Resource {
        struct_size: std::mem::size_of::<Resource>() as u32,
        name: name_c.as_ptr(),
        path: ptr(&path_c),
        dest: dest_c.as_ptr(),
        md5sum: md5_c.as_ptr(),
        size: r.size,
        installed_md5sum: ptr(&installed_c),
    };
    let host = Host {
        struct_size: std::mem::size_of::<Host>() as u32,
        log: host_log,
        progress: host_progress,
        atomic_replace: host_atomic_replace,
        config_json: ptr(&config_c),
        private_dir: ptr(&private_c),
    };
    let mut err = vec![0u8; ERR_LEN];
    // SAFETY: host, resource and the strings they point to outlive the call; err is
    // ERR_LEN writable bytes, and ERR_LEN is what the plugin is told.
    let code = unsafe { function(&host, &resource, err.as_mut_ptr().cast::<c_char>(), ERR_LEN) };
    let end = err.iter().position(|&b| b == 0).unwrap_or(ERR_LEN);
    send(&ChildMessage::Result {
        code,
        reason: plugin_text(&err[..end]),
    });
    ExitCode::SUCCESS
}

/// Turns Nagle's algorithm off on the socket `fd` (found by `mqtt::nodelay_to`). Paho C
/// leaves it on, so a PUBLISH written right after a PUBACK waits for the broker's
/// delayed ACK of that PUBACK: ~40 ms for every answer of the protocol.
pub(crate) fn set_tcp_nodelay(fd: std::os::fd::RawFd) -> nix::Result<()> {
    // SAFETY: `fd` was just listed in /proc/self/fd as a socket; borrowing it for one
    // setsockopt cannot touch memory. Should Paho close it meanwhile (or the number be
    // reused), the call fails (EBADF/ENOTSOCK) or sets a harmless option on a socket.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::TcpNoDelay, &true)
}

/// Starts the write-back of every dirty page of `file` without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): the disk works while the transfer goes
/// on and the one fsync at the end has little left. Not a durability point.
pub(crate) fn start_writeback(file: &std::fs::File) -> std::io::Result<()> {
    sync_range(file, 0, 0, nix::libc::SYNC_FILE_RANGE_WRITE)
}

/// Writes back `len` bytes of `file` from `offset` and waits until they are on the disk
/// (`sync_file_range` with both waits): afterwards the range's pages are clean and can
/// be dropped from the page cache. Not a durability point either (no metadata, no
/// disk cache flush).
pub(crate) fn finish_writeback(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    use nix::libc::{
        SYNC_FILE_RANGE_WAIT_AFTER, SYNC_FILE_RANGE_WAIT_BEFORE, SYNC_FILE_RANGE_WRITE,
    };
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    sync_range(
        file,
        offset,
        len,
        SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER,
    )
}

fn sync_range(file: &std::fs::File, offset: i64, len: i64, flags: u32) -> std::io::Result<()> {
    // SAFETY: the descriptor belongs to `file`, borrowed for the call; the call reads
    // no memory of ours.
    let r = unsafe { nix::libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
