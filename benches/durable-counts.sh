#!/bin/bash
# What the server spends per queued send on the line protocol, without
# --data-dir and with --data-dir --fsync everysec, for a fixed number of
# sends (queue-bench --total), so that the figures do not move with the
# load of other work on the machine as sends per second do:
#   perf stat per thread: CPU time, system calls, context switches, page
#     faults of the loop's thread and of the store's writer thread;
#   valgrind (cachegrind without cache simulation, all threads): the
#     instructions executed, when VALGRIND_TOTAL is not 0.
# usage: benches/durable-counts.sh [TOTAL] [CONNECTIONS] [PIPELINE] [BODY_BYTES]
#        (default 1000000 16 16 100)
# env: ROUNDS=N runs each of the two N times, alternating (default 3).
#      VALGRIND_TOTAL=N sends under valgrind (default 200000; 0: skip).
#      SERVER=PATH the server binary (default target/release/switchboard,
#        built first).
# needs: perf (Debian: linux-perf) allowed to count (root, or
# kernel.perf_event_paranoid at most 1) and, for instructions, valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${1:-1000000}
CONNS=${2:-16}
PIPE=${3:-16}
BODY=${4:-100}
VG_TOTAL=${VALGRIND_TOTAL:-200000}
if [ -z "${SERVER:-}" ]; then
  cargo build --release -q -p switchboard --bin switchboard
  SERVER=target/release/switchboard
fi
cargo build --release -q -p loadtest --bin queue-bench
dir=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$TOTAL sends, $CONNS connections, $PIPE pipelined, $BODY-byte bodies"

# start PREFIX... -- FLAGS...: starts the server (behind PREFIX, e.g.
# valgrind) and sets PID and ADDR.
start() {
  local prefix=()
  while [ "$1" != -- ]; do prefix+=("$1"); shift; done
  shift
  rm -rf "$dir/data" "$dir/sb.out"
  "${prefix[@]}" "$SERVER" --log-level warn --bus-listen off --line-listen 127.0.0.1:0 \
    --max-queued-bytes 100000000000 --max-queued-bytes-per-address 100000000000 \
    "$@" >"$dir/sb.out" 2>"$dir/sb.err" &
  PID=$!
  until grep -qs '^listening line ' "$dir/sb.out"; do
    kill -0 "$PID" || { cat "$dir/sb.err"; exit 1; }
    sleep 0.01
  done
  ADDR=$(awk '$1 == "listening" && $2 == "line" {print $3}' "$dir/sb.out")
}

load() {
  target/release/queue-bench line "$ADDR" --total "$1" --connections "$CONNS" \
    --pipeline "$PIPE" --body "$BODY" >/dev/null
}

# One perf run: LABEL, then the server's flags.
counted() {
  local label=$1; shift
  start -- "$@"
  perf stat --per-thread -x, -e task-clock,raw_syscalls:sys_enter,context-switches,page-faults \
    -p "$PID" -o "$dir/perf" &
  local perf=$!
  sleep 0.2 # perf attaches
  load "$TOTAL"
  kill -INT "$perf"; wait "$perf" || true
  kill -INT "$PID"; wait "$PID"; PID=
  # Lines: thread-tid,value,unit,event,...; a thread is `switchboard-N` or `store-N`.
  awk -F, -v label="$label" -v total="$TOTAL" '
    /^[a-z]/ && NF > 4 {
      split($1, t, "-"); th = t[1]; ev = $4; sub(/:.*/, "", ev)
      v[th, ev] += $2; threads[th] = 1
    }
    END {
      for (th in threads)
        printf "%-26s %-12s %9.2f us CPU %7.3f syscalls %7.4f switches %7.4f faults per send\n",
          label, th, 1000 * v[th, "task-clock"] / total, v[th, "raw_syscalls"] / total,
          v[th, "context-switches"] / total, v[th, "page-faults"] / total
    }' "$dir/perf" | sort
}

# One valgrind run: LABEL, then the server's flags.
instructions() {
  local label=$1; shift
  start valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null -- "$@"
  load "$VG_TOTAL"
  kill -INT "$PID"; wait "$PID" || true; PID=
  awk -v label="$label" -v total="$VG_TOTAL" '
    /I *refs:/ { gsub(/,/, "", $NF); printf "%-26s %10.0f instructions per send\n", label, $NF / total }
  ' "$dir/sb.err"
}

for round in $(seq "${ROUNDS:-3}"); do
  if [ $((round % 2)) = 1 ]; then
    counted "no --data-dir"
    counted "--fsync everysec" --data-dir "$dir/data" --fsync everysec
  else
    counted "--fsync everysec" --data-dir "$dir/data" --fsync everysec
    counted "no --data-dir"
  fi
done
if [ "$VG_TOTAL" != 0 ]; then
  instructions "no --data-dir"
  instructions "--fsync everysec" --data-dir "$dir/data" --fsync everysec
fi
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
