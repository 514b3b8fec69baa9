#!/usr/bin/env bash
# What an idle TLS connection costs the server in memory: the server's
# VmRSS before and after 1,000 line-protocol subscribers (flood-sub, each
# subscribed and confirmed, then idle) on the plain line door and on the
# TLS line door, each on a fresh server that has both doors, two runs of
# each. The certificates (a CA and a P-256 server certificate for
# localhost) are made with openssl in target/tls-memory/.
#
# usage: benches/tls-memory.sh [SWITCHBOARD_BINARY]
#
# Builds the release binaries first (the server too, unless one is given).
# With taskset, the server runs on CPU 0 and flood-sub on CPU 1.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -gt 1 ]; then
  echo "usage: $0 [SWITCHBOARD_BINARY]" >&2
  exit 2
fi
cargo build --release -q -p loadtest --bin flood-sub
if [ $# -eq 1 ]; then
  SB=$1
else
  cargo build --release -q -p switchboard --bin switchboard
  SB=target/release/switchboard
fi
FS=target/release/flood-sub
N=1000
ulimit -n "$(ulimit -Hn)"

WORK=target/tls-memory
mkdir -p "$WORK"
. benches/lib.sh
pin_when_possible

# The certificates, as docs/tls.md makes them.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$WORK/ca.key" -out "$WORK/ca.pem" -days 30 -subj /CN=test-ca 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$WORK/server.key" -out "$WORK/server.csr" -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$WORK/san.ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 30 -extfile "$WORK/san.ext" -out "$WORK/server.pem" 2>/dev/null

echo "== server VmRSS for $N idle line subscribers, plain and TLS"
for run in 1 2; do
  for door in line line-tls; do
    start_server --line-listen 127.0.0.1:0 --bus-listen off --line-tls-listen 127.0.0.1:0 \
      --bus-tls-listen off --tls-cert "$WORK/server.pem" --tls-key "$WORK/server.key" \
      --log-level warn
    tls=()
    [ "$door" = line-tls ] && tls=(--tls --ca "$WORK/ca.pem" --server-name localhost)
    before=$(kib "$SB_PID" VmRSS)
    start_sub --proto line -p "${PORT[$door]}" "${tls[@]}" -c idle --connections "$N"
    after=$(kib "$SB_PID" VmRSS)
    kill -INT "$SUB_PID"
    finish_sub
    echo "run $run $door: $READY; rss_before_kb $before rss_after_kb $after" \
      "bytes_per_conn $(((after - before) * 1024 / N))"
    stop_server
  done
done
