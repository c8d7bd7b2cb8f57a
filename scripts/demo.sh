#!/usr/bin/env bash
# The main job on embedded defaults, no servers needed.
# Today: write a realistic synthetic log, inspect it, check it, read it back.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
bash scripts/setup.sh
cargo build --release --bin kprobe
out="${DEMO_DIR:-$(mktemp -d)}"
echo "== kprobe bench log: 200,000 events of a payment service, next to JSON+zstd"
"$KPROBE_BIN" bench log --events 200000 --baseline-events 50000 --seeks 500 -o "$out/demo.kpl"
echo "== kprobe log info"
"$KPROBE_BIN" log info "$out/demo.kpl"
echo "== kprobe log dump --from 1000 --count 15"
"$KPROBE_BIN" log dump "$out/demo.kpl" --from 1000 --count 15
echo "== kprobe log verify"
"$KPROBE_BIN" log verify "$out/demo.kpl"
