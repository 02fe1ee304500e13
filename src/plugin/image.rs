//! The bytes of a plugin, checked once and kept: the file is opened once (no symlink
//! followed), its checks (regular file, mode, owner) are made on that descriptor, and
//! its contents are copied — hashing them on the way — into a sealed memory file. Every
//! later probe and call loads that copy (`/proc/self/fd/0` in the child), so a plugin
//! renamed over, rewritten in place or deleted after the scan never runs unchecked: the
//! bytes that run are the bytes that were checked (and pinned).

use super::PluginError;
use std::ffi::CString;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

/// A checked plugin, sealed in memory.
#[derive(Debug, Clone)]
pub(crate) struct Image {
    memfd: Arc<OwnedFd>,
    /// SHA-256 of the contents, as hex.
    pub(crate) sha256: String,
}

impl Image {
    /// A descriptor of the sealed copy, for a child's stdin.
    pub(crate) fn dup(&self) -> std::io::Result<OwnedFd> {
        self.memfd.as_fd().try_clone_to_owned()
    }
}

/// Whether `meta` (of a plugin or of `plugin_dir`) is writable by others than its owner
/// or owned by someone else than root or the agent's user.
fn ownership_problem(path: &Path, meta: &std::fs::Metadata) -> Option<PluginError> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Some(PluginError::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    let uid = meta.uid();
    if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
        return Some(PluginError::Owner {
            path: path.to_path_buf(),
            uid,
        });
    }
    None
}

/// The checks on `plugin_dir` itself: anyone who may write into it may swap plugins.
pub(crate) fn check_dir(dir: &Path) -> Result<(), PluginError> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        // No folder, no plugins (and nothing anyone could swap).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(PluginError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    match ownership_problem(dir, &meta) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Opens, checks, hashes and seals the plugin at `path`.
pub(crate) fn load(path: &Path) -> Result<Image, PluginError> {
    let read = |source| PluginError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                PluginError::NotRegular {
                    path: path.to_path_buf(),
                }
            } else {
                read(e)
            }
        })?;
    let meta = file.metadata().map_err(read)?;
    if !meta.file_type().is_file() {
        return Err(PluginError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    if let Some(e) = ownership_problem(path, &meta) {
        return Err(e);
    }
    let sealed = seal_copy(&mut file, path).map_err(read)?;
    Ok(sealed)
}

/// Copies `file` into a new memory file while hashing it, then seals the copy.
fn seal_copy(file: &mut File, path: &Path) -> std::io::Result<Image> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let name = CString::new(format!(
        "resagent-plugin:{}",
        path.file_name().unwrap_or_default().to_string_lossy()
    ))
    .unwrap_or_default();
    let memfd = memfd_create(
        &name,
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    let mut copy = File::from(memfd);
    let sha256 = crate::digest::sha256_copy(file, &mut copy)?;
    copy.seek(SeekFrom::Start(0))?;
    let seals = SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_SEAL;
    fcntl(copy.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))?;
    Ok(Image {
        memfd: Arc::new(OwnedFd::from(copy)),
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn the_sealed_copy_keeps_the_checked_bytes_whatever_happens_to_the_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("10-x.so");
        std::fs::write(&f, b"checked bytes").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        let image = load(&f).unwrap();
        // `printf 'checked bytes' | sha256sum`
        assert_eq!(
            image.sha256,
            "c240759008e59210072812928d8bec9074bbb0c28015e98923478b8802494b65"
        );
        std::fs::write(&f, b"swapped in place!").unwrap();
        let mut back = String::new();
        File::from(image.dup().unwrap())
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, "checked bytes");
        let mut w = File::from(image.dup().unwrap());
        assert!(w.write_all(b"x").is_err(), "sealed against writes");
    }

    #[test]
    fn checks_refuse_writable_symlinked_and_a_writable_folder() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("10-x.so");
        std::fs::write(&f, b"x").unwrap();
        for mode in [0o775, 0o757] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(matches!(load(&f), Err(PluginError::Writable { .. })));
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = d.path().join("20-link.so");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(matches!(load(&link), Err(PluginError::NotRegular { .. })));
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            check_dir(d.path()),
            Err(PluginError::Writable { .. })
        ));
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        check_dir(d.path()).unwrap();
    }
}
