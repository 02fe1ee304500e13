#!/usr/bin/env bash
# Runs every test: unit tests, and the integration tests against a real mosquitto on
# loopback, the local platform and the real resagent binary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The Rust example plugin (a cdylib) is loaded by the tests as a vendor would ship it.
cargo build --workspace --locked
cargo test --workspace --locked "$@"
