# Shell functions shared by the measurement scripts in benches/ (sourced,
# not run). They start servers on port 0 and read the addresses they print,
# and wait for flood-sub's `ready:` line: never for a fixed time.
#
# Expects SB (the server binary), FS (flood-sub) and WORK (a directory for
# outputs); PIN_SERVER and PIN_TOOLS (arrays, possibly empty) prefix the
# server's and the tools' command lines.

# A field of /proc/PID/status, in KiB: kib PID VmRSS
kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# Starts the server with "$@" and waits until it has printed every door it
# opens; sets SB_PID and PORT[door] for each door (line, bus, line-tls, ...).
declare -A PORT
start_server() {
  exec {SB_OUT}< <(exec "${PIN_SERVER[@]}" "$SB" "$@")
  SB_PID=$!
  PORT=()
  local l
  # The doors are printed together, then the server goes quiet on stdout:
  # read until the last door's line (a listen flag per door in "$@").
  local want=0 a
  for a in "$@"; do
    case $a in --line-listen | --bus-listen | --line-tls-listen | --bus-tls-listen | --line-unix) want=$((want + 1)) ;; esac
  done
  for a in "$@"; do [ "$a" = off ] && want=$((want - 1)); done
  while [ "${#PORT[@]}" -lt "$want" ]; do
    if ! IFS= read -r -u "$SB_OUT" l; then
      echo "switchboard exited before it printed its doors" >&2
      exit 1
    fi
    case $l in
      "listening "*)
        l=${l#listening }
        PORT[${l%% *}]=${l##*:}
        ;;
    esac
  done
}

# SIGINT, then waits for the exit (status 0, or the script fails).
stop_server() {
  kill -INT "$SB_PID"
  wait "$SB_PID"
  exec {SB_OUT}<&-
}

# Starts flood-sub with "$@" (its JSON summary goes to $WORK/sub.json) and
# returns once it says its connections are subscribed; sets SUB_PID and
# READY ("S of N connections subscribed (F failed)").
start_sub() {
  exec {SUB_ERR}< <(exec "${PIN_TOOLS[@]}" "$FS" --json --interval 3600 "$@" \
    2>&1 >"$WORK/sub.json")
  SUB_PID=$!
  local l
  while IFS= read -r -u "$SUB_ERR" l; do
    case $l in
      *"ready:"*)
        READY=${l#*ready: }
        READY=${READY% in *}
        return 0
        ;;
    esac
  done
  echo "flood-sub ended before it was ready" >&2
  exit 1
}

# Waits for flood-sub's end; the script fails if flood-sub failed.
finish_sub() {
  local rc=0
  wait "$SUB_PID" || rc=$?
  exec {SUB_ERR}<&-
  if [ "$rc" != 0 ]; then
    echo "flood-sub failed (exit $rc): $(cat "$WORK/sub.json")" >&2
    exit 1
  fi
}

# A field of flood-sub's JSON summary: field received
field() {
  python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1" <"$WORK/sub.json"
}

# Pins the server to CPU 0 and the tools to CPU 1 when taskset exists.
pin_when_possible() {
  PIN_SERVER=() PIN_TOOLS=()
  if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_SERVER=(taskset -c 0) PIN_TOOLS=(taskset -c 1)
  fi
}
