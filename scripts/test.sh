#!/usr/bin/env bash
# Sets up this machine and runs every test of the workspace (as root: the
# tracer and recorder tests use ptrace and eBPF for real).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
bash scripts/setup.sh
cargo build --release --workspace --all-targets
cargo test --release --workspace -- --test-threads=2 "$@"
