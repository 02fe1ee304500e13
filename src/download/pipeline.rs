//! The copy pipeline of one attempt: the body is read on its own thread while the fetch
//! loop writes each chunk and then hashes it, so the network works while the disk and
//! MD5 do. Two buffers alternate between the reader and the loop, so memory does not
//! depend on the resource's size.
//!
//! The trade-off: MD5 on a third thread (the previous design) overlapped hashing with
//! writing too, but every chunk then cost one more hand-over between threads; on two
//! cores those wake-ups cost ~0.25 s of CPU per GiB and the time did not change (bench,
//! A/B at 1 GiB: 3.30–3.54 s of CPU with three threads and 128 KiB chunks, 3.08–3.43 s
//! with two and 256 KiB; 0.6× the script's time either way — the loop's write + MD5
//! still outpaces the reader's share of the cores).

use crate::digest::Md5;
use std::io::{self, Read};

/// Size of one hand-over from the reader and one write to the staging file.
const CHUNK: usize = 256 * 1024;

/// Buffers in flight: one filling while the loop writes and hashes the other (their
/// memory is all the pipeline holds).
const PIPELINE_BUFFERS: usize = 2;

/// How long a buffer may wait for more bytes once it holds some: on a slow link the
/// bytes still move on (progress, the rate cap and a stop are handled per chunk) instead
/// of waiting for a whole chunk.
const FILL_FOR: std::time::Duration = std::time::Duration::from_millis(100);

/// How often a wait for the next chunk looks for a stop: a wake-up only while the
/// network is silent (chunks end the wait at once).
const WAIT_TICK: std::time::Duration = std::time::Duration::from_millis(200);

/// Reads into `buf` until it is full, the body ends, a read fails or [`FILL_FOR`] has
/// passed since the first read: how many bytes, and the error if one stopped it. A
/// socket hands out what has arrived (a few KiB to a few hundred on loopback); passing
/// those on one by one cost a thread hand-over each (with ureq's 8 KiB reads the daemon
/// used twice the CPU of curl + md5sum), a full buffer costs one per chunk.
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

/// The reading thread's end of one attempt: chunks come out of [`next`](Self::next),
/// go into the staging file, then into [`consume`](Self::consume), which hashes them and
/// gives the buffer back to the reader.
pub(crate) struct Pipeline {
    chunks: std::sync::mpsc::Receiver<Chunk>,
    free: std::sync::mpsc::SyncSender<Vec<u8>>,
    md5: Md5,
}

impl Pipeline {
    /// Starts the reading thread; if it cannot start, the MD5 state comes back.
    pub(crate) fn start(
        mut body: impl Read + Send + 'static,
        md5: Md5,
    ) -> Result<Pipeline, (Md5, io::Error)> {
        use std::sync::mpsc::sync_channel;
        let (free, free_rx) = sync_channel::<Vec<u8>>(PIPELINE_BUFFERS);
        for _ in 0..PIPELINE_BUFFERS {
            let _ = free.send(vec![0u8; CHUNK]);
        }
        let (chunk_tx, chunks) = sync_channel::<Chunk>(PIPELINE_BUFFERS);
        // The reader may stay blocked on a silent socket until its read timeout; it is
        // not joined, and ends on its own once the socket errs or nobody listens.
        let reader = std::thread::Builder::new()
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
        match reader {
            Ok(_) => Ok(Pipeline { chunks, free, md5 }),
            Err(e) => Err((md5, e)),
        }
    }

    /// The next chunk, or None once `stopping()` holds while the network is silent: a
    /// cancel or a stop is seen within [`WAIT_TICK`] even when no byte comes (else it
    /// would wait for the read timeout, a minute by default). The reader is left behind;
    /// it ends when its read returns and nobody takes the chunk. While it waits the
    /// thread still shows a sign of life to the watchdog (a stall is the read timeout's
    /// business).
    pub(crate) fn next(&self, stopping: impl Fn() -> bool) -> Option<Chunk> {
        loop {
            match self.chunks.recv_timeout(WAIT_TICK) {
                Ok(chunk) => return Some(chunk),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    crate::notify::beat();
                    if stopping() {
                        return None;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Some(Chunk::Failed(io::Error::other(
                        "the reading thread ended unexpectedly",
                    )))
                }
            }
        }
    }

    /// Hashes a written chunk and gives its buffer back to the reader.
    pub(crate) fn consume(&mut self, buf: Vec<u8>, n: usize) {
        self.md5.consume(&buf[..n]);
        let _ = self.free.send(buf);
    }

    /// The MD5 state over every chunk consumed.
    pub(crate) fn finish(self) -> Md5 {
        self.md5
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

    /// Drains `pipe`: the bytes handed over (each chunk consumed as the download thread
    /// does after writing it) and the error that ended it, if any.
    fn drain(pipe: &mut Pipeline) -> (Vec<u8>, Option<io::Error>) {
        let mut got = Vec::new();
        loop {
            match pipe.next(|| false).expect("never stopped") {
                Chunk::Data(buf, n) => {
                    got.extend_from_slice(&buf[..n]);
                    pipe.consume(buf, n);
                }
                Chunk::End => return (got, None),
                Chunk::Failed(e) => return (got, Some(e)),
            }
        }
    }

    fn md5_of(data: &[u8]) -> String {
        let mut m = Md5::new();
        m.consume(data);
        m.hex()
    }

    #[test]
    fn every_byte_is_handed_over_once_and_the_md5_covers_exactly_what_was_consumed() {
        // More than the two buffers hold, and not a multiple of a chunk.
        let data: Vec<u8> = (0..3 * CHUNK + 1234).map(|i| (i % 251) as u8).collect();
        let mut pipe = Pipeline::start(io::Cursor::new(data.clone()), Md5::new())
            .map_err(|(_, e)| e)
            .unwrap();
        let (got, err) = drain(&mut pipe);
        assert!(err.is_none());
        assert_eq!(got, data);
        assert_eq!(pipe.finish().hex(), md5_of(&data));

        // A body that fails after some bytes: those come first, then the error, and the
        // MD5 continues the state it was given over just those bytes.
        let mut resumed = Md5::new();
        resumed.consume(b"before ");
        let failing = Trickle {
            pieces: vec![b"after".to_vec()],
            pause: std::time::Duration::ZERO,
            fail_at_end: true,
        };
        let mut pipe = Pipeline::start(failing, resumed)
            .map_err(|(_, e)| e)
            .unwrap();
        let (got, err) = drain(&mut pipe);
        assert_eq!(got, b"after");
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
        assert_eq!(pipe.finish().hex(), md5_of(b"before after"));
    }

    #[test]
    fn a_wait_on_a_silent_body_ends_when_the_download_is_stopping() {
        let silent = Trickle {
            pieces: vec![b"late".to_vec()],
            pause: std::time::Duration::from_secs(2),
            fail_at_end: false,
        };
        let pipe = Pipeline::start(silent, Md5::new())
            .map_err(|(_, e)| e)
            .unwrap();
        // Waiting for the body's first byte would return it (Some).
        assert!(pipe.next(|| true).is_none());
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
