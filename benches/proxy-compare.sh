#!/usr/bin/env bash
# The msglite HTTP proxy door against the servers it replaces, with wrk.
#
# usage: benches/proxy-compare.sh [own|mongrel2|wsgi|all]   (default all)
# env:   IPC=1: the servers reach their workers over Unix sockets instead of
#        loopback TCP (switchboard's --line-unix, Mongrel2's ipc://, uwsgi's
#        socket file), in the Mongrel2 and WSGI comparisons;
#        DURATION (seconds per run, default 10), RUNS (default 3),
#        CONNS (wrk connections, default 64), WORKERS (Python processes, default 4),
#        SB (the switchboard binary, default target/release/switchboard),
#        BATCHES (default 1: our Python handlers and WSGI workers are measured
#        once per value N listed, taking up to N queued requests a round trip)
#        RUST=1: the Mongrel2 comparison also runs switchboard with the Rust
#        handler (WORKERS connections, up to 16 a round trip, whole replies)
#        in place of the Python handlers;
#        FORMS (default parts: our handlers answer with head, body and end;
#        "parts whole" measures them also answering each request with one
#        message, the whole HTTP response: the Python handlers, and the Rust
#        handler unbatched and in batches of 8)
#
# Needs (Debian): wrk nginx mongrel2-core python3-zmq gunicorn uwsgi-core
# uwsgi-plugin-python3; and `cargo build --release --bin switchboard --example
# proxy_handler`. Every server side (switchboard, nginx, Mongrel2, handlers,
# WSGI workers) runs on core 0, wrk on core 1. Each figure is the median of
# RUNS runs (requests/s, and the p99 latency of the same runs' median).
# Ports are picked free at start; everything started is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WHAT=${1:-all}
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-4}
SB=${SB:-$REPO/target/release/switchboard}
HANDLER=$REPO/target/release/examples/proxy_handler
PY=/usr/bin/python3
for tool in wrk nginx taskset; do
  command -v $tool >/dev/null || [ -x /usr/sbin/$tool ] || { echo "missing: $tool"; exit 1; }
done
[ -x "$SB" ] && [ -x "$HANDLER" ] || {
  echo "build first: cargo build --release --bin switchboard --example proxy_handler"; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
on0() { taskset -c 0 "$@" & PIDS+=($!); }
stop_all() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}
wait_http() {  # URL: until it answers 200
  for _ in $(seq 200); do
    if curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null | grep -q 200; then return 0; fi
    sleep 0.05
  done
  echo "no answer from $1"; exit 1
}
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; printf "%.2f", v}'; }
# measure NAME URL: RUNS wrk runs, prints a table row with the median.
measure() {
  local name=$1 url=$2 rows=()
  taskset -c 1 wrk -t1 -c"$CONNS" -d1s "$url" >/dev/null  # warm-up
  for _ in $(seq "$RUNS"); do
    local out rps p99 errs
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url")
    rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    p99=$(awk '$1=="99%"{print $2}' <<<"$out" | to_ms)
    errs=$(awk '/Non-2xx|Socket errors/{printf "%s ", $0}' <<<"$out")
    [ -n "$errs" ] && echo "  ($name: $errs)" >&2
    rows+=("$rps $p99")
  done
  printf '%s\n' "${rows[@]}" | sort -n | awk -v n="$name" -v r="$RUNS" \
    'NR==int((r+1)/2){printf "| %s | %.0f | %s |\n", n, $1, $2}'
}
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); wrk -t1 -c$CONNS -d${DURATION}s, median of $RUNS"

. "$(dirname "$0")/proxy-nginx.sh"  # nginx_conf, line_door, uwsgi_socket
start_nginx() { on0 "$NGINX" -p "$1" -e "$1/error.log" -c "$1/nginx.conf"; }

own() {
  echo; echo "## The proxy's own cost: a Rust handler (8 connections) vs nginx proxy_pass"
  echo "| server | requests/s | p99 ms |"; echo "|---|---|---|"
  local p l
  p=$(free_port); l=$(free_port)
  on0 "$SB" --line-listen 127.0.0.1:$l --bus-listen off --proxy-listen 127.0.0.1:$p --log-level warn >/dev/null
  sleep 0.3; on0 "$HANDLER" 127.0.0.1:$l 8; wait_http http://127.0.0.1:$p/
  measure "switchboard proxy → Rust handler (TCP)" http://127.0.0.1:$p/
  stop_all
  # The same handler asking for up to 8 requests at a time (a wait and 7
  # polls of what is already queued), each answered on its own.
  on0 "$SB" --line-listen 127.0.0.1:$l --bus-listen off --proxy-listen 127.0.0.1:$p --log-level warn >/dev/null
  sleep 0.3; on0 "$HANDLER" 127.0.0.1:$l 8 msglite.httpRequests threads 8; wait_http http://127.0.0.1:$p/
  measure "switchboard proxy → Rust handler, batches of 8 (TCP)" http://127.0.0.1:$p/
  stop_all
  # The same two, each answer one message (the whole HTTP response).
  case " ${FORMS:-parts} " in *" whole "*)
    on0 "$SB" --line-listen 127.0.0.1:$l --bus-listen off --proxy-listen 127.0.0.1:$p --log-level warn >/dev/null
    sleep 0.3; on0 "$HANDLER" 127.0.0.1:$l 8 msglite.httpRequests threads 1 whole; wait_http http://127.0.0.1:$p/
    measure "switchboard proxy → Rust handler, whole replies (TCP)" http://127.0.0.1:$p/
    stop_all
    on0 "$SB" --line-listen 127.0.0.1:$l --bus-listen off --proxy-listen 127.0.0.1:$p --log-level warn >/dev/null
    sleep 0.3; on0 "$HANDLER" 127.0.0.1:$l 8 msglite.httpRequests threads 8 whole; wait_http http://127.0.0.1:$p/
    measure "switchboard proxy → Rust handler, batches of 8, whole replies (TCP)" http://127.0.0.1:$p/
    stop_all
  esac
  # The same handler with one thread and a readiness loop for its 8
  # connections, as an upstream in one process serves them.
  on0 "$SB" --line-listen 127.0.0.1:$l --bus-listen off --proxy-listen 127.0.0.1:$p --log-level warn >/dev/null
  sleep 0.3; on0 "$HANDLER" 127.0.0.1:$l 8 msglite.httpRequests loop; wait_http http://127.0.0.1:$p/
  measure "switchboard proxy → Rust handler, one thread (TCP)" http://127.0.0.1:$p/
  stop_all
  rm -f "$TMP/line.sock"
  on0 "$SB" --line-listen off --line-unix "$TMP/line.sock" --bus-listen off --proxy-listen 127.0.0.1:$p --log-level warn >/dev/null
  sleep 0.3; on0 "$HANDLER" "$TMP/line.sock" 8; wait_http http://127.0.0.1:$p/
  measure "switchboard proxy → Rust handler (Unix socket)" http://127.0.0.1:$p/
  stop_all
  local f b
  f=$(free_port); b=$(free_port)
  local answer="server { listen 127.0.0.1:$b; keepalive_requests 1000000; location / { default_type text/plain; return 200 \"hello, world\\n\"; } }"
  local front="upstream backend { server 127.0.0.1:$b; keepalive 64; }
  server { listen 127.0.0.1:$f; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
  nginx_conf "$TMP/ng1" "$front" "$answer"; start_nginx "$TMP/ng1"; wait_http http://127.0.0.1:$f/
  measure "nginx proxy_pass → the same nginx (one process)" http://127.0.0.1:$f/
  stop_all
  nginx_conf "$TMP/ng2" "$answer"; start_nginx "$TMP/ng2"
  nginx_conf "$TMP/ng3" "$front"; start_nginx "$TMP/ng3"; wait_http http://127.0.0.1:$f/
  measure "nginx proxy_pass → another nginx process" http://127.0.0.1:$f/
  stop_all
}

mongrel2() {
  echo; echo "## The same architecture: $WORKERS Python handlers behind switchboard vs behind Mongrel2"
  echo "| server | requests/s | p99 ms |"; echo "|---|---|---|"
  local p l n form
  for form in ${FORMS:-parts}; do for n in ${BATCHES:-1}; do
    p=$(free_port); l=$(free_port)
    line_door $l; on0 "$SB" "${LINE_ARGS[@]}" --bus-listen off --proxy-listen 127.0.0.1:$p --log-level warn >/dev/null
    sleep 0.3
    for _ in $(seq "$WORKERS"); do
      on0 env PYTHONPATH=$REPO/clients/python $PY "$REPO/benches/proxy_handlers.py" line "$LINE_ADDR" "$n" "$form"
    done
    wait_http http://127.0.0.1:$p/
    measure "switchboard proxy → $WORKERS Python line handlers$([ "$n" = 1 ] || echo ", up to $n a round trip")$([ "$form" = parts ] || echo ", whole replies")" http://127.0.0.1:$p/
    stop_all
  done; done
  if [ "${RUST:-0}" = 1 ]; then
    # The same number of handler connections, but the Rust handler of the
    # own-cost comparison, up to 16 a round trip: a comparison of handler
    # languages as much as of servers, shown beside the like-for-like one.
    p=$(free_port); l=$(free_port)
    line_door $l; on0 "$SB" "${LINE_ARGS[@]}" --bus-listen off --proxy-listen 127.0.0.1:$p --log-level warn >/dev/null
    sleep 0.3; on0 "$HANDLER" "$LINE_ADDR" "$WORKERS" msglite.httpRequests threads 16 whole; wait_http http://127.0.0.1:$p/
    measure "switchboard proxy → Rust handler, $WORKERS connections, up to 16 a round trip, whole replies" http://127.0.0.1:$p/
    stop_all
  fi
  command -v m2sh >/dev/null || { echo "| Mongrel2 | not installed (mongrel2-core) | |"; return; }
  local m s r d=$TMP/m2
  export LOGNAME=${LOGNAME:-$(id -un)}
  m=$(free_port); s=$(free_port); r=$(free_port)
  mkdir -p $d/run $d/logs $d/tmp
  # With IPC=1, ZeroMQ over Unix sockets: Mongrel2 (chrooted to $d when run
  # as root) names them relative to $d, the handlers by their full path.
  local m2send=tcp://127.0.0.1:$s m2recv=tcp://127.0.0.1:$r hsend hrecv
  hsend=$m2send; hrecv=$m2recv
  if [ "${IPC:-0}" = 1 ]; then
    m2send=ipc://run/send.sock; m2recv=ipc://run/recv.sock
    hsend=ipc://$d/run/send.sock; hrecv=ipc://$d/run/recv.sock
  fi
  cat >$d/bench.conf <<EOF
main = Server(uuid="2f62bd5d-7a93-4d8c-8a5b-9a1c0b1e2d3f", access_log="/logs/access.log",
    error_log="/logs/error.log", chroot="./", default_host="localhost", name="bench",
    pid_file="/run/mongrel2.pid", bind_addr="127.0.0.1", port=$m,
    hosts=[Host(name="localhost", routes={
        '/': Handler(send_spec='$m2send', send_ident='7d4a1f2e-3b5c-4d6e-8f9a-0b1c2d3e4f5a',
                     recv_spec='$m2recv', recv_ident='')})])
settings = {"zeromq.threads": 1, "server.daemonize": 0}
servers = [main]
EOF
  (cd $d && m2sh load -config bench.conf -db bench.sqlite >/dev/null)
  (cd $d && exec taskset -c 0 m2sh start -db bench.sqlite -name bench >$d/m2.out 2>&1) & PIDS+=($!)
  for _ in $(seq "$WORKERS"); do
    on0 $PY "$REPO/benches/proxy_handlers.py" zmq "$hsend" "$hrecv"
  done
  wait_http http://127.0.0.1:$m/
  measure "Mongrel2 → $WORKERS Python ZeroMQ handlers" http://127.0.0.1:$m/
  [ -f $d/run/mongrel2.pid ] && kill "$(cat $d/run/mongrel2.pid)" 2>/dev/null || true
  stop_all
}

wsgi() {
  echo; echo "## A WSGI application, $WORKERS Python processes"
  echo "| server | requests/s | p99 ms |"; echo "|---|---|---|"
  local ex=$REPO/clients/python/examples p l n
  for n in ${BATCHES:-1}; do
    p=$(free_port); l=$(free_port)
    line_door $l; on0 "$SB" "${LINE_ARGS[@]}" --bus-listen off --proxy-listen 127.0.0.1:$p --log-level warn >/dev/null
    sleep 0.3
    # shellcheck disable=SC2046
    (cd $ex && PYTHONPATH=$REPO/clients/python exec taskset -c 0 $PY -m switchboard_client.wsgi hello_app:app \
       --workers "$WORKERS" --connect "$LINE_ADDR" $([ "$n" = 1 ] || echo --batch "$n") 2>/dev/null) & PIDS+=($!)
    wait_http http://127.0.0.1:$p/hello
    measure "switchboard proxy → WSGI adapter$([ "$n" = 1 ] || echo ", --batch $n")" http://127.0.0.1:$p/hello
    stop_all
  done
  if command -v gunicorn >/dev/null; then
    p=$(free_port)
    on0 gunicorn -w "$WORKERS" -k sync -b 127.0.0.1:$p --chdir "$ex" --log-level warning hello_app:app
    wait_http http://127.0.0.1:$p/hello
    measure "gunicorn, $WORKERS sync workers" http://127.0.0.1:$p/hello
    stop_all
  else echo "| gunicorn | not installed | |"; fi
  if command -v uwsgi >/dev/null; then
    local u f
    u=$(free_port); f=$(free_port)
    uwsgi_socket $u; on0 uwsgi --plugin python3 --socket "$UW_LISTEN" --processes "$WORKERS" --master \
      --chdir "$ex" --module hello_app:app --disable-logging --die-on-term >/dev/null 2>&1
    nginx_conf "$TMP/ngu" "upstream u { server $UW_UPSTREAM; keepalive 16; }
      server { listen 127.0.0.1:$f; location / { include /etc/nginx/uwsgi_params; uwsgi_pass u; } }"
    start_nginx "$TMP/ngu"; wait_http http://127.0.0.1:$f/hello
    measure "nginx → uwsgi, $WORKERS processes" http://127.0.0.1:$f/hello
    stop_all
  else echo "| uwsgi | not installed | |"; fi
}

case $WHAT in
  own) own ;;
  mongrel2) mongrel2 ;;
  wsgi) wsgi ;;
  all) own; mongrel2; wsgi ;;
  *) echo "usage: $0 [own|mongrel2|wsgi|all]"; exit 2 ;;
esac
echo; echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
