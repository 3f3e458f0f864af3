#!/usr/bin/env bash
# Start or stop a local moto_server for the launcher's emulator tests.
#
#   tests/launcher/moto.sh start   # prints the endpoint, e.g. http://127.0.0.1:43817
#   tests/launcher/moto.sh stop
#   tests/launcher/moto.sh endpoint  # prints the endpoint of the running server
#
# `start` creates tests/launcher/.venv (once), installs the pinned moto with its
# server extra from PyPI, picks a free loopback port, starts `moto_server` in the
# background, waits until it answers, and writes the endpoint to
# tests/launcher/.moto-endpoint and .moto/endpoint (pid in .moto/pid, log in .moto/server.log).
# The caller exports it for cargo:  export OXTUNE_MOTO_ENDPOINT=$(tests/launcher/moto.sh start)
set -euo pipefail

MOTO_VERSION="5.2.1"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
STATE="$HERE/.moto"
PYTHON="${PYTHON:-python3}"

log() { echo "moto.sh: $*" >&2; }

install() {
    if [ -x "$VENV/bin/moto_server" ] && "$VENV/bin/python" -c "import moto,sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
        return
    fi
    log "creating $VENV with moto[server]==$MOTO_VERSION"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
}

free_port() {
    "$VENV/bin/python" - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

start() {
    install
    mkdir -p "$STATE"
    if [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
        cat "$STATE/endpoint"
        return
    fi
    local port endpoint
    port="$(free_port)"
    endpoint="http://127.0.0.1:$port"
    # setsid: the server gets its own process group so `stop` ends exactly it.
    setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$STATE/server.log" 2>&1 < /dev/null &
    echo $! >"$STATE/pid"
    for _ in $(seq 1 100); do
        if "$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('$endpoint/moto-api/data.json', timeout=1)" 2>/dev/null; then
            echo "$endpoint" >"$STATE/endpoint"
            echo "$endpoint" >"$HERE/.moto-endpoint"
            log "moto_server $MOTO_VERSION listening on $endpoint (pid $(cat "$STATE/pid"))"
            echo "$endpoint"
            return
        fi
        if ! kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
            log "moto_server exited; log:"; cat "$STATE/server.log" >&2; exit 1
        fi
        sleep 0.2
    done
    log "moto_server did not answer on $endpoint within 20 s; log:"; cat "$STATE/server.log" >&2
    stop; exit 1
}

stop() {
    if [ -f "$STATE/pid" ]; then
        local pid; pid="$(cat "$STATE/pid")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
            log "stopped moto_server (pid $pid)"
        fi
        rm -f "$STATE/pid" "$STATE/endpoint" "$HERE/.moto-endpoint"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    endpoint) cat "$STATE/endpoint" ;;
    install) install ;;
    *) echo "usage: $0 start|stop|endpoint|install" >&2; exit 2 ;;
esac
