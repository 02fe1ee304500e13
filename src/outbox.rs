//! The outbox: files waiting to be uploaded. `resagent upload` puts a file there
//! atomically (a copy under a dot-name, fsync, rename — or, with `--move`, one rename),
//! hashing it during that same pass and leaving the MD5 beside it so the daemon does not
//! read the file a third time. Dot-names are work in progress and are never uploaded.
//! While `upload` works on an entry it holds a claim on it (a `flock`), so the daemon
//! does not hash an entry whose MD5 is still being computed (see [`claim`]).
//!
//! Over 700 lines on purpose: ~550 of code and ~250 of tests. Queueing, claiming, the
//! saved MD5 and removal are one protocol between `resagent upload` and the daemon over
//! one folder; split, each half would be read without the other.

use crate::digest::{read_chunks, ChunkError};
use crate::fsutil::{self, FsError};
use crate::protocol::validate_name;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Errors queueing a file, each naming the file.
#[derive(Debug, Error)]
pub(crate) enum OutboxError {
    /// The upload name breaks docs/protocol.md's rules for names.
    #[error("invalid upload name: {0}")]
    InvalidName(String),
    /// The source cannot be read (missing, no permission).
    #[error("cannot read {}: {source}", path.display())]
    Source { path: PathBuf, source: io::Error },
    /// The source is a directory, a FIFO, a device or a socket.
    #[error("{} is {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    /// An entry (or a file to `--move`) with more than one name: a hard link the outbox
    /// holder may have made to a file it could not read (where
    /// `fs.protected_hardlinks` is 0).
    #[error("{} has {links} hard links; only a file with one name is uploaded (upload a copy)", path.display())]
    HardLinked { path: PathBuf, links: u64 },
    /// An entry (or a file to `--move`) owned by another user than the agent's.
    #[error("{} belongs to uid {uid}, not to the agent's uid {agent}; it is not uploaded (upload a copy, or chown it)", path.display())]
    ForeignOwner { path: PathBuf, uid: u32, agent: u32 },
    /// A file of that name already waits in the outbox.
    #[error("`{name}` is already queued in {}", outbox.display())]
    AlreadyQueued { name: String, outbox: PathBuf },
    /// `--move` across file systems: a rename cannot hand the file over.
    #[error("--move: {} is on another file system than the outbox {}; copy it instead (without --move)", src.display(), outbox.display())]
    CrossDevice { src: PathBuf, outbox: PathBuf },
    /// `resagent upload` is still queueing the entry (it holds the claim; its MD5 is not
    /// saved yet).
    #[error("`{name}` is still being queued by `resagent upload`")]
    BeingQueued { name: String },
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl OutboxError {
    /// The error for `path` that cannot be opened or read, for `map_err`.
    fn source(path: &Path) -> impl Fn(io::Error) -> OutboxError + Copy + '_ {
        move |source| OutboxError::Source {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `resagent upload`'s claim on an entry while it queues it: an exclusive `flock` on the
/// file, taken before the entry has its name in the outbox and released (with the
/// descriptor) once its MD5 is saved beside it. Without it the daemon, finding a `--move`d
/// file under its name but no MD5 yet, hashed it a second time beside `upload` (seen in
/// the bench: two 1 GiB hashes at once on two cores). A claim ends with its process, so
/// the entry of a killed `upload` is hashed by the daemon. Where `flock` is refused (some
/// network or FUSE file systems) the claim is not held and the daemon may hash the file
/// itself, as before: slower, never wrong.
///
/// The claim never waits: a `--move`d file that its writer holds locked is queued
/// unclaimed (a hang of `upload` would be worse than a second hash).
///
/// `nix::fcntl::flock` is deprecated for `Flock`, whose drop panics when the unlock fails
/// (with `panic = "abort"`, a dead process); closing the descriptor releases the lock
/// anyway, so the plain call is kept and its errors only logged.
#[allow(deprecated)]
fn claim(file: &File) {
    use std::os::fd::AsRawFd;
    let exclusive = nix::fcntl::FlockArg::LockExclusiveNonblock;
    if let Err(e) = nix::fcntl::flock(file.as_raw_fd(), exclusive) {
        log::debug!("no claim on the outbox entry (flock: {e}); the daemon may hash it too");
    }
}

/// Whether another process (`resagent upload`) holds its claim on `file` (see [`claim`]):
/// a shared lock is tried without waiting and dropped at once.
#[allow(deprecated)]
fn claimed_elsewhere(file: &File) -> bool {
    use nix::fcntl::{flock, FlockArg};
    use std::os::fd::AsRawFd;
    match flock(file.as_raw_fd(), FlockArg::LockSharedNonblock) {
        Ok(()) => {
            let _ = flock(file.as_raw_fd(), FlockArg::UnlockNonblock);
            false
        }
        Err(nix::errno::Errno::EWOULDBLOCK) => true,
        Err(_) => false,
    }
}

/// How a file enters the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handover {
    /// Copy: the user's file is never touched.
    Copy,
    /// Rename: the file belongs to resagent now and is removed once uploaded.
    Move,
}

/// A file in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
    /// Which file it is (as the scan saw it): device, inode, change time (ns).
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) ctime_ns: i64,
}

/// The MD5 left beside an outbox file, valid while the file's size and change time match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Digest {
    md5sum: String,
    size: u64,
    ctime_ns: i128,
    ino: u64,
}

/// Where the MD5 of entry `name` is kept: a dot-name of fixed length (the MD5 of the
/// name), so it fits beside a name of 255 bytes.
fn digest_path(outbox: &Path, name: &str) -> PathBuf {
    let mut key = crate::digest::Md5::new();
    key.consume(name.as_bytes());
    outbox.join(format!(".md5-{}", key.hex()))
}

fn ctime_ns(m: &std::fs::Metadata) -> i128 {
    i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Queues `src` under `name` (default: its file name); returns the entry and its MD5.
pub(crate) fn enqueue(
    outbox: &Path,
    src: &Path,
    name: Option<&str>,
    how: Handover,
) -> Result<(Entry, String), OutboxError> {
    let name = match name {
        Some(n) => n.to_string(),
        None => src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    validate_name(&name).map_err(OutboxError::InvalidName)?;
    if name.starts_with('.') {
        return Err(OutboxError::InvalidName(format!(
            "`{name}` starts with `.`, which the outbox keeps for work in progress"
        )));
    }
    let source = OutboxError::source(src);
    // A copy reads what a link points to; `--move` would rename the link itself into
    // the outbox (a relative one then points nowhere, and the daemon opens entries
    // without following links), so it takes regular files only.
    let meta = match how {
        Handover::Copy => std::fs::metadata(src),
        Handover::Move => std::fs::symlink_metadata(src),
    }
    .map_err(source)?;
    if !meta.file_type().is_file() {
        return Err(OutboxError::NotRegular {
            path: src.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    if how == Handover::Move {
        // The daemon would refuse it in the outbox: said here, the file not moved.
        sole_and_ours(src, &meta)?;
    }
    fsutil::ensure_configured_dir(outbox, 0o750)?;
    let dest = outbox.join(&name);
    if std::fs::symlink_metadata(&dest).is_ok() {
        return Err(OutboxError::AlreadyQueued {
            name,
            outbox: outbox.to_path_buf(),
        });
    }
    let queued = match how {
        Handover::Copy => copy_hashing(src, outbox, &name, &dest)?,
        Handover::Move => move_in(src, outbox, &dest)?,
    };
    write_digest(outbox, &name, &queued.md5sum, &queued.meta);
    let size = queued.meta.len();
    // Closing the claimed descriptor, now that the MD5 is saved, ends the claim.
    drop(queued.claim);
    Ok((
        Entry {
            name,
            path: dest,
            size,
            dev: queued.meta.dev(),
            ino: queued.meta.ino(),
            ctime_ns: i64::try_from(ctime_ns(&queued.meta)).unwrap_or(i64::MAX),
        },
        queued.md5sum,
    ))
}

/// An entry just handed over: its MD5, the entry's metadata taken through the claimed
/// descriptor no later than the hashing began (a write during the hash then makes the
/// saved MD5 stale, so the daemon reads the file again instead of sending a wrong
/// `Content-MD5` on every retry), and that descriptor.
struct Queued {
    md5sum: String,
    meta: std::fs::Metadata,
    claim: File,
}

/// Copies under a dot-name while hashing, fsyncs, renames into place (the copy is
/// ours alone, so its metadata is taken after the rename, which changes it).
fn copy_hashing(src: &Path, outbox: &Path, name: &str, dest: &Path) -> Result<Queued, OutboxError> {
    let mut input = File::open(src).map_err(OutboxError::source(src))?;
    // A short dot-name of its own (a 255-byte name leaves no room for a suffix, and two
    // `resagent upload` at once must not share it).
    let tmp = outbox.join(format!(
        ".incoming-{}-{}",
        std::process::id(),
        crate::random::alphanumeric(8)
    ));
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| FsError::new("create", &tmp, e))?;
        claim(&out);
        let mut ctx = crate::digest::Md5::new();
        let mut flusher = fsutil::Flusher::dropping(&out);
        let copied = read_chunks(&mut input, u64::MAX, |chunk| {
            ctx.consume(chunk);
            out.write_all(chunk)?;
            flusher.wrote(chunk.len() as u64);
            Ok(())
        });
        match copied {
            Ok(_) => {}
            Err(ChunkError::Read(e)) => return Err(OutboxError::source(src)(e)),
            Err(ChunkError::Sink(e)) => return Err(FsError::new("write", &tmp, e).into()),
        }
        drop(flusher);
        out.sync_all().map_err(|e| FsError::new("fsync", &tmp, e))?;
        place_new(&tmp, dest, name, outbox)?;
        let meta = out.metadata().map_err(|e| FsError::new("stat", dest, e))?;
        Ok(Queued {
            md5sum: ctx.hex(),
            meta,
            claim: out,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Renames the file into the outbox (same file system only) and hashes it there,
/// claimed from before the rename; its metadata is taken after the rename (which changes
/// it) and before the hash.
fn move_in(src: &Path, outbox: &Path, dest: &Path) -> Result<Queued, OutboxError> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(src)
        .map_err(OutboxError::source(src))?;
    claim(&file);
    match rename_noreplace(src, dest) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => {
            return Err(OutboxError::AlreadyQueued {
                name: dest
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                outbox: outbox.to_path_buf(),
            })
        }
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            return Err(OutboxError::CrossDevice {
                src: src.to_path_buf(),
                outbox: outbox.to_path_buf(),
            })
        }
        Err(e) => return Err(FsError::new("rename into the outbox", src, e).into()),
    }
    fsutil::fsync_dir(outbox)?;
    if let Some(dir) = src.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = fsutil::fsync_dir(dir);
    }
    let meta = file.metadata().map_err(|e| FsError::new("stat", dest, e))?;
    let md5sum = crate::digest::md5_reader(&mut file).map_err(|e| FsError::new("read", dest, e))?;
    Ok(Queued {
        md5sum,
        meta,
        claim: file,
    })
}

/// `rename(2)` that never replaces: two `resagent upload` of one name at once cannot
/// overwrite each other — the second finds the first (EEXIST). File systems without
/// `RENAME_NOREPLACE` (FUSE, some network file systems) get `link` + `unlink`, which
/// fails the same way; where hard links are refused too, a check before the rename
/// (which narrows the race to an instant, no more).
fn rename_noreplace(src: &Path, dest: &Path) -> std::io::Result<()> {
    use nix::errno::Errno;
    let flags = nix::fcntl::RenameFlags::RENAME_NOREPLACE;
    match nix::fcntl::renameat2(None, src, None, dest, flags) {
        Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {}
        other => return other.map_err(std::io::Error::from),
    }
    match std::fs::hard_link(src, dest) {
        Ok(()) => return std::fs::remove_file(src),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(e),
        Err(_) => {}
    }
    if std::fs::symlink_metadata(dest).is_ok() {
        return Err(std::io::Error::from_raw_os_error(nix::libc::EEXIST));
    }
    std::fs::rename(src, dest)
}

/// Moves the synced temporary copy to its name (never over another file) and makes the
/// folder entry durable.
fn place_new(tmp: &Path, dest: &Path, name: &str, outbox: &Path) -> Result<(), OutboxError> {
    match rename_noreplace(tmp, dest) {
        Ok(()) => Ok(fsutil::fsync_dir(outbox)?),
        Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => Err(OutboxError::AlreadyQueued {
            name: name.to_string(),
            outbox: outbox.to_path_buf(),
        }),
        Err(e) => Err(FsError::new("rename into the outbox", tmp, e).into()),
    }
}

fn write_digest(outbox: &Path, name: &str, md5sum: &str, meta: &std::fs::Metadata) {
    let d = Digest {
        md5sum: md5sum.to_string(),
        size: meta.len(),
        ctime_ns: ctime_ns(meta),
        ino: meta.ino(),
    };
    let bytes = serde_json::to_vec(&d).expect("digest serialises");
    if let Err(e) = fsutil::atomically_write_file_sync(&digest_path(outbox, name), &bytes, 0o640) {
        log::debug!("MD5 of {name} not saved beside it: {e}");
    }
}

/// An outbox entry opened for its upload: one descriptor, opened without following a
/// symlink or blocking on a FIFO, checked with `fstat`; its MD5, the PUT and the final
/// removal all go through it (docs/agent.md, "What never wedges"), so a file swapped in
/// under the name is never read in its place.
pub(crate) struct Opened {
    pub(crate) file: File,
    pub(crate) size: u64,
    pub(crate) md5sum: String,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    /// The change time (ns) when it was opened.
    pub(crate) ctime_ns: i64,
}

/// Opens `entry` for its upload and gets its MD5 (the saved one while it still fits the
/// file, else computed from the descriptor and saved).
/// An entry is uploaded only when it has one name and belongs to the agent's user:
/// whoever can write to the outbox must not get a file it cannot read sent through the
/// agent's privileges (a hard link to a root-only file, a file of another user). Such an
/// entry is refused and kept.
fn sole_and_ours(path: &Path, meta: &std::fs::Metadata) -> Result<(), OutboxError> {
    if meta.nlink() > 1 {
        return Err(OutboxError::HardLinked {
            path: path.to_path_buf(),
            links: meta.nlink(),
        });
    }
    let agent = nix::unistd::geteuid().as_raw();
    if meta.uid() != agent {
        return Err(OutboxError::ForeignOwner {
            path: path.to_path_buf(),
            uid: meta.uid(),
            agent,
        });
    }
    Ok(())
}

pub(crate) fn open_entry(outbox: &Path, entry: &Entry) -> Result<Opened, OutboxError> {
    let source = OutboxError::source(&entry.path);
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&entry.path)
        .map_err(source)?;
    let meta = file.metadata().map_err(source)?;
    if !meta.file_type().is_file() {
        return Err(OutboxError::NotRegular {
            path: entry.path.clone(),
            kind: kind_of(meta.file_type()),
        });
    }
    sole_and_ours(&entry.path, &meta)?;
    let saved = || {
        std::fs::read(digest_path(outbox, &entry.name))
            .ok()
            .and_then(|b| serde_json::from_slice::<Digest>(&b).ok())
            .filter(|d| {
                d.size == meta.len() && d.ctime_ns == ctime_ns(&meta) && d.ino == meta.ino()
            })
    };
    let mut found = saved();
    if found.is_none() {
        if claimed_elsewhere(&file) {
            return Err(OutboxError::BeingQueued {
                name: entry.name.clone(),
            });
        }
        // The claim may have ended, its MD5 saved, since the first look.
        found = saved();
    }
    let md5sum = match found {
        Some(d) => d.md5sum,
        None => {
            log::info!("{}: no saved MD5; reading the file for it", entry.name);
            let md5sum = crate::digest::md5_reader(&mut file).map_err(source)?;
            use std::io::Seek;
            file.rewind().map_err(source)?;
            write_digest(outbox, &entry.name, &md5sum, &meta);
            md5sum
        }
    };
    Ok(Opened {
        file,
        size: meta.len(),
        md5sum,
        dev: meta.dev(),
        ino: meta.ino(),
        ctime_ns: i64::try_from(ctime_ns(&meta)).unwrap_or(i64::MAX),
    })
}

/// Removes an uploaded entry and its saved MD5 — only while the name still refers to the
/// file that was uploaded: one renamed over it meanwhile stays, and is uploaded next.
pub(crate) fn remove(outbox: &Path, entry: &Entry, uploaded: &Opened) -> Result<(), FsError> {
    remove_if(outbox, entry, uploaded.dev, uploaded.ino)
}

/// Removes `entry` and its saved MD5 while its name still refers to file (`dev`, `ino`).
pub(crate) fn remove_if(outbox: &Path, entry: &Entry, dev: u64, ino: u64) -> Result<(), FsError> {
    let now =
        std::fs::symlink_metadata(&entry.path).map_err(|e| FsError::new("stat", &entry.path, e))?;
    if now.dev() != dev || now.ino() != ino {
        log::info!(
            "{}: a new file took its name during the upload; it is uploaded next",
            entry.name
        );
        return Ok(());
    }
    std::fs::remove_file(&entry.path).map_err(|e| FsError::new("remove", &entry.path, e))?;
    let _ = std::fs::remove_file(digest_path(outbox, &entry.name));
    fsutil::fsync_dir(outbox)
}

/// Removes the temporary copies (`.incoming-PID-…`) of `resagent upload` runs that died
/// mid-copy (their process is gone); called by the upload thread at start.
pub(crate) fn remove_abandoned_copies(outbox: &Path) {
    let Ok(rd) = std::fs::read_dir(outbox) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(".incoming-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            log::info!("removing {}: an interrupted `resagent upload` copy", name);
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The files waiting, oldest arrival first (change time: a rename into the outbox sets it).
pub(crate) fn scan(outbox: &Path) -> io::Result<Vec<Entry>> {
    let mut found = Vec::new();
    let rd = match std::fs::read_dir(outbox) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let name = match e.file_name().into_string() {
            Ok(n) if !n.starts_with('.') && validate_name(&n).is_ok() => n,
            _ => continue,
        };
        let meta = match std::fs::symlink_metadata(e.path()) {
            Ok(m) if m.file_type().is_file() => m,
            _ => continue,
        };
        found.push((ctime_ns(&meta), name, e.path(), meta));
    }
    found.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Ok(found
        .into_iter()
        .map(|(ctime, name, path, meta)| Entry {
            name,
            path,
            size: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
            ctime_ns: i64::try_from(ctime).unwrap_or(i64::MAX),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_hashes_in_one_pass_and_leaves_the_source() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("log.txt");
        std::fs::write(&src, b"hello").unwrap();
        let outbox = d.path().join("outbox");
        let (e, md5) = enqueue(&outbox, &src, None, Handover::Copy).unwrap();
        assert_eq!(md5, "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(e.name, "log.txt");
        assert_eq!(std::fs::read(&src).unwrap(), b"hello");
        assert_eq!(std::fs::read(&e.path).unwrap(), b"hello");
        let opened = open_entry(&outbox, &e).unwrap();
        assert_eq!(opened.md5sum, md5);
        assert_eq!(scan(&outbox).unwrap(), vec![e.clone()]);
        assert!(matches!(
            enqueue(&outbox, &src, None, Handover::Copy),
            Err(OutboxError::AlreadyQueued { .. })
        ));
        remove(&outbox, &e, &opened).unwrap();
        assert!(scan(&outbox).unwrap().is_empty());
        assert_eq!(std::fs::read_dir(&outbox).unwrap().count(), 0);
    }

    #[test]
    fn an_entry_is_claimed_until_its_md5_is_saved_and_the_daemon_waits_for_the_claim() {
        let d = tempfile::tempdir().unwrap();
        let outbox = d.path().join("outbox");
        std::fs::create_dir(&outbox).unwrap();
        // `upload` holds the claim from before the entry has its name until it drops the
        // descriptor (after saving the MD5).
        let src = d.path().join("a.bin");
        std::fs::write(&src, b"moved").unwrap();
        let dest = outbox.join("a.bin");
        let queued = move_in(&src, &outbox, &dest).unwrap();
        assert_eq!(queued.md5sum, "11dfd868d93bc2b0e4ce0bee5756f8b1");
        assert!(claimed_elsewhere(&File::open(&dest).unwrap()));
        drop(queued);
        assert!(!claimed_elsewhere(&File::open(&dest).unwrap()));
        std::fs::write(&src, b"copied").unwrap();
        let claimed = copy_hashing(&src, &outbox, "b.bin", &outbox.join("b.bin")).unwrap();
        assert!(claimed_elsewhere(
            &File::open(outbox.join("b.bin")).unwrap()
        ));
        drop(claimed);

        // A file its writer holds locked is queued without waiting (and unclaimed).
        std::fs::write(&src, b"locked").unwrap();
        let writer = File::open(&src).unwrap();
        claim(&writer);
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, o) = (src.clone(), outbox.clone());
        std::thread::spawn(move || {
            let _ = tx.send(move_in(&s, &o, &o.join("c.bin")).map(|q| q.md5sum));
        });
        let moved = rx.recv_timeout(std::time::Duration::from_secs(10));
        drop(writer);
        let md5 = moved
            .expect("move_in waited for the writer's lock")
            .unwrap();
        assert_eq!(md5, crate::digest::md5_file(&outbox.join("c.bin")).unwrap());

        // An entry without a saved MD5 while the claim is held: not read yet.
        let e = Entry {
            name: "a.bin".into(),
            path: dest.clone(),
            size: 5,
            ..Entry::default()
        };
        let held = File::open(&dest).unwrap();
        claim(&held);
        assert!(matches!(
            open_entry(&outbox, &e),
            Err(OutboxError::BeingQueued { .. })
        ));
        // The claim ends without a saved MD5 (a killed `upload`): the daemon hashes it.
        drop(held);
        let opened = open_entry(&outbox, &e).unwrap();
        assert_eq!(opened.md5sum, crate::digest::md5_file(&dest).unwrap());
    }

    #[test]
    fn a_write_after_a_moved_files_metadata_was_taken_is_never_hidden_by_its_saved_md5() {
        let d = tempfile::tempdir().unwrap();
        let outbox = d.path().join("outbox");
        std::fs::create_dir(&outbox).unwrap();
        let src = d.path().join("w.bin");
        std::fs::write(&src, b"first").unwrap();
        let dest = outbox.join("w.bin");
        let queued = move_in(&src, &outbox, &dest).unwrap();
        // A writer that still had the file open appends, as it could during the hash.
        OpenOptions::new()
            .append(true)
            .open(&dest)
            .unwrap()
            .write_all(b" and more")
            .unwrap();
        write_digest(&outbox, "w.bin", &queued.md5sum, &queued.meta);
        drop(queued.claim);
        let e = Entry {
            name: "w.bin".into(),
            path: dest.clone(),
            size: 0,
            ..Entry::default()
        };
        let opened = open_entry(&outbox, &e).unwrap();
        assert_ne!(opened.md5sum, queued.md5sum);
        assert_eq!(opened.md5sum, crate::digest::md5_file(&dest).unwrap());
    }

    #[test]
    fn move_renames_and_a_stale_digest_is_recomputed() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("rec.bin");
        std::fs::write(&src, b"abc").unwrap();
        let outbox = d.path().join("outbox");
        let (e, md5) = enqueue(&outbox, &src, Some("clip"), Handover::Move).unwrap();
        assert!(!src.exists());
        assert_eq!(md5, "900150983cd24fb0d6963f7d28e17f72");
        std::fs::write(&e.path, b"abcd").unwrap();
        assert_eq!(
            open_entry(&outbox, &e).unwrap().md5sum,
            "e2fc714c4727ee9395f324cd2e7f331f"
        );
    }

    #[test]
    fn an_entry_is_used_through_one_descriptor_never_a_swapped_file() {
        let d = tempfile::tempdir().unwrap();
        let outbox = d.path().join("outbox");
        let src = d.path().join("a.log");
        std::fs::write(&src, b"first").unwrap();
        let (e, _) = enqueue(&outbox, &src, None, Handover::Copy).unwrap();
        let opened = open_entry(&outbox, &e).unwrap();
        // A new version renamed over the entry after it was opened: not removed.
        let newer = d.path().join("newer");
        std::fs::write(&newer, b"second").unwrap();
        std::fs::rename(&newer, &e.path).unwrap();
        remove(&outbox, &e, &opened).unwrap();
        assert_eq!(
            std::fs::read(&e.path).unwrap(),
            b"second",
            "kept for its own upload"
        );
        // A symlink (to a file only root may read) or a FIFO in its place is never read.
        let secret = d.path().join("secret");
        std::fs::write(&secret, b"root only").unwrap();
        std::fs::remove_file(&e.path).unwrap();
        std::os::unix::fs::symlink(&secret, &e.path).unwrap();
        assert!(open_entry(&outbox, &e).is_err());
        std::fs::remove_file(&e.path).unwrap();
        nix::unistd::mkfifo(&e.path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(
            open_entry(&outbox, &e),
            Err(OutboxError::NotRegular { kind: "a FIFO", .. })
        ));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "no hang"
        );
    }

    #[test]
    fn long_names_and_concurrent_enqueues_of_one_name() {
        let d = tempfile::tempdir().unwrap();
        let outbox = d.path().join("outbox");
        let src = d.path().join("s");
        std::fs::write(&src, b"x").unwrap();
        let long = "n".repeat(255);
        let (e, _) = enqueue(&outbox, &src, Some(&long), Handover::Copy).unwrap();
        assert_eq!(e.name.len(), 255);
        assert_eq!(open_entry(&outbox, &e).unwrap().size, 1);
        // The name taken between the check and the rename: refused, never replaced.
        let tmp = outbox.join(".t");
        std::fs::write(&tmp, b"late").unwrap();
        assert!(matches!(
            place_new(&tmp, &e.path, &e.name, &outbox),
            Err(OutboxError::AlreadyQueued { .. })
        ));
        assert_eq!(std::fs::read(&e.path).unwrap(), b"x");
    }

    #[test]
    fn special_files_and_bad_names_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let outbox = d.path().join("outbox");
        assert!(matches!(
            enqueue(&outbox, d.path(), Some("x"), Handover::Copy),
            Err(OutboxError::NotRegular {
                kind: "a directory",
                ..
            })
        ));
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(matches!(
            enqueue(&outbox, &fifo, None, Handover::Copy),
            Err(OutboxError::NotRegular { kind: "a FIFO", .. })
        ));
        // `--move` of a link is refused and leaves it in place; a copy reads its target.
        let target = d.path().join("target");
        std::fs::write(&target, b"kept").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink("target", &link).unwrap();
        assert!(matches!(
            enqueue(&outbox, &link, None, Handover::Move),
            Err(OutboxError::NotRegular {
                kind: "a symbolic link",
                ..
            })
        ));
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(
            !outbox.join("link").exists()
                && std::fs::symlink_metadata(outbox.join("link")).is_err()
        );
        let (e, _) = enqueue(&outbox, &link, None, Handover::Copy).unwrap();
        assert_eq!(std::fs::read(&e.path).unwrap(), b"kept");
        assert!(!std::fs::symlink_metadata(&e.path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(matches!(
            enqueue(&outbox, &d.path().join("missing"), None, Handover::Copy),
            Err(OutboxError::Source { .. })
        ));
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        for bad in ["a/b", "..", ".hidden", ""] {
            assert!(matches!(
                enqueue(&outbox, &f, Some(bad), Handover::Copy),
                Err(OutboxError::InvalidName(_))
            ));
        }
    }

    #[test]
    fn scan_skips_dot_names_and_folders() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(".incoming"), b"x").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("a"), b"x").unwrap();
        let names: Vec<_> = scan(d.path())
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a"]);
    }
}
