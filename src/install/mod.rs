//! Where resources live and how they are installed: the paths of a resource (staging
//! in `resource_dir/.resagent-staging/`, on the destination's file system so installing
//! is one rename), the default installer (the atomic replacement of `resource_dir/NAME`)
//! and, in [`chain`], the validate/install plugin chain that runs before it.

pub(crate) mod chain;

use crate::fsutil::{self, FsError};
use crate::protocol::STAGING_DIR_NAME;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Mode of an installed resource: readable by the services that use it.
const RESOURCE_MODE: u32 = 0o644;

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

/// Whether an installed resource is still where it was installed: an install plugin's
/// placement is its own business until that plugin installs another resource (then it
/// is superseded); the default installer's file must still exist (one removed by hand is
/// fetched again).
pub(crate) fn still_present(
    resource_dir: &Path,
    name: &str,
    installed: &crate::journal::Installed,
) -> bool {
    match installed.plugin {
        Some(_) => !installed.superseded,
        None => std::fs::symlink_metadata(resource_dir.join(name)).is_ok(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_replaces_atomically_and_reports_a_directory_in_the_way() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(staging_dir(d.path())).unwrap();
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
}
