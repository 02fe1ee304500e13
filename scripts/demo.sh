#!/usr/bin/env bash
# The end-to-end demo: a local mosquitto, the local platform offering a 32 MiB resource,
# and resagent downloading, verifying and installing it — everything on loopback, in
# target/demo. Prints what the platform hears and `resagent status` at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --locked --quiet

demo=$PWD/target/demo
rm -rf "$demo"
mkdir -p "$demo"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mqtt_port=$(free_port)
login_port=$(free_port)
http_port=$(free_port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== mosquitto on 127.0.0.1:$mqtt_port"
printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$mqtt_port" > "$demo/mosquitto.conf"
mosquitto -c "$demo/mosquitto.conf" > "$demo/mosquitto.log" 2>&1 &
pids+=($!)
sleep 0.5

echo "== a 32 MiB resource to deliver"
head -c $((32 << 20)) /dev/urandom > "$demo/firmware-v2.bin"
want=$(md5sum "$demo/firmware-v2.bin" | cut -d' ' -f1)

echo "== the local platform on http://127.0.0.1:$http_port/ (open it in a browser to watch)"
echo "   the device connects to 127.0.0.1:$login_port, where its signed login is checked"
target/debug/resagent-platform --device DEMOPRODUCT/demo-device:ZGVtby1kZXZpY2Utc2VjcmV0 \
  --broker "tcp://127.0.0.1:$mqtt_port" --mqtt-listen "127.0.0.1:$login_port" \
  --listen "127.0.0.1:$http_port" \
  --uploads "$demo/uploads" --offer "$demo/firmware-v2.bin" > "$demo/platform.log" 2>&1 &
pids+=($!)
tail -n +1 -f "$demo/platform.log" | sed -u 's/^/platform | /' &
pids+=($!)

cat > "$demo/device_info.json" <<JSON
{"auth_mode": "KEY", "productId": "DEMOPRODUCT", "deviceName": "demo-device",
 "key_deviceinfo": {"deviceSecret": "ZGVtby1kZXZpY2Utc2VjcmV0"}}
JSON
chmod 600 "$demo/device_info.json"
cat > "$demo/config.json" <<JSON
{
  "device_info": "$demo/device_info.json",
  "broker": "tcp://127.0.0.1:$login_port",
  "resource_dir": "$demo/resources",
  "state_dir": "$demo/state",
  "outbox_dir": "$demo/outbox",
  "plugin_dir": "$demo/plugins",
  "pid_file": "$demo/resagent.pid",
  "allow_http": true,
  "poll_jitter_s": 0,
  "max_bytes_per_s": 8388608
}
JSON

echo "== resagent run -c $demo/config.json"
target/debug/resagent run -c "$demo/config.json" > "$demo/resagent.log" 2>&1 &
agent=$!
pids+=($agent)
tail -n +1 -f "$demo/resagent.log" | sed -u 's/^/resagent | /' &
pids+=($!)

for _ in $(seq 1 120); do
  if [ -f "$demo/resources/firmware-v2.bin" ] && grep -q "done" "$demo/platform.log"; then break; fi
  sleep 0.5
done
sleep 0.5
echo
echo "== resagent status"
target/debug/resagent status -c "$demo/config.json"
got=$(md5sum "$demo/resources/firmware-v2.bin" 2>/dev/null | cut -d' ' -f1 || true)
kill -TERM "$agent"
wait "$agent" 2>/dev/null || true
if [ "$got" = "$want" ]; then
  echo "== demo OK: $demo/resources/firmware-v2.bin is installed, md5 $got"
else
  echo "== demo FAILED: installed md5 '${got}' != offered '${want}' (logs in $demo)" >&2
  exit 1
fi
