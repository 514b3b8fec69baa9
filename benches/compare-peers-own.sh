#!/bin/bash
# switchboard against the servers people pick instead (NATS, Redis pub/sub,
# MQTT with mosquitto, nginx + nchan), with the project's own load tools
# flood-sub and flood-pub speaking each server's protocol, and Debian's
# packages of the servers: the comparison tables of docs/benchmarks.md,
# re-runnable from a clone.
#
# usage: benches/compare-peers-own.sh [SCENARIOS] [REPS] [SYSTEMS]
#   SCENARIOS  default a,b,c,d,e,f,g,h (see below)     REPS  default 1
#   SYSTEMS    default nats,redis,mosquitto,nchan,sbline,sbhttp
# env: SWITCHBOARD  the server binary (default target/release/switchboard, built)
#      OUT          JSON lines, one per run (default target/compare-peers-own.jsonl)
#      NO_INSTALL=1 never run apt-get (a missing server's column is skipped)
#      SCALE=N      divide every message count by N: a quick check of the
#                   set-up (the tables then no longer match their titles)
#
# Scenarios (64-byte bodies unless said):
#   a  1 publisher -> 1 subscriber, 500,000 messages
#   b  1 publisher -> 1,000 subscribers, 5,000 messages (5M deliveries)
#   c  1 publisher -> 10,000 subscribers, 200 messages (2M deliveries)
#   d  1 publisher -> 1,000 subscribers, 4 KiB, 1,000 messages (1M deliveries)
#   e  19,000 idle subscribers: server RSS per connection
#   f  1,000 messages/s to 1,000 subscribers for 5 s: latency
#   g  many channels: 1,000 channels x 10 subscribers, 100 publishers,
#      100,000 messages (100 a channel, 1M deliveries)
#   h  fan-in: 1,000 publishers -> 1 subscriber, 200,000 messages
#
# Every run starts its server fresh on a free loopback port, pinned to CPU 0
# with `ulimit -n 20000`; flood-sub and flood-pub run pinned to CPU 1. The
# publisher starts once flood-sub says all its connections are subscribed,
# and publishes as fast as the server takes it (f: at 1,000 msgs/s). The
# server's CPU time (utime + stime of its processes, from /proc) is read
# when the publisher starts and when the subscribers are done; divided by
# the deliveries it is the server's CPU per delivered message.
# "delivered msgs/s" is flood-sub's rate from the first to the last delivery.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCENARIOS=${1:-a,b,c,d,e,f,g,h}
REPS=${2:-1}
SYSTEMS=${3:-nats,redis,mosquitto,nchan,sbline,sbhttp}
OUT=${OUT:-$ROOT/target/compare-peers-own.jsonl}
SWITCHBOARD=${SWITCHBOARD:-}

cd "$ROOT"
if [ -z "$SWITCHBOARD" ]; then
  cargo build --release -q --bin switchboard
  SWITCHBOARD=$ROOT/target/release/switchboard
fi
cargo build --release -q -p loadtest --bin flood-pub --bin flood-sub
FP=$ROOT/target/release/flood-pub
FS=$ROOT/target/release/flood-sub
WORK=$(mktemp -d -t compare-peers-own.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$(dirname "$OUT")"
: >"$OUT"
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

PIN_SERVER=() PIN_TOOLS=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  PIN_SERVER=(taskset -c 0) PIN_TOOLS=(taskset -c 1)
else
  echo "compare-peers-own: taskset or a second CPU missing: server and load share the CPUs" >&2
fi
NCHAN_MODULE=${NCHAN_MODULE:-/usr/lib/nginx/modules/ngx_nchan_module.so}

# ---------------------------------------------------------------- servers

# The program of each system, and the Debian package it comes in.
program_of() {
  case $1 in
    nats) echo nats-server ;; redis) echo redis-server ;; mosquitto) echo mosquitto ;;
    nchan) echo nginx ;; *) echo "" ;;
  esac
}
packages_of() {
  case $1 in
    nats) echo nats-server ;; redis) echo redis-server ;; mosquitto) echo mosquitto ;;
    nchan) echo "nginx libnginx-mod-nchan" ;; *) echo "" ;;
  esac
}
have() {
  local p
  p=$(program_of "$1")
  [ -z "$p" ] && return 0
  command -v "$p" >/dev/null || [ -x "/usr/sbin/$p" ] || return 1
  [ "$1" != nchan ] || [ -f "$NCHAN_MODULE" ]
}
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

# Installs what is missing (when allowed and the archive has it); prints
# the systems that can run.
usable=()
for sys in ${SYSTEMS//,/ }; do
  if ! have "$sys" && [ "${NO_INSTALL:-}" != 1 ]; then
    pkgs=$(packages_of "$sys")
    missing_pkg=
    for p in $pkgs; do
      apt-cache show "$p" >/dev/null 2>&1 || missing_pkg="$missing_pkg $p"
    done
    if [ -n "$missing_pkg" ]; then
      echo "compare-peers-own: Debian package(s)$missing_pkg not in this machine's archive: skipping $sys" >&2
      continue
    fi
    echo "compare-peers-own: installing $pkgs for $sys" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null ||
      echo "compare-peers-own: apt-get install $pkgs failed" >&2
  fi
  if have "$sys"; then
    usable+=("$sys")
  else
    echo "compare-peers-own: $sys is not installed (apt-get install $(packages_of "$sys")): skipping it" >&2
  fi
done
[ ${#usable[@]} -gt 0 ] || { echo "compare-peers-own: nothing to run" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until FILE has a line matching PATTERN (the server says it listens)
# while PID lives; 20 s at most.
wait_for_line() {
  local file=$1 pattern=$2 pid=$3 i
  for i in $(seq 400); do
    grep -q -- "$pattern" "$file" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { echo "server exited: $(tail -3 "$file")" >&2; return 1; }
    sleep 0.05
  done
  echo "server did not say '$pattern' within 20 s: $(tail -3 "$file")" >&2
  return 1
}

# start SYSTEM: sets SPID (the process to stop), PIDS (the processes whose
# CPU and memory count), PORT and PROTO (flood tool arguments).
start() {
  local sys=$1 dir=$WORK/$1 log
  rm -rf "$dir" && mkdir -p "$dir"
  log=$dir/server.log
  case $sys in
    nats)
      cat >"$dir/nats.conf" <<EOF
host: 127.0.0.1
port: -1
max_connections: 64000
EOF
      "${PIN_SERVER[@]}" nats-server -c "$dir/nats.conf" >"$log" 2>&1 &
      SPID=$!
      wait_for_line "$log" "Listening for client connections on" "$SPID"
      PORT=$(sed -n 's/.*Listening for client connections on .*:\([0-9]*\)$/\1/p' "$log" | head -1)
      PROTO=(--proto nats)
      ;;
    redis)
      PORT=$(free_port)
      cat >"$dir/redis.conf" <<EOF
bind 127.0.0.1
port $PORT
protected-mode no
daemonize no
save ""
appendonly no
maxclients 19500
tcp-backlog 4096
dir $dir
logfile ""
EOF
      "${PIN_SERVER[@]}" redis-server "$dir/redis.conf" >"$log" 2>&1 &
      SPID=$!
      wait_for_line "$log" "Ready to accept connections" "$SPID"
      PROTO=(--proto redis)
      ;;
    mosquitto)
      PORT=$(free_port)
      cat >"$dir/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
log_type information
EOF
      "${PIN_SERVER[@]}" mosquitto -c "$dir/mosquitto.conf" >"$log" 2>&1 &
      SPID=$!
      wait_for_line "$log" "running" "$SPID"
      PROTO=(--proto mqtt)
      ;;
    nchan)
      PORT=$(free_port)
      cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log stderr notice;
load_module $NCHAN_MODULE;
events { worker_connections 30000; use epoll; }  # the file limit (20000) is what binds
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  client_body_buffer_size 64k;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$PORT backlog=4096;
    # GET /sub/CH (Accept: multipart/mixed) subscribes, POST /sub/CH publishes.
    location ~ ^/sub/(.+)\$ {
      nchan_pubsub;
      nchan_channel_id \$1;
      nchan_subscriber_first_message newest;
      # A multipart subscriber further behind than the buffer misses messages.
      nchan_message_buffer_length 8192;
    }
  }
}
EOF
      "${PIN_SERVER[@]}" nginx -p "$dir/" -e stderr -c "$dir/nginx.conf" >"$log" 2>&1 &
      SPID=$!
      wait_for_line "$log" "start worker process" "$SPID"
      PROTO=(--proto http --http-path /sub/)
      ;;
    sbline | sbhttp)
      "${PIN_SERVER[@]}" "$SWITCHBOARD" --line-listen 127.0.0.1:0 --bus-listen 127.0.0.1:0 \
        --log-level warn >"$log" 2>&1 &
      SPID=$!
      wait_for_line "$log" "^listening bus " "$SPID"
      wait_for_line "$log" "^listening line " "$SPID"
      local door=line
      [ "$sys" = sbhttp ] && door=bus
      PORT=$(awk -v d="$door" '$1 == "listening" && $2 == d { n = split($3, a, ":"); print a[n] }' "$log")
      if [ "$sys" = sbline ]; then PROTO=(--proto line); else PROTO=(--proto http); fi
      ;;
  esac
  PIDS=$SPID
  if [ "$sys" = nchan ]; then
    PIDS="$SPID $(ps -o pid= --ppid "$SPID" | tr '\n' ' ')"
  fi
}

stop() {
  kill -TERM "$SPID" 2>/dev/null || true
  wait "$SPID" 2>/dev/null || true
}

# CPU seconds (utime + stime) of the server's processes.
TICK=$(getconf CLK_TCK)
cpu_s() {
  local t=0 p
  for p in $PIDS; do
    # Fields 14 and 15, counted after the command name's closing parenthesis.
    t=$((t + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
  done
  awk -v t="$t" -v k="$TICK" 'BEGIN { printf "%.3f\n", t / k }'
}

rss_kib() {
  local t=0 p
  for p in $PIDS; do
    t=$((t + $(awk '$1 == "VmRSS:" { print $2 }' "/proc/$p/status")))
  done
  echo "$t"
}

# ---------------------------------------------------------------- scenarios

# A message count divided by SCALE.
n() { echo $(($1 / ${SCALE:-1})); }

# Sets SUB_ARGS, PUB_ARGS (beside the protocol and address) for scenario $1.
scenario() {
  local s=$1
  SUB_ARGS=() PUB_ARGS=(--connections 1 --size 64)
  case $s in
    a) SUB_ARGS=(--connections 1 --count "$(n 500000)") PUB_ARGS+=(--count "$(n 500000)") ;;
    b) SUB_ARGS=(--connections 1000 --count "$(n 5000)") PUB_ARGS+=(--count "$(n 5000)") ;;
    c) SUB_ARGS=(--connections 10000 --sources 6 --count "$(n 200)") PUB_ARGS+=(--count "$(n 200)") ;;
    d) SUB_ARGS=(--connections 1000 --count "$(n 1000)") PUB_ARGS=(--connections 1 --size 4096 --count "$(n 1000)") ;;
    e) SUB_ARGS=(--connections 19000 --procs 2 --sources 10 --duration 5) ;;
    f) SUB_ARGS=(--connections 1000 --count "$(n 5000)") PUB_ARGS+=(--count "$(n 5000)" -r "$(n 1000)") ;;
    g)
      SUB_ARGS=(--connections 10000 --sources 6 --channels 1000 --count "$(n 100)")
      PUB_ARGS=(--connections 100 --size 64 --channels 1000 --count "$(n 100000)")
      ;;
    h) SUB_ARGS=(--connections 1 --count "$(n 200000)") PUB_ARGS=(--connections 1000 --size 64 --count "$(n 200000)") ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
}

# run SYSTEM SCENARIO REP: one run, one JSON line in $OUT.
run_one() {
  local sys=$1 sc=$2 rep=$3 channel="cmp$sc$rep" note="" rc=0
  scenario "$sc"
  start "$sys"
  # flood-sub in the background; its `ready:` line says all are subscribed.
  exec {SUB_ERR}< <(exec "${PIN_TOOLS[@]}" timeout 300 "$FS" "${PROTO[@]}" -a "127.0.0.1:$PORT" \
    -c "$channel" --json --no-announce --interval 3600 --timeout 240 --setup-timeout 120 \
    "${SUB_ARGS[@]}" 2>&1 >"$WORK/sub.json")
  local sub_pid=$! l ready=""
  while IFS= read -r -u "$SUB_ERR" l; do
    case $l in *"ready:"*) ready=${l#*ready: }; break ;; esac
  done
  local rss0=0 rss1=0 cpu0 cpu1
  if [ "$sc" = e ]; then
    rss1=$(rss_kib)
  fi
  cpu0=$(cpu_s)
  if [ -z "$ready" ]; then
    note="flood-sub ended before it was ready"
  elif [ "$sc" != e ]; then
    "${PIN_TOOLS[@]}" timeout 300 "$FP" "${PROTO[@]}" -a "127.0.0.1:$PORT" -c "$channel" --json \
      --interval 3600 --confirm-timeout 120 "${PUB_ARGS[@]}" >"$WORK/pub.json" 2>"$WORK/pub.err" || {
      note="flood-pub: $(grep -h 'FAILED\|error' "$WORK/pub.err" | tail -1)"
    }
  fi
  wait "$sub_pid" || rc=$?
  exec {SUB_ERR}<&-
  cpu1=$(cpu_s)
  if [ "$sc" = e ]; then
    # The growth from an empty server (read before it had any connection).
    rss0=$(cat "$WORK/rss0")
  fi
  stop
  [ "$rc" = 0 ] || note="${note:+$note; }flood-sub exit $rc"
  python3 - "$WORK/sub.json" "$sys" "$sc" "$rep" "$cpu0" "$cpu1" "$rss0" "$rss1" "$note" "${ready:-}" >>"$OUT" <<'EOF'
import json, sys
path, sys_, sc, rep, cpu0, cpu1, rss0, rss1, note, ready = sys.argv[1:]
try:
    lines = [l for l in open(path) if l.startswith("{")]
    sub = json.loads(lines[-1]) if lines else {}
except (OSError, ValueError):
    sub = {}
cpu = float(cpu1) - float(cpu0)
unique = sub.get("unique", 0) or 0
row = {
    "system": sys_, "scenario": sc, "rep": int(rep),
    "delivered_per_s": sub.get("msgs_per_s"), "unique": unique,
    "expected": sub.get("expected"), "lost": sub.get("lost"),
    "duplicated": sub.get("duplicated"), "bad": sub.get("bad"),
    "errors": sub.get("errors"), "first_error": sub.get("first_error"),
    "p50_us": sub.get("p50_us"), "p99_us": sub.get("p99_us"),
    "server_cpu_s": round(cpu, 3),
    "server_cpu_us_per_delivery": round(cpu * 1e6 / unique, 3) if unique else None,
    "subscribed": sub.get("subscribed"), "ready": ready, "note": note,
}
if sc == "e":
    n = sub.get("subscribed") or 0
    row["bytes_per_conn"] = round((int(rss1) - int(rss0)) * 1024 / n) if n else None
    row["rss_after_mb"] = round(int(rss1) / 1024, 1)
print(json.dumps(row))
EOF
  tail -1 "$OUT" | python3 -c 'import json, sys; r = json.load(sys.stdin); print("  %-9s %s rep %d: %s msgs/s, lost %s, server CPU %.2f s (%s us/delivery)%s%s" % (r["system"], r["scenario"], r["rep"], r["delivered_per_s"], r["lost"], r["server_cpu_s"], r["server_cpu_us_per_delivery"], " bytes/conn %s" % r.get("bytes_per_conn") if r["scenario"] == "e" else "", "  [" + r["note"] + "]" if r["note"] else ""))' >&2
}

# Scenario e: the RSS of an empty server of the system, from a start of
# its own just before the run.
empty_rss() {
  start "$1"
  rss_kib >"$WORK/rss0"
  stop
}

echo "compare-peers-own: $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)," \
  "systems ${usable[*]}, scenarios $SCENARIOS, $REPS repetition(s)" >&2
for rep in $(seq "$REPS"); do
  # The order of the systems rotates from one repetition to the next.
  n=${#usable[@]}
  order=()
  for i in $(seq 0 $((n - 1))); do order+=("${usable[$(((i + rep - 1) % n))]}"); done
  for sc in ${SCENARIOS//,/ }; do
    for sys in "${order[@]}"; do
      [ "$sc" = e ] && empty_rss "$sys"
      run_one "$sys" "$sc" "$rep"
    done
  done
done
echo "compare-peers-own: done $(date -u '+%H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
peers = ("nats", "redis", "mosquitto", "nchan")
titles = {
    "a": "1 pub -> 1 sub, 64 B, 500k msgs",
    "b": "1 pub -> 1000 subs, 64 B, 5k msgs (5M deliveries)",
    "c": "1 pub -> 10000 subs, 64 B, 200 msgs (2M deliveries)",
    "d": "1 pub -> 1000 subs, 4 KiB, 1k msgs (1M deliveries)",
    "e": "19000 idle subscribers: server RSS per connection",
    "f": "latency: 1000 msgs/s to 1000 subs for 5 s",
    "g": "many channels: 1000 channels x 10 subs, 100 pubs, 100k msgs (1M deliveries)",
    "h": "fan-in: 1000 pubs -> 1 sub, 64 B, 200k msgs",
}
def fmt(v, d=0):
    return "–" if v is None else f"{v:,.{d}f}"
for sc in sorted({r["scenario"] for r in rows}):
    rs = [r for r in rows if r["scenario"] == sc]
    systems = list(dict.fromkeys(r["system"] for r in rs))
    if sc == "e":
        key, better = "bytes_per_conn", min
    elif sc == "f":
        key, better = "p99_us", min
    else:
        key, better = "delivered_per_s", max
    med = {}
    for s in systems:
        v = [r[key] for r in rs if r["system"] == s and r[key] is not None]
        med[s] = statistics.median(v) if v else None
    peer_meds = {s: m for s, m in med.items() if s in peers and m}
    best = better(peer_meds, key=peer_meds.get) if peer_meds else None
    print(f"\n#### ({sc}) {titles.get(sc, sc)}\n")
    if sc == "e":
        print("| system | runs | bytes/conn (median) | min–max | RSS after, MB | ratio to best peer | notes |")
        print("|---|---|---|---|---|---|---|")
    else:
        print(f"| system | runs | {'p99 µs' if sc == 'f' else 'delivered msgs/s'} (median) | min–max | "
              f"{'delivered msgs/s' if sc == 'f' else 'p99 µs'} | lost (max) | server CPU s | "
              "server CPU µs / delivery | ratio to best peer | notes |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    for s in systems:
        mine = [r for r in rs if r["system"] == s]
        vals = [r[key] for r in mine if r[key] is not None]
        ratio = fmt(med[s] / peer_meds[best], 2) if best and med[s] else "–"
        notes = "; ".join(sorted({r["note"] for r in mine if r["note"]} |
                                 {str(r["first_error"]) for r in mine if r.get("first_error")}))
        rng = f"{fmt(min(vals))}–{fmt(max(vals))}" if vals else "–"
        if sc == "e":
            rss = statistics.median([r["rss_after_mb"] for r in mine])
            print(f"| {s} | {len(vals)}/{len(mine)} | {fmt(med[s])} | {rng} | {rss:.1f} | {ratio} | {notes} |")
            continue
        other = "delivered_per_s" if sc == "f" else "p99_us"
        o = [r[other] for r in mine if r[other] is not None]
        lost = max([r["lost"] or 0 for r in mine])
        cpu = statistics.median([r["server_cpu_s"] for r in mine])
        per = [r["server_cpu_us_per_delivery"] for r in mine if r["server_cpu_us_per_delivery"]]
        print(f"| {s} | {len(vals)}/{len(mine)} | {fmt(med[s])} | {rng} | "
              f"{fmt(statistics.median(o)) if o else '–'} | {fmt(lost)} | {cpu:.2f} | "
              f"{fmt(statistics.median(per), 2) if per else '–'} | {ratio} | {notes} |")
    if best:
        print(f"\nRatio = median / best peer's median ({best}); "
              f"{'lower' if better is min else 'higher'} is better.")
EOF
