#!/usr/bin/env bash
# ferry's main job, end to end on loopback: builds ferry in release, generates a synthetic model
# repo (safetensors-like shards plus config and tokenizer files) in the huggingface_hub cache
# layout, serves it with `ferry serve`, mirrors it with `ferry pull` into a fresh cache (every
# file verified), shows the summary, pulls once more (only the listing), loads the mirror with
# the real huggingface_hub offline, and stops the server (also on failure).
# Usage: scripts/demo.sh [SHARDS] [SHARD_MIB]   (default 4 shards of 256 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

shards=${1:-4}
shard_mib=${2:-256}
cargo build --release --locked --quiet -p ferry
ferry=$PWD/target/release/ferry

work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-demo.XXXXXX")
serve_pid=""
cleanup() {
  if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "demo: generating org/demo-model: $shards shards of $shard_mib MiB plus config and tokenizer"
commit=$(python3 scripts/synth-repo.py "$work/origin" org/demo-model --shards "$shards" --shard-mib "$shard_mib")

"$ferry" serve --root "$work/origin" --addr 127.0.0.1:0 > "$work/serve.out" 2> "$work/serve.err" &
serve_pid=$!
endpoint=""
for _ in $(seq 200); do
  endpoint=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$work/serve.out" 2>/dev/null | head -n 1 || true)
  [ -n "$endpoint" ] && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.err" >&2; exit 1; }
  sleep 0.05
done
[ -n "$endpoint" ] || { echo "demo: ferry serve did not start" >&2; cat "$work/serve.err" >&2; exit 1; }
echo "demo: ferry serve is the Hub at $endpoint"

echo "demo: ferry pull org/demo-model --endpoint $endpoint --cache-dir CACHE"
"$ferry" pull org/demo-model --endpoint "$endpoint" --cache-dir "$work/cache"
echo "demo: again (a complete mirror: only the listing)"
"$ferry" pull org/demo-model --endpoint "$endpoint" --cache-dir "$work/cache"

snap="$work/cache/models--org--demo-model/snapshots/$commit"
for f in "$work"/origin/models--org--demo-model/snapshots/"$commit"/*; do
  cmp -s "$f" "$snap/$(basename "$f")" || { echo "demo: FAILED: $(basename "$f") differs" >&2; exit 1; }
done
echo "demo: every file is byte-identical to the origin"
HF_HUB_OFFLINE=1 HF_HUB_CACHE="$work/cache" python3 -c "
from huggingface_hub import snapshot_download
import os
path = snapshot_download('org/demo-model')
print('demo: huggingface_hub (offline) loads', len(os.listdir(path)), 'files from', path)
"
