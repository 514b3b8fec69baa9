#!/usr/bin/env bash
# The HTTP bus' subscriber framings side by side, in one run, with this
# repository's own flood tools: multipart (HTTP/1.1, chunked), Server-Sent
# Events and WebSocket subscribers fed by HTTP POSTs, and WebSocket
# subscribers fed by WebSocket publishers. Every repetition runs every row,
# each on a fresh server; the script prints, per row, the median deliveries
# per second of flood-sub, the messages lost, and the server's memory per
# idle subscriber (VmRSS after the subscriptions minus before, divided by
# the subscribers).
#
# usage: benches/bus-framings.sh [SUBSCRIBERS] [MESSAGES] [REPS] [SWITCHBOARD_BINARY]
#   defaults: 1000 subscribers, 2000 messages of 64 bytes, 3 repetitions.
#
# The publisher is not paced (the figure is the fan-out rate the server
# sustains); a row that loses messages was faster than its subscribers read
# and says so. Ports are 0: the script reads the addresses the server prints
# and waits for flood-sub's `ready:` line, never for a fixed time. With
# taskset, the server runs on CPU 0 and the tools on CPU 1.
set -euo pipefail
cd "$(dirname "$0")/.."

SUBS=${1:-1000}
COUNT=${2:-2000}
REPS=${3:-3}
cargo build --release -q -p loadtest --bin flood-pub --bin flood-sub
if [ $# -ge 4 ]; then
  SB=$4
else
  cargo build --release -q -p switchboard --bin switchboard
  SB=target/release/switchboard
fi
FP=target/release/flood-pub
FS=target/release/flood-sub
ulimit -n "$(ulimit -Hn)"

WORK=target/bus-framings
mkdir -p "$WORK"
: >"$WORK/rows.jsonl"
. benches/lib.sh
pin_when_possible

# name, flood-sub's --proto, flood-pub's --proto
ROWS=("multipart http http" "sse sse http" "ws ws http" "ws-ws ws ws")

for rep in $(seq "$REPS"); do
  for row in "${ROWS[@]}"; do
    read -r name sub_proto pub_proto <<<"$row"
    start_server --line-listen off --bus-listen 127.0.0.1:0 --log-level warn
    before=$(kib "$SB_PID" VmRSS)
    start_sub --proto "$sub_proto" -p "${PORT[bus]}" -c framings -n "$SUBS" --count "$COUNT"
    after=$(kib "$SB_PID" VmRSS)
    "${PIN_TOOLS[@]}" "$FP" --proto "$pub_proto" -p "${PORT[bus]}" -c framings \
      --count "$COUNT" --size 64 -t text/plain --json >"$WORK/pub.json"
    # flood-sub exits 1 when it lost messages: the row reports the loss.
    wait "$SUB_PID" || true
    exec {SUB_ERR}<&-
    stop_server
    python3 - "$name" "$rep" "$before" "$after" "$SUBS" "$WORK/sub.json" >>"$WORK/rows.jsonl" <<'EOF'
import json, sys
name, rep, before, after, subs, path = sys.argv[1:]
sub = json.load(open(path))
print(json.dumps({
    "row": name, "rep": int(rep),
    "bytes_per_sub": (int(after) - int(before)) * 1024 // int(subs),
    "msgs_per_s": sub["msgs_per_s"], "lost": sub["lost"],
    "received": sub["received"], "p50_us": sub["p50_us"],
}))
EOF
    echo "rep $rep $name: $(tail -1 "$WORK/rows.jsonl")" >&2
  done
done

python3 - "$WORK/rows.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
names = list(dict.fromkeys(r["row"] for r in rows))
label = {
    "multipart": "multipart, HTTP/1.1 chunked (POST)",
    "sse": "Server-Sent Events (POST)",
    "ws": "WebSocket (POST)",
    "ws-ws": "WebSocket (WebSocket publisher)",
}
base = statistics.median(r["msgs_per_s"] for r in rows if r["row"] == names[0])
print("| subscribers (publisher) | median (min–max) deliveries/s | / multipart | lost (all reps) | bytes per idle subscriber (median) |")
print("|---|---|---|---|---|")
for n in names:
    rs = [r for r in rows if r["row"] == n]
    v = [r["msgs_per_s"] for r in rs]
    m = statistics.median(v)
    print(f"| {label.get(n, n)} | {m:,.0f} ({min(v):,.0f}–{max(v):,.0f}) | {m / base:.3f} | "
          f"{sum(r['lost'] for r in rs)} | {statistics.median(r['bytes_per_sub'] for r in rs):.0f} |")
EOF
