#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy, docs, and every test on both back-ends.
# Installs what it needs first (scripts/setup.sh). Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== feature combinations of the ferry crate (none: the library without the command; all: cli + fuzzing)"
cargo clippy -p ferry --lib --locked --quiet --no-default-features -- -D warnings
cargo clippy -p ferry --lib --locked --quiet --all-features -- -D warnings
echo "== the ferry crate as a consumer builds it (fresh resolution, outside the lock)"
scripts/consumer-build.sh
echo "== cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
echo "== build binaries (the integration tests run them)"
cargo build --workspace --bins --locked
echo "== probe (what the tests will run on)"
./target/debug/ferry probe --dir "${TMPDIR:-/tmp}" | tail -n 1
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The fault tests record their trials here; target/RELIABILITY.md is written from them.
rm -rf target/reliability
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -eq 0 ]; then
    # Written under target/, not over the tracked tests/RELIABILITY.md: a test run changes no
    # file of the repository. Record it on purpose: cp target/RELIABILITY.md tests/
    echo "== target/RELIABILITY.md from the fault tests' record (cp it to tests/ to record it)"
    cargo run --quiet --locked -p ferry-testkit --bin reliability -- target/RELIABILITY.md || status=1
fi
# One closing line for the whole run: the sum over every test binary and doctest group.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "total: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
