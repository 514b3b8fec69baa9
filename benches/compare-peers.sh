#!/bin/bash
# switchboard against the servers people pick instead (NATS, Redis,
# mosquitto, nginx + nchan, and msgbus when MSGBUS_BIN is set), with the
# neutral fan-out benchmark that sits beside the repository in
# ../shared/tools/fanbench: every server started fresh for every run, pinned
# to CPU 0, the load on CPU 1. This is the command behind the comparison
# tables of docs/benchmarks.md. benches/compare-peers-own.sh runs the
# same comparison with the project's own flood tools and nothing outside it.
#
# usage: benches/compare-peers.sh [SCENARIOS] [REPS] [SYSTEMS]
#   SCENARIOS  default a,b,c,d,e,f      REPS  default 3
#   SYSTEMS    default nats,redis,mosquitto,nchan1,msgbus,sbline,sbhttp
# env: FANBENCH_DIR (default ../shared/tools/fanbench beside the repository),
#      SWITCHBOARD (default target/release/switchboard, built if missing),
#      OUT (default target/compare-peers.jsonl)
# Peers: apt-get install -y nats-server redis-server mosquitto nginx libnginx-mod-nchan
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCENARIOS=${1:-a,b,c,d,e,f}
REPS=${2:-3}
SYSTEMS=${3:-nats,redis,mosquitto,nchan1,msgbus,sbline,sbhttp}
FANBENCH_DIR=${FANBENCH_DIR:-$ROOT/../shared/tools/fanbench}
OUT=${OUT:-$ROOT/target/compare-peers.jsonl}
SWITCHBOARD=${SWITCHBOARD:-$ROOT/target/release/switchboard}
if [ ! -x "$SWITCHBOARD" ]; then
  (cd "$ROOT" && cargo build --release --bin switchboard)
fi
(cd "$FANBENCH_DIR" && CARGO_TARGET_DIR="$ROOT/target/fanbench" cargo build --release -q)
cd "$FANBENCH_DIR"
scripts/compare.sh --systems "$SYSTEMS" --scenarios "$SCENARIOS" --reps "$REPS" \
  --fanbench "$ROOT/target/fanbench/release/fanbench" \
  --sb-cmd "$SWITCHBOARD --line-listen 127.0.0.1:{line_port} --bus-listen 127.0.0.1:{http_port} --log-level warn" \
  --out "$OUT"
scripts/compare.sh --summarize "$OUT"
