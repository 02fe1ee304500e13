#!/usr/bin/env bash
# Runs every test: unit tests, and the integration tests against a real mosquitto on
# loopback, the local platform and the real resagent binary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --locked "$@"
