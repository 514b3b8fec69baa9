#!/bin/bash
# Extra measurements for issue 5, run on a quiet machine after the comparison.
# usage: benches/extra-measurements.sh SWITCHBOARD_BINARY
# env: FANBENCH (the fanbench binary), FANBENCH_DIR (its source folder, default ../shared/tools/fanbench)
SB=$1
FB=${FANBENCH:-/work/fanbench-target/release/fanbench}
cd "${FANBENCH_DIR:-$(dirname "$0")/../../shared/tools/fanbench}"
ulimit -n 20000
hwm() { awk '/VmHWM/{print $2}' /proc/$1/status; }
echo "== idle slope (fanbench idle), HTTP bus and line protocol"
for door in http sbline; do
  for n in 1000 10000 19900; do
    taskset -c 0 $SB --log-level warn >/dev/null 2>&1 & P=$!; sleep 0.4
    if [ $door = http ]; then args="--system http --port 8888 --sub-path /msgbus/{ch} --pub-path /msgbus/{ch}"; else args="--system sbline --port 9813"; fi
    taskset -c 1 $FB idle $args --subs $n --hold 3 --server-pid $P 2>/dev/null | tail -1 | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print("'$door'", d["subs"], "confirmed", d["confirmed"], "rss_before_kb", d["rss_before_kb"], "rss_after_kb", d["rss_after_kb"], "bytes_per_conn", d["bytes_per_conn"])'
    kill $P; wait $P 2>/dev/null
  done
done
echo "== 4 KiB messages: server peak RSS by subscriber count (fanbench fanout --bytes 4096 --msgs 1000)"
for n in 100 250 500 1000; do
  taskset -c 0 $SB --log-level warn >/dev/null 2>&1 & P=$!; sleep 0.4
  r0=$(hwm $P)
  taskset -c 1 $FB fanout --system sbline --port 9813 --subs $n --msgs 1000 --bytes 4096 2>/dev/null | tail -1 | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print("subs", d["subs"], "delivered_per_s", d["delivered_per_s"], "lost", d["lost"], end=" ")'
  echo "server VmHWM_kb_start $r0 peak $(hwm $P)"
  kill $P; wait $P 2>/dev/null
done
echo "== 19,900 HTTP subscribers, each receiving every message (fanbench fanout --subs 19900 --msgs 10)"
taskset -c 0 $SB --log-level warn >/dev/null 2>&1 & P=$!; sleep 0.4
taskset -c 1 $FB fanout --system http --port 8888 --sub-path '/msgbus/{ch}' --pub-path '/msgbus/{ch}' --subs 19900 --msgs 10 --bytes 64 2>/dev/null | tail -1
echo "server VmHWM_kb $(hwm $P)"
kill $P; wait $P 2>/dev/null
