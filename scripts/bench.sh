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
scripts/setup.sh --bench

cargo build --release --locked --workspace --bins
FERRY_BIN="$PWD/target/release/ferry" exec ./target/release/ferry-bench --out bench "$@"
