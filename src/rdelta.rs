//! The `.rdelta` patch format, byte for byte — the one public module of the crate, so
//! that `resagent-delta make` (the generator, its own binary) writes exactly what the
//! agent reads. Pure code, no I/O: every rule about a header from the network is a unit
//! test here.
//!
//! A patch is a 128-byte header, then a raw deflate stream (RFC 1951) holding a
//! bidiff/bipatch stream that rebuilds the target from the base (docs/protocol.md, "Delta delivery"):
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..8 | magic `RSDELTA\n` |
//! | 8..12 | format version, u32 little-endian: 1 |
//! | 12..16 | engine, u32 LE: 1 = bipatch stream, deflate-compressed |
//! | 16..24, 24..40, 40..72 | target: size (u64 LE), MD5, SHA-256 |
//! | 72..80, 80..96, 96..128 | base: the same |

use std::fmt;

/// The first bytes of every patch.
pub const MAGIC: &[u8; 8] = b"RSDELTA\n";
/// The format version this agent reads and the generator writes.
pub const VERSION: u32 = 1;
/// The only engine so far: a bipatch stream compressed with deflate.
pub const ENGINE_BIPATCH_DEFLATE: u32 = 1;
/// The header's length; the compressed patch follows it.
pub const HEADER_LEN: usize = 128;
/// The suffix of a task name that makes it a patch against the resource before it.
pub const SUFFIX: &str = ".rdelta";

/// A file as the header names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digests {
    pub size: u64,
    pub md5: [u8; 16],
    pub sha256: [u8; 32],
}

/// What a patch says it rebuilds, and from what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub target: Digests,
    pub base: Digests,
}

/// Why a header is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than a header.
    Short(usize),
    /// Not a patch of this format.
    Magic,
    /// A version this agent does not read.
    Version(u32),
    /// An engine this agent does not have.
    Engine(u32),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Short(n) => {
                write!(
                    f,
                    "the patch has {n} bytes, fewer than its {HEADER_LEN}-byte header"
                )
            }
            HeaderError::Magic => write!(f, "not an .rdelta patch (no RSDELTA magic)"),
            HeaderError::Version(v) => {
                write!(f, "patch format version {v}; this resagent reads {VERSION}")
            }
            HeaderError::Engine(e) => {
                write!(
                    f,
                    "patch engine {e}; this resagent has {ENGINE_BIPATCH_DEFLATE} (bipatch+deflate)"
                )
            }
        }
    }
}

impl std::error::Error for HeaderError {}

/// The resource a patch named `name` applies to (`fw.bin.rdelta` → `fw.bin`); None for
/// a name that is not a patch (or is only the suffix).
pub fn base_name(name: &str) -> Option<&str> {
    name.strip_suffix(SUFFIX).filter(|base| !base.is_empty())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn digests_at(b: &[u8], at: usize) -> Digests {
    let mut size = [0u8; 8];
    size.copy_from_slice(&b[at..at + 8]);
    let mut md5 = [0u8; 16];
    md5.copy_from_slice(&b[at + 8..at + 24]);
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(&b[at + 24..at + 56]);
    Digests {
        size: u64::from_le_bytes(size),
        md5,
        sha256,
    }
}

fn put_digests(out: &mut [u8], at: usize, d: &Digests) {
    out[at..at + 8].copy_from_slice(&d.size.to_le_bytes());
    out[at + 8..at + 24].copy_from_slice(&d.md5);
    out[at + 24..at + 56].copy_from_slice(&d.sha256);
}

impl Header {
    /// Reads the header at the start of `bytes` (anything after it is the patch body).
    pub fn parse(bytes: &[u8]) -> Result<Header, HeaderError> {
        if bytes.len() < HEADER_LEN {
            return Err(HeaderError::Short(bytes.len()));
        }
        if &bytes[..8] != MAGIC {
            return Err(HeaderError::Magic);
        }
        match u32_at(bytes, 8) {
            VERSION => {}
            v => return Err(HeaderError::Version(v)),
        }
        match u32_at(bytes, 12) {
            ENGINE_BIPATCH_DEFLATE => {}
            e => return Err(HeaderError::Engine(e)),
        }
        Ok(Header {
            target: digests_at(bytes, 16),
            base: digests_at(bytes, 72),
        })
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&ENGINE_BIPATCH_DEFLATE.to_le_bytes());
        put_digests(&mut out, 16, &self.target);
        put_digests(&mut out, 72, &self.base);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            target: Digests {
                size: 1 << 40,
                md5: [1; 16],
                sha256: [2; 32],
            },
            base: Digests {
                size: 7,
                md5: [3; 16],
                sha256: [4; 32],
            },
        }
    }

    #[test]
    fn a_header_reads_back_as_written_with_the_body_after_it() {
        let mut bytes = sample().encode().to_vec();
        bytes.extend_from_slice(b"body");
        assert_eq!(Header::parse(&bytes), Ok(sample()));
    }

    #[test]
    fn a_truncated_header_is_refused_at_every_length() {
        let bytes = sample().encode();
        for n in 0..HEADER_LEN {
            assert_eq!(Header::parse(&bytes[..n]), Err(HeaderError::Short(n)));
        }
    }

    #[test]
    fn hostile_headers_are_refused_with_the_reason() {
        let good = sample().encode();
        let mut b = good;
        b[0] ^= 0xff;
        assert_eq!(Header::parse(&b), Err(HeaderError::Magic));
        let mut b = good;
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(Header::parse(&b), Err(HeaderError::Version(2)));
        let mut b = good;
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Header::parse(&b), Err(HeaderError::Version(u32::MAX)));
        let mut b = good;
        b[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(Header::parse(&b), Err(HeaderError::Engine(0)));
        assert!(HeaderError::Engine(0).to_string().contains("engine 0"));
        // A full-size file of zeros or of 0xff bytes is no header either.
        assert_eq!(Header::parse(&[0u8; 200]), Err(HeaderError::Magic));
        assert_eq!(Header::parse(&[0xffu8; 200]), Err(HeaderError::Magic));
    }

    #[test]
    fn patch_names_name_their_base() {
        assert_eq!(base_name("fw.bin.rdelta"), Some("fw.bin"));
        assert_eq!(base_name(".rdelta"), None);
        assert_eq!(base_name("fw.bin"), None);
        assert_eq!(base_name("fw.rdelta.bin"), None);
    }
}
