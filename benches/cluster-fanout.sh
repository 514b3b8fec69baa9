#!/bin/bash
# What `--cluster` costs: fan-out across three nodes joined through Redis,
# against one node alone, in the same run (docs/benchmarks.md, "Across
# nodes").
#
# usage: benches/cluster-fanout.sh [REPS] [MESSAGES] [RATE] [SECONDS]
#   REPS      repetitions, default 3 (the tables are their medians)
#   MESSAGES  messages of a throughput run, default 5000
#   RATE      messages/s of a latency run, default 100, for SECONDS (default 5)
# env: SUBS  subscribers per flood-sub process (default 1000)
#      OUT   JSON lines, one per flood-sub per run (default target/cluster-fanout.jsonl)
#      SETUPS  the set-ups to run (default "cluster alone3 alone1")
#      PERF=DIR  also sample each node and Redis with `perf record` in two
#                more cluster runs (throughput, latency), reports in DIR
#
# Three set-ups, each in two modes, every repetition (the order turns):
#   cluster   Redis and three nodes with --cluster; SUBS subscribers on each
#             node; the publisher on node 1
#   alone3    one node without --cluster; three flood-subs of SUBS each on it
#   alone1    one node without --cluster; one flood-sub of SUBS on it
# Modes: "throughput" (MESSAGES messages, as fast as the node takes them)
# and "latency" (RATE msgs/s for SECONDS). One publisher connection on the
# line protocol, 64-byte bodies, line-protocol subscribers.
#
# Every server (the nodes and Redis) runs pinned to CPU 0 and every load
# tool to CPU 1 when taskset and two CPUs exist, so the three nodes share
# one core: the cluster's figures are what it costs, not what three
# machines would give. Each node's CPU per delivery gives the latter.
# Redis gets a free loopback port (retried if another process takes it
# first); nodes and flood tools print their addresses and readiness and are
# waited for, never for a fixed time. The publisher starts once every
# flood-sub has said all its connections are subscribed and every node's
# stats page shows its Redis subscriptions confirmed (so it needs no
# --wait-subscribers, and the CPU counts cover the run only). Any loss,
# failed tool or node that does not stop cleanly fails the script (exit 1).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPS=${1:-3}
MESSAGES=${2:-5000}
RATE=${3:-100}
SECONDS_LAT=${4:-5}
SUBS=${SUBS:-1000}
OUT=${OUT:-$ROOT/target/cluster-fanout.jsonl}
PERF=${PERF:-}

cd "$ROOT"
cargo build --release -q -p switchboard --bin switchboard
cargo build --release -q -p loadtest --bin flood-pub --bin flood-sub
SB=$ROOT/target/release/switchboard
FS=$ROOT/target/release/flood-sub
FP=$ROOT/target/release/flood-pub
command -v redis-server >/dev/null || {
  echo "cluster-fanout: redis-server is not installed (apt-get install redis-server; .ci/setup does)" >&2
  exit 1
}
if [ -n "$PERF" ] && ! command -v perf >/dev/null; then
  echo "cluster-fanout: PERF needs perf (Debian: linux-perf)" >&2
  exit 1
fi
WORK=$(mktemp -d -t cluster-fanout.XXXXXX)
REDIS_PID=
ALL_PIDS=()
cleanup() {
  local p
  for p in "${ALL_PIDS[@]}" $REDIS_PID; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$(dirname "$OUT")"
: >"$OUT"
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
pin_when_possible
[ ${#PIN_SERVER[@]} -gt 0 ] ||
  echo "cluster-fanout: taskset or a second CPU missing: servers and load share the CPUs" >&2

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Nanoseconds process $1 has spent on a CPU (the scheduler's count, finer
# than /proc/PID/stat's clock ticks).
cpu_ns() { awk '{ print $1 }' "/proc/$1/schedstat"; }
TICK=$(getconf CLK_TCK)
# Busy, total, and interrupt (irq + softirq) clock ticks of the whole
# machine, all CPUs (user to steal; guest time is already in user). On
# loopback much of TCP's work is softirq time, counted to no process.
machine() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t, $7 + $8 }' /proc/stat; }
# CPU seconds of this script's children that have ended (bash's `times`,
# run in this shell: a subshell's children are not this shell's).
children_s() {
  times >"$WORK/times"
  tail -1 "$WORK/times" | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); s += a[1] * 60 + a[2] } print s }' \
    >"$WORK/children"
}

# ---------------------------------------------------------------- Redis

# Starts redis-server on a free loopback port, pinned with the servers;
# sets REDIS_PID and REDIS_PORT. Another process may take the port between
# the probe and Redis' bind: Redis then exits, and a new port is tried.
start_redis() {
  local try log
  for try in $(seq 20); do
    REDIS_PORT=$(free_port)
    log=$WORK/redis.$try.log
    "${PIN_SERVER[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
      --appendonly no --daemonize no --dir "$WORK" --loglevel notice >"$log" 2>&1 &
    REDIS_PID=$!
    # Its log says when it listens; a lost port ends the process.
    while ! grep -qs "Ready to accept connections" "$log"; do
      kill -0 "$REDIS_PID" 2>/dev/null || break
      sleep 0.02
    done
    if kill -0 "$REDIS_PID" 2>/dev/null; then
      return 0
    fi
    wait "$REDIS_PID" || true
    REDIS_PID=
  done
  echo "cluster-fanout: redis-server did not start on any of 20 free ports" >&2
  exit 1
}

# ---------------------------------------------------------------- nodes

NODE_PID=() NODE_LINE=() NODE_BUS=() NODE_OUT=()
# start_node I [ARGS...]: node I on ephemeral loopback ports.
start_node() {
  local i=$1
  shift
  start_server --line-listen 127.0.0.1:0 --bus-listen 127.0.0.1:0 --log-level warn "$@"
  NODE_PID[i]=$SB_PID NODE_LINE[i]=${PORT[line]} NODE_BUS[i]=${PORT[bus]} NODE_OUT[i]=$SB_OUT
  ALL_PIDS+=("$SB_PID")
}

stop_nodes() {
  local i
  for i in "${!NODE_PID[@]}"; do
    SB_PID=${NODE_PID[i]} SB_OUT=${NODE_OUT[i]}
    stop_server
  done
  NODE_PID=() NODE_LINE=() NODE_BUS=() NODE_OUT=()
  ALL_PIDS=()
}

# Waits until node I's links to Redis are up and Redis has confirmed every
# subscription the node wants (the channel of its subscribers among them):
# from then on, messages from the other nodes reach them. 60 s at most.
wait_confirmed() {
  python3 - "${NODE_BUS[$1]}" <<'EOF'
import json, sys, time, urllib.request
deadline = time.time() + 60
while True:
    v = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/msgbus-stats"))["cluster"]
    if v["up"] and v["subscriptions"] >= 1 and v["confirmed"] == v["subscriptions"]:
        break
    if time.time() > deadline:
        sys.exit(f"node on {sys.argv[1]}: subscriptions not confirmed by Redis: {v}")
    time.sleep(0.02)
EOF
}

# The cluster counters of node I, as JSON (or null without --cluster).
cluster_stats() {
  python3 -c 'import json, sys, urllib.request
print(json.dumps(json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/msgbus-stats"))["cluster"]))' \
    "${NODE_BUS[$1]}"
}

# ---------------------------------------------------------------- tools

SUB_PIDS=() SUB_ERRS=()
# start_sub_on I N CHANNEL COUNT: a flood-sub of SUBS connections on node I
# (its summary in $WORK/sub.N.json); returns once it says all are subscribed.
start_sub_on() {
  local node=$1 n=$2 channel=$3 count=$4 fd l
  exec {fd}< <(exec "${PIN_TOOLS[@]}" "$FS" --proto line -a "127.0.0.1:${NODE_LINE[node]}" \
    -c "$channel" --connections "$SUBS" --count "$count" --json --interval 3600 \
    --setup-timeout 120 --timeout 600 2>&1 >"$WORK/sub.$n.json")
  SUB_PIDS[n]=$! SUB_ERRS[n]=$fd
  while IFS= read -r -u "$fd" l; do
    case $l in
      *"ready: $SUBS of $SUBS connections subscribed (0 failed)"*) return 0 ;;
      *"ready:"*) echo "cluster-fanout: flood-sub on node $node: $l" >&2; exit 1 ;;
    esac
  done
  echo "cluster-fanout: flood-sub on node $node ended before it was ready" >&2
  exit 1
}

# Waits for every flood-sub; any failure fails the script.
finish_subs() {
  local n rc
  for n in "${!SUB_PIDS[@]}"; do
    rc=0
    wait "${SUB_PIDS[n]}" || rc=$?
    exec {SUB_ERRS[n]}<&-
    if [ "$rc" != 0 ]; then
      echo "cluster-fanout: flood-sub $n failed (exit $rc): $(cat "$WORK/sub.$n.json")" >&2
      exit 1
    fi
  done
  SUB_PIDS=() SUB_ERRS=()
}

# ---------------------------------------------------------------- one run

# run SETUP MODE REP: starts the set-up's servers and subscribers, publishes
# on node 1, and writes one JSON line per flood-sub to $OUT.
run() {
  local setup=$1 mode=$2 rep=$3 channel="cf.$1.$2.$3" nodes subs_on count i
  case $setup in
    cluster) nodes=3 subs_on=(1 2 3) ;;
    alone3) nodes=1 subs_on=(1 1 1) ;;
    alone1) nodes=1 subs_on=(1) ;;
  esac
  local pub_args=(--count "$MESSAGES")
  count=$MESSAGES
  if [ "$mode" = latency ]; then
    count=$((RATE * SECONDS_LAT))
    pub_args=(--count "$count" -r "$RATE")
  fi
  for i in $(seq "$nodes"); do
    if [ "$setup" = cluster ]; then
      start_node "$i" --cluster "redis://127.0.0.1:$REDIS_PORT"
    else
      start_node "$i"
    fi
  done
  for i in "${!subs_on[@]}"; do
    start_sub_on "${subs_on[i]}" "$i" "$channel" "$count"
  done
  if [ "$setup" = cluster ]; then
    for i in $(seq "$nodes"); do wait_confirmed "$i"; done
  fi
  # CPU before: each node, Redis, the machine, the tools that ended so far.
  local cpu0=() redis0=0 m0 c0 t0 t1
  for i in $(seq "$nodes"); do cpu0[i]=$(cpu_ns "${NODE_PID[i]}"); done
  [ "$setup" = cluster ] && redis0=$(cpu_ns "$REDIS_PID")
  children_s
  c0=$(cat "$WORK/children")
  m0=$(machine)
  t0=$(date +%s.%N)
  "${PIN_TOOLS[@]}" "$FP" --proto line -a "127.0.0.1:${NODE_LINE[1]}" -c "$channel" --json \
    --interval 3600 --size 64 "${pub_args[@]}" \
    >"$WORK/pub.json" 2>"$WORK/pub.err" || {
    echo "cluster-fanout: flood-pub failed: $(cat "$WORK/pub.json" "$WORK/pub.err")" >&2
    exit 1
  }
  finish_subs
  local cpu=() redis=0 m1 c1 stats=()
  t1=$(date +%s.%N)
  m1=$(machine)
  children_s
  c1=$(cat "$WORK/children")
  for i in $(seq "$nodes"); do cpu[i]=$(($(cpu_ns "${NODE_PID[i]}") - cpu0[i])); done
  [ "$setup" = cluster ] && redis=$(($(cpu_ns "$REDIS_PID") - redis0))
  for i in $(seq "$nodes"); do
    if [ "$setup" = cluster ]; then stats[i]=$(cluster_stats "$i"); else stats[i]=null; fi
  done
  stop_nodes
  for i in "${!subs_on[@]}"; do
    python3 - "$WORK/sub.$i.json" "$setup" "$mode" "$rep" "${subs_on[i]}" "$count" \
      "${cpu[${subs_on[i]}]}" "$redis" "$TICK" "$m0" "$m1" "$c0" "$c1" "$t0" "$t1" \
      "${stats[${subs_on[i]}]}" "$nodes" "$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT" <<'EOF'
import json, sys
a = sys.argv
s = json.load(open(a[1]))
tick = float(a[9])
b0, tot0, irq0 = map(int, a[10].split())
b1, tot1, irq1 = map(int, a[11].split())
print(json.dumps({
    "setup": a[2], "mode": a[3], "rep": int(a[4]), "node": int(a[5]), "messages": int(a[6]),
    "nodes": int(a[17]),
    "received": s["received"], "lost": s["lost"], "msgs_per_s": s["msgs_per_s"],
    "first_ns": s["first_ns"], "last_ns": s["last_ns"],
    "p50_us": s["p50_us"], "p99_us": s["p99_us"], "p999_us": s["p999_us"], "max_us": s["max_us"],
    # CPU seconds from the publisher's start to the last subscriber's end:
    # this flood-sub's node, Redis, the tools, the machine (all CPUs).
    "node_cpu_s": int(a[7]) / 1e9, "redis_cpu_s": int(a[8]) / 1e9,
    "tools_cpu_s": float(a[13]) - float(a[12]),
    "machine_busy_s": (b1 - b0) / tick, "machine_irq_s": (irq1 - irq0) / tick, "machine_cpus": round((tot1 - tot0) / max(float(a[15]) - float(a[14]), 1e-9) / tick),
    "wall_s": float(a[15]) - float(a[14]),
    "cluster": json.loads(a[16]), "loadavg1": float(a[18]),
}))
EOF
  done
  echo "rep $rep $setup $mode: $(tail -n "${#subs_on[@]}" "$OUT" | python3 -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l)
    r["p50"], r["p99"] = r["p50_us"] / 1000, r["p99_us"] / 1000
    print("node %(node)d %(msgs_per_s).0f/s p50 %(p50).2f ms p99 %(p99).2f ms;" % r, end=" ")
')" >&2
}

# ---------------------------------------------------------------- the runs

echo "cluster-fanout: $(date -u +%FT%TZ) commit $(git -C "$ROOT" rev-parse --short HEAD), $(nproc) CPUs," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg), $REPS reps, $SUBS subscribers per flood-sub," \
  "$MESSAGES messages (throughput), $RATE msgs/s for $SECONDS_LAT s (latency)" >&2
start_redis
read -r -a SETUPS <<<"${SETUPS:-cluster alone3 alone1}"
for rep in $(seq "$REPS"); do
  # The order turns each repetition, so that no set-up always goes first.
  k=$(((rep - 1) % ${#SETUPS[@]}))
  order=("${SETUPS[@]:k}" "${SETUPS[@]:0:k}")
  for mode in throughput latency; do
    for setup in "${order[@]}"; do run "$setup" "$mode" "$rep"; done
  done
done

# Two more cluster runs (throughput, latency) under perf, not in the tables:
# each node and Redis sampled on their own; a report per process (symbols
# over 1 %) and the shares of the kernel and of the cluster's own code.
if [ -n "$PERF" ]; then
  mkdir -p "$PERF"
  run_perf() {
    local mode=$1 channel="cf.perf.$1" i p count=$MESSAGES pub_args=(--count "$MESSAGES")
    if [ "$mode" = latency ]; then
      count=$((RATE * SECONDS_LAT))
      pub_args=(--count "$count" -r "$RATE")
    fi
    for i in 1 2 3; do start_node "$i" --cluster "redis://127.0.0.1:$REDIS_PORT"; done
    for i in 0 1 2; do start_sub_on $((i + 1)) "$i" "$channel" "$count"; done
    for i in 1 2 3; do wait_confirmed "$i"; done
    local perf_pids=() names=(node1 node2 node3 redis) pids=("${NODE_PID[1]}" "${NODE_PID[2]}" "${NODE_PID[3]}" "$REDIS_PID")
    for i in 0 1 2 3; do
      perf record -q -F 10000 -o "$PERF/$mode.${names[i]}.data" -p "${pids[i]}" \
        2>"$PERF/$mode.${names[i]}.err" &
      perf_pids+=($!)
    done
    "${PIN_TOOLS[@]}" "$FP" --proto line -a "127.0.0.1:${NODE_LINE[1]}" -c "$channel" --json \
      --interval 3600 --size 64 "${pub_args[@]}" >"$WORK/pub.json" 2>"$WORK/pub.err"
    finish_subs
    for p in "${perf_pids[@]}"; do kill -INT "$p"; done
    for p in "${perf_pids[@]}"; do wait "$p" || true; done
    stop_nodes
    for i in 0 1 2 3; do
      perf report -i "$PERF/$mode.${names[i]}.data" --no-children --sort sym --percent-limit 1 \
        --stdio 2>/dev/null | grep -v '^$' >"$PERF/$mode.${names[i]}.txt" || true
      perf report -i "$PERF/$mode.${names[i]}.data" --no-children --sort sym --stdio 2>/dev/null |
        awk -v who="$mode ${names[i]}" '
          /^#/ && /Samples:/ { n = $3 }
          $1 ~ /%$/ { p = $1 + 0; all += p; if ($2 == "[k]") k += p; if ($0 ~ /cluster::/) c += p }
          END { printf "%s: %s samples, kernel %.0f %%, cluster code %.1f %%\n", who, n, k, c }'
    done
  }
  run_perf throughput
  run_perf latency
  echo "cluster-fanout: perf reports in $PERF (node1 publishes, node2 and node3 receive through Redis)" >&2
fi

kill -INT "$REDIS_PID"
wait "$REDIS_PID" || true
REDIS_PID=

# ---------------------------------------------------------------- tables

python3 - "$OUT" "$SUBS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
subs = int(sys.argv[2])
med = statistics.median
def cell(v, fmt):
    if len(v) == 1:
        return fmt(v[0])
    return f"{fmt(med(v))} ({fmt(min(v))}–{fmt(max(v))})"
n0 = lambda x: f"{x:,.0f}"
f1 = lambda x: f"{x:.1f}"
f2 = lambda x: f"{x:.2f}"
pct = lambda x: f"{x:.0f} %"
names = {"cluster": f"3 nodes, `--cluster`, {subs:,} subscribers each",
         "alone3": f"1 node, {3 * subs:,} subscribers",
         "alone1": f"1 node, {subs:,} subscribers"}
for mode in ("throughput", "latency"):
    m = [r for r in rows if r["mode"] == mode]
    if not m:
        continue
    reps = sorted({r["rep"] for r in m})
    print(f"\n{mode}: {m[0]['messages']:,} messages; medians of {len(reps)} runs (min–max)\n")
    print("| set-up | subscribers | deliveries/s | p50 ms | p99 ms | node CPU ns per delivery |")
    print("|---|---|---|---|---|---|")
    for setup in ("cluster", "alone3", "alone1"):
        s = [r for r in m if r["setup"] == setup]
        if not s:
            continue
        if setup == "cluster":
            groups = [(f"on node {n}" + (" (the publisher's)" if n == 1 else ""),
                       [r for r in s if r["node"] == n]) for n in sorted({r["node"] for r in s})]
        elif setup == "alone3":
            groups = [(f"each {subs:,} (3 flood-subs)", s)]
        else:
            groups = [("all", s)]
        for where, t in groups:
            # The node's CPU over the deliveries of all its subscribers.
            per = []
            for rep in reps:
                same = [r for r in t if r["rep"] == rep]
                if same:
                    node = same[0]["node"]
                    got = sum(r["received"] for r in s if r["rep"] == rep and r["node"] == node)
                    per.append(same[0]["node_cpu_s"] * 1e9 / got)
            print(f"| {names[setup]} | {where} | {cell([r['msgs_per_s'] for r in t], n0)} "
                  f"| {cell([r['p50_us'] / 1000 for r in t], f2)} "
                  f"| {cell([r['p99_us'] / 1000 for r in t], f2)} | {cell(per, f1)} |")
        if setup != "alone1":
            # All of them together: every delivery over the span from the
            # first flood-sub's first delivery to the last one's last.
            agg = []
            for rep in reps:
                t = [r for r in s if r["rep"] == rep]
                span = (max(r["last_ns"] for r in t) - min(r["first_ns"] for r in t)) / 1e9
                agg.append(sum(r["received"] for r in t) / span)
            print(f"| {names[setup]} | all {3 * subs:,} | {cell(agg, n0)} | | | |")
    print()
    print("| set-up | nodes' CPU s | Redis CPU s | Redis µs per message | tools' CPU s | machine busy | softirq | others |")
    print("|---|---|---|---|---|---|---|---|")
    for setup in ("cluster", "alone3", "alone1"):
        s = [r for r in m if r["setup"] == setup]
        if not s:
            continue
        def per_rep(f):
            return [f([r for r in s if r["rep"] == rep]) for rep in reps]
        nodes = per_rep(lambda t: sum({r["node"]: r["node_cpu_s"] for r in t}.values()))
        redis = per_rep(lambda t: t[0]["redis_cpu_s"])
        redis_msg = per_rep(lambda t: t[0]["redis_cpu_s"] / t[0]["messages"] * 1e6)
        tools = per_rep(lambda t: t[0]["tools_cpu_s"])
        cap = per_rep(lambda t: t[0]["wall_s"] * t[0]["machine_cpus"])
        busy = per_rep(lambda t: t[0]["machine_busy_s"])
        irq = per_rep(lambda t: t[0]["machine_irq_s"])
        share = [b / c * 100 for b, c in zip(busy, cap)]
        irq_share = [i / c * 100 for i, c in zip(irq, cap)]
        # What no process of the run used: other work on the machine.
        others = [max(b - n - r - o - i, 0) / c * 100
                  for b, n, r, o, i, c in zip(busy, nodes, redis, tools, irq, cap)]
        print(f"| {names[setup]} | {cell(nodes, f2)} | {cell(redis, f2)} | {cell(redis_msg, f1)} "
              f"| {cell(tools, f2)} | {cell(share, pct)} | {cell(irq_share, pct)} | {cell(others, pct)} |")
lost = sum(r["lost"] for r in rows)
if lost:
    sys.exit(f"{lost} messages lost")
EOF
