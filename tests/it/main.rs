//! The integration tests, one binary with a module per area (as cargo keeps its own
//! `tests/testsuite`): each starts real parts — a mosquitto on a free loopback port, the
//! local platform, the real `resagent` binary, real SWUpdate and RAUC where their
//! plugins are tested — through the rig in [`common`]. One binary links once and shares
//! the rig; `cargo test --test it AREA::` runs one area (e.g. `cross::`, `powercut::`).

mod common;

mod cli;
mod cross;
mod delta;
mod download;
mod firmware;
mod frameworks;
mod hostile;
mod layers;
mod meta_layer;
mod operations;
mod page;
mod plugins;
mod powercut;
mod tls;
mod upload;
mod vendor;
mod wedges;
mod when;
