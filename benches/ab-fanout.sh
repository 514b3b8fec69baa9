#!/bin/bash
# Two builds of switchboard side by side on fanbench's fan-out scenarios, in
# one run: every repetition runs every scenario on both doors against both
# builds (alternating which goes first), each on a fresh server pinned to
# CPU 0 with the load on CPU 1, then prints the median deliveries per second
# of each build and the ratio NEW / BASE.
#
# usage: benches/ab-fanout.sh BASE_BINARY NEW_BINARY [REPS] [SCENARIOS]
#   REPS defaults to 3, SCENARIOS to "b c" (fanbench's scenario letters).
# env:   FANBENCH_DIR  fanbench's source folder (default ../shared/tools/fanbench
#                      next to the repository); its scripts/scenario.sh runs each scenario
#        FANBENCH      the fanbench binary (default: built into target/fanbench here)
#        OUT           where the JSON lines go (default target/ab-fanout.jsonl)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${1:?usage: ab-fanout.sh BASE_BINARY NEW_BINARY [REPS] [SCENARIOS]}
NEW=${2:?usage: ab-fanout.sh BASE_BINARY NEW_BINARY [REPS] [SCENARIOS]}
REPS=${3:-3}
SCENARIOS=${4:-b c}
FANBENCH_DIR=${FANBENCH_DIR:-$ROOT/../shared/tools/fanbench}
OUT=${OUT:-$ROOT/target/ab-fanout.jsonl}
if [ -z "${FANBENCH:-}" ]; then
  (cd "$FANBENCH_DIR" && CARGO_TARGET_DIR="$ROOT/target/fanbench" cargo build --release -q)
  FANBENCH=$ROOT/target/fanbench/release/fanbench
fi
export FANBENCH
ulimit -n 20000
mkdir -p "$(dirname "$OUT")"
: > "$OUT"

# Starts BINARY on ephemeral ports, pinned to CPU 0; sets PID, LINE, BUS.
start() {
  local log
  log=$(mktemp)
  taskset -c 0 "$1" --line-listen 127.0.0.1:0 --bus-listen 127.0.0.1:0 --log-level warn \
    > "$log" 2>/dev/null &
  PID=$!
  # The server prints one `listening DOOR ADDRESS` line per door once bound.
  for _ in $(seq 200); do
    if [ "$(grep -c '^listening ' "$log")" -ge 2 ]; then break; fi
    if ! kill -0 "$PID" 2>/dev/null; then echo "server $1 exited" >&2; exit 1; fi
    sleep 0.05
  done
  LINE=$(awk '$2 == "line" { split($3, a, ":"); print a[2] }' "$log")
  BUS=$(awk '$2 == "bus" { split($3, a, ":"); print a[2] }' "$log")
  rm -f "$log"
  [ -n "$LINE" ] && [ -n "$BUS" ] || { echo "server $1 printed no addresses" >&2; exit 1; }
}

stop() {
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
}

for rep in $(seq "$REPS"); do
  if [ $((rep % 2)) -eq 1 ]; then order="base new"; else order="new base"; fi
  for sc in $SCENARIOS; do
    for door in sbline sbhttp; do
      for build in $order; do
        bin=$BASE; [ "$build" = new ] && bin=$NEW
        start "$bin"
        port=$LINE; [ "$door" = sbhttp ] && port=$BUS
        line=$("$FANBENCH_DIR/scripts/scenario.sh" "$door" "$sc" --port "$port" | tail -1)
        stop
        echo "{\"rep\":$rep,\"scenario\":\"$sc\",\"door\":\"$door\",\"build\":\"$build\",\"result\":$line}" >> "$OUT"
        echo "rep $rep $sc $door $build: $(echo "$line" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("delivered_per_s"), "lost", d.get("lost"), d.get("error", ""))')" >&2
      done
    done
  done
done

python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = sorted({(r["scenario"], r["door"]) for r in rows})
print("| scenario | door | base median (min–max) deliveries/s | new median (min–max) | new / base |")
print("|---|---|---|---|---|")
failed = False
for sc, door in keys:
    med = {}
    cell = {}
    for build in ("base", "new"):
        v = [r["result"].get("delivered_per_s") for r in rows
             if (r["scenario"], r["door"], r["build"]) == (sc, door, build)]
        if any(x is None for x in v) or any(r["result"].get("lost", 0) for r in rows
                                            if (r["scenario"], r["door"], r["build"]) == (sc, door, build)):
            failed = True
        v = [x for x in v if x is not None]
        med[build] = statistics.median(v) if v else float("nan")
        cell[build] = f"{med[build]:,.0f} ({min(v):,.0f}–{max(v):,.0f})" if v else "failed"
    print(f"| {sc} | {door} | {cell['base']} | {cell['new']} | {med['new'] / med['base']:.3f} |")
sys.exit(1 if failed else 0)
EOF
