//! Rebuilding a resource from a patch (`NAME.rdelta`, docs/protocol.md "Delta
//! delivery"): once the patch's own bytes are staged and match the task's MD5, its
//! header names the target and the base; the base (`resource_dir/NAME`) is re-hashed —
//! MD5 and SHA-256, never a cached hash — and must be the one the patch was made
//! against; the patch is then applied as a stream into the staging file of `NAME`, and
//! the rebuilt file must have the target's size, MD5 and SHA-256 before any plugin sees
//! it. Memory: deflate's 32 KiB window, bipatch's 4 KiB and the read buffers — whatever
//! the file sizes.
//!
//! The engine is bidiff's patch format (`bipatch`, a stream of add/copy/seek
//! instructions) compressed with deflate (`flate2`'s pure-Rust back end): maintained
//! crates; the choice and its figures are in docs/architecture.md.

use super::{DownloadError, Downloader, Stop};
use crate::digest::{read_chunks, ChunkError, Md5, Sha256};
use crate::install::{self, Paths};
use crate::protocol::Task;
use crate::rdelta::{self, Header, HEADER_LEN};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

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

/// Rebuilds the target of the patch staged at `patch` (the task `task`, `NAME.rdelta`)
/// into the staging file of `NAME`.
pub(super) fn rebuild(d: &Downloader, task: &Task, patch: &Path) -> Result<Rebuilt, Stop> {
    let Some(base_name) = rdelta::base_name(&task.name) else {
        return Err(header_error(task, "not a patch name".into()));
    };
    let io_error = |what: &str, e: io::Error| DownloadError::Delta {
        name: task.name.clone(),
        reason: format!("{what}: {e}"),
    };
    let mut file = File::open(patch).map_err(|e| io_error("the staged patch", e))?;
    let header = read_header(&mut file).map_err(|e| io_error("the staged patch", e))?;
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
    let same = |f: &(u64, String, String), want: &rdelta::Digests| {
        f.0 == want.size && f.1 == hex::encode(want.md5) && f.2 == hex::encode(want.sha256)
    };
    match &found {
        Some(f) if same(f, &header.target) => return Ok(Rebuilt::Already(target)),
        Some(f) if same(f, &header.base) => {}
        other => {
            return Err(DownloadError::DeltaBase {
                name: task.name.clone(),
                base: base_name.to_string(),
                expected: hex::encode(header.base.md5),
                found: other
                    .as_ref()
                    .map_or_else(|| "no such file".to_string(), |f| format!("md5 {}", f.1)),
            }
            .into())
        }
    }
    let paths = install::paths(&d.config.resource_dir, base_name);
    match apply(d, &mut file, &base_path, &paths, &header, task) {
        Ok(()) => Ok(Rebuilt::Ready(target)),
        Err(e) => {
            install::discard_staging(&paths.staging);
            Err(e)
        }
    }
}

/// The header's bytes (fewer when the patch is shorter).
fn read_header(file: &mut File) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(HEADER_LEN);
    file.take(HEADER_LEN as u64).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn header_error(task: &Task, reason: String) -> Stop {
    DownloadError::DeltaHeader {
        name: task.name.clone(),
        reason,
    }
    .into()
}

/// Size, MD5 and SHA-256 of the base as it is on disk now; None when there is no such
/// regular file.
fn hash_base(d: &Downloader, path: &Path) -> Result<Option<(u64, String, String)>, Stop> {
    let mut file = match File::open(path) {
        Ok(f) if f.metadata().map(|m| m.is_file()).unwrap_or(false) => f,
        _ => return Ok(None),
    };
    let (mut md5, mut sha) = (Md5::new(), Sha256::new());
    let size = read_chunks(&mut file, u64::MAX, |c| {
        md5.consume(c);
        sha.consume(c);
        d.tick()
    });
    match size {
        Ok(size) => Ok(Some((size, md5.hex(), sha.hex()))),
        Err(ChunkError::Sink(stop)) => Err(stop),
        Err(ChunkError::Read(_)) => Ok(None),
    }
}

/// Applies the patch body (after the header in `patch`) to the base at `base_path`,
/// writing the target into `paths.staging` and checking it against the header.
fn apply(
    d: &Downloader,
    patch: &mut File,
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
    patch
        .seek(SeekFrom::Start(HEADER_LEN as u64))
        .map_err(|e| body_error(e.to_string()))?;
    let inflated = flate2::read::DeflateDecoder::new(BufReader::with_capacity(BUF, &*patch));
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
