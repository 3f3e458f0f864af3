#!/usr/bin/env bash
# Runs the image's entrypoint the way `docker run -v ML:/opt/ml IMAGE ARGS...` runs it, without Docker
# (CI has no container engine): in fresh user, mount and PID namespaces, so the first process is
# PID 1 and every exec after it (entrypoint -> train) stays PID 1; with the job tree mounted at the
# real /opt/ml, train and the entrypoint at the paths the Dockerfile puts them, and only the
# environment given with --env (docker's and the image's variables plus what SageMaker sets).
#
#   run-as-container.sh --ml DIR --train BIN --train-at PATH --entrypoint SCRIPT --entrypoint-at PATH \
#       [--driver-version V] [--compat-version V] [--env NAME=VALUE]... -- ARGS...
#
# --driver-version fakes the host driver in /proc/driver/nvidia/version; --compat-version puts an
# (empty) forward-compatibility libcuda.so.V in /usr/local/cuda/compat, for the entrypoint's check.
# The exit status is train's. Used by trainer/tests/container.rs.
set -euo pipefail

if [ "${1:-}" != "--inside" ]; then
    if ! command -v unshare > /dev/null; then
        echo "run-as-container.sh: unshare (util-linux) is required to run train as PID 1 in its own namespaces" >&2
        exit 125
    fi
    # --kill-child: if this wrapper dies (a test timed out), the whole namespace goes with it.
    exec unshare --user --map-root-user --mount --pid --fork --mount-proc --kill-child "$BASH" "$0" --inside "$@"
fi
shift

ml="" train="" train_at="" entry="" entry_at="" driver="" compat=""
envs=()
while [ $# -gt 0 ]; do
    case "$1" in
        --ml) ml="$2"; shift 2 ;;
        --train) train="$2"; shift 2 ;;
        --train-at) train_at="$2"; shift 2 ;;
        --entrypoint) entry="$2"; shift 2 ;;
        --entrypoint-at) entry_at="$2"; shift 2 ;;
        --driver-version) driver="$2"; shift 2 ;;
        --compat-version) compat="$2"; shift 2 ;;
        --env) envs+=("$2"); shift 2 ;;
        --) shift; break ;;
        *) echo "run-as-container.sh: unknown option $1" >&2; exit 125 ;;
    esac
done
for v in ml train train_at entry entry_at; do
    [ -n "${!v}" ] || { echo "run-as-container.sh: --${v//_/-} is required" >&2; exit 125; }
done
case "$train_at$entry_at" in
    /usr/local/*/usr/local/*) ;;
    *) echo "run-as-container.sh: the image paths must be under /usr/local (got $train_at, $entry_at)" >&2; exit 125 ;;
esac

# Private copies of /usr/local and /opt inside this mount namespace; the host's stay untouched.
mount -t tmpfs tmpfs /usr/local
mount -t tmpfs tmpfs /opt
mkdir -p /opt/ml "$(dirname "$train_at")" "$(dirname "$entry_at")"
mount --bind "$ml" /opt/ml
touch "$train_at"
mount --bind "$train" "$train_at"
cp "$entry" "$entry_at"
chmod 0755 "$entry_at"
if [ -n "$compat" ]; then
    mkdir -p /usr/local/cuda/compat
    touch "/usr/local/cuda/compat/libcuda.so.$compat"
    ln -s "libcuda.so.$compat" /usr/local/cuda/compat/libcuda.so.1
fi
if [ -n "$driver" ]; then
    mount -t tmpfs tmpfs /proc/driver
    mkdir -p /proc/driver/nvidia
    echo "NVRM version: NVIDIA UNIX x86_64 Kernel Module  $driver  Thu Jan  1 00:00:00 UTC 2026" > /proc/driver/nvidia/version
fi
cd /

exec env -i "${envs[@]}" "$entry_at" "$@"
