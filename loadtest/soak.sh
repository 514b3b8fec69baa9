#!/usr/bin/env bash
# A soak: a release-built server on ephemeral loopback ports under mixed
# traffic on every door for SOAK_MINUTES (default 30), sampled every 10 s.
#
#   loadtest/soak.sh                  30 minutes
#   SOAK_MINUTES=2 loadtest/soak.sh   what CI runs
#
# Traffic on every door, all at once for the whole run:
#   - flood-pub (2 connections, SOAK_RATE msgs/s) to flood-sub, every
#     message counted, on five channels: the line door and the HTTP bus'
#     multipart (8 subscribers each), WebSockets on the HTTP bus, the line
#     door over TLS and the HTTPS bus' multipart (4 subscribers each);
#   - HTTP bus, event streams: numbered POSTs to one subscriber that stays
#     (each must arrive, in order) and to plain, JSON and root subscribers
#     that come and go (loadtest/soak-traffic.py);
#   - line queues: `?` callers, each call on a fresh connection, answered by
#     `<` services that reconnect now and then (soak-traffic.py);
#   - line subscribers that come and drop the connection (soak-traffic.py);
#   - the message-switch API: `switchboard-cli serve` answers
#     `switchboard-cli call`s, one process and connection per call;
#   - the msglite HTTP proxy: requests on kept-alive and fresh connections
#     answered by two handlers (line door, line door over TLS) that
#     reconnect every 200 requests (loadtest/soak-doors.py);
#   - the webhook door: a receiver on loopback that stays and must get
#     every message, senders that connect, send and disconnect, receivers
#     that connect and disconnect (soak-doors.py);
#   - WebSockets on the HTTP and HTTPS buses that publish one message, get
#     it back and leave; line-over-TLS subscribers that get one message and
#     leave; HTTPS publishes on fresh connections (soak-doors.py).
# The TLS doors use a CA and certificate made with openssl in a temporary
# directory.
#
# Every 10 s a row goes to OUT/soak.csv: the server's RSS and open fds, its
# open connections, the longest loop turn of the last 10 s
# (`loop_turn_max_10s_us` of /msgbus-stats), the delivery latency p50 and
# p99 of the last 10 s on each flood channel (flood-sub's progress lines),
# of the proxy's requests (round trip) and of the webhooks (send to
# delivery) (soak-doors.py's lines; a latency is empty when no line came
# since the last row) and the server's counts of dropped, expired and
# slow-disconnected.
# At the end OUT/soak.png is drawn from it (soak-plot).
#
# The check (exit status 1 when it fails):
#   - nothing lost: every flood message, event-stream message, queue call,
#     switch call, proxied request, webhook, WebSocket echo and TLS
#     subscriber's message arrived, and every publish and API call was
#     accepted (and no drop, expiry or slow disconnect);
#   - no growth: the highest RSS of the last third of the samples is at most
#     the highest of the first third + 10 % + 8 MiB (the first sample, taken
#     while the traffic starts, is left out);
#   - the fd count returns to its idle baseline once the traffic is gone.
# OUT is SOAK_OUT, default target/soak.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${SOAK_MINUTES:-30}
rate=${SOAK_RATE:-200}
out=${SOAK_OUT:-target/soak}
font=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
secs=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')
count=$((rate * secs))
mkdir -p "$out"
rm -f "$out"/*

say() { echo "soak: $*" >&2; }

if [ ! -f "$font" ]; then
  say "installing fonts-dejavu-core for the plot's labels"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq fonts-dejavu-core >/dev/null
fi

cargo build --release --quiet -p switchboard -p loadtest --bins
bin=target/release

pids=()
certs=
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  [ -z "$certs" ] || rm -rf "$certs"
}
trap cleanup EXIT

# A CA and a server certificate for localhost and 127.0.0.1.
certs=$(mktemp -d)
(
  cd "$certs"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout ca.key -out ca.pem -days 2 -subj /CN=soak-ca
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout server.key -out server.csr -subj /CN=localhost
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >san.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -days 2 -extfile san.ext -out server.pem
) >"$out/openssl.log" 2>&1 || { cat "$out/openssl.log" >&2; exit 1; }
ca=$certs/ca.pem

"$bin/switchboard" --line-listen 127.0.0.1:0 --bus-listen 127.0.0.1:0 \
  --switch-listen 127.0.0.1:0 --proxy-listen 127.0.0.1:0 --hooks-listen 127.0.0.1:0 \
  --tls-cert "$certs/server.pem" --tls-key "$certs/server.key" \
  --bus-tls-listen 127.0.0.1:0 --line-tls-listen 127.0.0.1:0 \
  --log-level warn >"$out/server.out" 2>"$out/server.err" &
server=$!
pids+=("$server")
door() { awk -v d="$1" '$1 == "listening" && $2 == d { print $3 }' "$out/server.out"; }
doors=(line bus switch proxy hooks bus-tls line-tls)
all_doors() {
  local d
  for d in "${doors[@]}"; do [ -n "$(door "$d")" ] || return 1; done
}
for _ in $(seq 200); do
  all_doors && break
  kill -0 "$server" 2>/dev/null || { cat "$out/server.err" >&2; exit 1; }
  sleep 0.05
done
all_doors || { say "the server did not print all its doors"; cat "$out/server.out" >&2; exit 1; }
line=$(door line)
bus=$(door bus)
switch=$(door switch)
proxy=$(door proxy)
hooks=$(door hooks)
bus_tls=$(door bus-tls)
line_tls=$(door line-tls)
say "server $server: line $line, bus $bus, switch $switch, proxy $proxy, hooks $hooks," \
  "bus-tls $bus_tls, line-tls $line_tls; $minutes min, $rate msgs/s per flood channel"

rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$server/status"; }
fds() { ls "/proc/$server/fd" | wc -l; }
stats() { curl -sf --max-time 5 "http://$bus/msgbus-stats"; }
base_fds=$(fds)
base_rss=$(rss)

# Waits until FILE has a line matching PATTERN (the tool's "ready" line).
wait_line() {
  local file=$1 pattern=$2 pid=$3
  for _ in $(seq 600); do
    grep -q "$pattern" "$file" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$file" >&2; return 1; }
    sleep 0.1
  done
  say "timed out waiting for $pattern in $file"
  return 1
}

# The flood channels: NAME PROTO ADDRESS SUBSCRIBERS [TLS]; the channel is
# soak-NAME.
floods=(
  "line line $line 8"
  "http http $bus 8"
  "ws ws $bus 4"
  "tls-line line $line_tls 4 tls"
  "tls-http http $bus_tls 4 tls"
)
flood_args() {
  local name=$1 proto=$2 addr=$3 tls=${5:-}
  args=(--proto "$proto" --address "$addr" -c "soak-$name")
  [ -z "$tls" ] || args+=(--tls --ca "$ca")
}
subs=()
for f in "${floods[@]}"; do
  read -r name _ _ n _ <<<"$f"
  flood_args $f
  "$bin/flood-sub" "${args[@]}" --connections "$n" \
    --count "$count" --interval 10 --idle-timeout 60 --json \
    >"$out/$name-sub.json" 2>"$out/$name-sub.err" &
  subs+=($!)
  pids+=($!)
  wait_line "$out/$name-sub.err" "ready:" "${subs[-1]}"
done
pubs=()
for f in "${floods[@]}"; do
  read -r name _ <<<"$f"
  flood_args $f
  "$bin/flood-pub" "${args[@]}" --connections 2 \
    --count "$count" -r "$rate" --interval 60 --json \
    >"$out/$name-pub.json" 2>"$out/$name-pub.err" &
  pubs+=($!)
  pids+=($!)
done

python3 loadtest/soak-traffic.py "$line" "$bus" "$secs" >"$out/traffic.json" 2>"$out/traffic.err" &
traffic=$!
pids+=("$traffic")
python3 loadtest/soak-doors.py "$line" "$line_tls" "$bus" "$bus_tls" "$proxy" "$hooks" \
  "$ca" "$secs" "$out" >"$out/doors.json" 2>"$out/doors.err" &
doors_pid=$!
pids+=("$doors_pid")

cli=("$bin/switchboard-cli" --switch "$switch")
"${cli[@]}" serve soak.svc --program cat >"$out/serve.log" 2>&1 &
serve=$!
pids+=("$serve")
(
  ok=0 failed=0 i=0
  end=$((SECONDS + secs))
  while [ "$SECONDS" -lt "$end" ]; do
    i=$((i + 1))
    if [ "$("${cli[@]}" call soak.svc --body "call $i" --timeout 10 2>>"$out/calls.err")" = "call $i" ]; then
      ok=$((ok + 1))
    else
      failed=$((failed + 1))
    fi
    sleep 0.2
  done
  echo "$ok $failed" >"$out/calls.txt"
) &
calls=$!
pids+=("$calls")

# Sets `lat` to `P50,P99` in µs from `p50 123.4 us  p99 1.20 ms` of the
# last progress line of FILE, or to `,` when no line came since the last
# sample (the tools tick on their own clocks).
declare -A seen
latency() {
  local n
  n=$(grep -c ' p50 ' "$1" 2>/dev/null || true)
  lat=","
  [ "${n:-0}" != "${seen[$1]:-0}" ] || return 0
  seen[$1]=$n
  lat=$(grep ' p50 ' "$1" | tail -1 | awk '{
    for (i = 1; i < NF; i++) {
      if ($i == "p50" || $i == "p99") {
        v = $(i + 1); if ($(i + 2) == "ms") v *= 1000; r[$i] = v
      }
    }
    printf "%s,%s", r["p50"], r["p99"]
  }')
}
stat_fields() {
  python3 -c 'import json,sys; s=json.load(sys.stdin); q=s["queues"]
print(",".join(str(v) for v in (s["connections"]["total"], s["loop_turn_max_10s_us"],
      s["drops"], q["expired"], s["slow_disconnects"])))'
}

csv=$out/soak.csv
lat_names=(line http ws tls_line tls_http proxy hook)
lat_files=(line-sub.err http-sub.err ws-sub.err tls-line-sub.err tls-http-sub.err proxy.log hooks.log)
header=t_s,rss_kib,fds,connections,loop_turn_max_10s_us
for n in "${lat_names[@]}"; do header+=",${n}_p50_us,${n}_p99_us"; done
echo "$header,drops,expired,slow_disconnects" >"$csv"
start=$SECONDS
next=10
while [ $((SECONDS - start)) -lt "$secs" ]; do
  sleep $((start + next - SECONDS > 0 ? start + next - SECONDS : 0))
  kill -0 "$server" 2>/dev/null || { say "the server is gone"; cat "$out/server.err" >&2; exit 1; }
  s=$(stats | stat_fields)
  IFS=, read -r conns turn drops expired slow <<<"$s"
  lats=
  for f in "${lat_files[@]}"; do
    latency "$out/$f"
    lats+=",$lat"
  done
  echo "$((SECONDS - start)),$(rss),$(fds),$conns,$turn$lats,$drops,$expired,$slow" >>"$csv"
  next=$((next + 10))
done

status=0
fail() { say "FAILED: $*"; status=1; }
for pid in "${pubs[@]}" "${subs[@]}" "$traffic" "$doors_pid" "$calls"; do
  wait "$pid" || fail "a traffic process ($pid) exited with an error (see $out/*.err)"
done
kill "$serve" 2>/dev/null || true
wait "$serve" 2>/dev/null || true

# Every client has gone: the fd count must come back to the baseline (the
# server closes its side as it sees each close; give it a few seconds).
end_fds=$(fds)
for _ in $(seq 100); do
  end_fds=$(fds)
  [ "$end_fds" -le "$base_fds" ] && break
  sleep 0.1
done
end_rss=$(rss)
final=$(stats)
echo "$final" >"$out/stats-end.json"

lost() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }
flood_lost=()
for f in "${floods[@]}"; do
  read -r name _ <<<"$f"
  l=$(lost "$out/$name-sub.json" lost)
  flood_lost+=("$name $l")
  [ "$l" = 0 ] || fail "flood channel soak-$name: $l messages lost"
done
sse_lost=$(lost "$out/traffic.json" sse_lost)
rpc_failed=$(lost "$out/traffic.json" rpc_failed)
read -r calls_ok calls_failed <"$out/calls.txt"
drops=$(python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["drops"] + s["queues"]["expired"] + s["slow_disconnects"])' <<<"$final")
door_counts=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
print(" ".join(str(d[k]) for k in ("proxy_ok", "proxy_failed", "hook_sent", "hook_delivered",
  "hook_lost", "ws_ok", "wss_ok", "ws_failed", "tls_line_churned", "tls_line_failed",
  "https_ok", "https_failed")))' "$out/doors.json") || door_counts=
read -r proxy_ok proxy_failed hook_sent hook_delivered hook_lost ws_ok wss_ok ws_failed \
  tls_line_ok tls_line_failed https_ok https_failed <<<"$door_counts"

[ "$sse_lost" = 0 ] || fail "event stream: $sse_lost messages lost"
[ "$rpc_failed" = 0 ] || fail "line queues: $rpc_failed calls failed"
[ "$calls_failed" = 0 ] && [ "$calls_ok" -gt 0 ] || fail "switch: $calls_failed of $((calls_ok + calls_failed)) calls failed"
[ -n "$door_counts" ] || fail "soak-doors.py gave no counts (see $out/doors.err)"
[ "${proxy_failed:-x}" = 0 ] || fail "proxy: $proxy_failed requests not answered right"
[ "${hook_lost:-x}" = 0 ] || fail "webhooks: $hook_lost of $hook_sent not delivered"
[ "${ws_failed:-x}" = 0 ] || fail "WebSockets: $ws_failed failed"
[ "${tls_line_failed:-x}" = 0 ] || fail "line-TLS subscribers: $tls_line_failed failed"
[ "${https_failed:-x}" = 0 ] || fail "HTTPS publishes: $https_failed failed"
[ "$drops" = 0 ] || fail "the server dropped, expired or cut off $drops"
[ "$end_fds" -le "$base_fds" ] || fail "fds: $end_fds open after the run, $base_fds before"

read -r first_max last_max n <<<"$(awk -F, 'NR > 2 { rss[++n] = $2 } END {
  third = int(n / 3); if (third < 1) third = 1
  for (i = 1; i <= third; i++) if (rss[i] > a) a = rss[i]
  for (i = n - third + 1; i <= n; i++) if (rss[i] > b) b = rss[i]
  print a + 0, b + 0, n }' "$csv")"
limit=$((first_max + first_max / 10 + 8192))
[ "$n" -ge 3 ] || fail "only $n samples"
[ "$last_max" -le "$limit" ] || fail "RSS grew: last third up to $last_max KiB, first third up to $first_max KiB (limit $limit)"

"$bin/soak-plot" "$csv" "$out/soak.png" "$font" || fail "no plot"

summary="$minutes min; RSS idle $base_rss KiB, first third max $first_max KiB, last third max $last_max KiB (limit $limit), after $end_rss KiB; fds idle $base_fds, after $end_fds; flood lost (of $count each): ${flood_lost[*]}; event stream lost $sse_lost; queue calls failed $rpc_failed; switch calls $calls_ok ok, $calls_failed failed; proxy $proxy_ok ok, $proxy_failed failed; webhooks $hook_delivered of $hook_sent delivered; WebSockets $ws_ok ws + $wss_ok wss ok, $ws_failed failed; line-TLS subscribers $tls_line_ok ok, $tls_line_failed failed; HTTPS publishes $https_ok ok, $https_failed failed; server drops+expired+slow $drops"
echo "$summary" | tee "$out/summary.txt"
cat "$out/traffic.json" "$out/doors.json"
[ "$status" = 0 ] && say "OK" || say "FAILED"
exit "$status"
