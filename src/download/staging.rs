//! The partial download: one struct for the staging file, how many of its bytes count,
//! their running MD5 and the ETag of the response they came from. Bytes kept from before
//! a restart are trusted only after they were read back and hashed again here; whether
//! the server may continue them is judged on its answer (`transfer.rs`) and on the final
//! MD5 (`retry.rs`). The file lives in `resource_dir/.resagent-staging/` (same file
//! system as the destination) and is never followed if something planted a symlink.

use super::follow::Follow;
use crate::digest::{self, Md5};
use crate::fsutil::{self, Flusher, FsError};
use crate::install::staging_dir;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Mode of a staging file: nobody else reads a half-downloaded resource.
const STAGING_MODE: u32 = 0o600;

/// The staging file of the download in flight.
pub(crate) struct Staging {
    file: File,
    path: PathBuf,
    /// Bytes on disk, all of them hashed into `md5`.
    len: u64,
    md5: Md5,
    /// The ETag of the response the bytes came from: a resume goes on only with it.
    etag: Option<String>,
    /// A reader of the file as it grows (a patch applied while it arrives).
    follow: Option<Arc<Follow>>,
}

impl Staging {
    /// Opens the staging file at `path` for a resource of `size` bytes, keeping and
    /// re-hashing what a previous attempt left (more than `size` is dropped). `tick` runs
    /// after every chunk read back (gigabytes take minutes on an SD card): the caller
    /// shows the watchdog a sign of life there, and ends the read with its error on a
    /// stop.
    pub(crate) fn open<E: From<FsError>>(
        resource_dir: &Path,
        path: &Path,
        size: u64,
        etag: Option<String>,
        tick: impl FnMut() -> Result<(), E>,
    ) -> Result<Staging, E> {
        prepare_staging_dir(resource_dir)?;
        let (file, len) = open_staging(path)?;
        let mut staging = Staging {
            file,
            path: path.to_path_buf(),
            len: if len > size { 0 } else { len },
            md5: Md5::new(),
            etag,
            follow: None,
        };
        staging.rehash(tick)?;
        Ok(staging)
    }

    /// Hashes the first `len` bytes again (what survives is what the hash covered),
    /// cuts the file there and positions the writes after it.
    fn rehash<E: From<FsError>>(&mut self, tick: impl FnMut() -> Result<(), E>) -> Result<(), E> {
        let path = &self.path;
        if self.len > 0 {
            self.file
                .seek(SeekFrom::Start(0))
                .map_err(|e| FsError::new("seek", path, e))?;
            self.len = digest::hash_prefix_ticking(&mut self.file, self.len, &mut self.md5, tick)
                .map_err(|e| match e {
                digest::ChunkError::Read(e) => FsError::new("read", path, e).into(),
                digest::ChunkError::Sink(e) => e,
            })?;
            log::info!("resuming {} at byte {}", path.display(), self.len);
        }
        self.file
            .set_len(self.len)
            .map_err(|e| FsError::new("truncate", path, e))?;
        self.file
            .seek(SeekFrom::Start(self.len))
            .map_err(|e| FsError::new("seek", path, e))?;
        Ok(())
    }

    /// Drops every byte: the next request starts from byte 0.
    pub(crate) fn restart(&mut self) -> Result<(), FsError> {
        self.len = 0;
        self.md5 = Md5::new();
        self.etag = None;
        if let Some(f) = &self.follow {
            f.restarted();
        }
        self.rehash(|| Ok::<(), FsError>(()))
    }

    /// From now on `follow` hears how many bytes are on disk.
    pub(crate) fn follow_with(&mut self, follow: Arc<Follow>) {
        follow.grew(self.len);
        self.follow = Some(follow);
    }

    /// Whether a reader following the file needs no more bytes.
    pub(crate) fn follower_done(&self) -> bool {
        self.follow.as_ref().is_some_and(|f| f.reader_done())
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    pub(crate) fn set_etag(&mut self, etag: Option<String>) {
        self.etag = etag;
    }

    /// The MD5 of the bytes on disk, as hex.
    pub(crate) fn md5_hex(&self) -> String {
        self.md5.hex()
    }

    /// Hands the running MD5 to a hashing thread (see `pipeline.rs`)…
    pub(crate) fn take_md5(&mut self) -> Md5 {
        std::mem::take(&mut self.md5)
    }

    /// …and takes it back, covering exactly the bytes written since.
    pub(crate) fn put_md5(&mut self, md5: Md5) {
        self.md5 = md5;
    }

    /// A background write-back for this file (see [`Flusher`]).
    pub(crate) fn flusher(&self) -> Flusher {
        Flusher::new(&self.file)
    }

    /// Appends `buf` (its hash is the caller's: the pipeline hashes on its own thread).
    pub(crate) fn write(&mut self, buf: &[u8]) -> Result<(), FsError> {
        self.file
            .write_all(buf)
            .map_err(|e| FsError::new("write", &self.path, e))?;
        self.len += buf.len() as u64;
        if let Some(f) = &self.follow {
            f.grew(self.len);
        }
        Ok(())
    }

    /// Makes the bytes durable.
    pub(crate) fn sync(&self) -> Result<(), FsError> {
        self.file
            .sync_all()
            .map_err(|e| FsError::new("fsync", &self.path, e))
    }
}

/// Makes the staging folder a real folder of ours: anything else planted there (a
/// symlink pointing elsewhere, a file) is removed first.
fn prepare_staging_dir(resource_dir: &Path) -> Result<PathBuf, FsError> {
    let dir = staging_dir(resource_dir);
    if let Ok(m) = std::fs::symlink_metadata(&dir) {
        if !m.is_dir() {
            log::warn!("removing {}: not a folder", dir.display());
            std::fs::remove_file(&dir).map_err(|e| FsError::new("remove", &dir, e))?;
        }
    }
    fsutil::ensure_dir(&dir, 0o700)?;
    Ok(dir)
}

/// Opens the staging file for writing, keeping what is there (to resume); a symlink or
/// anything but a regular file at that path is removed, never followed. Returns the file
/// and its length.
fn open_staging(path: &Path) -> Result<(File, u64), FsError> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_file() {
            log::warn!("removing {}: not a regular file", path.display());
            let removed = if m.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
            removed.map_err(|e| FsError::new("remove", path, e))?;
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(STAGING_MODE)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| FsError::new("open staging file", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| FsError::new("stat", path, e))?
        .len();
    Ok((file, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::paths;

    fn open(dir: &Path, path: &Path, size: u64, etag: Option<String>) -> Result<Staging, FsError> {
        Staging::open(dir, path, size, etag, || Ok::<(), FsError>(()))
    }

    #[test]
    fn the_read_back_ticks_every_chunk_and_ends_with_the_ticks_error() {
        let d = tempfile::tempdir().unwrap();
        let p = paths(d.path(), "big");
        std::fs::create_dir_all(staging_dir(d.path())).unwrap();
        std::fs::write(&p.staging, vec![7u8; 1 << 20]).unwrap();
        let mut ticks = 0;
        let s = Staging::open(d.path(), &p.staging, 2 << 20, None, || {
            ticks += 1;
            Ok::<(), FsError>(())
        })
        .unwrap();
        assert_eq!((s.len(), ticks), (1 << 20, 4), "one tick per 256 KiB read");
        drop(s);
        let stopped = Staging::open(d.path(), &p.staging, 2 << 20, None, || {
            Err(FsError::new(
                "stop",
                &p.staging,
                std::io::ErrorKind::Interrupted.into(),
            ))
        });
        assert!(matches!(stopped, Err(e) if e.op == "stop"));
        assert_eq!(
            std::fs::metadata(&p.staging).unwrap().len(),
            1 << 20,
            "kept"
        );
    }

    #[test]
    fn staging_keeps_and_rehashes_bytes_and_refuses_to_follow_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let p = paths(d.path(), "fw.bin");
        let mut s = open(d.path(), &p.staging, 10, None).unwrap();
        assert_eq!(s.len(), 0);
        s.write(b"abc").unwrap();
        drop(s);
        let s = open(d.path(), &p.staging, 10, Some("\"e\"".into())).unwrap();
        assert_eq!((s.len(), s.etag()), (3, Some("\"e\"")));
        assert_eq!(s.md5_hex(), "900150983cd24fb0d6963f7d28e17f72", "md5(abc)");
        drop(s);

        let outside = d.path().join("outside");
        std::fs::write(&outside, b"precious").unwrap();
        std::fs::remove_file(&p.staging).unwrap();
        std::os::unix::fs::symlink(&outside, &p.staging).unwrap();
        let mut s = open(d.path(), &p.staging, 10, None).unwrap();
        assert_eq!(s.len(), 0);
        s.write(b"x").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
    }

    #[test]
    fn more_than_the_size_and_a_restart_start_from_zero() {
        let d = tempfile::tempdir().unwrap();
        let p = paths(d.path(), "a");
        let mut s = open(d.path(), &p.staging, 2, None).unwrap();
        s.write(b"abc").unwrap();
        drop(s);
        let mut s = open(d.path(), &p.staging, 2, None).unwrap();
        assert_eq!(s.len(), 0, "longer than the task: not trusted");
        s.write(b"ab").unwrap();
        s.restart().unwrap();
        assert_eq!(s.len(), 0);
        assert_eq!(std::fs::metadata(&p.staging).unwrap().len(), 0);
        assert_eq!(s.md5_hex(), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn a_symlinked_staging_dir_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), staging_dir(d.path())).unwrap();
        let dir = prepare_staging_dir(d.path()).unwrap();
        assert!(!std::fs::symlink_metadata(dir)
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
