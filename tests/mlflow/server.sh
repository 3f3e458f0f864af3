#!/usr/bin/env bash
# Start or stop a local MLflow tracking server for the tracking tests (trainer/tests/it/tracking.rs).
#
#   tests/mlflow/server.sh start   # prints the endpoint, e.g. http://127.0.0.1:43817
#   tests/mlflow/server.sh stop
#
# `start` creates tests/mlflow/.venv (once) with the pinned mlflow from PyPI, picks a free loopback
# port, starts `mlflow server` in the background on a fresh SQLite store and artifact directory
# (proxied artifacts, as `mlflow server` serves them by default), waits until it answers, and prints
# the endpoint (state, pid and log in tests/mlflow/.server). The test command exports it:
#   export OXTUNE_MLFLOW_ENDPOINT=$(tests/mlflow/server.sh start)
set -euo pipefail

MLFLOW_VERSION="3.18.0"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
STATE="$HERE/.server"
PYTHON="${PYTHON:-python3}"

log() { echo "mlflow/server.sh: $*" >&2; }

install() {
    if [ -x "$VENV/bin/mlflow" ] && "$VENV/bin/python" -c "import mlflow,sys; sys.exit(mlflow.__version__ != '$MLFLOW_VERSION')" 2>/dev/null; then
        return
    fi
    log "creating $VENV with mlflow==$MLFLOW_VERSION"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "mlflow==$MLFLOW_VERSION" >&2
}

start() {
    install
    if [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
        cat "$STATE/endpoint"
        return
    fi
    rm -rf "$STATE"
    mkdir -p "$STATE/artifacts"
    local port endpoint
    port="$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    endpoint="http://127.0.0.1:$port"
    # setsid: the server (and its workers) get their own process group so `stop` ends exactly them.
    setsid "$VENV/bin/mlflow" server --host 127.0.0.1 --port "$port" --workers 1 \
        --backend-store-uri "sqlite:///$STATE/mlflow.db" --artifacts-destination "$STATE/artifacts" \
        >"$STATE/server.log" 2>&1 < /dev/null &
    echo $! >"$STATE/pid"
    for _ in $(seq 1 300); do
        if "$VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('$endpoint/health', timeout=1)" 2>/dev/null; then
            echo "$endpoint" >"$STATE/endpoint"
            log "mlflow server $MLFLOW_VERSION listening on $endpoint (pid $(cat "$STATE/pid"))"
            echo "$endpoint"
            return
        fi
        if ! kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
            log "mlflow server exited; log:"; cat "$STATE/server.log" >&2; exit 1
        fi
        sleep 0.2
    done
    log "mlflow server did not answer on $endpoint within 60 s; log:"; cat "$STATE/server.log" >&2
    stop; exit 1
}

stop() {
    if [ -f "$STATE/pid" ]; then
        local pid; pid="$(cat "$STATE/pid")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL -- "-$pid" 2>/dev/null || true
            log "stopped mlflow server (pid $pid)"
        fi
        rm -f "$STATE/pid" "$STATE/endpoint"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    install) install ;;
    *) echo "usage: $0 start|stop|install" >&2; exit 2 ;;
esac
