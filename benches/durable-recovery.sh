#!/bin/bash
# Recovery time and disk bytes per queued message with --data-dir.
# usage: benches/durable-recovery.sh [MESSAGES] [BODY_BYTES]   (default 1000000 100)
#
# 1. starts the server on an empty data directory (--fsync no: the load is
#    not the point), queues MESSAGES messages of BODY_BYTES bytes on the
#    line protocol (16 connections, 16 sends pipelined, no receiver), and
#    stops it with SIGINT (a clean stop: the writer flushes and syncs);
# 2. prints the directory's size and bytes per message;
# 3. starts the server again on the directory and times, from the start of
#    the process to the answer of a first command, how long it takes to be
#    ready; checks that every message is there (the server's stats page);
# 4. kills it with SIGKILL under no load and does 3. again, from a log
#    that was not stopped cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
BODY=${2:-100}
cargo build --release -q -p switchboard --bin switchboard
cargo build --release -q -p loadtest --bin queue-bench
dir=$(mktemp -d)
SB=
cleanup() { [ -n "$SB" ] && kill "$SB" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# Starts the server on $dir/data and waits for its doors; sets SB, LINE, BUS.
start() {
  rm -f "$dir/sb.out"
  target/release/switchboard --log-level info --line-listen 127.0.0.1:0 \
    --bus-listen 127.0.0.1:0 --data-dir "$dir/data" --fsync "$1" \
    --max-queued-bytes 100000000000 --max-queued-bytes-per-address 100000000000 \
    >"$dir/sb.out" 2>>"$dir/sb.err" &
  SB=$!
  until grep -qs '^listening bus ' "$dir/sb.out"; do
    kill -0 "$SB" || { cat "$dir/sb.err"; exit 1; }
    sleep 0.01
  done
  LINE=$(awk '/^listening line /{print $3}' "$dir/sb.out")
  BUS=$(awk '/^listening bus /{print $3}' "$dir/sb.out")
}

# Messages queued, from the stats page.
queued() {
  python3 - "$BUS" <<'EOF'
import json, sys, urllib.request
stats = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/msgbus-stats"))
def find(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "queued" and isinstance(x, int):
                return x
            r = find(x)
            if r is not None:
                return r
    return None
print(find(stats))
EOF
}

# Starts the server and times the start until a first answer on the line door.
recover() {
  local t0 t1
  t0=$(date +%s%N)
  start no
  python3 - "$LINE" <<'EOF'
import socket, sys
h, p = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((h, int(p)))
s.sendall(b"< 0 recovery.probe\r\n")
assert s.recv(16) == b"*\r\n"
EOF
  t1=$(date +%s%N)
  # CPU time the server used so far (user + system, clock ticks of 10 ms):
  # less at the mercy of other work on the machine than the wall clock.
  local cpu
  cpu=$(awk '{print ($14 + $15) * 10}' "/proc/$SB/stat")
  echo "ready after $(( (t1 - t0) / 1000000 )) ms (process start to first answer), $cpu ms of CPU; $(grep -o 'replayed in [0-9]* ms' "$dir/sb.err" | tail -1)"
  echo "queued after the restart: $(queued)"
}

start no
target/release/queue-bench line "$LINE" --total "$N" --body "$BODY" --connections 16 --pipeline 16 |
  awk '{ printf "queued %d messages of '"$BODY"' bytes in %.1f s\n", $4, $4 / $5 }'
echo "queued: $(queued)"
kill -INT "$SB"; wait "$SB"; SB=
bytes=$(du -sb "$dir/data" | cut -f1)
echo "data directory: $bytes bytes ($(ls "$dir/data" | grep -c '\.log$') segments), $(( bytes / N )) bytes per message"
echo "-- restart after a clean stop"
recover
kill -KILL "$SB"; wait "$SB" 2>/dev/null || true; SB=
echo "-- restart after kill -9"
recover
kill -INT "$SB"; wait "$SB"; SB=
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
