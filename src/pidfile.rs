//! The pid file: written by `run`, removed on exit, read by the CLI to find the daemon.

use crate::fsutil::{self, FsError};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Errors finding or claiming the daemon's pid file.
#[derive(Debug, Error)]
pub(crate) enum PidError {
    /// Another daemon is alive with the pid in the file.
    #[error("resagent already runs with pid {pid} ({})", path.display())]
    AlreadyRunning { pid: i32, path: PathBuf },
    /// No daemon runs: no pid file, or its process is gone.
    #[error("no resagent daemon runs (pid file {}: {why})", path.display())]
    NotRunning { path: PathBuf, why: String },
    /// The pid file could not be written.
    #[error("pid file: {0}")]
    Write(#[from] FsError),
    /// Signalling the daemon failed.
    #[error("cannot signal resagent (pid {pid}): {source}")]
    Signal { pid: i32, source: nix::Error },
}

/// The pid of the running daemon, if the file names a live process.
pub(crate) fn running(path: &Path) -> Result<i32, PidError> {
    let not_running = |why: String| PidError::NotRunning {
        path: path.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| not_running(e.to_string()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| not_running(format!("`{}` is not a pid", text.trim())))?;
    if pid <= 0 {
        return Err(not_running(format!("`{pid}` is not a pid")));
    }
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::Error::EPERM) => Ok(pid),
        Err(_) => Err(not_running(format!("process {pid} is gone"))),
    }
}

/// Sends `signal` to the running daemon.
pub(crate) fn signal_daemon(path: &Path, signal: Signal) -> Result<i32, PidError> {
    let pid = running(path)?;
    kill(Pid::from_raw(pid), signal).map_err(|source| PidError::Signal { pid, source })?;
    Ok(pid)
}

/// The claimed pid file; removed when dropped.
pub(crate) struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes our pid, unless another live daemon holds the file.
    pub(crate) fn claim(path: &Path) -> Result<PidFile, PidError> {
        if let Ok(pid) = running(path) {
            if pid != std::process::id() as i32 {
                return Err(PidError::AlreadyRunning {
                    pid,
                    path: path.to_path_buf(),
                });
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fsutil::ensure_dir(dir, 0o755)?;
        }
        let pid = format!("{}\n", std::process::id());
        fsutil::atomically_write_file_sync(path, pid.as_bytes(), 0o644)?;
        Ok(PidFile {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!("cannot remove pid file {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_writes_and_drop_removes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run/resagent.pid");
        {
            let _f = PidFile::claim(&p).unwrap();
            assert_eq!(running(&p).unwrap(), std::process::id() as i32);
        }
        assert!(!p.exists());
        assert!(matches!(running(&p), Err(PidError::NotRunning { .. })));
    }

    #[test]
    fn a_stale_pid_file_is_not_a_daemon() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.pid");
        std::fs::write(&p, "999999999\n").unwrap();
        assert!(matches!(running(&p), Err(PidError::NotRunning { .. })));
        std::fs::write(&p, "garbage").unwrap();
        assert!(matches!(running(&p), Err(PidError::NotRunning { .. })));
    }
}
