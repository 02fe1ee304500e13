//! The PUT of one outbox file, knowing nothing of the conversation around it: the file
//! is read once, paced under `max_bytes_per_s`, dropped from the page cache as it goes,
//! and cut short (an error) when the caller's [`Watch`] says stop. Progress goes to the
//! same [`Watch`]; what it means for the platform is the caller's business.

use crate::fsutil;
use crate::pace::ScheduledPace;
use crate::schedule::RateCap;
use crate::shutdown::Shutdown;
use crate::transfer::{HttpClient, TransferError};
use std::fs::File;
use std::io::{self, Read};

/// What the caller of [`put`] sees of it, and how it stops it.
pub(crate) trait Watch {
    /// `sent` of `size` bytes went out (also once at 0, before the first byte).
    fn sent(&mut self, sent: u64, size: u64);
    /// Whether to cut the PUT short now; asked before every read of the file.
    fn stop(&mut self) -> bool;
}

/// PUTs the first `size` bytes of `file` to `url` with `Content-MD5` from `md5sum`.
pub(crate) fn put(
    http: &HttpClient,
    file: &File,
    url: &str,
    (size, md5sum): (u64, &str),
    max_bytes_per_s: &RateCap,
    shutdown: &Shutdown,
    watch: &mut dyn Watch,
) -> Result<(), TransferError> {
    let body = Body {
        inner: file.take(size),
        sent: 0,
        dropped: 0,
        size,
        watch,
        pace: ScheduledPace::new(max_bytes_per_s),
        shutdown,
    };
    // `http1` reads the body 128 KiB at a time: few, large reads of the file (and of
    // the progress and stop checks).
    http.put(url, body, size, md5sum)
}

/// The PUT body. What was sent is dropped from the page cache every
/// [`fsutil::FLUSH_EVERY`] bytes: the file is read once (a retry reads it from the disk
/// again) and removed after, and a large upload should not evict what the device's
/// programs use.
struct Body<'a> {
    inner: io::Take<&'a File>,
    sent: u64,
    /// Bytes from the start already dropped from the page cache.
    dropped: u64,
    size: u64,
    watch: &'a mut dyn Watch,
    pace: ScheduledPace,
    shutdown: &'a Shutdown,
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.watch.stop() {
            // Not `Interrupted`: readers retry those.
            return Err(io::Error::other("upload stopped"));
        }
        if self.sent == 0 {
            self.watch.sent(0, self.size);
        }
        let n = self.inner.read(buf)?;
        self.sent += n as u64;
        if self.sent - self.dropped >= fsutil::FLUSH_EVERY {
            // Best effort: the file is only read, so its pages are clean.
            let _ =
                fsutil::drop_cached(self.inner.get_ref(), self.dropped, self.sent - self.dropped);
            self.dropped = self.sent;
        }
        self.watch.sent(self.sent, self.size);
        self.pace.after(n as u64, self.shutdown);
        Ok(n)
    }
}
