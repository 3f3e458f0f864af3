#!/usr/bin/env bash
# The project's test command (the README's second command; CI runs it via .ci/run).
# CPU only: builds the workspace and runs every test. Test helpers that need a server
# (moto, for the launcher's AWS tests) are installed into a venv, started on loopback
# here and stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== toolchain: $(cargo --version), $(rustc --version)"
# A one-off build gains nothing from incremental caches, which cost gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "== disk free before: $(df -h . | awk 'NR==2 {print $4}')"
if [ -f tests/launcher/moto.sh ]; then
  trap 'bash tests/launcher/moto.sh stop' EXIT
  OXTUNE_MOTO_ENDPOINT="$(bash tests/launcher/moto.sh start)"
  export OXTUNE_MOTO_ENDPOINT
  echo "== moto server at $OXTUNE_MOTO_ENDPOINT"
fi

echo "== formatting"
cargo fmt --all -- --check

echo "== container: Dockerfile and script lint"
bash tests/container/lint.sh

# The container contract test (trainer/tests/container.rs) runs the release binary, as the image does.
echo "== release train for the container contract test"
cargo build --release -p trainer --bin train
OXTUNE_RELEASE_TRAIN="$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release/train"
export OXTUNE_RELEASE_TRAIN

echo "== tests"
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?

# The CUDA code must keep compiling without a GPU: nvcc builds every kernel to PTX and ptxas
# checks it for sm_80/sm_90 (kernels/build.rs); the Rust glue is type-checked against candle's CUDA backend.
echo "== CUDA build check (no GPU needed)"
kernels/scripts/cuda-toolchain.sh
(
  # shellcheck disable=SC1090
  source <(kernels/scripts/cuda-toolchain.sh --env)
  CARGO_TARGET_DIR=target/cuda cargo check --features cuda -p kernels -p trainer -p benches --tests
) || status=$?
echo "== disk: build outputs $(du -sh target .cuda 2>/dev/null | awk '{print $2 " " $1}' | paste -sd ' '), free $(df -h . | awk 'NR==2 {print $4}')"
exit "$status"
