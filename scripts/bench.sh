#!/usr/bin/env bash
# Runs the benchmark of ../shared/BENCH.md: ferry against curl, wget, aria2c, axel and
# hf_transfer, interleaved, on seeded data served by nginx on loopback, with the ceilings
# (network, O_DIRECT disk, sha256) measured in the same run. Writes bench/RESULTS.md,
# bench/results.json and bench/results.svg.
#
#   scripts/bench.sh                       # every suite (big, repo, small), 5 runs each, fresh
#   scripts/bench.sh --suites big --runs 7 --state steady
#   scripts/bench.sh --big 1G --shard 256M --runs 2   # a quick look
#
# Needs ~3x the largest suite in free disk under --dir (default: the system temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

need=()
command -v wget >/dev/null 2>&1 || need+=(wget)
command -v aria2c >/dev/null 2>&1 || need+=(aria2)
command -v axel >/dev/null 2>&1 || need+=(axel)
command -v fio >/dev/null 2>&1 || need+=(fio)
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
python3 -c 'import hf_transfer' 2>/dev/null || python3 -m pip install -q hf_transfer

cargo build --release --locked --workspace --bins
FERRY_BIN="$PWD/target/release/ferry" exec ./target/release/ferry-bench --out bench "$@"
