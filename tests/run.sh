#!/usr/bin/env bash
# The project's test command (the README's second command; CI runs it via .ci/run).
# CPU only: builds the workspace and runs every test. Test helpers that need a server
# (moto, for the launcher's AWS tests) are installed into a venv, started on loopback
# here and stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== toolchain: $(cargo --version), $(rustc --version)"
if [ -f tests/launcher/moto.sh ]; then
  trap 'bash tests/launcher/moto.sh stop' EXIT
  OXTUNE_MOTO_ENDPOINT="$(bash tests/launcher/moto.sh start)"
  export OXTUNE_MOTO_ENDPOINT
  echo "== moto server at $OXTUNE_MOTO_ENDPOINT"
fi

echo "== formatting"
cargo fmt --all -- --check

echo "== tests"
cargo test --workspace --no-fail-fast "$@"
