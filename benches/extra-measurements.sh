#!/usr/bin/env bash
# The server's memory under many connections, measured with this
# repository's own flood tools (loadtest/) against a fresh server per run:
#
#   1. idle memory per subscriber: the server's VmRSS before and after S
#      subscribers are subscribed (flood-sub, confirmed), on the HTTP bus
#      and on the line protocol, S = 1000, 10000, 19900;
#   2. 4 KiB messages: the server's peak RSS (VmHWM) while 1000 messages of
#      4096 bytes (flood-pub, 200 a second) go to N line subscribers,
#      N = 100, 250, 500, 1000;
#   3. 19,900 HTTP subscribers each receiving 10 messages: flood-sub's
#      summary (--json) and the server's peak RSS.
#
# usage: benches/extra-measurements.sh [SWITCHBOARD_BINARY]
#
# Builds the release binaries first (the server too, unless one is given).
# Each server listens on port 0; the script reads the addresses it prints
# and waits for flood-sub's `ready:` line, never for a fixed time. Needs an
# open-file limit of at least 20,000 (the soft limit is raised to the hard
# one). With taskset, the server runs on CPU 0 and the tools on CPU 1.
# Run it on a quiet machine; it takes a minute or two.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -gt 1 ]; then
  echo "usage: $0 [SWITCHBOARD_BINARY]" >&2
  exit 2
fi
cargo build --release -q -p loadtest --bin flood-pub --bin flood-sub
if [ $# -eq 1 ]; then
  SB=$1
else
  cargo build --release -q -p switchboard --bin switchboard
  SB=target/release/switchboard
fi
FP=target/release/flood-pub
FS=target/release/flood-sub

ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 20000 ]; then
  echo "the open-file limit is $(ulimit -n); 19,900 connections need 20,000" >&2
  exit 1
fi

WORK=target/extra-measurements
mkdir -p "$WORK"
. benches/lib.sh
pin_when_possible
DOORS=(--line-listen 127.0.0.1:0 --bus-listen 127.0.0.1:0 --log-level warn)

echo "== idle memory per subscriber (flood-sub holds them), HTTP bus and line protocol"
for proto in http line; do
  for n in 1000 10000 19900; do
    start_server "${DOORS[@]}"
    port=${PORT[bus]}
    [ "$proto" = line ] && port=${PORT[line]}
    before=$(kib "$SB_PID" VmRSS)
    start_sub --proto "$proto" -p "$port" -c idle --connections "$n" --sources 10
    after=$(kib "$SB_PID" VmRSS)
    kill -INT "$SUB_PID"
    finish_sub
    echo "$proto $n subscribed: $READY; rss_before_kb $before rss_after_kb $after" \
      "bytes_per_conn $(((after - before) * 1024 / n))"
    stop_server
  done
done

echo "== 4 KiB messages: server peak RSS by subscriber count (flood-pub --size 4096 --count 1000 -r 200, line protocol)"
for n in 100 250 500 1000; do
  start_server "${DOORS[@]}"
  hwm0=$(kib "$SB_PID" VmHWM)
  start_sub --proto line -p "${PORT[line]}" -c big --connections "$n" --count 1000
  "${PIN_TOOLS[@]}" "$FP" --proto line -p "${PORT[line]}" -c big --count 1000 --size 4096 \
    -r 200 --json >"$WORK/pub.json" 2>"$WORK/pub.err"
  finish_sub
  echo "subs $n received $(field received) lost $(field lost)" \
    "server VmHWM_kb_start $hwm0 peak $(kib "$SB_PID" VmHWM)"
  stop_server
done

echo "== 19,900 HTTP subscribers, each receiving every message (flood-pub --count 10 -r 10)"
start_server "${DOORS[@]}"
start_sub --proto http -p "${PORT[bus]}" -c wide --connections 19900 --procs 2 --sources 10 --count 10
"${PIN_TOOLS[@]}" "$FP" --proto http -p "${PORT[bus]}" -c wide --count 10 -r 10 --json \
  >"$WORK/pub.json" 2>"$WORK/pub.err"
finish_sub
cat "$WORK/sub.json"
echo "server VmHWM_kb $(kib "$SB_PID" VmHWM)"
stop_server
