//! resagent: moves files between an embedded Linux device and Tencent Cloud IoT Hub
//! through its resource management protocol (docs/protocol.md). The binary (`main.rs`)
//! calls [`main`]; everything else is private to this crate. docs/architecture.md has
//! the thread diagram; the module map:
//!
//! | module | role |
//! | --- | --- |
//! | `cli` | the command line: parse, dispatch, exit status |
//! | `config` | the configuration file and `device_info.json`, checked key by key |
//! | `daemon` | `resagent run`: the coordinator thread and the threads it starts |
//! | `tasks` | the download queue as pure functions over the journal |
//! | `download` | one download task's life: fetch, retry rules, staging, pipeline, patches applied as they arrive |
//! | `install` | staging paths, the default installer, the validate/install chain |
//! | `plugin` | vendor plugins: checks, scan, calls in a child process |
//! | `upload`, `outbox` | the upload thread and the outbox folder |
//! | `transfer` | HTTP: requests, redirects, response checks |
//! | `mqtt` | the MQTT session: credentials, connect, reconnect, publish |
//! | `protocol` | message shapes, validation, result codes (no I/O) |
//! | `report` | progress and final reports, throttling, re-sending |
//! | `journal` | the state kept across kills and reboots |
//! | `boot` | which boot this is: a restart of the agent is not a reboot |
//! | `reboot` | the "reboot pending" report and `reboot_command` |
//! | `gate` | the device's say before an install and a reboot (`install_gate_command`, `reboot_gate_command`) |
//! | `status` | `resagent status` from the state on disk |
//! | `digest` | every read-and-hash (MD5, SHA-256) |
//! | `backoff`, `pace` | retry delays and the rate cap |
//! | `clock` | the build time, and waiting for a wall clock that is set |
//! | `schedule` | download windows and scheduled rate caps, on the local time of day (pure) |
//! | `fsutil` | durable file operations (fsync, rename, fsync of the folder) |
//! | `notify` | systemd's notify protocol and watchdog |
//! | `pidfile`, `signals`, `shutdown`, `logging`, `random` | process plumbing |
//! | `sys` | everything `unsafe`, behind safe functions: the system calls nix does not wrap (write-back, `TCP_NODELAY`, `fork`, `sigtimedwait`) and `sys::plugin_abi`, the crossing into plugin code |
//!
//! `unsafe` is denied in the whole crate but `sys`, which allows it.

#![deny(unsafe_code)]

mod backoff;
mod boot;
mod cli;
mod clock;
mod config;
mod daemon;
mod digest;
mod download;
mod fsutil;
mod gate;
mod http1;
mod install;
mod journal;
mod logging;
mod mqtt;
mod notify;
mod outbox;
mod pace;
mod pidfile;
mod plugin;
mod protocol;
mod random;
pub mod rdelta;
mod reboot;
mod report;
mod schedule;
mod shutdown;
mod signals;
mod status;
mod sys;
mod tasks;
mod transfer;
mod upload;

pub use cli::main;
