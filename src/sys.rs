//! The system calls nix does not wrap, each behind a safe function: the only `unsafe`
//! outside the plugin child (`lib.rs` denies it everywhere else). Kept apart so that
//! the file system and network code using them (`fsutil`, `mqtt`) depends on nothing
//! above it.
#![allow(unsafe_code)]

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
