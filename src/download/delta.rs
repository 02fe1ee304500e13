//! Rebuilding a resource from a patch (`NAME.rdelta`, docs/protocol.md "Delta
//! delivery"), applied while its bytes arrive ([`fetch_and_rebuild`]) or, after a
//! restart that found the patch staged whole, from its file ([`rebuild`]): its header
//! names the target and the base; the base (`resource_dir/NAME`) is re-hashed —
//! MD5 and SHA-256, never a cached hash — and must be the one the patch was made
//! against; the patch is then applied as a stream into the staging file of `NAME`, and
//! the rebuilt file must have the target's size, MD5 and SHA-256 before any plugin sees
//! it. Memory: deflate's 32 KiB window, bipatch's 4 KiB and the read buffers — whatever
//! the file sizes.
//!
//! The engine is bidiff's patch format (`bipatch`, a stream of add/copy/seek
//! instructions) compressed with deflate (`flate2`'s pure-Rust back end): maintained
//! crates; the choice and its figures are in docs/architecture.md.

use super::fetch;
use super::follow::{Follow, FollowReader};
use super::{DownloadError, Downloader, Stop};
use crate::digest::{read_chunks, ChunkError, Md5, Sha256};
use crate::install::{self, Paths};
use crate::protocol::Task;
use crate::rdelta::{self, Header, HEADER_LEN};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// What a staged patch amounts to.
pub(super) enum Rebuilt {
    /// The target is in its staging file, checked: install it as this task.
    Ready(Task),
    /// The base already is the target (the patch was applied before): nothing to do.
    Already(Task),
}

/// Reads of the base and the patch: large enough to keep system calls rare, small
/// against the memory bound.
const BUF: usize = 64 * 1024;

/// Fetches the patch of `task` (`NAME.rdelta`) into its staging file and applies it
/// while the bytes arrive (`follow.rs`), on a thread of its own, into the staging file
/// of `NAME`. The fetch is the usual one (journal, Range resume, stalls); an applier
/// that fails early (no base, a wrong base, a bad header) or finds the target in place
/// ends the fetch there. Ready only once the patch's own MD5 is checked too.
pub(super) fn fetch_and_rebuild(
    d: &Downloader,
    task: &Task,
    paths: &Paths,
) -> Result<Rebuilt, Stop> {
    let follow = Arc::new(Follow::new());
    std::thread::scope(|scope| {
        let applier = std::thread::Builder::new()
            .name("delta-apply".into())
            .spawn_scoped(scope, || apply_following(d, task, &paths.staging, &follow));
        let applier = match applier {
            Ok(a) => a,
            Err(e) => {
                // No thread: fetch the whole patch, then apply it from the file.
                log::warn!("{}: {e}; applying the patch once it is fetched", task.name);
                fetch::fetch(d, task, paths, None)?;
                d.mark_verified(task);
                return rebuild(d, task, &paths.staging);
            }
        };
        let fetched = fetch::fetch(d, task, paths, Some(&follow));
        follow.end(fetched.is_ok());
        let applied = applier.join().unwrap_or_else(|_| {
            Err(DownloadError::Delta {
                name: task.name.clone(),
                reason: "the applying thread panicked".into(),
            }
            .into())
        });
        match fetched {
            Ok(()) => {
                d.mark_verified(task);
                applied
            }
            // The applier's verdict came first and ended the fetch.
            Err(_) if follow.reader_done() => applied,
            Err(stop) => {
                if let Some(base) = rdelta::base_name(&task.name) {
                    install::discard_staging(&install::paths(&d.config.resource_dir, base).staging);
                }
                Err(stop)
            }
        }
    })
}

/// The applying thread: reads the patch from byte 0 as it is written, again from byte 0
/// whenever the staged bytes start over. Its own verdicts (a failure, or the target in
/// place already) end the fetch; a stop or an abandoned fetch is not a verdict.
fn apply_following(
    d: &Downloader,
    task: &Task,
    patch: &Path,
    follow: &Follow,
) -> Result<Rebuilt, Stop> {
    loop {
        let generation = follow.generation();
        let stopping = || d.check_stop().is_err();
        let rebuilt = rebuild_from(
            d,
            task,
            FollowReader::new(follow, patch.to_path_buf(), stopping),
        );
        if follow.generation() != generation && !follow.abandoned() {
            log::info!("{}: the patch bytes start over; applying again", task.name);
            continue;
        }
        if rebuilt.is_err() {
            d.check_stop()?;
            if follow.abandoned() {
                return Err(Stop::Interrupted);
            }
        }
        if !matches!(rebuilt, Ok(Rebuilt::Ready(_))) {
            follow.set_reader_done();
        }
        return rebuilt;
    }
}

/// Rebuilds the target of the patch staged whole at `patch` (after a restart that found
/// it verified) into the staging file of `NAME`.
pub(super) fn rebuild(d: &Downloader, task: &Task, patch: &Path) -> Result<Rebuilt, Stop> {
    let file = File::open(patch).map_err(|e| DownloadError::Delta {
        name: task.name.clone(),
        reason: format!("the staged patch: {e}"),
    })?;
    rebuild_from(d, task, file)
}

/// Rebuilds the target of the patch whose bytes `patch` yields from byte 0.
fn rebuild_from(d: &Downloader, task: &Task, mut patch: impl Read) -> Result<Rebuilt, Stop> {
    let Some(base_name) = rdelta::base_name(&task.name) else {
        return Err(header_error(task, "not a patch name".into()));
    };
    let header = read_header(&mut patch).map_err(|e| DownloadError::Delta {
        name: task.name.clone(),
        reason: format!("the staged patch: {e}"),
    })?;
    let header = Header::parse(&header).map_err(|e| header_error(task, e.to_string()))?;
    if header.target.size > d.config.max_resource_bytes {
        return Err(header_error(
            task,
            format!(
                "its target has {} bytes, over max_resource_bytes {}",
                header.target.size, d.config.max_resource_bytes
            ),
        ));
    }
    let target = Task {
        name: base_name.to_string(),
        md5sum: hex::encode(header.target.md5),
        size: header.target.size,
        url: task.url.clone(),
    };
    let base_path = d.config.resource_dir.join(base_name);
    let found = hash_base(d, &base_path)?;
    let same = |f: &Found, want: &rdelta::Digests| match f {
        Found::File { size, md5, sha256 } => {
            *size == want.size
                && *md5 == hex::encode(want.md5)
                && *sha256 == hex::encode(want.sha256)
        }
        _ => false,
    };
    if same(&found, &header.target) {
        return Ok(Rebuilt::Already(target));
    }
    if !same(&found, &header.base) {
        return Err(DownloadError::DeltaBase {
            name: task.name.clone(),
            base: base_name.to_string(),
            expected: hex::encode(header.base.md5),
            found: found.to_string(),
        }
        .into());
    }
    let paths = install::paths(&d.config.resource_dir, base_name);
    match apply(d, patch, &base_path, &paths, &header, task) {
        Ok(()) => Ok(Rebuilt::Ready(target)),
        Err(e) => {
            install::discard_staging(&paths.staging);
            Err(e)
        }
    }
}

/// The header's bytes (fewer when the patch is shorter).
fn read_header(patch: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(HEADER_LEN);
    patch.take(HEADER_LEN as u64).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn header_error(task: &Task, reason: String) -> Stop {
    DownloadError::DeltaHeader {
        name: task.name.clone(),
        reason,
    }
    .into()
}

/// The base as it is on disk now.
enum Found {
    Missing,
    Unreadable(String),
    File {
        size: u64,
        md5: String,
        sha256: String,
    },
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Found::Missing => f.write_str("no such file"),
            Found::Unreadable(e) => write!(f, "a file that cannot be read ({e})"),
            Found::File { md5, .. } => write!(f, "md5 {md5}"),
        }
    }
}

/// Size, MD5 and SHA-256 of the base as it is on disk now (re-read every time: never a
/// cached hash).
fn hash_base(d: &Downloader, path: &Path) -> Result<Found, Stop> {
    let mut file = match File::open(path) {
        Ok(f) if f.metadata().map(|m| m.is_file()).unwrap_or(false) => f,
        Ok(_) => return Ok(Found::Missing),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => return Ok(Found::Unreadable(e.to_string())),
    };
    let (mut md5, mut sha) = (Md5::new(), Sha256::new());
    let size = read_chunks(&mut file, u64::MAX, |c| {
        md5.consume(c);
        sha.consume(c);
        d.tick()
    });
    match size {
        Ok(size) => Ok(Found::File {
            size,
            md5: md5.hex(),
            sha256: sha.hex(),
        }),
        Err(ChunkError::Sink(stop)) => Err(stop),
        Err(ChunkError::Read(e)) => Ok(Found::Unreadable(e.to_string())),
    }
}

/// Applies the patch body (after the header in `patch`) to the base at `base_path`,
/// writing the target into `paths.staging` and checking it against the header.
fn apply(
    d: &Downloader,
    patch: impl Read,
    base_path: &Path,
    paths: &Paths,
    header: &Header,
    task: &Task,
) -> Result<(), Stop> {
    let body_error = |reason: String| -> Stop {
        DownloadError::DeltaBody {
            name: task.name.clone(),
            reason,
        }
        .into()
    };
    let staging_error = |e: io::Error| -> Stop {
        DownloadError::Delta {
            name: task.name.clone(),
            reason: format!("{}: {e}", paths.staging.display()),
        }
        .into()
    };
    let inflated = flate2::read::DeflateDecoder::new(BufReader::with_capacity(BUF, patch));
    let base = File::open(base_path).map_err(staging_error)?;
    let mut rebuilt = bipatch::Reader::new(inflated, BufReader::with_capacity(BUF, base))
        .map_err(|e| body_error(format!("not a bipatch stream: {e}")))?;
    let mut out = File::create(&paths.staging).map_err(staging_error)?;
    let (mut md5, mut sha) = (Md5::new(), Sha256::new());
    let want = header.target.size;
    // One byte more than the target may reveal a patch that rebuilds too much.
    let written = read_chunks(&mut rebuilt, want.saturating_add(1), |c| {
        md5.consume(c);
        sha.consume(c);
        out.write_all(c).map_err(staging_error)?;
        d.tick()
    });
    let written = match written {
        Ok(n) => n,
        Err(ChunkError::Sink(stop)) => return Err(stop),
        Err(ChunkError::Read(e)) => return Err(body_error(format!("does not decode: {e}"))),
    };
    let (md5, sha) = (md5.hex(), sha.hex());
    if written != want || md5 != hex::encode(header.target.md5) {
        return Err(DownloadError::DeltaTarget {
            name: task.name.clone(),
            expected: format!("{want} bytes, md5 {}", hex::encode(header.target.md5)),
            got: format!("{written} bytes, md5 {md5}"),
        }
        .into());
    }
    if sha != hex::encode(header.target.sha256) {
        return Err(DownloadError::DeltaTarget {
            name: task.name.clone(),
            expected: format!("sha256 {}", hex::encode(header.target.sha256)),
            got: format!("sha256 {sha}"),
        }
        .into());
    }
    out.sync_all().map_err(staging_error)?;
    Ok(())
}
