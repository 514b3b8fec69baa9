# Sourced by the proxy benches: the nginx configuration they share.

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
