#!/usr/bin/env bash
# The server's memory per idle HTTP bus subscriber, by kind of stream and by
# build: for each binary given (and each extra flag set, see below), a fresh
# server, its VmRSS before and after N subscribers (flood-sub, each
# subscription confirmed), and the difference per subscriber.
#
# usage: benches/idle-streams.sh N KINDS BINARY[:FLAGS]...
#   N      subscribers per run (e.g. 10000)
#   KINDS  flood-sub --proto values, e.g. "http sse ws"; a kind a build
#          does not serve is reported as refused
#   FLAGS  server flags after a colon, commas for spaces:
#          target/release/switchboard:--heartbeat,0
#
# Ports are 0 and the script waits for flood-sub's `ready:` line. With
# taskset, the server runs on CPU 0 and the tools on CPU 1.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:?usage: idle-streams.sh N KINDS BINARY[:FLAGS]...}
KINDS=${2:?usage: idle-streams.sh N KINDS BINARY[:FLAGS]...}
shift 2
cargo build --release -q -p loadtest --bin flood-sub
FS=target/release/flood-sub
ulimit -n "$(ulimit -Hn)"
WORK=target/idle-streams
mkdir -p "$WORK"
. benches/lib.sh
pin_when_possible

for spec in "$@"; do
  SB=${spec%%:*}
  flags=()
  if [ "$spec" != "$SB" ]; then IFS=, read -r -a flags <<<"${spec#*:}"; fi
  for kind in $KINDS; do
    start_server --line-listen off --bus-listen 127.0.0.1:0 --log-level warn "${flags[@]}"
    before=$(kib "$SB_PID" VmRSS)
    start_sub --proto "$kind" -p "${PORT[bus]}" -c idle --connections "$N" --sources 4
    after=$(kib "$SB_PID" VmRSS)
    kill -INT "$SUB_PID"
    wait "$SUB_PID" || true
    exec {SUB_ERR}<&-
    stop_server
    echo "$spec $kind $READY: rss_before_kb $before rss_after_kb $after" \
      "bytes_per_sub $(((after - before) * 1024 / N))"
  done
done
