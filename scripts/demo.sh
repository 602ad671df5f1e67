#!/usr/bin/env bash
# The main job on an embedded default: builds ferry in release, generates a 1 GiB file of seeded
# random bytes, serves it from nginx on loopback, downloads it with `ferry get`, checks it
# byte for byte, prints the summary, and stops nginx (also on failure).
# Usage: scripts/demo.sh [SIZE_MIB]   (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

size_mib=${1:-1024}
cargo build --release --locked --quiet -p ferry
ferry=$PWD/target/release/ferry

work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-demo.XXXXXX")
nginx_pid=""
cleanup() {
  if [ -n "$nginx_pid" ]; then kill "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

mkdir -p "$work/www" "$work/out"
echo "demo: generating ${size_mib} MiB of seeded random bytes"
# AES-CTR keystream from a fixed key: deterministic, incompressible, fast.
head -c $((size_mib * 1024 * 1024)) /dev/zero \
  | openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f -iv 00000000000000000000000000000000 > "$work/www/model.bin"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
user_line=""; [ "$(id -u)" -eq 0 ] && user_line="user root root;"
cat > "$work/nginx.conf" <<CONF
$user_line
worker_processes 2;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 1024; }
http {
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  client_body_temp_path $work/body; proxy_temp_path $work/proxy; fastcgi_temp_path $work/fcgi;
  uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
  server { listen 127.0.0.1:$port; location / { root $work/www; } }
}
CONF
/usr/sbin/nginx -p "$work" -c "$work/nginx.conf" -e "$work/error.log" &
nginx_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done

echo "demo: ferry get http://127.0.0.1:$port/model.bin"
"$ferry" get "http://127.0.0.1:$port/model.bin" -o "$work/out/model.bin"
if cmp -s "$work/www/model.bin" "$work/out/model.bin"; then
  echo "demo: verified: the download is byte-identical to the source"
else
  echo "demo: FAILED: the download differs from the source" >&2
  exit 1
fi
