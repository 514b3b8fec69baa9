#!/bin/bash
# Webhook deliveries per second to a fast local receiver (nginx answering
# 204), against wrk's requests per second with the same concurrency on the
# same receiver in the same run, and against mq-go.
#
# usage: benches/hooks-speed.sh [MESSAGES] [CONCURRENCY] [REPS] [MQGO_BINARY]
#   MESSAGES defaults to 200000, CONCURRENCY to 8, REPS to 5. MQGO_BINARY is
#   an mq-go built elsewhere (skipped when not given); it gets
#   MQGO_MESSAGES messages (default 5000: it is slow to take them).
# needs: nginx (Debian's nginx-light will do), wrk, python3, taskset; a
#   release build of switchboard (built here if missing).
#
# nginx runs on CPU 1; wrk, switchboard and mq-go each run alone on CPU 0.
# wrk (5 s) and switchboard (a fresh server each time) alternate REPS times,
# so that both see the same machine; the medians and their ratio are
# printed. Each sender gets its messages queued before the receiver is
# connected, and is timed from the receiver's /connect/ until the last
# delivery: its deliveries per second. mq-go's count comes from nginx's
# request counter (its dashboard counts jobs handed to workers, not
# deliveries).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-200000}
C=${2:-8}
REPS=${3:-5}
MQGO=${4:-}
SB=$ROOT/target/release/switchboard
[ -x "$SB" ] || (cd "$ROOT" && cargo build --release -q)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n 20000

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location = /status { stub_status; }
    location / { return 204; }
  }
}
EOF
taskset -c 1 nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/status" && break
  sleep 0.05
done
RECEIVER="http://127.0.0.1:$NGINX_PORT/hook"

# The helper that queues messages and times deliveries.
cat > "$WORK/drive.py" <<'EOF'
import json, socket, sys, time

def call(addr, path, obj):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    body = json.dumps(obj).encode()
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
              % (path.encode(), len(body), body))
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return rest.decode()

def get(addr, path):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.partition(b"\r\n\r\n")[2].decode()

def send_many(addr, sender, n):
    """n pipelined /send/ requests on one keep-alive connection."""
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    body = json.dumps({"id": sender, "body": "hello from the benchmark"}).encode()
    req = b"POST /send/ HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    done = 0
    batch = 500
    while done < n:
        k = min(batch, n - done)
        s.sendall(req * k)
        got = 0
        buf = b""
        while got < k:
            buf += s.recv(1 << 20)
            got = buf.count(b"HTTP/1.1 200")
        done += k
    s.close()

polls = 0

def nginx_requests(addr):
    """Requests nginx has answered, less this script's own status polls."""
    global polls
    polls += 1
    text = get(addr, "/status")
    return int(text.split("\n")[2].split()[2]) - polls

kind, api, receiver, nginx, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
if kind == "switchboard":
    sender = json.loads(call(api, "/connect/", {"ClientURL": "bench", "mode": "send"}))["id"]
    send_many(api, sender, n)
    t0 = time.time()
    call(api, "/connect/", {"ClientURL": receiver, "mode": "receive"})
    while True:
        s = json.loads(get(api, "/dashboard/stats.json"))
        if s["completed"] + s["failed"] >= n:
            break
        time.sleep(0.02)
    t = time.time() - t0
    print(json.dumps({"sender": "switchboard", "messages": n, "seconds": round(t, 3),
                      "per_second": round(n / t), "failed": s["failed"], "retried": s["retried"]}))
else:
    # mq-go answers /send/ for any id; messages wait until a receiver exists.
    send_many(api, 1, n)
    base = nginx_requests(nginx)
    t0 = time.time()
    call(api, "/connect/", {"ClientURL": receiver, "mode": "receive"})
    deadline = t0 + 600
    while nginx_requests(nginx) - base < n and time.time() < deadline:
        time.sleep(0.02)
    t = time.time() - t0
    got = nginx_requests(nginx) - base
    print(json.dumps({"sender": "mq-go", "messages": n, "delivered": got, "seconds": round(t, 3),
                      "per_second": round(got / t)}))
EOF

echo "# $(date -u +%FT%TZ) $(git -C "$ROOT" rev-parse --short HEAD) messages=$N concurrency=$C"

# wrk: the same request as a delivery, C connections, one thread.
cat > "$WORK/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"body":"hello from the benchmark"}'
wrk.headers["Content-Type"] = "application/json"
EOF
WRK=()
HOOKS=()
for rep in $(seq "$REPS"); do
  w=$(taskset -c 0 wrk -t1 -c"$C" -d5s -s "$WORK/post.lua" "$RECEIVER" | awk '/Requests\/sec/ {print int($2)}')
  echo "wrk -t1 -c$C -d5s: $w requests/s"
  WRK+=("$w")
  LOG=$WORK/sb.log
  taskset -c 0 "$SB" --line-listen off --bus-listen off --hooks-listen 127.0.0.1:0 \
    --hook-queue "$N" --hook-per-receiver "$C" --hook-workers "$C" --log-level warn > "$LOG" 2>&1 &
  SBPID=$!
  for _ in $(seq 100); do grep -q '^listening hooks' "$LOG" && break; sleep 0.05; done
  API=$(awk '/^listening hooks/ {print $3}' "$LOG")
  out=$(python3 "$WORK/drive.py" switchboard "$API" "$RECEIVER" "127.0.0.1:$NGINX_PORT" "$N")
  kill "$SBPID"
  wait "$SBPID" 2>/dev/null || true
  echo "switchboard --hook-per-receiver $C --hook-workers $C: $out"
  HOOKS+=("$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["per_second"])' "$out")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
MW=$(median "${WRK[@]}")
MH=$(median "${HOOKS[@]}")
echo "median: wrk $MW requests/s, switchboard $MH deliveries/s, ratio $(python3 -c "print(round($MH/$MW, 2))")"

if [ -n "$MQGO" ]; then
  MN=${MQGO_MESSAGES:-5000}
  MQ_PORT=$(free_port)
  echo "## mq-go -workers $C ($MN messages)"
  taskset -c 0 "$MQGO" -port "$MQ_PORT" -workers "$C" > "$WORK/mqgo.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$MQ_PORT/dashboard/" && break; sleep 0.05; done
  python3 "$WORK/drive.py" mq-go "127.0.0.1:$MQ_PORT" "$RECEIVER" "127.0.0.1:$NGINX_PORT" "$MN"
fi
