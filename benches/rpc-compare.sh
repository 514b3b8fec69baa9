#!/bin/bash
# RPC round trips per second and their latency, in one run: switchboard's
# message-switch API, its line protocol's `?`, and NATS request/reply.
# usage: benches/rpc-compare.sh [SECONDS] [CALLERS] [BODY_BYTES]
# env: ROUNDS=N runs the four patterns N times in turn (default 1), so that
#      on a busy machine each pattern meets the same load; compare medians.
# needs: nats-server (Debian: apt-get install -y nats-server)
# Each server runs pinned to CPU 0, the callers and the service (rpc-bench)
# to CPU 1; every pattern gets one service connection and CALLERS callers.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CALLERS=${2:-10}
BODY=${3:-100}
command -v nats-server >/dev/null || { echo "nats-server is not installed" >&2; exit 2; }
cargo build --release -q -p switchboard --bin switchboard
cargo build --release -q -p loadtest --bin rpc-bench
dir=$(mktemp -d)
SB=; NATS=
cleanup() { [ -n "$SB" ] && kill "$SB" 2>/dev/null; [ -n "$NATS" ] && kill "$NATS" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
taskset -c 0 target/release/switchboard --log-level warn --bus-listen off \
  --line-listen 127.0.0.1:0 --switch-listen 127.0.0.1:0 >"$dir/sb.out" 2>"$dir/sb.err" &
SB=$!
taskset -c 0 nats-server -a 127.0.0.1 -p -1 >"$dir/nats.log" 2>&1 &
NATS=$!
for _ in $(seq 100); do
  grep -qs 'listening switch' "$dir/sb.out" && grep -qs 'Listening for client' "$dir/nats.log" && break
  sleep 0.1
done
LINE=$(awk '/^listening line /{print $3}' "$dir/sb.out")
SWITCH=$(awk '/^listening switch /{print $3}' "$dir/sb.out")
NATS_ADDR=$(sed -n 's/.*Listening for client connections on \([0-9.:]*\).*/\1/p' "$dir/nats.log")
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "switchboard: line $LINE, switch $SWITCH; $(nats-server --version): $NATS_ADDR"
echo "$CALLERS callers, 1 service, ${BODY}-byte bodies, ${SECS} s measured per pattern after 1 s of warm-up"
# CPU time of a process so far, in clock ticks (1/100 s).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# One pattern: rpc-bench's row, then the CPU time its server used.
run() {
  local pid=$1; shift
  local t0 t1 row
  t0=$(ticks "$pid")
  row=$(taskset -c 1 target/release/rpc-bench --seconds "$SECS" --callers "$CALLERS" --body "$BODY" "$@" | tail -1)
  t1=$(ticks "$pid")
  printf '%s %9d\n' "$row" $(( (t1 - t0) * 10 ))
}
printf '%-8s %8s %10s %9s %9s %9s %9s\n' pattern calls calls/s 'p50 µs' 'p99 µs' 'max µs' 'server ms'
for _ in $(seq "${ROUNDS:-1}"); do
  run "$SB" --switch "$SWITCH"
  run "$SB" --line "$LINE"
  run "$SB" --line "$LINE" --line-handlers "$CALLERS"
  run "$NATS" --nats "$NATS_ADDR"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "(server ms: CPU time the server process used during the pattern, warm-up included)"
