//! `resagent-delta make BASE TARGET -o PATCH`: the `.rdelta` patch that rebuilds TARGET
//! from BASE on a device (docs/protocol.md, "Delta delivery"). A build-machine tool,
//! kept out of the agent's binary: bidiff's suffix sorting (and rayon) and a deflate
//! compressor would cost the device code it never uses; the agent only applies.
//!
//! Memory here is the generator's business (a suffix array of BASE: about 9× its size).

use openssl::hash::{hash, MessageDigest};
use resagent::rdelta::{Digests, Header};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: resagent-delta make BASE TARGET -o PATCH";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (base, target, out) = match parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("resagent-delta: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match make(&base, &target, &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resagent-delta: {e}");
            ExitCode::from(1)
        }
    }
}

fn parse(args: &[String]) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    match args {
        [make, base, target, o, out] if make == "make" && o == "-o" => {
            Ok((base.into(), target.into(), out.into()))
        }
        _ => Err("expected: make BASE TARGET -o PATCH".into()),
    }
}

fn digests(data: &[u8]) -> Result<Digests, String> {
    let md5 = hash(MessageDigest::md5(), data).map_err(|e| e.to_string())?;
    let sha = hash(MessageDigest::sha256(), data).map_err(|e| e.to_string())?;
    let mut d = Digests {
        size: data.len() as u64,
        md5: [0; 16],
        sha256: [0; 32],
    };
    d.md5.copy_from_slice(&md5);
    d.sha256.copy_from_slice(&sha);
    Ok(d)
}

/// Every core of the build machine sorts a partition of the base and scans a stretch
/// of the target. The trade-off, measured (bench/run, 2 cores): 256 MiB of records took
/// 47 s instead of 97 s, 64 MiB 6–8 s instead of 18 s; the patches grew by 20 bytes
/// (64 MiB records) and 0.5 % of themselves (the ext4 image): matches across a chunk's
/// edge are found again only from its start.
fn diff_params(target_len: usize) -> Result<bidiff::DiffParams, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Small targets gain nothing from chunks; large ones one chunk per core.
    let chunk = (target_len > 8 << 20).then(|| target_len.div_ceil(cores));
    bidiff::DiffParams::new(cores, chunk).map_err(|e| e.to_string())
}

fn make(base: &PathBuf, target: &PathBuf, out: &PathBuf) -> Result<(), String> {
    let started = Instant::now();
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let (old, new) = (read(base)?, read(target)?);
    let header = Header {
        target: digests(&new)?,
        base: digests(&old)?,
    };
    let tmp = out.with_extension("rdelta.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut file = std::io::BufWriter::new(file);
    let io = |e: std::io::Error| format!("{}: {e}", tmp.display());
    file.write_all(&header.encode()).map_err(io)?;
    let mut z = flate2::write::DeflateEncoder::new(file, flate2::Compression::best());
    bidiff::simple_diff_with_params(&old, &new, &mut z, &diff_params(new.len())?).map_err(io)?;
    let file = z.finish().map_err(io)?;
    let file = file.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))?;
    let size = std::fs::metadata(out).map_err(|e| e.to_string())?.len();
    println!(
        "base {} bytes, target {} bytes, patch {} bytes ({:.2} % of the target), {:.1} s",
        old.len(),
        new.len(),
        size,
        size as f64 * 100.0 / new.len().max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
