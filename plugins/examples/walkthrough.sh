#!/usr/bin/env bash
# The firmware walk-through of plugins/README.md, command by command, at a vendor's desk:
# no broker, no platform, no daemon. CI runs it after the tests, so the page stays true.
# Needs: a C compiler, python3, and `cargo build` done (target/debug/resagent).
set -euo pipefail
cd "$(dirname "$0")/../.."
resagent=${RESAGENT:-target/debug/resagent}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. Build the plugin from the header alone.
cc -std=c99 -Wall -Wextra -shared -fPIC -I plugins/include \
   plugins/examples/firmware.c -o "$work/20-firmware.so"
chmod 755 "$work/20-firmware.so"

# 2. A configuration with the plugin's settings (plugin_config, keyed by its name).
cat > "$work/config.json" <<JSON
{ "productId": "DEMO", "deviceName": "dev1", "key_deviceinfo": {"deviceSecret": "ZGVtbw=="},
  "state_dir": "$work/state", "plugin_dir": "$work",
  "plugin_config": {"firmware": {"partition": "$work/partition.img",
                                 "ab": false, "booted_file": "$work/booted"}} }
JSON

# 3. Check it as the daemon would: verdict, exports, claims, the SHA-256 to pin.
"$resagent" plugin check "$work/20-firmware.so" -c "$work/config.json" | tee "$work/check.txt"
grep -q "verdict:  loads" "$work/check.txt"
grep -q "claims:   fw-\*.bin" "$work/check.txt"

# 4. Install an image exactly as the daemon would (validate, then install, in a child).
python3 plugins/examples/mkfw.py "$work/fw-1.0.bin" 65536
"$resagent" plugin run "$work/20-firmware.so" "$work/fw-1.0.bin" -c "$work/config.json"
cmp "$work/fw-1.0.bin" "$work/partition.img"
test -s "$work/state/plugins/firmware/record"   # the version record, in its private folder

# 5. A broken image is refused with the plugin's reason (exit 1), the partition untouched.
python3 plugins/examples/mkfw.py "$work/fw-1.1.bin" 65536 2 --corrupt
if "$resagent" plugin run "$work/20-firmware.so" "$work/fw-1.1.bin" -c "$work/config.json" \
     > "$work/refused.txt"; then
  echo "walkthrough: a corrupt image was accepted" >&2; exit 1
fi
grep -q "CRC-32" "$work/refused.txt"
cmp "$work/fw-1.0.bin" "$work/partition.img"

# 6. On an A/B device the install is pending a reboot (exit 0, "pending").
sed -i 's/"ab": false/"ab": true/' "$work/config.json"
python3 plugins/examples/mkfw.py "$work/fw-2.0.bin" 65536 3
"$resagent" plugin run "$work/20-firmware.so" "$work/fw-2.0.bin" -c "$work/config.json" \
  | tee "$work/pending.txt"
grep -q "pending a reboot" "$work/pending.txt"
echo "walkthrough: all steps passed"
