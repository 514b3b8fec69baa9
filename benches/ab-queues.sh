#!/bin/bash
# Queued sends per second without --data-dir: two server binaries, in turn,
# on the same load (queue-bench, line and switch), to show what a change
# costs the in-memory path.
# usage: benches/ab-queues.sh BEFORE_BINARY AFTER_BINARY [ROUNDS] [SECONDS]
#        (default 3 rounds of 3 s per door and binary)
# A fresh server per run; prints each run, then the medians and after/before.
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=$1
AFTER=$2
ROUNDS=${3:-3}
SECS=${4:-3}
cargo build --release -q -p loadtest --bin queue-bench
dir=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# One run: BINARY DOOR → sends/s.
run() {
  rm -f "$dir/sb.out"
  "$1" --log-level warn --bus-listen off --line-listen 127.0.0.1:0 --switch-listen 127.0.0.1:0 \
    --max-queued-bytes 100000000000 --max-queued-bytes-per-address 100000000000 \
    >"$dir/sb.out" 2>"$dir/sb.err" &
  PID=$!
  until grep -qs '^listening switch ' "$dir/sb.out"; do
    kill -0 "$PID" || { cat "$dir/sb.err"; exit 1; }
    sleep 0.01
  done
  local addr
  addr=$(awk -v d="$2" '$1 == "listening" && $2 == d {print $3}' "$dir/sb.out")
  target/release/queue-bench "$2" "$addr" --seconds "$SECS" | awk '{print $5}'
  kill -INT "$PID"; wait "$PID"; PID=
}

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

declare -A got
for door in line switch; do
  for r in $(seq "$ROUNDS"); do
    # Alternate the order, so that neither binary always runs first.
    if [ $((r % 2)) = 1 ]; then order="before after"; else order="after before"; fi
    for which in $order; do
      if [ "$which" = before ]; then bin=$BEFORE; else bin=$AFTER; fi
      v=$(run "$bin" "$door")
      echo "$door $which round $r: $v"
      got[$door.$which]+="$v "
    done
  done
done
for door in line switch; do
  b=$(tr ' ' '\n' <<<"${got[$door.before]}" | grep . | median)
  a=$(tr ' ' '\n' <<<"${got[$door.after]}" | grep . | median)
  echo "$door: before median $b, after median $a, after/before $(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", a / b}')"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
