#!/usr/bin/env bash
# Installs the CUDA 13.0 build toolchain from PyPI into <repo>/.cuda (git-ignored), so
# `cargo build --features cuda` works on a machine without a GPU or a system CUDA.
#
#   kernels/scripts/cuda-toolchain.sh            # toolchain for building (nvcc, headers, libs incl. NCCL, stubs)
#   source <(kernels/scripts/cuda-toolchain.sh --env)   # print/export the variables cargo needs
#
# Why each step: see ../shared/reference/candle-cuda.md §2 (all wheels pinned to 13.0 — newer nvcc
# emits PTX a CUDA 13.0 driver cannot JIT and cudarc 0.19.10 rejects; wheels ship only versioned
# sonames, so link names are symlinked; no wheel has libcuda, so a stub is built from the driver
# symbols cudarc declares).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
prefix="$root/.cuda"
venv="$prefix/venv"
cu="$venv/lib/python3*/site-packages/nvidia/cu13"

print_env() {
  local home
  home="$(echo $cu)"
  cat <<ENV
export CUDA_HOME="$home"
export CUDA_PATH="$home"
export PATH="$home/bin:\$PATH"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-80}"
export CUDARC_CUDA_VERSION=13000
export LD_LIBRARY_PATH="$home/lib:$home/lib/stubs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
ENV
}

if [ "${1:-}" = "--env" ]; then
  [ -d "$(echo $cu)" ] || { echo "no toolchain in $prefix: run $0 first" >&2; exit 1; }
  print_env
  exit 0
fi

# PyPI pins (one version line for all CUDA components).
PKGS=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-nvrtc==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-cccl==13.0.85"
  "nvidia-cublas==13.0.2.14"
  "nvidia-curand==10.4.0.35"
  # NCCL 2.30: the release cudarc 0.19.10's `nccl` bindings are for (candle-core's `nccl` feature).
  "nvidia-nccl-cu13==2.30.7"
)

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "${PKGS[@]}"
home="$(echo $cu)"

# NCCL's wheel has a tree of its own (nvidia/nccl): its library and header join the toolchain's.
nccl="$(echo "$venv"/lib/python3*/site-packages/nvidia/nccl)"
ln -sf "$nccl/lib/libnccl.so.2" "$home/lib/libnccl.so.2"
ln -sf "$nccl/include/nccl.h" "$home/include/nccl.h"

# Link names for the versioned sonames the wheels ship.
for lib in "$home"/lib/lib*.so.*; do
  base="${lib%%.so.*}.so"
  [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
done

# libcuda stub: every cu* symbol cudarc's driver bindings declare, as no-op functions. Only for
# linking (and for starting the binary on a machine without a driver); the real one comes from
# the NVIDIA driver at run time.
mkdir -p "$home/lib/stubs"
if [ ! -e "$home/lib/stubs/libcuda.so" ]; then
  syms="$(grep -ho '\bcu[A-Z][A-Za-z0-9_]*\b' "$home"/include/cuda.h | sort -u)"
  {
    for s in $syms; do echo "int $s(void) { return 999; }"; done
  } >"$prefix/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$home/lib/stubs/libcuda.so" "$prefix/libcuda_stub.c"
  ln -sf libcuda.so "$home/lib/stubs/libcuda.so.1"
fi

echo "CUDA toolchain ready in $home ($("$home/bin/nvcc" --version | tail -1))" >&2
echo "use: source <($0 --env)" >&2
