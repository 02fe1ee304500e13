//! Unix signals through one dedicated thread: the signals are blocked in every thread
//! (before any is started, so Paho's threads inherit the mask) and taken here with
//! `sigwait`, then handed to the agent as plain values.

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use std::thread::JoinHandle;

/// What an operator asked for (docs/agent.md, "Signals").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// SIGTERM, SIGINT: graceful stop.
    Stop,
    /// SIGHUP: re-read the configuration and the plugin folder.
    Reload,
    /// SIGUSR1: ask the platform for a download task now.
    CheckTasks,
    /// SIGUSR2: scan the outbox now.
    ScanOutbox,
}

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    set
}

/// Blocks the handled signals in the calling thread and every thread it starts later.
/// Call first thing, before any thread exists.
pub(crate) fn block() -> nix::Result<()> {
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled()), None)
}

/// Starts the signal thread; `deliver` gets each request and returning false ends the
/// thread (it also ends after a stop).
pub(crate) fn spawn(
    mut deliver: impl FnMut(Request) -> bool + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let set = handled();
            loop {
                let request = match set.wait() {
                    Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => Request::Stop,
                    Ok(Signal::SIGHUP) => Request::Reload,
                    Ok(Signal::SIGUSR1) => Request::CheckTasks,
                    Ok(Signal::SIGUSR2) => Request::ScanOutbox,
                    Ok(other) => {
                        log::debug!("ignoring {other}");
                        continue;
                    }
                    Err(e) => {
                        log::error!("sigwait failed: {e}");
                        return;
                    }
                };
                log::debug!("signal: {request:?}");
                if !deliver(request) || request == Request::Stop {
                    return;
                }
            }
        })
}
