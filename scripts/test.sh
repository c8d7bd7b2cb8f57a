#!/usr/bin/env bash
# Sets up this machine and runs every test of the workspace (as root: the
# tracer and recorder tests use ptrace and eBPF for real).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
bash scripts/setup.sh
cargo build --release --workspace --all-targets
# Servers the tests use (Kafka, the Bolt graph server); stopped on exit if started here.
if ! bash scripts/services.sh status | grep -q "kafka: up" || ! bash scripts/services.sh status | grep -q "bolt: up"; then
    bash scripts/services.sh start
    trap 'bash scripts/services.sh stop' EXIT
fi
eval "$(bash scripts/services.sh env)"
cargo test --release --workspace -- --test-threads=2 "$@"
