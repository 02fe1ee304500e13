//! Durable file operations shared by the installer, the journal and the outbox: every
//! replacement is write-to-temp, fsync, rename, fsync of the folder, so a reader (or a
//! reboot) sees the whole old file or the whole new one and never a mix.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A failed durable file operation, naming the operation and the path.
#[derive(Debug, Error)]
#[error("{op} {}: {source}", path.display())]
pub(crate) struct FsError {
    pub(crate) op: &'static str,
    pub(crate) path: PathBuf,
    #[source]
    pub(crate) source: io::Error,
}

impl FsError {
    pub(crate) fn new(op: &'static str, path: &Path, source: io::Error) -> Self {
        FsError {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Makes `dir`'s entries (a rename, a new file) durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), FsError> {
    let d = File::open(dir).map_err(|e| FsError::new("open folder", dir, e))?;
    d.sync_all()
        .map_err(|e| FsError::new("fsync folder", dir, e))
}

/// The folder holding `path` ("." for a bare name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Renames `src` over `dest` with the durability promise of docs/agent.md: `src` is fsynced
/// first, the folder of `dest` after. A symlink at `dest` is replaced, never followed.
pub(crate) fn atomic_replace(src: &Path, dest: &Path) -> Result<(), FsError> {
    let f = File::open(src).map_err(|e| FsError::new("open", src, e))?;
    f.sync_all().map_err(|e| FsError::new("fsync", src, e))?;
    drop(f);
    std::fs::rename(src, dest).map_err(|e| FsError::new("rename onto", dest, e))?;
    fsync_dir(parent_dir(dest))
}

/// Writes `bytes` to `path` atomically and durably with `mode`: a temporary file beside
/// it (so the rename stays on one file system), fsync, rename, fsync of the folder.
pub(crate) fn atomically_write_file_sync(
    path: &Path,
    bytes: &[u8],
    mode: u32,
) -> Result<(), FsError> {
    let tmp = temp_path_beside(path);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| FsError::new("create", &tmp, e))?;
        // The umask may have narrowed `mode`; the caller's mode is what must hold.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| FsError::new("chmod", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| FsError::new("write", &tmp, e))?;
        f.sync_all().map_err(|e| FsError::new("fsync", &tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| FsError::new("rename onto", path, e))?;
        fsync_dir(parent_dir(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `.NAME.tmp` beside `path`: a dot-name, so folder scans skip it.
pub(crate) fn temp_path_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_dir(path).join(format!(".{name}.tmp"))
}

/// Creates `dir` and its parents if missing, refusing a symlink or a non-folder there.
pub(crate) fn ensure_dir(dir: &Path, mode: u32) -> Result<(), FsError> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(FsError::new(
            "use as folder",
            dir,
            io::Error::other("exists and is not a folder"),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // The folders about to be made, so each one's entry can be made durable: a
            // folder created but not synced into its parent vanishes in a power cut,
            // with whatever was then synced inside it (found by the power-cut test).
            let created: Vec<&Path> = dir
                .ancestors()
                .take_while(|a| !a.as_os_str().is_empty() && std::fs::symlink_metadata(a).is_err())
                .collect();
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .map_err(|e| FsError::new("create folder", dir, e))?;
            for made in created.iter().rev() {
                fsync_dir(parent_dir(made))?;
            }
            Ok(())
        }
        Err(e) => Err(FsError::new("stat", dir, e)),
    }
}

/// [`ensure_dir`] for a folder named in the configuration: a symlink to a folder is
/// what the integrator chose (a data partition mounted elsewhere) and is followed.
pub(crate) fn ensure_configured_dir(dir: &Path, mode: u32) -> Result<(), FsError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        _ => ensure_dir(dir, mode),
    }
}

/// Whether a file can be created and removed in `dir` (a read-only mount, a folder a
/// hardened unit does not let the agent write): a probe file, made and removed at once.
pub(crate) fn check_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".resagent-write-check-{}", std::process::id()));
    let _ = std::fs::remove_file(&probe);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// Bytes written between two background flushes (see [`Flusher`]).
pub(crate) const FLUSH_EVERY: u64 = 8 << 20;

/// Starts the write-back of a file that is still being written, on a thread of its own
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)` every [`FLUSH_EVERY`] bytes), so the disk
/// works while the network does and the one fsync at the end has little left — not an
/// fsync itself: it waits for nothing and promises nothing. A request made while one
/// runs is skipped, never queued: the writer never waits for the disk here.
///
/// [`Flusher::dropping`] also drops what reached the disk from the page cache, a round
/// behind: a large copy then holds a few megabytes of cache, not the file's size — it
/// neither evicts what the device's programs use nor needs fresh pages for every byte.
/// The price is that whoever reads the copy next reads it from the disk.
pub(crate) struct Flusher {
    kick: Option<std::sync::mpsc::SyncSender<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
    unflushed: u64,
    written: u64,
}

impl Flusher {
    pub(crate) fn new(file: &File) -> Flusher {
        Flusher::start(file, false)
    }

    /// A flusher that also drops the written pages once they are on the disk.
    pub(crate) fn dropping(file: &File) -> Flusher {
        Flusher::start(file, true)
    }

    fn start(file: &File, drop_behind: bool) -> Flusher {
        let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(1);
        let thread = file.try_clone().ok().and_then(|f| {
            std::thread::Builder::new()
                .name("flush".into())
                .spawn(move || {
                    // Bytes from the start already dropped, and the end of what the
                    // previous round started writing back.
                    let (mut dropped, mut started) = (0u64, 0u64);
                    while let Ok(written) = rx.recv() {
                        // Best effort: a file system without it still gets the fsync.
                        let _ = crate::sys::start_writeback(&f);
                        if drop_behind && started > dropped {
                            let len = started - dropped;
                            if crate::sys::finish_writeback(&f, dropped, len).is_ok() {
                                let _ = drop_cached(&f, dropped, len);
                            }
                            dropped = started;
                        }
                        started = written;
                    }
                })
                .ok()
        });
        Flusher {
            kick: thread.as_ref().map(|_| tx),
            thread,
            unflushed: 0,
            written: 0,
        }
    }

    /// Notes `n` more bytes written; every [`FLUSH_EVERY`] bytes asks for a flush.
    pub(crate) fn wrote(&mut self, n: u64) {
        self.unflushed += n;
        self.written += n;
        if self.unflushed >= FLUSH_EVERY {
            self.unflushed = 0;
            if let Some(k) = &self.kick {
                let _ = k.try_send(self.written);
            }
        }
    }
}

/// Drops clean cached pages of `len` bytes of `file` from `offset` (dirty ones stay).
pub(crate) fn drop_cached(file: &File, offset: u64, len: u64) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    // `off_t` is 32 bits on some 32-bit targets: past that, nothing is dropped.
    use nix::libc::off_t;
    let (Ok(offset), Ok(len)) = (off_t::try_from(offset), off_t::try_from(len)) else {
        return Err(nix::errno::Errno::EINVAL);
    };
    nix::fcntl::posix_fadvise(
        file.as_raw_fd(),
        offset,
        len,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.kick = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Free bytes for an unprivileged writer on the file system holding `dir`.
pub(crate) fn free_space(dir: &Path) -> Result<u64, FsError> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| FsError::new("statvfs", dir, io::Error::from(e)))?;
    #[allow(clippy::useless_conversion)] // the field widths differ between targets
    let avail = u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
    Ok(avail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_and_sets_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j.json");
        atomically_write_file_sync(&p, b"one", 0o600).unwrap();
        atomically_write_file_sync(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!temp_path_beside(&p).exists());
    }

    #[test]
    fn atomic_replace_replaces_a_symlink_instead_of_following_it() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        let dest = d.path().join("dest");
        std::os::unix::fs::symlink(&outside, &dest).unwrap();
        let src = d.path().join("src");
        std::fs::write(&src, b"new").unwrap();
        atomic_replace(&src, &dest).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert!(!std::fs::symlink_metadata(&dest)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn ensure_dir_refuses_a_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"").unwrap();
        assert!(ensure_dir(&f, 0o755).is_err());
        ensure_dir(&d.path().join("a/b"), 0o755).unwrap();
        assert!(d.path().join("a/b").is_dir());
    }
}
