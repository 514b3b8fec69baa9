#!/bin/bash
# Queued sends per second with --data-dir, against Redis with its append-only
# file, in one run.
# usage: benches/durable-compare.sh [SECONDS] [CONNECTIONS] [PIPELINE] [BODY_BYTES]
#        (default 5 16 16 100)
# env: ROUNDS=N runs every pattern N times in turn (default 1), the order
#        reversed every other round; compare medians.
#      PATTERNS="line-none line-everysec" runs only these patterns (default:
#        all of line-none line-everysec line-always switch-none
#        switch-everysec switch-always redis-everysec redis-always), e.g. to
#        run two of them interleaved many times.
# needs: redis-server and redis-benchmark (Debian: apt-get install -y redis-server)
#
# switchboard, each pattern on a fresh server and a fresh data directory:
#   line   queue-bench line: CONNECTIONS connections, each writing PIPELINE
#          `> BODY 3600 qbench.I` (queued: nobody receives) and then `< 0
#          sync.I`, whose `*` comes once the sends are taken (with --fsync
#          always: once they are durable);
#   switch queue-bench switch: PIPELINE `POST /request/qbench.I/` at a time
#          per connection into a persistent queue, each answered 200 once
#          stored (with --fsync always: once durable);
#   with no --data-dir, --fsync everysec and --fsync always.
# Redis, fresh each time (a free port, its own directory, no RDB snapshots):
#   redis-server --appendonly yes --appendfsync always|everysec, then
#   redis-benchmark -P PIPELINE -c CONNECTIONS -n N XADD bench '*' f BODY
#   (N is chosen to run about SECONDS).
# PIN=1 runs every server pinned to CPU 0 and the load generators to CPU 1
# (on a machine shared with other work, unpinned runs spread better).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
CONNS=${2:-16}
PIPE=${3:-16}
BODY=${4:-100}
command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 2; }
cargo build --release -q -p switchboard --bin switchboard
cargo build --release -q -p loadtest --bin queue-bench
if [ "${PIN:-0}" = 1 ]; then S0=(taskset -c 0); S1=(taskset -c 1); else S0=(); S1=(); fi
dir=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$(redis-server --version | cut -d' ' -f1-3); $CONNS connections, ${PIPE} pipelined, ${BODY}-byte bodies, ${SECS} s"

# One switchboard pattern: DOOR (line|switch), then the server's extra flags.
sb() {
  local door=$1; shift
  rm -rf "$dir/data" "$dir/sb.out"
  "${S0[@]}" target/release/switchboard --log-level warn --bus-listen off \
    --line-listen 127.0.0.1:0 --switch-listen 127.0.0.1:0 \
    --max-queued-bytes 100000000000 --max-queued-bytes-per-address 100000000000 \
    "$@" >"$dir/sb.out" 2>"$dir/sb.err" &
  PID=$!
  until grep -qs '^listening switch ' "$dir/sb.out"; do
    kill -0 "$PID" || { cat "$dir/sb.err"; exit 1; }
    sleep 0.01
  done
  local addr
  addr=$(awk -v d="$door" '$1 == "listening" && $2 == d {print $3}' "$dir/sb.out")
  "${S1[@]}" target/release/queue-bench "$door" "$addr" --seconds "$SECS" \
    --connections "$CONNS" --pipeline "$PIPE" --body "$BODY" | awk '{print $5}'
  kill -INT "$PID"; wait "$PID"; PID=
}

# One Redis pattern: the appendfsync policy, and the requests to send.
redis() {
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  rm -rf "$dir/redis"; mkdir "$dir/redis"
  "${S0[@]}" redis-server --bind 127.0.0.1 --port "$port" --dir "$dir/redis" --save '' \
    --appendonly yes --appendfsync "$1" >"$dir/redis.log" 2>&1 &
  PID=$!
  until redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; do sleep 0.01; done
  "${S1[@]}" redis-benchmark -h 127.0.0.1 -p "$port" -P "$PIPE" -c "$CONNS" -n "$2" --csv \
    XADD bench '*' f "$(head -c "$BODY" /dev/zero | tr '\0' x)" |
    awk -F'"' 'NR == 2 {printf "%.0f\n", $4}'
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  wait "$PID" 2>/dev/null || true; PID=
}

# One pattern by its name: its label and its figure.
pattern() {
  case $1 in
    line-none) printf '%-34s %12s\n' "line, no --data-dir" "$(sb line)" ;;
    line-everysec) printf '%-34s %12s\n' "line, --fsync everysec" "$(sb line --data-dir "$dir/data" --fsync everysec)" ;;
    line-always) printf '%-34s %12s\n' "line, --fsync always" "$(sb line --data-dir "$dir/data" --fsync always)" ;;
    switch-none) printf '%-34s %12s\n' "switch, no --data-dir" "$(sb switch)" ;;
    switch-everysec) printf '%-34s %12s\n' "switch, --fsync everysec" "$(sb switch --data-dir "$dir/data" --fsync everysec)" ;;
    switch-always) printf '%-34s %12s\n' "switch, --fsync always" "$(sb switch --data-dir "$dir/data" --fsync always)" ;;
    redis-everysec) printf '%-34s %12s\n' "redis XADD, appendfsync everysec" "$(redis everysec $((300000 * SECS)))" ;;
    redis-always) printf '%-34s %12s\n' "redis XADD, appendfsync always" "$(redis always $((30000 * SECS)))" ;;
    *) echo "unknown pattern $1" >&2; exit 2 ;;
  esac
}

read -r -a patterns <<<"${PATTERNS:-line-none line-everysec line-always switch-none switch-everysec switch-always redis-everysec redis-always}"
printf '%-34s %12s\n' pattern 'sends/s'
for round in $(seq "${ROUNDS:-1}"); do
  if [ $((round % 2)) = 1 ]; then order=("${patterns[@]}"); else
    order=(); for ((i = ${#patterns[@]} - 1; i >= 0; i--)); do order+=("${patterns[i]}"); done
  fi
  for p in "${order[@]}"; do pattern "$p"; done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
