# Shared settings for the project's scripts (sourced, not run).
# Builds are cached outside the clone so a fresh clone reuses them; they also
# build from nothing.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kprobe-target}"
export KPROBE_BIN="$CARGO_TARGET_DIR/release/kprobe"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT
