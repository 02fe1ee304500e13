//! resagent: moves files between an embedded Linux device and Tencent Cloud IoT Hub
//! through its resource management protocol. The binary (`main.rs`) parses the command
//! line and calls into this library; each module below owns one concern.

pub mod config;
pub mod daemon;
pub mod digest;
pub mod download;
pub mod fsutil;
pub mod install;
pub mod journal;
pub mod logging;
pub mod mqtt;
pub mod outbox;
pub mod pidfile;
pub mod plugin;
pub mod protocol;
pub mod random;
pub mod report;
pub mod shutdown;
pub mod signals;
pub mod status;
pub mod tasks;
pub mod transfer;
pub mod upload;
