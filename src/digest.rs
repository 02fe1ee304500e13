//! MD5 of resources, streamed. A newtype over the `md5` crate (built with full
//! optimisation even in size-optimised release builds, see Cargo.toml) so that every
//! hash in resagent — downloads, resumes, the outbox — goes through one place.

/// A running MD5.
#[derive(Clone)]
pub(crate) struct Md5(md5::Context);

impl Default for Md5 {
    fn default() -> Self {
        Md5(md5::Context::new())
    }
}

impl Md5 {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn consume(&mut self, data: &[u8]) {
        self.0.consume(data);
    }

    /// The digest as 32 lowercase hex characters (the state is kept).
    pub(crate) fn hex(&self) -> String {
        format!("{:x}", self.0.clone().compute())
    }
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
}
