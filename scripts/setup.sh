#!/usr/bin/env bash
# Installs what ferry's build, tests and demo need on a fresh Debian machine, and nothing when it
# is all there already. Safe to run repeatedly.
#   nginx        the real origin the integration tests and the demo download from
#   pkg-config, libhwloc-dev, libudev-dev   for the optional hwloc NUMA path (DESIGN.md)
#   util-linux   setpriv, to run a test as an unprivileged user
#   curl, time   the peer and the CPU/RSS meter of the benchmark harness
#   openssl      the demo's seeded data generator
set -euo pipefail

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
dpkg -s libhwloc-dev >/dev/null 2>&1 || need+=(libhwloc-dev)
dpkg -s libudev-dev >/dev/null 2>&1 || need+=(libudev-dev)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v curl >/dev/null 2>&1 || need+=(curl)
[ -x /usr/bin/time ] || need+=(time)
command -v openssl >/dev/null 2>&1 || need+=(openssl)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; this machine kind ships a Rust toolchain (rustup)" >&2
  exit 1
fi
