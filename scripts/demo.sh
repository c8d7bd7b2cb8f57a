#!/usr/bin/env bash
# The main job on embedded defaults, no servers needed (as root: eBPF,
# ptrace, SCHED_FIFO and cgroups run for real):
#  1. a real incident: a payment gateway -> ledger pair misses its clearing
#     deadline because a CPU hog took the ledger's CPU; recorded by the eBPF
#     recorder and, for the ledger, by `kprobe record` (ptrace);
#  2. `kprobe why` explains the late payment down to the run-queue delay and
#     names the hog (pid, comm) as root cause; the cause index goes into a .kpl;
#  3. `kprobe replay --break-at-cause` replays the ledger from that .kpl and
#     stops at the syscall where the cause struck, printing the chain;
#  4. the record/replay tour: record two programs, inspect the log, delete
#     their inputs, replay them deterministically, stop at an event.
# Fails (non-zero) if any step does not show what it should.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
if [[ "$(id -u)" != 0 ]]; then
    echo "demo: run as root (the incident needs eBPF, SCHED_FIFO and cgroups; replay needs ptrace)" >&2
    exit 1
fi
bash scripts/setup.sh
cargo build --release -p kprobe -p fixtures
FIX="$(ls -td "$CARGO_TARGET_DIR"/release/build/fixtures-*/out | head -1)"
out="${DEMO_DIR:-$(mktemp -d)}"
mkdir -p "$out"
fail() { echo "demo: FAILED: $*" >&2; exit 1; }

echo "== incident (a): a CPU hog at SCHED_FIFO on the ledger's CPU while payment 6 is cleared"
bash fixtures/incidents/run.sh sched "$out/incident" --ptrace
source "$out/incident/incident.env"
echo "   (the hog was $CULPRIT_COMM, pid $CULPRIT_PID; the ledger pid $LEDGER_PID; payment $TXN was hit)"

echo "== kprobe why --all: every payment explained from the recordings and spans; cause index saved"
"$KPROBE_BIN" why --all --log "$out/incident/ledger.kpl" --log "$out/incident/kernel.kpl" \
    --spans "$out/incident/spans.json" --save-index "$out/incident.kpl"

echo "== kprobe why $TXN --log incident.kpl (from the cause index alone)"
"$KPROBE_BIN" why "$TXN" --log "$out/incident.kpl" | tee "$out/why.txt"
grep -q "sched_delay  culprit: incident_hog (pid $CULPRIT_PID," "$out/why.txt" ||
    fail "kprobe why did not name incident_hog (pid $CULPRIT_PID) as the root cause"
"$KPROBE_BIN" why "$TXN" --log "$out/incident.kpl" --format svg >"$out/why.svg"
echo "   (the same graph as SVG: $out/why.svg; --format dot for Graphviz)"

echo "== kprobe replay incident.kpl --break-at-cause $TXN"
"$KPROBE_BIN" replay "$out/incident.kpl" --break-at-cause "$TXN" --quiet 2>&1 | tee "$out/break.txt"
grep -q "stopped before event .* (task $LEDGER_PID)" "$out/break.txt" ||
    fail "the replay did not stop in the ledger (task $LEDGER_PID) where the cause struck"
grep -q "incident_hog" "$out/break.txt" || fail "the replay did not print the causal chain"

echo "== record and replay: a payment client/server pair, and a program reading a ledger file"
cd "$out"
printf 'ACME,1250.00\nGLOBEX,-310.50\nINITECH,88.10\n' > balances.csv
mkdir -p exports && touch exports/batch-1.csv exports/batch-2.csv
"$KPROBE_BIN" record -o "$out/payments.kpl" -- "$FIX/tcp_pair"
"$KPROBE_BIN" record -o "$out/files.kpl" -- "$FIX/files" balances.csv report.txt exports
echo "== kprobe log info"
"$KPROBE_BIN" log info "$out/payments.kpl"
echo "== kprobe log dump (syscalls of the server)"
"$KPROBE_BIN" log dump "$out/payments.kpl" --kind syscall | grep -E 'socket|bind|listen|accept|recvfrom|sendto|wait4' | head -12
echo "== the world changes: the input file and directory are deleted"
rm -rf balances.csv exports report.txt
echo "== kprobe replay (served from the log; nothing real is read or written)"
"$KPROBE_BIN" replay "$out/files.kpl"
test ! -e report.txt || fail "the replay wrote report.txt"
echo "(report.txt was not written by the replay)"
"$KPROBE_BIN" replay "$out/payments.kpl"
echo "== kprobe replay --until-event 45 (stop there and say where)"
"$KPROBE_BIN" replay "$out/payments.kpl" --until-event 45 --quiet 2>&1 | tee "$out/until.txt"
grep -q "stopped before event 45" "$out/until.txt" || fail "replay --until-event 45 did not stop there"
echo "== kprobe log verify"
"$KPROBE_BIN" log verify "$out/payments.kpl"
echo "== demo done: files in $out"
