//! Which daemon owns a `state_dir`, and how the CLI finds it (docs/agent.md, "What never
//! wedges"). The daemon holds an exclusive `flock` on `state_dir/resagent.lock` for its
//! whole life and writes its pid into that file: a second daemon on the same state exits
//! naming the holder, and the lock — not a pid that may have been reused — says which
//! process is the daemon. The pid file (`pid_file`) is only a pointer for people and init
//! scripts: written at start, removed at exit only while it still holds our pid, and a
//! stale one never stops `run` nor makes `check` or `upload` signal a stranger.

use crate::fsutil::{self, FsError};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The lock file's name in `state_dir`.
const LOCK_FILE: &str = "resagent.lock";

/// Errors finding or claiming the daemon.
#[derive(Debug, Error)]
pub(crate) enum PidError {
    /// Another daemon holds the state's lock.
    #[error("resagent already runs with pid {pid} on {} (it holds {})", state_dir.display(), lock.display())]
    AlreadyRunning {
        pid: i32,
        state_dir: PathBuf,
        lock: PathBuf,
    },
    /// No daemon holds the lock.
    #[error("no resagent daemon runs ({why})")]
    NotRunning { why: String },
    /// The lock or pid file could not be opened or written.
    #[error("{0}")]
    Write(#[from] FsError),
    /// Signalling the daemon failed.
    #[error("cannot signal resagent (pid {pid}): {source}")]
    Signal { pid: i32, source: nix::Error },
}

fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join(LOCK_FILE)
}

/// Opens the lock file read-only (creating it first when asked): the lock is held on a
/// read-only descriptor, so the daemon keeps nothing open for writing in `state_dir` (a
/// file system with a file open for writing cannot be remounted read-only).
fn open_lock(path: &Path, create: bool) -> std::io::Result<File> {
    if create {
        drop(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .mode(0o644)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(path)?,
        );
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
}

fn pid_in(file: &mut File) -> Option<i32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok().filter(|p| *p > 0)
}

/// The pid of the daemon holding `state_dir`'s lock, if one does.
pub(crate) fn running(state_dir: &Path) -> Result<i32, PidError> {
    let path = lock_path(state_dir);
    let not_running = |why: String| PidError::NotRunning { why };
    let file =
        open_lock(&path, false).map_err(|e| not_running(format!("{}: {e}", path.display())))?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        // We could lock it: nobody holds it (ours is released when dropped).
        Ok(_) => Err(not_running(format!("nothing holds {}", path.display()))),
        Err((mut file, nix::Error::EWOULDBLOCK)) => pid_in(&mut file)
            .ok_or_else(|| not_running(format!("{} names no pid yet", path.display()))),
        Err((_, e)) => Err(not_running(format!("{}: {e}", path.display()))),
    }
}

/// Sends `signal` to the daemon holding `state_dir` (never to another process).
pub(crate) fn signal_daemon(state_dir: &Path, signal: Signal) -> Result<i32, PidError> {
    let pid = running(state_dir)?;
    kill(Pid::from_raw(pid), signal).map_err(|source| PidError::Signal { pid, source })?;
    Ok(pid)
}

/// The daemon's claim on its state: the held lock and the pid file, given up on drop.
pub(crate) struct Instance {
    _lock: Flock<File>,
    pid_file: PathBuf,
}

impl Instance {
    /// Takes `state_dir`'s lock (or names the daemon holding it) and writes `pid_file`.
    pub(crate) fn claim(state_dir: &Path, pid_file: &Path) -> Result<Instance, PidError> {
        let path = lock_path(state_dir);
        let file = open_lock(&path, true).map_err(|e| FsError::new("open", &path, e))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, nix::Error::EWOULDBLOCK)) => {
                return Err(PidError::AlreadyRunning {
                    pid: pid_in(&mut file).unwrap_or(0),
                    state_dir: state_dir.to_path_buf(),
                    lock: path,
                })
            }
            Err((_, e)) => return Err(FsError::new("flock", &path, e.into()).into()),
        };
        let me = std::process::id();
        // The pid goes in through a second, short-lived descriptor.
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{me}"))
            .map_err(|e| FsError::new("write", &path, e))?;
        if let Some(dir) = pid_file.parent().filter(|d| !d.as_os_str().is_empty()) {
            fsutil::ensure_dir(dir, 0o755)?;
        }
        // A stale pid file (a crash, a reused pid) is simply replaced.
        fsutil::atomically_write_file_sync(pid_file, format!("{me}\n").as_bytes(), 0o644)?;
        Ok(Instance {
            _lock: lock,
            pid_file: pid_file.to_path_buf(),
        })
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Only our own pid file: another daemon may have been given this path since.
        let ours = std::fs::read_to_string(&self.pid_file)
            .is_ok_and(|t| t.trim() == std::process::id().to_string());
        if ours {
            if let Err(e) = std::fs::remove_file(&self.pid_file) {
                log::warn!("cannot remove pid file {}: {e}", self.pid_file.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_names_the_daemon_and_a_second_claim_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path();
        let pid_file = d.path().join("run/resagent.pid");
        assert!(matches!(running(state), Err(PidError::NotRunning { .. })));
        {
            let _i = Instance::claim(state, &pid_file).unwrap();
            let me = std::process::id() as i32;
            assert_eq!(
                std::fs::read_to_string(&pid_file).unwrap().trim(),
                me.to_string()
            );
            // A second open file description is a second holder for flock.
            match Instance::claim(state, &d.path().join("other.pid")) {
                Err(PidError::AlreadyRunning { pid, .. }) => assert_eq!(pid, me),
                other => panic!("{:?}", other.err()),
            }
        }
        assert!(!pid_file.exists(), "removed at exit");
        assert!(matches!(running(state), Err(PidError::NotRunning { .. })));
    }

    #[test]
    fn a_stale_or_foreign_pid_file_is_neither_a_daemon_nor_removed() {
        let d = tempfile::tempdir().unwrap();
        let pid_file = d.path().join("x.pid");
        std::fs::write(&pid_file, "1\n").unwrap();
        assert!(matches!(
            running(d.path()),
            Err(PidError::NotRunning { .. })
        ));
        let i = Instance::claim(d.path(), &pid_file).unwrap();
        std::fs::write(&pid_file, "424242\n").unwrap();
        drop(i);
        assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), "424242\n");
    }
}
