//! `archive`: an install plugin for resagent, in Rust. A resource named `NAME.tar.gz`,
//! `NAME.tgz` or `NAME.tar` (an audio pack, a model bundle, a web UI) is unpacked into
//! the folder `resource_dir/NAME` and swapped in atomically: the new tree is built beside
//! the old one, then the two are exchanged with one `renameat2(RENAME_EXCHANGE)`, so a
//! reader sees the whole old folder or the whole new one, never a mix. Other resources
//! are declined, for the next plugin or resagent's default installer.
//!
//! The C ABI is `plugins/include/resagent_plugin.h`, reached through
//! `resagent-plugin-sdk` (its one Rust definition, checked against the header): the
//! entry point below is the plugin's only `unsafe`.

use resagent_plugin_sdk::{self as sdk, HostApi, ResourceView, Verdict};
use std::ffi::{c_char, c_int};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

#[no_mangle]
pub extern "C" fn resagent_plugin_abi() -> u32 {
    sdk::ABI_VERSION
}

#[no_mangle]
pub extern "C" fn resagent_plugin_name() -> *const c_char {
    b"archive\0".as_ptr().cast()
}

/// The folder name for an archive resource, or None when it is not one.
pub fn folder_name(resource: &str) -> Option<(&str, bool)> {
    for (suffix, gz) in [(".tar.gz", true), (".tgz", true), (".tar", false)] {
        if let Some(stem) = resource.strip_suffix(suffix) {
            if !stem.is_empty() {
                return Some((stem, gz));
            }
        }
    }
    None
}

/// Counts the compressed bytes read, for progress.
struct Counting<'p, R> {
    inner: R,
    read: u64,
    total: u64,
    report: &'p mut dyn FnMut(u32),
    last: u32,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        let p = (self.read.saturating_mul(100) / self.total.max(1)).min(99) as u32;
        if p != self.last {
            self.last = p;
            (self.report)(p);
        }
        Ok(n)
    }
}

/// Unpacks `archive` into a fresh folder beside `target` and swaps it in.
pub fn install(
    archive: &Path,
    gz: bool,
    target: &Path,
    size: u64,
    progress: &mut dyn FnMut(u32),
) -> Result<(), String> {
    let parent = target.parent().ok_or("destination has no folder")?;
    let leaf = target
        .file_name()
        .ok_or("destination has no name")?
        .to_string_lossy()
        .into_owned();
    let staging: PathBuf = parent.join(format!(".{leaf}.archive-new"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(|e| format!("create {}: {e}", staging.display()))?;
    let result =
        unpack(archive, gz, &staging, size, progress).and_then(|()| swap_in(&staging, target));
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn unpack(
    archive: &Path,
    gz: bool,
    into: &Path,
    size: u64,
    progress: &mut dyn FnMut(u32),
) -> Result<(), String> {
    let file = File::open(archive).map_err(|e| format!("open {}: {e}", archive.display()))?;
    let counted = Counting {
        inner: file,
        read: 0,
        total: size,
        report: progress,
        last: 0,
    };
    let reader: Box<dyn Read + '_> = if gz {
        Box::new(flate2::read::GzDecoder::new(counted))
    } else {
        Box::new(counted)
    };
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(false);
    for entry in tar
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("damaged archive: {e}"))?;
        // unpack_in refuses entries that would land outside `into` (`..`, absolute paths).
        let inside = entry.unpack_in(into).map_err(|e| format!("unpack: {e}"))?;
        if !inside {
            let p = entry
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Err(format!("archive entry `{p}` points outside its folder"));
        }
    }
    sync_tree(into).map_err(|e| format!("fsync {}: {e}", into.display()))
}

/// fsync every file and folder of the new tree, so the swap publishes durable content.
fn sync_tree(dir: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            sync_tree(&e.path())?;
        } else if ft.is_file() {
            File::open(e.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}

/// Exchanges the new folder with the old one (or renames it in when there is none).
fn swap_in(new: &Path, target: &Path) -> Result<(), String> {
    use nix::fcntl::{renameat2, RenameFlags};
    let exists = std::fs::symlink_metadata(target).is_ok();
    if exists
        && std::fs::symlink_metadata(target)
            .map(|m| m.is_dir())
            .unwrap_or(false)
    {
        renameat2(None, new, None, target, RenameFlags::RENAME_EXCHANGE)
            .map_err(|e| format!("exchange {} with the new folder: {e}", target.display()))?;
        // `new` now holds the old tree; the caller removes it.
    } else {
        if exists {
            std::fs::remove_file(target)
                .map_err(|e| format!("remove {}: {e}", target.display()))?;
        }
        std::fs::rename(new, target)
            .map_err(|e| format!("rename onto {}: {e}", target.display()))?;
    }
    let parent = target.parent().unwrap_or(Path::new("."));
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("fsync {}: {e}", parent.display()))
}

/// # Safety
/// Called by resagent with pointers valid for the call, as `resagent_plugin.h` states.
#[no_mangle]
pub unsafe extern "C" fn resagent_install(
    host: *const sdk::Host,
    res: *const sdk::Resource,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    // SAFETY: resagent's pointers are forwarded unchanged, under the same contract.
    unsafe { sdk::call(host, res, err, err_len, install_resource) }
}

/// The install entry point, safely: declines what is not an archive.
fn install_resource(host: &HostApi, res: &ResourceView) -> Result<Verdict, String> {
    let Some((stem, gz)) = folder_name(&res.name) else {
        return Ok(Verdict::Declined);
    };
    let target = res.dest.with_file_name(stem);
    let mut progress = |p| host.progress(p);
    install(&res.path, gz, &target, res.size, &mut progress)
        .map_err(|reason| format!("{}: {reason}", res.name))?;
    host.log(
        sdk::LOG_INFO,
        &format!("{} unpacked into {}", res.name, target.display()),
    );
    host.progress(100);
    Ok(Verdict::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names() {
        assert_eq!(folder_name("audio.tar.gz"), Some(("audio", true)));
        assert_eq!(folder_name("m.tgz"), Some(("m", true)));
        assert_eq!(folder_name("ui.tar"), Some(("ui", false)));
        assert_eq!(folder_name(".tar.gz"), None);
        assert_eq!(folder_name("fw.bin"), None);
    }

    #[test]
    fn unpacks_and_swaps_a_folder() {
        let d = std::env::temp_dir().join(format!("archive-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let make = |content: &str| {
            let path = d.join("pack.tar");
            let mut b = tar::Builder::new(File::create(&path).unwrap());
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, "sounds/a.wav", content.as_bytes())
                .unwrap();
            b.finish().unwrap();
            path
        };
        let target = d.join("pack");
        let a = make("one");
        install(&a, false, &target, 10, &mut |_| {}).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("sounds/a.wav")).unwrap(),
            "one"
        );
        let b = make("two");
        install(&b, false, &target, 10, &mut |_| {}).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("sounds/a.wav")).unwrap(),
            "two"
        );
        assert!(!d.join(".pack.archive-new").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
