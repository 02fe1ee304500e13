//! Randomness for connection ids and reconnect jitter, read from the kernel's generator.
//! Neither use is cryptographic, but both must differ between devices booted together
//! (a fleet reconnecting after a broker restart must not move in step).

use std::io::Read;

/// 64 random bits; falls back to a mix of time and pid if `/dev/urandom` cannot be read.
pub(crate) fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    match read {
        Ok(()) => u64::from_ne_bytes(buf),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            nanos ^ (u64::from(std::process::id()) << 32)
        }
    }
}

/// `n` random characters from `[A-Za-z0-9]`.
pub(crate) fn alphanumeric(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| ALPHABET[(random_u64() % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn alphanumeric_has_the_length_and_alphabet() {
        let s = super::alphanumeric(5);
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(super::random_u64(), super::random_u64());
    }
}
