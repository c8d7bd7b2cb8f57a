#!/usr/bin/env bash
# The main job on embedded defaults, no servers needed: record a program
# under ptrace into a .kpl log, inspect the log, replay it deterministically
# (on a machine where its inputs no longer exist), stop a replay at an event.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
bash scripts/setup.sh
cargo build --release -p kprobe -p fixtures
FIX="$(ls -td "$CARGO_TARGET_DIR"/release/build/fixtures-*/out | head -1)"
out="${DEMO_DIR:-$(mktemp -d)}"
cd "$out"
printf 'ACME,1250.00\nGLOBEX,-310.50\nINITECH,88.10\n' > balances.csv
mkdir -p exports && touch exports/batch-1.csv exports/batch-2.csv

echo "== kprobe record: a payment client/server pair over loopback TCP (fork, sockets, signals)"
"$KPROBE_BIN" record -o "$out/payments.kpl" -- "$FIX/tcp_pair"
echo "== kprobe record: a program reading a ledger file, mmap, getdents, writing a report"
"$KPROBE_BIN" record -o "$out/files.kpl" -- "$FIX/files" balances.csv report.txt exports

echo "== kprobe log info"
"$KPROBE_BIN" log info "$out/payments.kpl"
echo "== kprobe log dump (syscalls of the server)"
"$KPROBE_BIN" log dump "$out/payments.kpl" --kind syscall | grep -E 'socket|bind|listen|accept|recvfrom|sendto|wait4' | head -12

echo "== the world changes: the input file and directory are deleted"
rm -rf balances.csv exports report.txt
echo "== kprobe replay (served from the log; nothing real is read or written)"
"$KPROBE_BIN" replay "$out/files.kpl"
test ! -e report.txt && echo "(report.txt was not written by the replay)"
"$KPROBE_BIN" replay "$out/payments.kpl"
echo "== kprobe replay --until-event 120 (stop and say where)"
"$KPROBE_BIN" replay "$out/payments.kpl" --until-event 120 --quiet
echo "== kprobe log verify"
"$KPROBE_BIN" log verify "$out/payments.kpl"
