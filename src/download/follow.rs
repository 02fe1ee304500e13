//! A staging file read while it is being written: how a patch is applied while its bytes
//! arrive (docs/protocol.md, "Delta delivery"). The fetch loop keeps writing the patch
//! into its staging file exactly as any download (journal, Range resume, stall handling
//! unchanged) and tells a [`Follow`] how many bytes are on disk; a [`FollowReader`] on
//! the applying thread reads the same file from byte 0 and waits for more when it has
//! caught up. The bytes pass through the page cache once more instead of through a
//! channel: no copy held in memory, and after a kill the applier simply starts again
//! from byte 0 of what is on disk (re-applying is cheap next to fetching).
//!
//! The trade-off against a tee in the fetch loop: a second reader of the file costs a
//! `pread` per 64 KiB of patch (patches are small), but the fetch loop stays as it is
//! and a restart of the staged bytes (the server ignored Range, an MD5 mismatch) is
//! one counter the applier compares, not a protocol between two threads.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How often a reader waiting for bytes looks for a stop.
const WAIT_TICK: Duration = Duration::from_millis(200);

/// How the writing side ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Still writing.
    Open,
    /// Every byte is on disk and checked: a reader at the end reads end-of-file.
    Complete,
    /// The fetch ended without the whole file: a reader waiting gets an error.
    Abandoned,
}

#[derive(Debug)]
struct State {
    /// Bytes on disk, counted from byte 0.
    len: u64,
    /// Raised each time the staged bytes start over from byte 0.
    generation: u64,
    end: End,
}

/// The writer's side of one followed staging file, shared with its reader.
#[derive(Debug)]
pub(crate) struct Follow {
    state: Mutex<State>,
    changed: Condvar,
    /// The reader has its verdict before the end (a failure, or nothing to apply): the
    /// writer need not fetch the rest.
    reader_done: AtomicBool,
}

impl Follow {
    pub(crate) fn new() -> Follow {
        Follow {
            state: Mutex::new(State {
                len: 0,
                generation: 0,
                end: End::Open,
            }),
            changed: Condvar::new(),
            reader_done: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the counters stay usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The writer has `len` bytes on disk (after a write, or once a resumed part is
    /// read back).
    pub(crate) fn grew(&self, len: u64) {
        self.lock().len = len;
        self.changed.notify_all();
    }

    /// The writer dropped every byte and starts over from byte 0.
    pub(crate) fn restarted(&self) {
        let mut s = self.lock();
        s.len = 0;
        s.generation += 1;
        drop(s);
        self.changed.notify_all();
    }

    /// The writer is done: `complete` when every byte is on disk and checked.
    pub(crate) fn end(&self, complete: bool) {
        self.lock().end = if complete {
            End::Complete
        } else {
            End::Abandoned
        };
        self.changed.notify_all();
    }

    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }

    pub(crate) fn abandoned(&self) -> bool {
        self.lock().end == End::Abandoned
    }

    /// The reader needs no more bytes.
    pub(crate) fn set_reader_done(&self) {
        self.reader_done.store(true, Ordering::SeqCst);
    }

    pub(crate) fn reader_done(&self) -> bool {
        self.reader_done.load(Ordering::SeqCst)
    }
}

/// Reads the followed file from byte 0, waiting for bytes not yet written. Errors when
/// the writer abandons the file, when the bytes start over (a new generation: the caller
/// reads again from byte 0), or when `stopping` says so while it waits.
pub(crate) struct FollowReader<'a, S: Fn() -> bool> {
    follow: &'a Follow,
    path: PathBuf,
    file: Option<File>,
    pos: u64,
    generation: u64,
    stopping: S,
}

impl<'a, S: Fn() -> bool> FollowReader<'a, S> {
    pub(crate) fn new(follow: &'a Follow, path: PathBuf, stopping: S) -> Self {
        let generation = follow.generation();
        FollowReader {
            follow,
            path,
            file: None,
            pos: 0,
            generation,
            stopping,
        }
    }

    /// Bytes readable now at `pos`, or the end (Ok(0)) or an error; waits otherwise.
    fn available(&self) -> io::Result<u64> {
        let mut s = self.follow.lock();
        loop {
            if s.generation != self.generation {
                return Err(io::Error::other("the staged bytes started over"));
            }
            if s.len > self.pos {
                return Ok(s.len - self.pos);
            }
            match s.end {
                End::Complete => return Ok(0),
                End::Abandoned => return Err(io::Error::other("the download ended")),
                End::Open => {}
            }
            s = self
                .follow
                .changed
                .wait_timeout(s, WAIT_TICK)
                .map(|(s, _)| s)
                .unwrap_or_else(|e| e.into_inner().0);
            if (self.stopping)() {
                // Not `Interrupted`: readers retry that kind at once, forever.
                return Err(io::Error::other("stopping"));
            }
        }
    }
}

impl<S: Fn() -> bool> Read for FollowReader<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let available = self.available()?;
        if available == 0 {
            return Ok(0);
        }
        let file = match &mut self.file {
            Some(f) => f,
            file => file.insert(File::open(&self.path)?),
        };
        let want = buf
            .len()
            .min(usize::try_from(available).unwrap_or(usize::MAX));
        let n = file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            // The writer said the bytes are there: a file cut behind our back.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the staged file is shorter than written",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    fn temp_file(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("resagent-follow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, b"").unwrap();
        path
    }

    #[test]
    fn the_reader_gets_every_byte_as_it_is_written_then_the_end() {
        let path = temp_file("grow");
        let follow = Arc::new(Follow::new());
        let writer = {
            let (follow, path) = (follow.clone(), path.clone());
            std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                let mut len = 0;
                for i in 0..50u8 {
                    f.write_all(&[i; 1000]).unwrap();
                    len += 1000;
                    follow.grew(len);
                    std::thread::sleep(Duration::from_millis(2));
                }
                follow.end(true);
            })
        };
        let mut got = Vec::new();
        FollowReader::new(&follow, path, || false)
            .read_to_end(&mut got)
            .unwrap();
        writer.join().unwrap();
        assert_eq!(got.len(), 50_000);
        assert!(got
            .chunks(1000)
            .enumerate()
            .all(|(i, c)| c == [i as u8; 1000]));
    }

    #[test]
    fn an_abandoned_file_a_restart_and_a_stop_end_the_wait_with_an_error() {
        let path = temp_file("ends");
        std::fs::write(&path, b"abc").unwrap();

        let follow = Follow::new();
        follow.grew(3);
        let mut r = FollowReader::new(&follow, path.clone(), || false);
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        follow.end(false);
        assert!(r.read(&mut buf).is_err(), "abandoned: no end-of-file");
        assert!(follow.abandoned());

        let follow = Follow::new();
        follow.grew(3);
        let mut r = FollowReader::new(&follow, path.clone(), || false);
        follow.restarted();
        assert!(r.read(&mut buf).is_err(), "a new generation is an error");
        // A reader made after the restart reads the new bytes.
        follow.grew(3);
        follow.end(true);
        let mut again = FollowReader::new(&follow, path.clone(), || false);
        assert_eq!(again.read(&mut buf).unwrap(), 3);
        assert_eq!(again.read(&mut buf).unwrap(), 0);

        let follow = Follow::new();
        let mut r = FollowReader::new(&follow, path, || true);
        let e = r.read(&mut buf).unwrap_err();
        assert_ne!(
            e.kind(),
            io::ErrorKind::Interrupted,
            "read_to_end would retry it"
        );
    }
}
