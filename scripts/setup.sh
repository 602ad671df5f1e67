#!/usr/bin/env bash
# Installs what ferry's build, tests and demo need on a fresh Debian machine, and nothing when it
# is all there already. Safe to run repeatedly.
#   nginx        the real origin the integration tests and the demo download from
#   pkg-config, libhwloc-dev, libudev-dev   for the optional hwloc NUMA path
#   util-linux   setpriv, to run a test as an unprivileged user; unshare and nsenter, for the
#                mount namespaces of the dual-stack and full-disk tests
#   curl, time   the peer and the CPU/RSS meter of the benchmark harness
#   openssl      the demo's seeded data generator
#   tinyproxy, microsocks   the real HTTP CONNECT and SOCKS5 proxies the proxy tests start
#   iproute2     `ip`, to bring up loopback in the network namespace the Fast Open test makes
#   caddy        a second real HTTPS origin (HTTP/1.1, HTTP/2 and HTTP/3), for the interop tests
#   ngtcp2-client   gtlsclient, ngtcp2's HTTP/3 client, downloads from `ferry serve --h3`
#   ffmpeg       makes the HLS test streams (testkit/src/hls.rs) and reads ferry's output back
#   aria2, transmission-cli, transmission-daemon, qbittorrent-nox
#                stock BitTorrent clients the torrent tests run (aria2c downloads
#                from `ferry serve`'s web seed; transmission-show reads its metainfo)
#   libtorrent (PyPI)   the stock BitTorrent library the torrent tests drive (tests/fixtures/lt_swarm.py)
#   opentracker  the stock tracker of the swarm test (whitelist mode)
#   huggingface_hub, transformers (PyPI)   the real clients the interoperability tests run
#   huggingface_hub 0.26.5 (PyPI, in target/hf-venvs/)   an old release, for the same
# With --bench, also the benchmark's peers and meters: wget, aria2, axel, fio (Debian),
# hf_transfer and yt-dlp (PyPI; `yt-dlp[default]`, its documented install, which brings
# pycryptodomex for AES-128 HLS and requests for kept-alive connections).
set -euo pipefail

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
dpkg -s libhwloc-dev >/dev/null 2>&1 || need+=(libhwloc-dev)
dpkg -s libudev-dev >/dev/null 2>&1 || need+=(libudev-dev)
for tool in setpriv unshare nsenter; do
  command -v "$tool" >/dev/null 2>&1 || need+=(util-linux)
done
command -v curl >/dev/null 2>&1 || need+=(curl)
[ -x /usr/bin/time ] || need+=(time)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
[ -x /usr/bin/tinyproxy ] || need+=(tinyproxy)
[ -x /usr/bin/microsocks ] || need+=(microsocks)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need+=(iproute2)
[ -x /usr/bin/caddy ] || need+=(caddy)
[ -x /usr/bin/gtlsclient ] || need+=(ngtcp2-client)
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v aria2c >/dev/null 2>&1 || need+=(aria2)
[ -x /usr/bin/transmission-show ] || need+=(transmission-cli)
[ -x /usr/bin/transmission-daemon ] || need+=(transmission-daemon)
[ -x /usr/bin/qbittorrent-nox ] || need+=(qbittorrent-nox)
[ -x /usr/bin/opentracker ] || need+=(opentracker)
if [ "${1:-}" = "--bench" ]; then
  command -v wget >/dev/null 2>&1 || need+=(wget)
  command -v axel >/dev/null 2>&1 || need+=(axel)
  command -v fio >/dev/null 2>&1 || need+=(fio)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "${1:-}" = "--bench" ]; then
  python3 -c 'import hf_transfer' 2>/dev/null || python3 -m pip install -q hf_transfer
  python3 -c 'import yt_dlp, Cryptodome, requests' 2>/dev/null ||
    python3 -m pip install -q "yt-dlp[default]"
fi

python3 -c 'import huggingface_hub' 2>/dev/null || python3 -m pip install -q huggingface_hub
python3 -c 'import libtorrent' 2>/dev/null || python3 -m pip install -q libtorrent
# The Prometheus project's Python client: the mirror tests parse `/metrics` with its parser.
python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install -q prometheus_client
# An old huggingface_hub (0.26, before 1.18: it resumes any BLOB.incomplete from its size) in a
# virtualenv of its own: the hardening tests check it never adopts a partial file of ferry's.
hf_old="$(cd "$(dirname "$0")/.." && pwd)/target/hf-venvs/huggingface_hub-0.26.5"
if [ ! -x "$hf_old/bin/python" ] || ! "$hf_old/bin/python" -c 'import huggingface_hub' 2>/dev/null; then
  python3 -m venv "$hf_old"
  "$hf_old/bin/python" -m pip install -q huggingface_hub==0.26.5
fi
# transformers (with tokenizers, safetensors, numpy; no torch): a test loads a pulled model
# offline through it.
python3 -c 'import transformers, tokenizers, safetensors, numpy' 2>/dev/null ||
  python3 -m pip install -q transformers

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; this machine kind ships a Rust toolchain (rustup)" >&2
  exit 1
fi
