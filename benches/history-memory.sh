#!/usr/bin/env bash
# What `--history` costs in memory: the server's VmRSS before and after
# 100 messages were published to each of C channels (so every ring is
# full), for C = 1000 and 10000 and bodies of 64 and 1024 bytes, with
# `--history 100` and bounds high enough that nothing is let go. The cost
# per channel is (after - before) / C. A publisher on the line protocol
# sends everything, then a `= x` presence round trip proves the server ran
# it all before the figure is read.
#
# usage: benches/history-memory.sh SWITCHBOARD_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
SB=${1:?usage: benches/history-memory.sh SWITCHBOARD_BINARY}
WORK=target/history-memory
mkdir -p "$WORK"
PIN_SERVER=()
. benches/lib.sh

publish() { # LINE_PORT CHANNELS BODY_BYTES
  python3 - "$@" <<'EOF'
import socket, sys
port, channels, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
body = b"x" * size
batch = []
for round_ in range(100):
    for c in range(channels):
        batch.append(b"! %d ch.%d text/plain\r\n%s\r\n" % (size, c, body))
    s.sendall(b"".join(batch))
    batch.clear()
s.sendall(b"= x\r\n")
got = b""
while not got.endswith(b"\r\n"):
    got += s.recv(4096)
assert got.startswith(b"= x "), got
EOF
}

echo "| channels | body | VmRSS before (KiB) | after (KiB) | per channel (bytes) | per message (bytes) |"
echo "|---|---|---|---|---|---|"
for size in 64 1024; do
  for channels in 1000 10000; do
    start_server --line-listen 127.0.0.1:0 --bus-listen off --log-level warn \
      --history 100 --history-total-bytes 4000000000 --history-bytes 1000000
    before=$(kib "$SB_PID" VmRSS)
    publish "${PORT[line]}" "$channels" "$size"
    after=$(kib "$SB_PID" VmRSS)
    per=$(((after - before) * 1024 / channels))
    echo "| $channels | $size B | $before | $after | $per | $((per / 100)) |"
    stop_server
  done
done
