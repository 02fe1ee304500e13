#!/usr/bin/env bash
# Runs every test: unit tests, and the integration tests against a real mosquitto on
# loopback, the local platform and the real resagent binary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The Rust example plugin (a cdylib) is loaded by the tests as a vendor would ship it.
cargo build --workspace --locked
cargo test --workspace --locked "$@"
# No agent may outlive its test: each runs with a config in a temp folder, and one left
# behind (a wrapper killed, the agent not) reconnects to a dead broker for hours.
test_agent="^$PWD/target/[^ ]*resagent run -c ${TMPDIR:-/tmp}/\.tmp"
left=$(pgrep -af "$test_agent" || true)
if [ -n "$left" ]; then
  echo "test.sh: agents left running by the tests (now killed):" >&2
  echo "$left" >&2
  pkill -9 -f "$test_agent" || true
  exit 1
fi
