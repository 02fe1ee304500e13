#!/usr/bin/env bash
# Cross-builds resagent for an ARM device on a Debian (amd64) machine, with Rust 1.75.0 —
# the Rust of Yocto scarthgap, the oldest release the layer supports:
#
#   scripts/cross-build.sh aarch64-unknown-linux-gnu        (Cortex-A53 class, arm64)
#   scripts/cross-build.sh armv7-unknown-linux-gnueabihf    (Cortex-A7 class, armhf)
#
# Installs what it needs when missing (the rustup target; Debian's cross gcc, the
# target's libssl-dev through multiarch, qemu-user to run the result), points the cc and
# cmake builds (the bundled Paho C) and openssl-sys at the cross toolchain and the
# target's OpenSSL, and builds:
#   target/TARGET/release/resagent                      the agent (release profile, stripped)
#   target/TARGET/release/libresagent_archive.so the Rust example plugin
#   target/TARGET/plugins/{fwcheck,firmware}.so         the C example plugins
# then prints each file's type and size and runs `resagent --version` under qemu.
# A Yocto build does none of this by hand: the layer's recipe cross-builds with the
# toolchain of the image (meta-layer/README.md); this is the same build outside Yocto.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:-}
case "$TARGET" in
  aarch64-unknown-linux-gnu) triple=aarch64-linux-gnu; deb=arm64; qemu=qemu-aarch64 ;;
  armv7-unknown-linux-gnueabihf) triple=arm-linux-gnueabihf; deb=armhf; qemu=qemu-arm ;;
  *) echo "usage: $0 aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf" >&2; exit 2 ;;
esac
TOOLCHAIN=${RESAGENT_CROSS_TOOLCHAIN:-1.75.0}

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
need=()
for p in "gcc-$triple" "libc6-dev-$deb-cross" "libssl-dev:$deb" qemu-user cmake pkg-config file; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "cross-build: installing ${need[*]}"
  dpkg --print-foreign-architectures | grep -qx "$deb" || "${sudo_cmd[@]}" dpkg --add-architecture "$deb"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
rustup toolchain list | grep -q "^$TOOLCHAIN" || rustup toolchain install "$TOOLCHAIN" --profile minimal
rustup target list --toolchain "$TOOLCHAIN" --installed | grep -qx "$TARGET" ||
  rustup target add --toolchain "$TOOLCHAIN" "$TARGET"

# The cc crate, cmake (through the cmake crate) and the linker: the cross gcc.
T=$(echo "$TARGET" | tr 'a-z-' 'A-Z_')
t=$(echo "$TARGET" | tr '-' '_')
export "CC_$t=$triple-gcc" "AR_$t=$triple-ar"
export "CARGO_TARGET_${T}_LINKER=$triple-gcc"
# openssl-sys: the target's OpenSSL from Debian's multiarch paths (its opensslconf.h is
# in /usr/include/TRIPLE); Paho C's cmake gets the same root through openssl-sys.
export "${T}_OPENSSL_LIB_DIR=/usr/lib/$triple"
export "${T}_OPENSSL_INCLUDE_DIR=/usr/include"
export PKG_CONFIG_ALLOW_CROSS=1 "PKG_CONFIG_PATH_$t=/usr/lib/$triple/pkgconfig"
# The host's build scripts and proc macros still build for the host, with the host cc.

cargo "+$TOOLCHAIN" build --locked --release --target "$TARGET" -p resagent -p resagent-archive-plugin

out="target/$TARGET"
mkdir -p "$out/plugins"
for c in fwcheck firmware; do
  "$triple-gcc" -std=gnu99 -O2 -Wall -Wextra -Werror -shared -fPIC -I plugins/include \
    "plugins/examples/$c.c" -o "$out/plugins/$c.so"
done
"$triple-strip" "$out/release/libresagent_archive.so" "$out/plugins/"*.so

echo "== built for $TARGET"
for f in "$out/release/resagent" "$out/release/libresagent_archive.so" "$out/plugins/"*.so; do
  printf '%-58s %9d bytes  %s\n' "$f" "$(stat -c %s "$f")" "$(file -b "$f" | cut -d, -f1-2)"
done
# The agent re-executes itself for every plugin call: under emulation the kernel must hand
# that ARM ELF to qemu too (binfmt_misc; what Debian's qemu-user-binfmt sets up on a
# machine with systemd). Registered here when missing and allowed; the ARM loader and
# libraries come from the multiarch packages (libc6:$deb, libssl3:$deb).
binfmt=/proc/sys/fs/binfmt_misc
case "$TARGET" in
  aarch64*) magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00' ;;
  *) magic='\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00' ;;
esac
mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
[ -e "$binfmt/register" ] || "${sudo_cmd[@]}" mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null || true
if [ -e "$binfmt/register" ] && [ ! -e "$binfmt/$qemu" ] && [ ! -e "$binfmt/qemu-${qemu#qemu-}" ]; then
  echo ":$qemu:M::$magic:$mask:$(command -v "$qemu"):F" | "${sudo_cmd[@]}" tee "$binfmt/register" >/dev/null ||
    echo "cross-build: could not register $qemu with binfmt_misc (plugin calls will not run emulated)" >&2
fi
[ -e "$binfmt/$qemu" ] && echo "binfmt_misc: $(head -n 2 "$binfmt/$qemu" | tr '\n' ' ')"

# The sysroot for qemu's -L is / — Debian's multiarch root, where libc6:$deb and
# libssl3:$deb live (/lib/ld-linux-*.so.*, /usr/lib/$triple). The cross gcc's own libc
# (/usr/$triple) links, but as qemu's -L it makes qemu 7.2 hang in the guest's first
# pthread_create; / does not.
echo "== $qemu -L / $out/release/resagent --version"
"$qemu" -L / "$out/release/resagent" --version
for p in "$out/plugins/fwcheck.so" "$out/plugins/firmware.so" "$out/release/libresagent_archive.so"; do
  echo "== $qemu $out/release/resagent plugin check $p"
  RESAGENT_CONFIG=/nonexistent "$qemu" -L / "$out/release/resagent" plugin check "$p"
done
echo "cross-build: done ($TARGET); the emulated delivery and upload:"
echo "  RESAGENT_CROSS_TARGET=$TARGET cargo test --test it cross:: -- --ignored"
