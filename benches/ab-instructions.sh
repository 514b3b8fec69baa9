#!/bin/bash
# Two builds of switchboard compared by the instructions the server executes
# for one fan-out workload, counted by valgrind (cachegrind without cache
# simulation). Unlike deliveries per second, the count does not move with
# the load of other processes on the machine, so a shared machine can still
# tell whether a change costs the fan-out path anything.
#
# usage: benches/ab-instructions.sh BASE_BINARY NEW_BINARY [COUNT] [SUBS]
#   COUNT messages of 64 bytes (default 20000) from one publisher to SUBS
#   subscribers (default 1000), on the line protocol and on the HTTP bus,
#   three runs per build, alternating.
# env:  NEW_ARGS   extra server flags for the NEW build only (e.g. "--secret s")
#       TOOL_ARGS  extra flags for flood-sub and flood-pub against NEW
#                  (e.g. "--secret s": Basic credentials on the HTTP bus)
#       RUNS       runs per build (default 3)
#       PROTOS     the doors (default "line http"; the flood tools send
#                  credentials on the HTTP bus only)
#       NEW_CHANNEL  the channel against NEW (default ab); on the HTTP bus a
#                  token rides along as `ab?token=TOKEN` (both the
#                  subscribe and the publish paths end in the channel)
# Needs valgrind and the release flood tools
# (cargo build --release -p loadtest --bin flood-pub --bin flood-sub).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${1:?usage: ab-instructions.sh BASE_BINARY NEW_BINARY [COUNT] [SUBS]}
NEW=${2:?usage: ab-instructions.sh BASE_BINARY NEW_BINARY [COUNT] [SUBS]}
COUNT=${3:-20000}
SUBS=${4:-1000}
RUNS=${RUNS:-3}
FS=$ROOT/target/release/flood-sub
FP=$ROOT/target/release/flood-pub
for tool in valgrind "$FS" "$FP"; do
  type -P "$tool" >/dev/null || [ -x "$tool" ] || {
    echo "ab-instructions.sh: $tool is missing (valgrind: Debian package valgrind;" \
      "the flood tools: cargo build --release -p loadtest)" >&2
    exit 2
  }
done
ulimit -n 20000
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# run BINARY PROTO SERVER_ARGS TOOL_ARGS: prints the server's instruction count.
run() {
  local bin=$1 proto=$2 sargs=$3 targs=$4 ch=${5:-ab} out=$WORK/out err=$WORK/vg
  # shellcheck disable=SC2086
  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
    "$bin" --line-listen 127.0.0.1:0 --bus-listen 127.0.0.1:0 --log-level warn \
    --max-connections 20000 $sargs >"$out" 2>"$err" &
  local vpid=$!
  local port=""
  for _ in $(seq 600); do
    if [ "$proto" = line ]; then
      port=$(sed -n 's/^listening line .*:\([0-9]*\)$/\1/p' "$out")
    else
      port=$(sed -n 's/^listening bus .*:\([0-9]*\)$/\1/p' "$out")
    fi
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "the server did not start: $(cat "$err")" >&2; exit 1; }
  # shellcheck disable=SC2086
  "$FS" --proto "$proto" -a "127.0.0.1:$port" -c "$ch" --connections "$SUBS" \
    --count "$COUNT" --json --setup-timeout 120 --timeout 600 $targs >"$WORK/sub.json" 2>"$WORK/sub.err" &
  local sub=$!
  # shellcheck disable=SC2086
  "$FP" --proto "$proto" -a "127.0.0.1:$port" -c "$ch" --count "$COUNT" --size 64 \
    --wait-subscribers "$SUBS" --wait-timeout 300 --json $targs >/dev/null 2>"$WORK/pub.err"
  wait "$sub" || { echo "flood-sub failed: $(tail -3 "$WORK/sub.err")" >&2; exit 1; }
  kill -TERM "$vpid"
  wait "$vpid" || true
  sed -n 's/^==[0-9]*== I *refs: *\([0-9,]*\).*/\1/p' "$err" | tr -d ,
}

echo "# $COUNT messages of 64 B to $SUBS subscribers; instructions executed by the server"
echo "proto build run instructions per_delivery"
for proto in ${PROTOS:-line http}; do
  for r in $(seq "$RUNS"); do
    for build in base new; do
      if [ "$build" = base ]; then
        n=$(run "$BASE" "$proto" "" "")
      else
        n=$(run "$NEW" "$proto" "${NEW_ARGS:-}" "${TOOL_ARGS:-}" "${NEW_CHANNEL:-ab}")
      fi
      echo "$proto $build $r $n $(awk -v n="$n" -v d=$((COUNT * SUBS)) 'BEGIN { printf "%.1f", n / d }')"
    done
  done
done
