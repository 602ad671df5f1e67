#!/usr/bin/env bash
# The HTTP/2 spike's loopback measurement (issue 29 item 3): nginx over HTTPS with HTTP/2 on,
# a 1 GiB random file, a self-signed CA; then the ignored test
# download::h2conn::tests::loopback_h2_against_http1 in each mode, with nginx's CPU time read
# around each run. nginx runs with `master_process off` so the PID started is the one that
# serves and is the one stopped. Usage: scripts/h2-spike.sh [rounds] [modes...]
set -euo pipefail
ROUNDS=${1:-8}; shift || true
MODES=${*:-h2 h1 h2 h1}
DIR=${FERRY_H2_DIR:-/tmp/ferry-h2spike}
PORT=${FERRY_H2_PORT:-18443}
CHUNK=${FERRY_H2_CHUNK:-8k}
mkdir -p "$DIR/www" "$DIR/logs"
cd "$DIR"
if [ ! -f ca.pem ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=ferry-h2-ca \
    -keyout ca.key -out ca.pem -addext basicConstraints=critical,CA:TRUE 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout srv.key -out srv.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > ext.cnf
  openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile ext.cnf -out srv.pem 2>/dev/null
fi
[ -f www/big.bin ] || head -c 1G /dev/urandom > www/big.bin
cat > nginx.conf <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $DIR/nginx.pid;
error_log $DIR/logs/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 10000;
  http2_chunk_size $CHUNK;
  server {
    listen 127.0.0.1:$PORT ssl http2;
    ssl_certificate $DIR/srv.pem;
    ssl_certificate_key $DIR/srv.key;
    ssl_protocols TLSv1.3;
    root $DIR/www;
  }
}
CONF
nginx -p "$DIR" -c "$DIR/nginx.conf" -e "$DIR/logs/error.log" &
NGINX=$!
trap 'kill $NGINX 2>/dev/null; wait $NGINX 2>/dev/null || true' EXIT
sleep 0.5
cpu() { awk '{print $14+$15}' /proc/$NGINX/stat; }
cd - >/dev/null
for mode in $MODES; do
  before=$(cpu)
  FERRY_H2_URL="https://127.0.0.1:$PORT/big.bin" FERRY_H2_CA="$DIR/ca.pem" \
  FERRY_H2_FILE="$DIR/www/big.bin" FERRY_H2_MODE=$mode FERRY_H2_ROUNDS=$ROUNDS \
    ${FERRY_H2_TEST_BIN:?build with: cargo test -p ferry --release --lib --no-run} \
    --ignored --exact download::h2conn::tests::loopback_h2_against_http1 --nocapture 2>&1 \
    | grep RESULT | tr -d '\n'
  echo " nginx_cpu_s=$(echo "($(cpu) - $before)/100" | bc -l | cut -c1-5)"
done
