#!/usr/bin/env python3
"""Makes an RSFW firmware image for the example firmware plugin (firmware.c):
"RSFW", header version 1, payload length, CRC-32 of the payload (all u32 little-endian),
then the payload. Usage: mkfw.py OUT SIZE [SEED] [--corrupt]"""
import struct
import sys
import zlib

out, size = sys.argv[1], int(sys.argv[2])
seed = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3].isdigit() else 1
payload = bytes((i * 31 ^ seed) & 0xFF for i in range(size))
image = b"RSFW" + struct.pack("<III", 1, len(payload), zlib.crc32(payload)) + payload
if "--corrupt" in sys.argv:
    image = image[:-1] + bytes([image[-1] ^ 0xFF])
with open(out, "wb") as f:
    f.write(image)
