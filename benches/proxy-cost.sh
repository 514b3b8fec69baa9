#!/usr/bin/env bash
# What one proxied request costs the server side, counted rather than timed
# (counts move less with the machine's load than requests/s do): system
# calls, context switches and CPU time per request, for wrk → switchboard's
# proxy door → examples/proxy_handler.rs, against wrk → nginx proxy_pass →
# the same nginx answering the same bytes (one process).
#
# usage: benches/proxy-cost.sh [HANDLER_MODE] [DURATION]
#   HANDLER_MODE: threads (default: a thread per handler connection) or loop
#   (one thread, a readiness loop over the handler's connections).
#   BATCH=N (threads only): each handler connection asks for up to N
#   requests at a time (a wait and N - 1 polls; default 1).
#   FORM=whole (threads only): each answer is one message, the whole HTTP
#   response, instead of head, body and end (FORM=parts, the default).
#   DURATION: seconds of wrk per measurement (default 5).
# env: SB (the switchboard binary, default target/release/switchboard),
#      HANDLER (the handler, default target/release/examples/proxy_handler),
#      CHRT (a prefix for the handler, e.g. "chrt --batch 0"),
#      CONNS (wrk connections, default 64).
# Needs perf, wrk, nginx, taskset, python3, and
# `cargo build --release --bin switchboard --example proxy_handler`.
# The server side runs on core 0, wrk on core 1; ports are picked free.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-threads}
D=${2:-5}
BATCH=${BATCH:-1}
FORM=${FORM:-parts}
SB=${SB:-target/release/switchboard}
HANDLER=${HANDLER:-target/release/examples/proxy_handler}
CONNS=${CONNS:-64}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for tool in perf wrk taskset python3; do
  command -v $tool >/dev/null || { echo "missing: $tool"; exit 1; }
done
[ -x "$SB" ] && [ -x "$HANDLER" ] || {
  echo "build first: cargo build --release --bin switchboard --example proxy_handler"; exit 1; }
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
  for _ in $(seq 200); do
    curl -s -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "no answer from $1"; exit 1
}
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
# measure NAME URL PID...: one wrk run under perf stat of the PIDs.
measure() {
  local name=$1 url=$2; shift 2
  local pids; pids=$(IFS=,; echo "$*")
  taskset -c 1 wrk -t1 -c"$CONNS" -d1s "$url" >/dev/null
  local before; before=$(ticks "$@")
  perf stat -e raw_syscalls:sys_enter,context-switches -p "$pids" -o "$TMP/perf" -- sleep "$D" &
  local perf=$!
  local out; out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${D}s" "$url")
  wait $perf || true
  local after; after=$(ticks "$@")
  local reqs; reqs=$(awk '/requests in/{print $1}' <<<"$out")
  local rps; rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  local sc; sc=$(awk '/raw_syscalls/{gsub(",","",$1); print $1}' "$TMP/perf")
  local cs; cs=$(awk '/context-switches/{gsub(",","",$1); print $1}' "$TMP/perf")
  # perf counts over D seconds, wrk over its own D seconds: near enough.
  python3 - "$name" "$reqs" "$rps" "$sc" "$cs" "$before" "$after" <<'PY'
import sys
name, reqs, rps, sc, cs, before, after = sys.argv[1:]
reqs = int(reqs)
print(f"| {name} | {float(rps):,.0f} | {int(sc)/reqs:.2f} | {int(cs)/reqs:.2f} | "
      f"{(int(after)-int(before))*1e6/100/reqs:.1f} |")
PY
}
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); wrk -t1 -c$CONNS -d${D}s; handler mode $MODE, batch $BATCH, $FORM replies ${CHRT:+($CHRT)}"
echo "| server side | requests/s | system calls / request | context switches / request | CPU µs / request |"
echo "|---|---|---|---|---|"
p=$(free_port); l=$(free_port)
taskset -c 0 "$SB" --line-listen 127.0.0.1:$l --bus-listen off --proxy-listen 127.0.0.1:$p --log-level warn >/dev/null &
S=$!; PIDS+=($S)
sleep 0.3
taskset -c 0 ${CHRT:-} "$HANDLER" 127.0.0.1:$l 8 msglite.httpRequests "$MODE" "$BATCH" "$FORM" &
H=$!; PIDS+=($H)
wait_http http://127.0.0.1:$p/
measure "switchboard + Rust handler ($MODE, batch $BATCH, $FORM)" http://127.0.0.1:$p/ $S $H
measure "switchboard alone (same run)" http://127.0.0.1:$p/ $S
kill $S $H; wait $S $H 2>/dev/null || true
PIDS=()
f=$(free_port); b=$(free_port)
mkdir -p "$TMP/ng"
cat >"$TMP/ng/nginx.conf" <<NG
daemon off; master_process off; worker_processes 1;
pid $TMP/ng/nginx.pid; error_log $TMP/ng/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/ng/b; proxy_temp_path $TMP/ng/p; fastcgi_temp_path $TMP/ng/f;
  uwsgi_temp_path $TMP/ng/u; scgi_temp_path $TMP/ng/s;
  upstream backend { server 127.0.0.1:$b; keepalive 64; }
  server { listen 127.0.0.1:$f; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$b; keepalive_requests 1000000; location / { default_type text/plain; return 200 "hello, world\n"; } }
}
NG
taskset -c 0 "$NGINX" -p "$TMP/ng" -e "$TMP/ng/error.log" -c "$TMP/ng/nginx.conf" &
N=$!; PIDS+=($N)
wait_http http://127.0.0.1:$f/
measure "nginx proxy_pass → the same nginx (one process)" http://127.0.0.1:$f/ $N
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
