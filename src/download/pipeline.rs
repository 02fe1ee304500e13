//! The copy pipeline of one attempt: the body is read on one thread and hashed on
//! another while the fetch loop writes, so the network, MD5 and the disk work at once and
//! a download takes as long as the slowest of them, not their sum. A fixed set of
//! buffers circulates reader → writer → hasher → reader, so memory does not depend on
//! the resource's size.

use crate::digest::Md5;
use std::io::{self, Read};

/// Size of one read from the network and one write to the staging file.
const CHUNK: usize = 128 * 1024;

/// Buffers in flight between the pipeline's threads (their memory is all it holds).
const PIPELINE_BUFFERS: usize = 4;

/// How long a buffer may wait for more bytes once it holds some: on a slow link the
/// bytes still move on (progress, the rate cap and a stop are handled per chunk) instead
/// of waiting for 128 KiB.
const FILL_FOR: std::time::Duration = std::time::Duration::from_millis(100);

/// Reads into `buf` until it is full, the body ends, a read fails or [`FILL_FOR`] has
/// passed since the first read: how many bytes, and the error if one stopped it. ureq
/// hands the body out in pieces of its 8 KiB buffer; passing those on one by one cost
/// three thread hand-overs per 8 KiB (measured: the daemon used twice the CPU of curl +
/// md5sum), a full buffer costs them per 128 KiB.
fn fill(body: &mut impl Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut n = 0;
    let mut started: Option<std::time::Instant> = None;
    while n < buf.len() {
        if started.is_some_and(|t| t.elapsed() >= FILL_FOR) {
            break;
        }
        match body.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (n, Some(e)),
        }
        started.get_or_insert_with(std::time::Instant::now);
    }
    (n, None)
}

/// What the reading thread hands over.
pub(crate) enum Chunk {
    Data(Vec<u8>, usize),
    End,
    Failed(io::Error),
}

/// Reads the body on one thread and hashes on another while the caller writes, so the
/// network, MD5 and the disk work at once: a download takes as long as the slowest of
/// them, not their sum. A fixed set of buffers circulates reader → writer → hasher →
/// reader, so memory does not depend on the resource's size.
pub(crate) struct Pipeline {
    chunks: std::sync::mpsc::Receiver<Chunk>,
    to_hash: Option<std::sync::mpsc::SyncSender<(Vec<u8>, usize)>>,
    hasher: Option<std::thread::JoinHandle<Option<Md5>>>,
}

impl Pipeline {
    /// Starts the threads; if the hasher cannot start, the MD5 state comes back.
    pub(crate) fn start(
        mut body: impl Read + Send + 'static,
        md5: Md5,
    ) -> Result<Pipeline, (Md5, io::Error)> {
        use std::sync::mpsc::sync_channel;
        let (to_hash, hash_rx) = sync_channel::<(Vec<u8>, usize)>(PIPELINE_BUFFERS);
        let (start_tx, start_rx) = sync_channel::<Md5>(1);
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(PIPELINE_BUFFERS);
        for _ in 0..PIPELINE_BUFFERS {
            let _ = free_tx.send(vec![0u8; CHUNK]);
        }
        let (chunk_tx, chunks) = sync_channel::<Chunk>(PIPELINE_BUFFERS);
        // The reader may stay blocked on a silent socket until its read timeout; it is
        // not joined, and ends on its own once the socket errs or nobody listens.
        let _ = std::thread::Builder::new()
            .name("download-read".into())
            .spawn(move || {
                // An error after some bytes: those go first, the error next.
                let mut failed: Option<io::Error> = None;
                loop {
                    let Ok(mut buf) = free_rx.recv() else { return };
                    let (chunk, last) = match failed.take() {
                        Some(e) => (Chunk::Failed(e), true),
                        None => match fill(&mut body, &mut buf) {
                            (0, None) => (Chunk::End, true),
                            (0, Some(e)) => (Chunk::Failed(e), true),
                            (n, e) => {
                                failed = e;
                                (Chunk::Data(buf, n), false)
                            }
                        },
                    };
                    if chunk_tx.send(chunk).is_err() || last {
                        return;
                    }
                }
            });
        let hasher = std::thread::Builder::new()
            .name("download-md5".into())
            .spawn(move || {
                let mut md5 = start_rx.recv().ok()?;
                while let Ok((buf, n)) = hash_rx.recv() {
                    md5.consume(&buf[..n]);
                    let _ = free_tx.send(buf);
                }
                Some(md5)
            });
        let hasher = match hasher {
            Ok(h) => h,
            Err(e) => return Err((md5, e)),
        };
        let _ = start_tx.send(md5);
        Ok(Pipeline {
            chunks,
            to_hash: Some(to_hash),
            hasher: Some(hasher),
        })
    }

    /// The next chunk; while the network is silent the waiting thread still shows a
    /// sign of life to the watchdog (a stall is the read timeout's business).
    pub(crate) fn next(&self) -> Chunk {
        loop {
            match self.chunks.recv_timeout(std::time::Duration::from_secs(1)) {
                Ok(chunk) => return chunk,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => crate::notify::beat(),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Chunk::Failed(io::Error::other("the reading thread ended unexpectedly"))
                }
            }
        }
    }

    /// Hands a written chunk to the hasher (which then recycles the buffer).
    pub(crate) fn hash(&self, buf: Vec<u8>, n: usize) {
        if let Some(tx) = &self.to_hash {
            let _ = tx.send((buf, n));
        }
    }

    /// Waits for the hasher to take in every chunk handed to it; its MD5 state.
    pub(crate) fn finish(mut self) -> Md5 {
        self.to_hash = None;
        self.hasher
            .take()
            .and_then(|h| h.join().ok().flatten())
            .expect("the MD5 thread returns its state (it cannot panic)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields `pieces` one read at a time, sleeping `pause` before each.
    struct Trickle {
        pieces: Vec<Vec<u8>>,
        pause: std::time::Duration,
        fail_at_end: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            std::thread::sleep(self.pause);
            if self.pieces.is_empty() {
                return if self.fail_at_end {
                    Err(io::Error::new(io::ErrorKind::TimedOut, "stalled"))
                } else {
                    Ok(0)
                };
            }
            let p = self.pieces.remove(0);
            buf[..p.len()].copy_from_slice(&p);
            Ok(p.len())
        }
    }

    #[test]
    fn a_fast_body_fills_whole_buffers_a_slow_one_moves_on_and_errors_come_after_the_bytes() {
        let mut buf = vec![0u8; 32];
        let mut fast = Trickle {
            pieces: vec![vec![1; 8], vec![2; 8], vec![3; 8], vec![4; 8], vec![5; 8]],
            pause: std::time::Duration::ZERO,
            fail_at_end: false,
        };
        assert_eq!(fill(&mut fast, &mut buf).0, 32, "full");
        assert_eq!(fill(&mut fast, &mut buf).0, 8, "then the rest at the end");
        assert_eq!(fill(&mut fast, &mut buf).0, 0, "then the end");

        let mut slow = Trickle {
            pieces: vec![vec![7; 4]; 8],
            pause: std::time::Duration::from_millis(60),
            fail_at_end: false,
        };
        let (n, e) = fill(&mut slow, &mut buf);
        assert!(e.is_none());
        assert!((4..32).contains(&n), "handed over before full: {n}");

        let mut failing = Trickle {
            pieces: vec![vec![9; 4]],
            pause: std::time::Duration::ZERO,
            fail_at_end: true,
        };
        let (n, e) = fill(&mut failing, &mut buf);
        assert_eq!(n, 4);
        assert_eq!(e.map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
        assert_eq!(&buf[..4], &[9; 4]);
    }
}
