//! Where resources live and how the default installer puts them there: staging files in
//! `resource_dir/.resagent-staging/` (same file system as the destination, so installing
//! is one rename), opened without following symlinks, and the atomic replacement of
//! `resource_dir/NAME`.

use crate::digest::Md5;
use crate::fsutil::{self, FsError};
use crate::protocol::STAGING_DIR_NAME;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of an installed resource: readable by the services that use it.
const RESOURCE_MODE: u32 = 0o644;
/// Mode of a staging file: nobody else reads a half-downloaded resource.
const STAGING_MODE: u32 = 0o600;

/// The paths of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Paths {
    /// Where the default installer places it: `resource_dir/NAME`.
    pub(crate) dest: PathBuf,
    /// Where its bytes arrive: `resource_dir/.resagent-staging/NAME`.
    pub(crate) staging: PathBuf,
}

/// The paths of resource `name` (already validated as one safe path component).
pub(crate) fn paths(resource_dir: &Path, name: &str) -> Paths {
    Paths {
        dest: resource_dir.join(name),
        staging: staging_dir(resource_dir).join(name),
    }
}

pub(crate) fn staging_dir(resource_dir: &Path) -> PathBuf {
    resource_dir.join(STAGING_DIR_NAME)
}

/// Makes the staging folder a real folder of ours: anything else planted there (a
/// symlink pointing elsewhere, a file) is removed first.
pub(crate) fn prepare_staging_dir(resource_dir: &Path) -> Result<PathBuf, FsError> {
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

/// Opens the staging file for appending, keeping what is there (to resume); a symlink or
/// anything but a regular file at that path is removed, never followed. Returns the file
/// and its length.
pub(crate) fn open_staging(path: &Path) -> Result<(File, u64), FsError> {
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

/// Whether an installed resource is still where it was installed: an install plugin's
/// placement is its own business; the default installer's file must still exist (one
/// removed by hand is fetched again).
pub(crate) fn still_present(
    resource_dir: &Path,
    name: &str,
    installed: &crate::journal::Installed,
) -> bool {
    installed.plugin.is_some() || std::fs::symlink_metadata(resource_dir.join(name)).is_ok()
}

/// Removes a staging file; a missing one is fine.
pub(crate) fn discard_staging(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => log::debug!("removed {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot remove {}: {e}", path.display()),
    }
}

/// The default installer: the verified staging file replaces `dest` atomically (fsync,
/// rename, fsync of the folder). On failure the staging file stays for the caller.
pub(crate) fn install_default(paths: &Paths) -> Result<(), FsError> {
    std::fs::set_permissions(
        &paths.staging,
        std::fs::Permissions::from_mode(RESOURCE_MODE),
    )
    .map_err(|e| FsError::new("chmod", &paths.staging, e))?;
    fsutil::atomic_replace(&paths.staging, &paths.dest)
}

/// Whether an I/O error means the file system is full.
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::ENOSPC) | Some(nix::libc::EDQUOT)
    )
}

/// MD5 of a whole file, read in chunks (for a file installed before a kill).
pub(crate) fn md5_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut ctx = Md5::new();
    hash_prefix(&mut f, u64::MAX, &mut ctx)?;
    Ok(ctx.hex())
}

/// Feeds up to `len` bytes of `r` into `ctx`; returns how many there were.
pub(crate) fn hash_prefix(r: &mut impl io::Read, len: u64, ctx: &mut Md5) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut done = 0u64;
    while done < len {
        let want = buf.len().min((len - done).min(usize::MAX as u64) as usize);
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        ctx.consume(&buf[..n]);
        done += n as u64;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn staging_keeps_bytes_and_refuses_to_follow_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let dir = prepare_staging_dir(d.path()).unwrap();
        let p = paths(d.path(), "fw.bin");
        assert_eq!(p.staging, dir.join("fw.bin"));
        let (mut f, len) = open_staging(&p.staging).unwrap();
        assert_eq!(len, 0);
        f.write_all(b"abc").unwrap();
        assert_eq!(open_staging(&p.staging).unwrap().1, 3);

        let outside = d.path().join("outside");
        std::fs::write(&outside, b"precious").unwrap();
        std::fs::remove_file(&p.staging).unwrap();
        std::os::unix::fs::symlink(&outside, &p.staging).unwrap();
        let (mut f, len) = open_staging(&p.staging).unwrap();
        assert_eq!(len, 0);
        f.write_all(b"x").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
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

    #[test]
    fn install_replaces_atomically_and_reports_a_directory_in_the_way() {
        let d = tempfile::tempdir().unwrap();
        prepare_staging_dir(d.path()).unwrap();
        let p = paths(d.path(), "a");
        std::fs::write(&p.staging, b"new").unwrap();
        std::fs::write(&p.dest, b"old").unwrap();
        install_default(&p).unwrap();
        assert_eq!(std::fs::read(&p.dest).unwrap(), b"new");
        assert!(!p.staging.exists());

        let q = paths(d.path(), "b");
        std::fs::create_dir(&q.dest).unwrap();
        std::fs::write(q.dest.join("inside"), b"x").unwrap();
        std::fs::write(&q.staging, b"new").unwrap();
        let e = install_default(&q).unwrap_err();
        assert!(e.to_string().contains(&q.dest.display().to_string()), "{e}");
    }

    #[test]
    fn md5_of_a_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"hello").unwrap();
        assert_eq!(md5_file(&f).unwrap(), "5d41402abc4b2a76b9719d911017c592");
    }
}
