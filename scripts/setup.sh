#!/usr/bin/env bash
# Installs what building and testing resagent needs on Debian: a C toolchain and cmake
# (Paho C is built from the paho-mqtt crate), OpenSSL headers, mosquitto (the broker of
# the demo and the tests), openssl (test certificates), systemd (systemd-analyze
# verify of the layer's unit), curl (benchmark baseline), strace (write-order test),
# python3-venv (for the Python tools below), python3-fusepy and fuse3 (the power-cut
# file system, tests/powercut), chromium and python3-websocket (the platform page seen
# in a real browser, tests/it/page.rs), swupdate + libswupdate-dev + cpio (the SWUpdate
# plugin against the real daemon, .swu images built with cpio), rauc + rauc-service +
# squashfs-tools + dbus + libglib2.0-dev (the RAUC plugin against the real service on a
# private bus; bundles are squashfs), util-linux-extra (fincore: what an upload leaves in
# the page cache, tests/it/upload.rs), e2fsprogs (mkfs.ext4 -d: the ext4 image of the
# benchmark's delta case), tinyproxy (a real HTTP proxy, plain and CONNECT: tests/it/tls.rs),
# faketime (libfaketime: the agent's wall clock moved, tests/it/when.rs).
# Idempotent: installs only what is missing, so it is cheap to run before every
# demo or test run.
set -euo pipefail

packages=(build-essential cmake pkg-config libssl-dev mosquitto mosquitto-clients openssl python3 python3-venv systemd tar curl strace python3-fusepy fuse3 chromium python3-websocket swupdate libswupdate-dev cpio rauc rauc-service squashfs-tools dbus libglib2.0-dev util-linux-extra e2fsprogs tinyproxy faketime)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Python tools, in a virtualenv of the project's own (target/tools-venv), so no system
# Python is touched: nanio, a third-party S3 server that enforces Content-MD5 (upload
# tests), and oelint-adv, the linter of the meta layer.
venv="$(cd "$(dirname "$0")/.." && pwd)/target/tools-venv"
if [ ! -x "$venv/bin/nanio" ] || [ ! -x "$venv/bin/oelint-adv" ]; then
  echo "setup: installing nanio and oelint-adv into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check nanio==0.1.7 oelint-adv==9.11.2
fi
if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
