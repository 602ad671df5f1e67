#!/usr/bin/env bash
# Runs the benchmark of bench/README.md: ferry against curl, wget, aria2c, axel and
# hf_transfer, interleaved, on seeded data served by nginx on loopback; and (suite `pull`)
# `ferry pull` against huggingface_hub's snapshot_download(max_workers=16), both mirroring a
# synthetic model repo (scripts/synth-repo.py) from `ferry serve`, plus a second `ferry pull` of
# the complete mirror; and (suite `https`) the `big` file from nginx over HTTPS only (TLS 1.3, a
# throwaway CA made with openssl each run, trusted explicitly by every tool). The ceilings
# (network, over TLS for `https`; O_DIRECT disk; sha256) are measured in the same run.
# Writes bench/RESULTS.md, bench/results.json and bench/results.svg, merged by suite: the suites
# run now replace their earlier figures, the others keep theirs, and each says which run it
# comes from; every run also gets its own copy under bench/runs/DATE-SUITES/.
#
#   scripts/bench.sh                   # every suite (big, https, repo, small, pull), 5 runs each, fresh
#   scripts/bench.sh --suites pull         # issue 4: 4 x 2 GiB shards + 200 small files
#   scripts/bench.sh --suites https        # the 8 GiB file over HTTPS (TLS 1.3)
#   scripts/bench.sh --suites https --big 512M --runs 2 --out /tmp/bench   # a quick look, elsewhere
#   scripts/bench.sh --suites big --runs 7 --state steady
#   scripts/bench.sh --big 1G --shard 256M --runs 2   # a quick look
#   scripts/bench.sh --suites wan-all      # every WAN path and scenario (bench/README.md)
#   scripts/bench.sh --suites mirror       # issue 31: N clients through a cold ferry serve --upstream
#
# Needs ~3x the largest suite in free disk under --dir (default: the system temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --bench

cargo build --release --locked --workspace --bins
FERRY_BIN="$PWD/target/release/ferry" exec ./target/release/ferry-bench --out bench "$@"
