//! One shutdown handle shared by every thread: a flag to check between chunks and a
//! sleep that ends early when the flag is raised, so a stop never waits out a backoff.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Cloneable; all clones see the same flag.
#[derive(Clone, Default)]
pub(crate) struct Shutdown {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl Shutdown {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Raises the flag and wakes every sleeper.
    pub(crate) fn trigger(&self) {
        let (lock, cvar) = &*self.inner;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cvar.notify_all();
    }

    pub(crate) fn is_set(&self) -> bool {
        *self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps for `d`, or less if the flag is raised; returns whether it was.
    pub(crate) fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let (lock, cvar) = &*self.inner;
        let mut set = lock.lock().unwrap_or_else(|p| p.into_inner());
        while !*set {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            set = cvar
                .wait_timeout(set, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_cuts_a_sleep_short() {
        let s = Shutdown::new();
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            assert!(s2.sleep(Duration::from_secs(30)));
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        s.trigger();
        assert!(t.join().unwrap() < Duration::from_secs(5));
        assert!(!Shutdown::new().sleep(Duration::from_millis(1)));
    }
}
