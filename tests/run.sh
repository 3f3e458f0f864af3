#!/usr/bin/env bash
# The project's test command (the README's second command; CI runs it via .ci/run).
# CPU only: builds the workspace and runs every test, the CUDA kernels included (through the host
# emulation of CUDA), builds the training image with podman and runs it as SageMaker does, then
# checks that the CUDA build compiles. Test helpers that need a server (moto, for the launcher's AWS
# tests; MLflow, for tracking) are installed into venvs, started on loopback here and stopped on exit;
# MLflow and podman are set up beside the build. Each stage prints its time; a table of them ends the run.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== toolchain: $(cargo --version), $(rustc --version), $(${CXX:-g++} --version | head -1)"
# A one-off build gains nothing from incremental caches, which cost gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "== disk free before: $(df -h . | awk 'NR==2 {print $4}')"

TIMES=()
status=0
# stage NAME COMMAND...: runs it, records its time; a failure fails the run at the end.
stage() {
  local name="$1" t0=$SECONDS rc=0
  shift
  echo "== $name"
  "$@" || rc=$?
  TIMES+=("$(printf '%-34s %5d s%s' "$name" $((SECONDS - t0)) "$([ "$rc" = 0 ] || echo "  FAILED ($rc)")")")
  [ "$rc" = 0 ] || status=$rc
  return 0
}
report() {
  echo "== stage times"
  printf '   %s\n' "${TIMES[@]}"
  echo "== disk: build outputs $(du -sh target .cuda 2>/dev/null | awk '{print $2 " " $1}' | paste -sd ' '), free $(df -h . | awk 'NR==2 {print $4}')"
}

if [ -f tests/launcher/moto.sh ]; then
  trap 'bash tests/launcher/moto.sh stop; bash tests/mlflow/server.sh stop; report' EXIT
  OXTUNE_MOTO_ENDPOINT="$(bash tests/launcher/moto.sh start)"
  export OXTUNE_MOTO_ENDPOINT
  echo "== moto server at $OXTUNE_MOTO_ENDPOINT"
else
  trap report EXIT
fi

# Python's rouge-score, the reference of the ROUGE parity test (tests/eval/venv.sh: pinned, made once).
OXTUNE_TEST_PYTHON="$(bash tests/eval/venv.sh)"
export OXTUNE_TEST_PYTHON

# Podman, its settings and the Debian 12 base image for the image stage (tests/container/podman.sh):
# Debian packages and mmdebstrap, mostly downloads, so it runs beside the build. (Fetching the image's
# CUDA wheels here too made the build stage about 5 minutes slower on 2 cores: the image stage does it.)
# A real MLflow tracking server for the tracking tests (tests/mlflow/server.sh: pinned mlflow in its own
# venv, SQLite store, loopback): installed and started beside the build, stopped on exit.
mkdir -p target
mlflow_log="$PWD/target/mlflow-setup.log"
bash tests/mlflow/server.sh start > "$PWD/target/mlflow-endpoint" 2> "$mlflow_log" &
mlflow_setup=$!

podman_log="$PWD/target/podman-setup.log"
mkdir -p target
bash tests/container/podman.sh setup > "$podman_log" 2>&1 &
podman_setup=$!

stage "formatting" cargo fmt --all -- --check
stage "container lint" bash tests/container/lint.sh

# Every emulated kernel launch of a passing test is logged here; the coverage stage reads it.
OXTUNE_EMU_LAUNCH_LOG="$PWD/target/emulated-launches.tsv"
export OXTUNE_EMU_LAUNCH_LOG
mkdir -p target && : > "$OXTUNE_EMU_LAUNCH_LOG"

# One build for everything: the container contract test runs the `train` binary of this build
# through the image's entrypoint (the image's release build differs only in optimisation level).
stage "build (workspace, tests)" cargo test --workspace --no-run "$@"
# The container tests run the `train` of this build (optimised, like the image's release build).
OXTUNE_RELEASE_TRAIN="$PWD/target/debug/train"
export OXTUNE_RELEASE_TRAIN
mlflow_server() {
  wait "$mlflow_setup" || { cat "$mlflow_log" >&2; return 1; }
  cat "$mlflow_log"
  OXTUNE_MLFLOW_ENDPOINT="$(cat target/mlflow-endpoint)"
  export OXTUNE_MLFLOW_ENDPOINT
}
stage "MLflow server (set up beside the build)" mlflow_server
stage "tests" cargo test --workspace --no-fail-fast "$@"

# Every __global__ entry point must have run, under emulation, in a passing test.
stage "emulated kernel launch coverage" \
  cargo test --workspace --test it -- --ignored --exact emulator::launch_coverage --nocapture

# The CUDA build without a GPU: nvcc builds every kernel of ours to PTX and ptxas checks it for
# sm_80/sm_90 (kernels/build.rs), and the CUDA glue and the GPU test suites are compiled and linked
# against candle's CUDA backend — one `cargo test --no-run`, which also builds the CUDA `train` that the
# image stage needs (it must start where there is no driver). candle's own CUDA kernels are not
# compiled here (kernels/scripts/nvcc-stub.sh: pinned upstream code, 12 of 13 minutes on 2 cores), so
# this train runs on CPUs only; a user's image build (container/Dockerfile, stage build) and
# kernels/scripts/gpu-tests.sh compile them with the real nvcc.
# It shares target/ with the CPU build: only what the `cuda` feature changes (candle-core, cudarc,
# our crates, a few build-script dependencies) is compiled again, not every dependency. It runs after
# every CPU stage, since it replaces target/debug/train; the CUDA train is kept as target/cuda-train.
cuda_train="$PWD/target/cuda-train"
cuda_build() {
  kernels/scripts/cuda-toolchain.sh
  # shellcheck disable=SC1090
  source <(kernels/scripts/cuda-toolchain.sh --env)
  rm -f "$cuda_train"
  NVCC="$PWD/kernels/scripts/nvcc-stub.sh" cargo test --no-run --features cuda -p kernels -p trainer -p benches
  cp target/debug/train "$cuda_train"
}
stage "CUDA build of train and the GPU tests" cuda_build

# The image, built with podman from container/Dockerfile (the CUDA build of train from the stage above,
# the CUDA libraries from their PyPI wheels) and run as SageMaker runs it, on a CPU: demo job, stop +
# resume, bad input, libraries, size, oxtune local with podman.
image_stage() {
  wait "$podman_setup" || {
    cat "$podman_log" >&2
    return 1
  }
  cat "$podman_log"
  if [ -x "$cuda_train" ]; then
    OXTUNE_IMAGE_TRAIN="$cuda_train" bash tests/container/image.sh
  else
    echo "image stage: no CUDA build of train (the CUDA stage failed); the image gets the CPU build" >&2
    bash tests/container/image.sh
  fi
}
stage "container image (podman)" image_stage

exit "$status"
