#!/usr/bin/env bash
# Fuzzes ferry's parsers of untrusted bytes with cargo fuzz (libFuzzer, nightly), each target
# for SECONDS (default 600), two at a time, adding what it finds to the committed corpora in
# fuzz/corpus/. A crash stops with the input under fuzz/artifacts/TARGET/. The corpora are
# replayed on stable in every test run (`ferry::fuzzing`'s test), so this is only for finding
# new inputs.
#
#   scripts/fuzz.sh              # every target, 10 minutes each
#   scripts/fuzz.sh 60 chunked   # one target, one minute
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(response_head chunked ranges listing journal playlist)
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd fuzz
cargo +nightly fuzz build
run() {
    local t=$1
    mkdir -p "corpus/$t"
    cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 > "/tmp/fuzz-$t.log" 2>&1
    echo "$t: $(grep -E '^stat::number_of_executed_units' "/tmp/fuzz-$t.log" | awk '{print $2}') runs, no crash in ${seconds} s"
}
pids=()
for t in "${targets[@]}"; do
    run "$t" &
    pids+=($!)
    if [ ${#pids[@]} -ge 2 ]; then
        wait "${pids[0]}"
        pids=("${pids[@]:1}")
    fi
done
for p in "${pids[@]}"; do wait "$p"; done
# Keep the corpora small: only inputs that add coverage.
for t in "${targets[@]}"; do
    cargo +nightly fuzz cmin "$t" "corpus/$t" > /dev/null 2>&1 || true
done
