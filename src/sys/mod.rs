//! Everything `unsafe`, each behind a safe function: the system calls nix does not wrap
//! or marks unsafe (here), and the crossing into plugin code ([`plugin_abi`]). The
//! crate root denies `unsafe` everywhere else, so the compiler keeps the rule; this
//! layer-0 module depends on nothing of ours, so the file system, network and plugin
//! code using it (`fsutil`, `mqtt`, `plugin::child`) stays below or beside it.
#![allow(unsafe_code)]

pub(crate) mod plugin_abi;

use std::os::fd::AsRawFd;

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

/// Restores the default disposition of signal `sig` (no handler of ours). The C library
/// refuses the two real-time signals it reserves for itself (EINVAL): ignored.
pub(crate) fn default_signal(sig: i32) {
    // SAFETY: SIG_DFL installs no handler, so no code of ours can run in a signal
    // context; `signal` touches no memory of ours.
    unsafe { nix::libc::signal(sig, nix::libc::SIG_DFL) };
}

/// How many threads this process has (`/proc/self/status`), if it can be read.
fn threads() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `fork()`, only while this process has a single thread — then the child may run
/// anything (no lock can be held by a thread that does not exist in it). With more
/// threads, or when that cannot be told, it refuses (`EDEADLK`) and nothing forks.
pub(crate) fn fork_single_threaded() -> nix::Result<nix::unistd::ForkResult> {
    if threads() != Some(1) {
        return Err(nix::errno::Errno::EDEADLK);
    }
    // SAFETY: the process is single-threaded (checked just now; only this thread could
    // start another), which is what makes the child's use of locks and the allocator
    // sound.
    unsafe { nix::unistd::fork() }
}

/// Waits at most `timeout` for one of the blocked signals of `set`; the signal taken,
/// or None (the time passed, or an interruption).
pub(crate) fn sigtimedwait(
    set: &nix::sys::signal::SigSet,
    timeout: std::time::Duration,
) -> Option<i32> {
    // `time_t` and the nanoseconds' `c_long` are 32 bits on armv7: converted to whatever
    // the target has (a timeout beyond its range waits its longest). On 64-bit targets
    // the conversions are the identity, which clippy would have us drop.
    #[allow(clippy::useless_conversion, clippy::unnecessary_fallible_conversions)]
    let timeout = nix::libc::timespec {
        tv_sec: timeout
            .as_secs()
            .try_into()
            .unwrap_or(nix::libc::time_t::MAX),
        tv_nsec: timeout.subsec_nanos().try_into().unwrap_or(0),
    };
    // SAFETY: a valid set and timeout, read during the call; no siginfo is wanted (NULL).
    let sig = unsafe { nix::libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &timeout) };
    (sig > 0).then_some(sig)
}

/// A new descriptor for what `fd` refers to, owned by the caller (`dup`).
pub(crate) fn dup_owned(fd: std::os::fd::RawFd) -> nix::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let new = nix::unistd::dup(fd)?;
    // SAFETY: `dup` returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(new) })
}

/// The local second of the day (0..86 400) at Unix second `unix`, as the C library's
/// time zone (`TZ`, else /etc/localtime, read again when it changed) says; None when
/// the conversion fails. `download_windows` and scheduled caps are local times.
pub(crate) fn local_second_of_day(unix: i64) -> Option<u32> {
    extern "C" {
        fn tzset();
    }
    // 32 bits on armv7 (glibc's default there): a time past 2038 has no local time.
    #[allow(clippy::useless_conversion)]
    let t: nix::libc::time_t = unix.try_into().ok()?;
    // SAFETY: `tm` is plain old data, zeroed; `localtime_r` writes only into it and reads
    // `t`. `tzset` reads the environment and the zone file into the C library's own
    // state, which `localtime_r` then uses (glibc's `localtime_r` alone would keep the
    // zone of the first call forever).
    let mut tm: nix::libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe {
        tzset();
        !nix::libc::localtime_r(&t, &mut tm).is_null()
    };
    let (h, m, s) = (tm.tm_hour, tm.tm_min, tm.tm_sec.min(59));
    (ok && (0..24).contains(&h) && (0..60).contains(&m) && s >= 0)
        .then(|| (h * 3600 + m * 60 + s) as u32)
}

/// The local second of the day now; the UTC one when the conversion fails.
pub(crate) fn local_second_now() -> u32 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    local_second_of_day(i64::try_from(unix).unwrap_or(0)).unwrap_or((unix % 86_400) as u32)
}
