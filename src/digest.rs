//! Every read-and-hash in resagent goes through here: the MD5 of resources (a resume
//! re-hashing its staged part, a file installed before a kill, an outbox file, the copy
//! into the outbox) and the SHA-256 of plugin files. One chunked reading loop
//! ([`read_chunks`]) serves them all. Every digest comes from OpenSSL (see [`Md5`]);
//! the HMAC of the MQTT password too (`mqtt.rs`).

use openssl::hash::{Hasher, MessageDigest};
use std::io::{self, Read, Write};

/// Size of one read when hashing a file.
const READ_CHUNK: usize = 256 * 1024;

/// A running MD5, computed by the OpenSSL the agent already links for TLS: its assembly
/// runs at `openssl dgst -md5` speed on x86 and ARM alike, where the pure-Rust `md5`
/// crate reached three quarters of it and grew the binary (see docs/architecture.md).
///
/// OpenSSL can refuse a digest (a FIPS provider without MD5, an allocation failure).
/// Then the state is poisoned: it logs once and its [`hex`](Md5::hex) can never equal
/// a real digest, so a check against it fails instead of passing.
#[derive(Clone)]
pub(crate) struct Md5(Running);

impl Default for Md5 {
    fn default() -> Self {
        Md5(Running::new(MessageDigest::md5(), "MD5", UNAVAILABLE))
    }
}

impl Md5 {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn consume(&mut self, data: &[u8]) {
        self.0.consume(data)
    }

    /// The digest as 32 lowercase hex characters (the state is kept); a poisoned state
    /// gives a text that is not a digest.
    pub(crate) fn hex(&self) -> String {
        self.0.hex()
    }
}

/// A running SHA-256 (the second check of a patch's base and target), poisoned like
/// [`Md5`] when OpenSSL refuses it.
pub(crate) struct Sha256(Running);

impl Sha256 {
    pub(crate) fn new() -> Self {
        Sha256(Running::new(
            MessageDigest::sha256(),
            "SHA-256",
            "sha256-unavailable",
        ))
    }

    pub(crate) fn consume(&mut self, data: &[u8]) {
        self.0.consume(data)
    }

    /// The digest as 64 lowercase hex characters, or a text that is not a digest.
    pub(crate) fn hex(&self) -> String {
        self.0.hex()
    }
}

/// One running OpenSSL digest that poisons itself (logging once) when OpenSSL fails.
#[derive(Clone)]
struct Running {
    hasher: Option<Hasher>,
    /// For log lines.
    name: &'static str,
    /// What a poisoned state shows instead of a digest.
    unavailable: &'static str,
}

impl Running {
    fn new(md: MessageDigest, name: &'static str, unavailable: &'static str) -> Self {
        let hasher = Hasher::new(md)
            .map_err(|e| log::error!("OpenSSL cannot compute {name}: {e}"))
            .ok();
        Running {
            hasher,
            name,
            unavailable,
        }
    }

    fn consume(&mut self, data: &[u8]) {
        if let Some(h) = &mut self.hasher {
            if let Err(e) = h.update(data) {
                log::error!("OpenSSL failed in {}: {e}", self.name);
                self.hasher = None;
            }
        }
    }

    fn hex(&self) -> String {
        match self.hasher.clone().map(|mut h| h.finish()) {
            Some(Ok(d)) => hex::encode(d),
            Some(Err(e)) => {
                log::error!("OpenSSL failed in {}: {e}", self.name);
                self.unavailable.to_owned()
            }
            None => self.unavailable.to_owned(),
        }
    }
}

/// What a poisoned MD5 shows instead of a digest.
const UNAVAILABLE: &str = "md5-unavailable";

/// Where a chunked copy failed: reading its source, or in what was done with a chunk.
#[derive(Debug)]
pub(crate) enum ChunkError<E> {
    Read(io::Error),
    Sink(E),
}

/// Reads `r` in chunks, up to `limit` bytes, handing each chunk to `sink`; returns how
/// many bytes there were. `EINTR` is retried; a short source simply ends early.
pub(crate) fn read_chunks<E>(
    r: &mut impl Read,
    limit: u64,
    mut sink: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, ChunkError<E>> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut done = 0u64;
    while done < limit {
        let want = buf
            .len()
            .min((limit - done).min(usize::MAX as u64) as usize);
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ChunkError::Read(e)),
        };
        sink(&buf[..n]).map_err(ChunkError::Sink)?;
        done += n as u64;
    }
    Ok(done)
}

/// Feeds up to `len` bytes of `r` into `md5`, calling `tick` after each chunk (a long
/// read beats the watchdog there and ends with the tick's error on a stop); returns how
/// many bytes there were.
pub(crate) fn hash_prefix_ticking<E>(
    r: &mut impl Read,
    len: u64,
    md5: &mut Md5,
    mut tick: impl FnMut() -> Result<(), E>,
) -> Result<u64, ChunkError<E>> {
    read_chunks(r, len, |c| {
        md5.consume(c);
        tick()
    })
}

/// Feeds up to `len` bytes of `r` into `md5`; returns how many there were.
pub(crate) fn hash_prefix(r: &mut impl Read, len: u64, md5: &mut Md5) -> io::Result<u64> {
    hash_prefix_ticking(r, len, md5, || Ok::<(), io::Error>(())).map_err(|e| match e {
        ChunkError::Read(e) | ChunkError::Sink(e) => e,
    })
}

/// MD5 of everything `r` yields, as hex.
pub(crate) fn md5_reader(r: &mut impl Read) -> io::Result<String> {
    let mut md5 = Md5::new();
    hash_prefix(r, u64::MAX, &mut md5)?;
    Ok(md5.hex())
}

/// MD5 of a whole file, as hex (the daemon reads through `read_chunks` with a tick).
#[cfg(test)]
pub(crate) fn md5_file(path: &std::path::Path) -> io::Result<String> {
    md5_reader(&mut std::fs::File::open(path)?)
}

/// Copies everything `r` yields into `w`, returning its SHA-256 as hex (a plugin sealed
/// in memory is hashed on the way, so the hash covers exactly the bytes kept).
pub(crate) fn sha256_copy(r: &mut impl Read, w: &mut impl Write) -> io::Result<String> {
    let mut h = Hasher::new(MessageDigest::sha256()).map_err(io::Error::other)?;
    read_chunks(r, u64::MAX, |c| {
        h.update(c).map_err(io::Error::other)?;
        w.write_all(c)
    })
    .map_err(|e| match e {
        ChunkError::Read(e) | ChunkError::Sink(e) => e,
    })?;
    h.finish().map(hex::encode).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_the_known_one_and_hex_keeps_the_state() {
        let mut a = Md5::new();
        a.consume(b"hel");
        a.consume(b"lo");
        assert_eq!(a.hex(), "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(Md5::new().hex(), "d41d8cd98f00b204e9800998ecf8427e");
        a.consume(b"!");
        assert_ne!(a.hex(), "5d41402abc4b2a76b9719d911017c592");
    }

    #[test]
    fn files_and_prefixes_hash_to_the_known_digests() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"hello").unwrap();
        assert_eq!(md5_file(&f).unwrap(), "5d41402abc4b2a76b9719d911017c592");
        let mut md5 = Md5::new();
        assert_eq!(hash_prefix(&mut &b"abcdef"[..], 3, &mut md5).unwrap(), 3);
        assert_eq!(md5.hex(), "900150983cd24fb0d6963f7d28e17f72", "md5(abc)");
        // `printf hello | sha256sum`
        let mut copy = Vec::new();
        assert_eq!(
            sha256_copy(&mut &b"hello"[..], &mut copy).unwrap(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(copy, b"hello");
    }

    #[test]
    fn a_failing_sink_stops_the_copy() {
        let mut seen = 0;
        let r = read_chunks(&mut &[7u8; 10][..], u64::MAX, |c| {
            seen += c.len();
            Err("full")
        });
        assert!(matches!(r, Err(ChunkError::Sink("full"))));
        assert_eq!(seen, 10);
    }
}
