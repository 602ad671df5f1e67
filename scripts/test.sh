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
echo "== cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
echo "== build binaries (the integration tests run them)"
cargo build --workspace --bins --locked
echo "== probe (what the tests will run on)"
./target/debug/ferry probe --dir "${TMPDIR:-/tmp}" | tail -n 1
echo "== cargo test"
cargo test --workspace --locked
