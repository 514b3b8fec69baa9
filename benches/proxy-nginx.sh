# Sourced by the proxy benches: the nginx configuration they share, and
# where the servers reach their workers (TCP, or Unix sockets with IPC=1).

nginx_conf() {  # DIR BODY...: a one-worker nginx with the given http{} body
  local dir=$1; shift
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1;
pid $dir/nginx.pid; error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/b; proxy_temp_path $dir/p; fastcgi_temp_path $dir/f;
  uwsgi_temp_path $dir/u; scgi_temp_path $dir/s;
  $*
}
EOF
}

# line_door PORT: sets LINE_ARGS (the server's line door) and LINE_ADDR (what
# handlers connect to): loopback TCP on PORT, or a Unix socket with IPC=1.
line_door() {
  if [ "${IPC:-0}" = 1 ]; then
    rm -f "$TMP/line.sock"
    LINE_ARGS=(--line-listen off --line-unix "$TMP/line.sock"); LINE_ADDR=$TMP/line.sock
  else
    LINE_ARGS=(--line-listen "127.0.0.1:$1"); LINE_ADDR=127.0.0.1:$1
  fi
}
# uwsgi_socket PORT: where uwsgi listens and nginx connects.
uwsgi_socket() {
  if [ "${IPC:-0}" = 1 ]; then UW_LISTEN=$TMP/uwsgi.sock; UW_UPSTREAM=unix:$TMP/uwsgi.sock
  else UW_LISTEN=127.0.0.1:$1; UW_UPSTREAM=127.0.0.1:$1; fi
}
