#!/usr/bin/env bash
# Builds the ferry crate as a program embedding it would: a new project outside the workspace
# with `ferry = { path = ... }`, so Cargo resolves the newest compatible dependencies instead of
# the workspace's Cargo.lock, with warnings as errors. A deprecation that the next
# `cargo update` would bring shows up here before a consumer sees it.
# Usage: scripts/consumer-build.sh   (scripts/test.sh runs it)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
consumer="$repo/target/consumer"
mkdir -p "$consumer/src"
cat > "$consumer/Cargo.toml" <<TOML
[package]
name = "ferry-consumer"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
# The library alone: the command's dependencies (clap, indicatif, ...) stay out.
ferry = { path = "$repo/engine", default-features = false }

# Not a member of the repository's workspace.
[workspace]
TOML
cat > "$consumer/src/main.rs" <<'RS'
//! A program embedding ferry: a pull into a cache, only through the public API.
use ferry::hub::{Layout, Pull, PullOptions, RepoId, env};
use ferry::{Config, Engine};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::new(Config::default())?;
    // The huggingface_hub conventions, as the command has them (HF_ENDPOINT, HF_HUB_CACHE, ...).
    let endpoint = env::endpoint(Some("http://127.0.0.1:9".into()));
    let cache = env::cache_dir(Some(std::env::temp_dir().join("ferry-consumer-cache")))?;
    let options = PullOptions::new(RepoId::parse("org/model")?, Layout::Cache(cache), endpoint.parse()?);
    if std::env::args().any(|a| a == "--run") {
        Pull::start(&engine, options)?.finish()?;
    }
    Ok(())
}
RS
# A fresh resolution every time: no lock file is kept.
rm -f "$consumer/Cargo.lock"
cd "$consumer"
RUSTFLAGS="-D warnings" CARGO_TARGET_DIR="$consumer/target" cargo build --quiet
echo "consumer build: ferry builds warning-free against the newest compatible dependencies"
