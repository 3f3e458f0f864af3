#!/usr/bin/env bash
# GPU verification in two halves: build here (no GPU needed), run on a GPU machine (no Rust needed).
#
#   kernels/scripts/gpu-tests.sh pack   # here: CUDA build of the GPU tests (nextest archive), of the
#                                       # release `train` and `oxtune-bench` (benches/run-gpu.sh), plus
#                                       # cargo-nextest, into .gpu/ (git-ignored)
#   kernels/scripts/gpu-tests.sh run    # on the GPU machine, in the repo root with .gpu/ carried over:
#                                       # every kernel vs its CPU reference, then the GPU/CPU demo loss curves
#
# `run` finds the CUDA 13 runtime libraries (cuBLAS/cuBLASLt, cuRAND, cudart) in CUDA_HOME,
# /usr/local/cuda or a Python's nvidia/cu13 wheels; libcuda.so.1 comes from the driver.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
out="$root/.gpu"

pack() {
  kernels/scripts/cuda-toolchain.sh
  # shellcheck disable=SC1090
  source <(kernels/scripts/cuda-toolchain.sh --env)
  export CARGO_TARGET_DIR="$root/target/cuda"
  # Small artefacts: no debug info in test binaries (the 64 MiB carry limit), symbols stripped.
  export CARGO_PROFILE_TEST_DEBUG=0 CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_TEST_STRIP=symbols CARGO_PROFILE_DEV_STRIP=symbols
  mkdir -p "$out"
  cargo nextest archive --features cuda -p kernels -p trainer --test gpu \
    --archive-file "$out/gpu-tests.tar.zst"
  cargo build --release --features cuda -p trainer --bin train
  cp "$CARGO_TARGET_DIR/release/train" "$out/train"
  strip "$out/train"
  # The benchmark harness binary, for benches/run-gpu.sh on the GPU machine.
  cargo build --release --features cuda -p benches --bin oxtune-bench
  cp "$CARGO_TARGET_DIR/release/oxtune-bench" "$out/oxtune-bench"
  strip "$out/oxtune-bench"
  cp "$(command -v cargo-nextest)" "$out/cargo-nextest"
  ls -la "$out"
  du -sh "$out"
}

cuda_libs() {
  local d
  for d in "${CUDA_HOME:-/nonexistent}/lib64" /usr/local/cuda/lib64 \
    $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
    [ -e "$d/libcublas.so.13" ] && printf '%s:' "$d"
  done
}

run() {
  [ -f "$out/gpu-tests.tar.zst" ] || { echo "no $out/gpu-tests.tar.zst: run '$0 pack' on the build machine and carry .gpu/" >&2; exit 2; }
  export LD_LIBRARY_PATH="$(cuda_libs)${LD_LIBRARY_PATH:-}"
  echo "== GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo unknown)"
  echo "== CUDA libraries from: $LD_LIBRARY_PATH"
  "$out/cargo-nextest" nextest run --archive-file "$out/gpu-tests.tar.zst" --workspace-remap "$root" \
    --no-fail-fast --test-threads 1 "$@"
}

case "${1:-}" in
  pack) pack ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 pack | run [nextest args]" >&2; exit 2 ;;
esac
