#!/usr/bin/env bash
# GPU verification in two halves: build here (no GPU needed), run on a GPU machine (no Rust needed).
#
#   kernels/scripts/gpu-tests.sh pack   # here: CUDA build of the GPU tests (nextest archive) and
#                                       # cargo-nextest into .gpu/tests, the release `train` and
#                                       # `oxtune-bench` (benches/run-gpu.sh) into .gpu/bin (git-ignored)
#   kernels/scripts/gpu-tests.sh run    # on the GPU machine, in the repo root with .gpu/tests carried over:
#                                       # every kernel vs its CPU reference, then the GPU/CPU demo loss curves
#   kernels/scripts/gpu-tests.sh unpack # there: decompress the carried binaries (run and run-gpu.sh do it)
#
# The device runner carries at most 64 MiB per call, so binaries are stripped and xz-compressed and
# the two folders are carried in separate calls (each is checked against the limit here).
#
# `run` finds the CUDA 13 runtime libraries (cuBLAS/cuBLASLt, cuRAND, cudart) in CUDA_HOME,
# /usr/local/cuda or a Python's nvidia/cu13 wheels, NCCL in its nvidia/nccl wheel (or the system's);
# libcuda.so.1 comes from the driver. The 2-GPU NCCL run (ranks::nccl_two_gpus) skips on one GPU.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
out="$root/.gpu"
carry_limit=$((64 * 1024 * 1024))

# Strip a binary and store it xz-compressed (a stripped CUDA `train` is ~60 MB, ~8 MB as .xz).
store() {
  strip -o "$2.tmp" "$1"
  xz -9 -T2 -c "$2.tmp" > "$2.xz"
  rm "$2.tmp"
}

fits() {
  local bytes
  bytes=$(du -sb "$1" | cut -f1)
  echo "$1: $((bytes / 1024 / 1024)) MiB"
  [ "$bytes" -le "$carry_limit" ] || { echo "$1 is over the 64 MiB carry limit" >&2; exit 1; }
}

pack() {
  kernels/scripts/cuda-toolchain.sh
  # shellcheck disable=SC1090
  source <(kernels/scripts/cuda-toolchain.sh --env)
  export CARGO_TARGET_DIR="$root/target/cuda"
  # Small artefacts: no debug info in test binaries (the 64 MiB carry limit), symbols stripped.
  export CARGO_PROFILE_TEST_DEBUG=0 CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_TEST_STRIP=symbols CARGO_PROFILE_DEV_STRIP=symbols
  rm -rf "${out:?}/tests" "${out:?}/bin"
  mkdir -p "$out/tests" "$out/bin"
  cargo nextest archive --features cuda -p kernels -p trainer --test it \
    --archive-file "$out/tests/gpu-tests.tar.zst"
  store "$(command -v cargo-nextest)" "$out/tests/cargo-nextest"
  cargo build --release --features cuda -p trainer --bin train
  store "$CARGO_TARGET_DIR/release/train" "$out/bin/train"
  # The benchmark harness binary, for benches/run-gpu.sh on the GPU machine.
  cargo build --release --features cuda -p benches --bin oxtune-bench
  store "$CARGO_TARGET_DIR/release/oxtune-bench" "$out/bin/oxtune-bench"
  ls -la "$out/tests" "$out/bin"
  fits "$out/tests"
  fits "$out/bin"
}

# Decompress every carried .xz next to itself (xz, or Python's lzma where xz is missing).
unpack() {
  local f
  for f in "$out"/tests/*.xz "$out"/bin/*.xz; do
    [ -e "$f" ] || continue
    [ "${f%.xz}" -nt "$f" ] && continue
    if command -v xz > /dev/null; then
      xz -dc "$f" > "${f%.xz}"
    else
      python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "${f%.xz}"
    fi
    chmod 0755 "${f%.xz}"
  done
}

cuda_libs() {
  local d
  for d in "${CUDA_HOME:-/nonexistent}/lib64" /usr/local/cuda/lib64 \
    $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, t, "lib") for p in nvidia.__path__ for t in ("cu13", "nccl")))' 2>/dev/null); do
    { [ -e "$d/libcublas.so.13" ] || [ -e "$d/libnccl.so.2" ]; } && printf '%s:' "$d"
  done
}

run() {
  [ -f "$out/tests/gpu-tests.tar.zst" ] || { echo "no $out/tests/gpu-tests.tar.zst: run '$0 pack' on the build machine and carry .gpu/tests" >&2; exit 2; }
  unpack
  LD_LIBRARY_PATH="$(cuda_libs)${LD_LIBRARY_PATH:-}"
  export LD_LIBRARY_PATH
  echo "== GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo unknown)"
  echo "== CUDA libraries from: $LD_LIBRARY_PATH"
  # The `cuda` variant of every on-every-device test (OXTUNE_GPU_TESTS=<nextest filter> to choose others);
  # a variant that finds no GPU fails instead of skipping.
  export OXTUNE_REQUIRE_GPU=1
  "$out/tests/cargo-nextest" nextest run --archive-file "$out/tests/gpu-tests.tar.zst" --workspace-remap "$root" \
    --no-fail-fast --test-threads 1 -E "${OXTUNE_GPU_TESTS:-test(/::cuda\$/)}" "$@"
}

case "${1:-}" in
  pack) pack ;;
  run) shift; run "$@" ;;
  unpack) unpack ;;
  *) echo "usage: $0 pack | run [nextest args] | unpack" >&2; exit 2 ;;
esac
