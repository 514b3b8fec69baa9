#!/usr/bin/env bash
# CPU time per request of the Python side of the msglite HTTP proxy
# benchmarks, counted rather than timed: for each server side, the sum of
# utime + stime (/proc/PID/stat) of its processes over one wrk run, divided
# by the requests wrk completed. Counts move far less with the machine's
# load than requests/s do.
#
# usage: benches/proxy-pycost.sh [mongrel2|wsgi|all]   (default all)
# env:   IPC=1: the servers reach their workers over Unix sockets instead of
#        loopback TCP (switchboard's --line-unix, Mongrel2's ipc://, uwsgi's
#        socket file), in the Mongrel2 and WSGI comparisons;
#        DURATION (seconds per run, default 10), RUNS (default 3; each side is
#        measured RUNS times in turn and the median run is shown), CONNS (wrk
#        connections, default 64), WORKERS (Python processes, default 4),
#        SB (the switchboard binary, default target/release/switchboard),
#        CLIENT (the Python client's directory, default clients/python; point
#        it at another checkout's to compare two versions in one run),
#        CHRT (a prefix for our Python handlers, e.g. "chrt --batch 0"),
#        BATCHES (default 1: our handlers and WSGI workers are measured once per
#        value N listed, taking up to N queued requests a round trip: the
#        handlers' third argument, the adapter's --batch; e.g. BATCHES="1 4").
#        FORMS (default parts: our Python handlers answer with head, body and end;
#        "parts whole" measures them also answering each request with one
#        message, the whole HTTP response);
#        PERF=1: after each side's runs, one more run with core 0 sampled by
#        `perf record -g`, split by benches/perf_split.py into each side's
#        user time, sends, receives, waits and the rest, per request (needs
#        perf, and root or kernel.perf_event_paranoid <= 0 for the kernel's
#        share)
#
# Rows: "server" is switchboard, Mongrel2, nginx (in front of uwsgi) or the
# gunicorn arbiter; "Python" is the handlers or the WSGI workers (for uwsgi
# its master and workers). Needs (Debian): wrk nginx mongrel2-core
# python3-zmq gunicorn uwsgi-core uwsgi-plugin-python3, and `cargo build
# --release --bin switchboard`. The server side runs on core 0, wrk on core 1.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WHAT=${1:-all}
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-4}
SB=${SB:-$REPO/target/release/switchboard}
CLIENT=$(cd "${CLIENT:-$REPO/clients/python}" && pwd)
PY=/usr/bin/python3
HZ=$(getconf CLK_TCK)
for tool in wrk nginx taskset; do
  command -v $tool >/dev/null || [ -x /usr/sbin/$tool ] || { echo "missing: $tool"; exit 1; }
done
[ -x "$SB" ] || { echo "build first: cargo build --release --bin switchboard"; exit 1; }
[ "${PERF:-0}" = 1 ] && ! command -v perf >/dev/null && { echo "PERF=1 needs perf (Debian: linux-perf)"; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
TMP=$(mktemp -d)
PIDS=()
stop_all() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}
cleanup() { stop_all; rm -rf "$TMP"; }
trap cleanup EXIT

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
on0() { taskset -c 0 "$@" & PIDS+=($!); }
wait_http() {  # URL: until it answers 200
  for _ in $(seq 200); do
    if curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null | grep -q 200; then return 0; fi
    sleep 0.05
  done
  echo "no answer from $1"; exit 1
}
children() { pgrep -P "$1" | tr '\n' ' '; }
# ticks PID...: utime + stime of the processes, in clock ticks.
ticks() {
  local t=0 p
  for p in $(printf '%s\n' "$@" | sort -u); do
    [ -r "/proc/$p/stat" ] || continue
    # Fields after the command (which may hold spaces): utime is the 14th.
    t=$((t + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12+$13}')))
  done
  echo $t
}
# cost NAME URL "SERVER PIDS" "PYTHON PIDS": RUNS wrk runs; prints the run
# with the median Python CPU per request.
cost() {
  local name=$1 url=$2 server=$3 python=$4 rows=()
  # shellcheck disable=SC2086
  taskset -c 1 wrk -t1 -c"$CONNS" -d1s "$url" >/dev/null  # warm-up
  for _ in $(seq "$RUNS"); do
    local s0 p0 s1 p1 out reqs rps errs
    # shellcheck disable=SC2086
    s0=$(ticks $server); p0=$(ticks $python)
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" "$url")
    # shellcheck disable=SC2086
    s1=$(ticks $server); p1=$(ticks $python)
    reqs=$(awk '/requests in/{print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    errs=$(awk '/Non-2xx|Socket errors/{printf "%s ", $0}' <<<"$out")
    [ -n "$errs" ] && echo "  ($name: $errs)" >&2
    rows+=("$(awk -v r="$reqs" -v q="$rps" -v s=$((s1 - s0)) -v p=$((p1 - p0)) -v hz="$HZ" \
      'BEGIN{printf "%.2f %.2f %.0f %.1f %.1f", p*1e6/hz/r, s*1e6/hz/r, q, p/hz/'"$DURATION"'*100, s/hz/'"$DURATION"'*100}')")
  done
  printf '%s\n' "${rows[@]}" | sort -n | awk -v n="$name" -v r="$RUNS" \
    'NR==int((r+1)/2){printf "| %s | %.0f | %.1f | %.1f | %.1f | %.0f %% | %.0f %% |\n", n, $3, $1, $2, $1+$2, $4, $5}'
  [ "${PERF:-0}" = 1 ] && perf_split "$name" "$url" "$server" "$python"
  return 0
}
# perf_split NAME URL "SERVER PIDS" "PYTHON PIDS": one more wrk run, with
# core 0 sampled by perf in its middle; where the time went, per request
# (benches/perf_split.py), kept aside and printed after the table.
perf_split() {
  local rps
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" "$2" >"$TMP/perf.wrk" &
  local w=$!
  sleep 1
  perf record -q -C 0 -F 999 -g -o "$TMP/perf.data" sleep $((DURATION > 3 ? DURATION - 2 : 1)) >/dev/null 2>&1
  wait $w
  rps=$(awk '/Requests\/sec/{print $2}' "$TMP/perf.wrk")
  {
    echo; echo "$1, core 0 sampled by perf (its run: $rps requests/s), µs per request:"
    perf script -i "$TMP/perf.data" -F pid,ip,sym,dso 2>/dev/null \
      | $PY "$REPO/benches/perf_split.py" "$rps" "$3" "$4" || echo "(no split: see the message above)"
  } >>"$TMP/perf.txt"
}
header() {
  echo; echo "## $1"
  echo "| server side | requests/s | Python CPU µs / request | server CPU µs / request | total | Python CPU | server CPU |"
  echo "|---|---|---|---|---|---|---|"
}
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); wrk -t1 -c$CONNS -d${DURATION}s, median of $RUNS; client $CLIENT"

. "$(dirname "$0")/proxy-nginx.sh"  # nginx_conf, line_door, uwsgi_socket

mongrel2() {
  header "$WORKERS Python handlers behind switchboard and behind Mongrel2"
  local p l sb n form hs=()
  for form in ${FORMS:-parts}; do for n in ${BATCHES:-1}; do
    p=$(free_port); l=$(free_port)
    line_door $l; on0 "$SB" "${LINE_ARGS[@]}" --bus-listen off --proxy-listen 127.0.0.1:$p --log-level warn >/dev/null
    sb=$!
    sleep 0.3
    hs=()
    for _ in $(seq "$WORKERS"); do
      on0 ${CHRT:-} env PYTHONPATH="$CLIENT" $PY "$REPO/benches/proxy_handlers.py" line "$LINE_ADDR" "$n" "$form"
      hs+=($!)
    done
    wait_http http://127.0.0.1:$p/
    cost "switchboard → $WORKERS Python line handlers$([ "$n" = 1 ] || echo ", up to $n a round trip")$([ "$form" = parts ] || echo ", whole replies")" \
      http://127.0.0.1:$p/ "$sb" "${hs[*]}"
    stop_all
  done; done
  command -v m2sh >/dev/null || { echo "| Mongrel2 | not installed (mongrel2-core) | |"; return; }
  local m s r d=$TMP/m2 hz=()
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
  local m2=$!
  for _ in $(seq "$WORKERS"); do
    on0 $PY "$REPO/benches/proxy_handlers.py" zmq "$hsend" "$hrecv"
    hz+=($!)
  done
  wait_http http://127.0.0.1:$m/
  # The server runs in a process of its own, named in its pid file.
  cost "Mongrel2 → $WORKERS Python ZeroMQ handlers" http://127.0.0.1:$m/ \
    "$m2 $(children $m2) $(cat $d/run/mongrel2.pid 2>/dev/null)" "${hz[*]}"
  [ -f $d/run/mongrel2.pid ] && kill "$(cat $d/run/mongrel2.pid)" 2>/dev/null || true
  stop_all
}

wsgi() {
  header "A WSGI application, $WORKERS Python processes"
  local ex=$REPO/clients/python/examples p l sb ad n
  for n in ${BATCHES:-1}; do
    p=$(free_port); l=$(free_port)
    line_door $l; on0 "$SB" "${LINE_ARGS[@]}" --bus-listen off --proxy-listen 127.0.0.1:$p --log-level warn >/dev/null
    sb=$!
    sleep 0.3
    # shellcheck disable=SC2046
    (cd $ex && PYTHONPATH="$CLIENT" exec taskset -c 0 $PY -m switchboard_client.wsgi hello_app:app \
       --workers "$WORKERS" --connect "$LINE_ADDR" $([ "$n" = 1 ] || echo --batch "$n") 2>/dev/null) & PIDS+=($!)
    ad=$!
    wait_http http://127.0.0.1:$p/hello
    cost "switchboard → WSGI adapter, $WORKERS workers$([ "$n" = 1 ] || echo ", --batch $n")" \
      http://127.0.0.1:$p/hello "$sb" "$ad $(children $ad)"
    stop_all
  done
  if command -v gunicorn >/dev/null; then
    local g
    p=$(free_port)
    on0 gunicorn -w "$WORKERS" -k sync -b 127.0.0.1:$p --chdir "$ex" --log-level warning hello_app:app
    g=$!
    wait_http http://127.0.0.1:$p/hello
    cost "gunicorn, $WORKERS sync workers" http://127.0.0.1:$p/hello "$g" "$(children $g)"
    stop_all
  else echo "| gunicorn | not installed | |"; fi
  if command -v uwsgi >/dev/null; then
    local u f uw ng
    u=$(free_port); f=$(free_port)
    uwsgi_socket $u; on0 uwsgi --plugin python3 --socket "$UW_LISTEN" --processes "$WORKERS" --master \
      --chdir "$ex" --module hello_app:app --disable-logging --die-on-term >/dev/null 2>&1
    uw=$!
    nginx_conf "$TMP/ngu" "upstream u { server $UW_UPSTREAM; keepalive 16; }
      server { listen 127.0.0.1:$f; location / { include /etc/nginx/uwsgi_params; uwsgi_pass u; } }"
    on0 "$NGINX" -p "$TMP/ngu" -e "$TMP/ngu/error.log" -c "$TMP/ngu/nginx.conf"
    ng=$!
    wait_http http://127.0.0.1:$f/hello
    cost "nginx → uwsgi, $WORKERS processes" http://127.0.0.1:$f/hello "$ng" "$uw $(children $uw)"
    stop_all
  else echo "| uwsgi | not installed | |"; fi
}

case $WHAT in
  mongrel2) mongrel2 ;;
  wsgi) wsgi ;;
  all) mongrel2; wsgi ;;
  *) echo "usage: $0 [mongrel2|wsgi|all]"; exit 2 ;;
esac
[ -s "$TMP/perf.txt" ] && cat "$TMP/perf.txt"
echo; echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
