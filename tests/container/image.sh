#!/usr/bin/env bash
# The training image, built from container/Dockerfile and run as a container the way SageMaker runs
# it, with podman (tests/container/podman.sh sets it up). The test command runs this as one stage;
# any failed check fails it (never a skip).
#
#   OXTUNE_RELEASE_TRAIN=target/debug/train bash tests/container/image.sh
#
# Builds the image from the Debian 12 base that podman.sh made and the `train` given (TRAIN_FROM=
# prebuilt; stripped), with the CUDA libraries of container/runtime-libs.txt from their PyPI wheels,
# then checks:
#  1. every shared library of train and of the CUDA libraries resolves in the image (only libcuda.so.1,
#     which the host driver mounts, may be missing; with the image's no-driver stand-in nothing is);
#     `--help` works; the image's size (uncompressed, and compressed as a registry stores it);
#  2. a demo job exactly as SageMaker runs it (a CUDA build of train starts without a GPU, trains on
#     the CPU and says why; with OXTUNE_DEVICE=cuda it fails naming the missing driver library): /opt/ml mounted from a host tree `train demo
#     --prepare-only` wrote, the input channels read-only, `train` as the argument, only
#     TRAINING_JOB_NAME / TRAINING_JOB_ARN set (no SM_*), as a non-root user: the adapter, its config,
#     the summary on the host, METRIC lines on stdout, no terminal escape codes in piped output;
#  3. `podman stop` (SIGTERM, SIGKILL after SageMaker's 120 s): a checkpoint, exit 143, the reason in
#     output/failure; a second `podman run` on the same tree resumes from it and finishes the steps;
#  4. a bad job (no train channel): output/failure names it, exit 2;
#  5. NO_COLOR: on a terminal (`podman run -t`) warnings are coloured, with NO_COLOR they are not;
#  6. `oxtune local --engine podman --image` runs a job file in the image, interrupts it once and resumes.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
# shellcheck disable=SC1090
source <(bash tests/container/podman.sh env)
# The host's train (CPU build: writes the demo trees; oxtune beside it) and the one the image gets
# (OXTUNE_IMAGE_TRAIN, default the same; the test command passes its CUDA build).
train="${OXTUNE_RELEASE_TRAIN:?set OXTUNE_RELEASE_TRAIN to the train binary of this build}"
image_train="${OXTUNE_IMAGE_TRAIN:-$train}"
image="localhost/oxtune-train:test"
work="$(mktemp -d)"
uid=1000
cleanup() {
  podman rm -f oxtune-image-stop > /dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

say() { echo "image.sh: $*"; }
fail() {
  echo "image.sh: FAILED: $*" >&2
  exit 1
}
check() { # check WHAT CONDITION...: fails the run with WHAT when the condition fails
  local what="$1"
  shift
  "$@" || fail "$what"
  say "ok: $what"
}

# ---- build --------------------------------------------------------------------------------------
# --format docker: the OCI format has no SHELL. A host whose TLS goes through its own CA (a proxy's)
# lends that bundle to pip in the build, read-only, through PIP_CERT (container/README.md).
common=(--format docker -f container/Dockerfile --build-arg "BASE_IMAGE=$OXTUNE_BASE_IMAGE")
host_ca="${PIP_CERT:-${SSL_CERT_FILE:-}}"
if [ -n "$host_ca" ] && [ -f "$host_ca" ]; then
  common+=(--volume "$host_ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
build=(podman build "${common[@]}" --build-arg TRAIN_FROM=prebuilt
  --build-arg "REVISION=$(git rev-parse HEAD 2> /dev/null || echo unknown)" -t "$image" .)
cuda_build=false
readelf -d "$image_train" | grep -q 'libcuda\.so\.1' && cuda_build=true
mkdir -p container/prebuilt
install -m 0755 "$image_train" container/prebuilt/train
strip container/prebuilt/train
say "building: CONTAINERS_CONF=$CONTAINERS_CONF ${build[*]}"
t0=$SECONDS
"${build[@]}" > "$work/build.log" 2>&1 || {
  tail -n 30 "$work/build.log" >&2
  fail "the image build failed (above); run it by hand: CONTAINERS_CONF=$CONTAINERS_CONF ${build[*]}"
}
say "built $image in $((SECONDS - t0)) s with $image_train ($($cuda_build && echo "CUDA build" || echo "CPU build"))"

# ---- 1. libraries, --help, size -----------------------------------------------------------------
in_image() { podman run --rm --entrypoint "$1" "$image" "${@:2}"; }
# shellcheck disable=SC2016 # expanded by the shell in the image
in_image sh -c 'for f in /usr/local/bin/train /usr/local/lib/oxtune/*.so.*; do echo "== $f"; ldd "$f"; done' > "$work/ldd.txt" 2>&1 ||
  fail "ldd in the image failed: $(cat "$work/ldd.txt")"
unresolved() { grep 'not found' "$work/ldd.txt" | grep -v 'libcuda\.so\.1 ' || true; }
check "every library resolves in the image (libcuda.so.1 aside)" test -z "$(unresolved)"
# Without a driver, the entrypoint puts the stand-in libcuda.so.1 on the path: then nothing is missing.
# shellcheck disable=SC2016 # expanded by the shell in the image
in_image sh -c 'LD_LIBRARY_PATH=/usr/local/lib/oxtune/no-driver ldd /usr/local/bin/train' > "$work/ldd-stub.txt" 2>&1 || true
check "with the no-driver stand-in every library of train resolves" sh -c "! grep -q 'not found' '$work/ldd-stub.txt'"
while read -r lib; do
  check "$lib is in the image" grep -q "== /usr/local/lib/oxtune/$lib\$" "$work/ldd.txt"
done < <(awk '!/^#/ && $3 ~ /==/ {print $1}' container/runtime-libs.txt)
check "--help through the entrypoint" sh -c "podman run --rm '$image' --help | grep -q 'train demo'"
serve_rc=0
serve_out=$(podman run --rm "$image" serve 2>&1) || serve_rc=$?
# shellcheck disable=SC2016 # the arguments are expanded by sh -c
check "serve is refused (exit $serve_rc) with a reason" sh -c '[ "$1" -ne 0 ] && printf "%s" "$2" | grep -q "no .serve. mode"' _ "$serve_rc" "$serve_out"
size=$(podman image inspect --format '{{.Size}}' "$image")
compressed=$(podman save "$image" 2> /dev/null | gzip -1 | wc -c)
say "image size: $((size / 1000000)) MB uncompressed, $((compressed / 1000000)) MB compressed (gzip -1 of podman save)"

# ---- 2. a demo job as SageMaker runs it ---------------------------------------------------------
# demo_tree DIR STEPS: the demo's /opt/ml tree, owned by the container's user.
demo_tree() {
  "$train" demo --prepare-only --ml-root "$1" --steps "$2" > /dev/null
  chown -R "$uid:$uid" "$1"
}
# sagemaker_run NAME TREE [podman flags...] -- [args]: `docker run IMAGE train` as SageMaker does it.
sagemaker_run() {
  local name="$1" ml="$2"
  shift 2
  local flags=()
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    flags+=("$1")
    shift
  done
  [ "${1:-}" = "--" ] && shift
  local mounts=(-v "$ml:/opt/ml")
  for ch in "$ml"/input/data/*/; do
    ch="${ch%/}"
    mounts+=(-v "$ch:/opt/ml/input/data/${ch##*/}:ro")
  done
  podman run --name "$name" --user "$uid:$uid" "${mounts[@]}" \
    -e "TRAINING_JOB_NAME=$name" -e "TRAINING_JOB_ARN=arn:aws:sagemaker:local:000000000000:training-job/$name" \
    "${flags[@]}" "$image" train "$@"
}

demo="$work/demo"
demo_tree "$demo" 40
rc=0
sagemaker_run oxtune-image-demo "$demo" --rm -- --eval_baseline true > "$work/demo.out" 2> "$work/demo.err" || rc=$?
check "the demo job exits 0 (exit $rc; stderr: $(tail -n 3 "$work/demo.err"))" test "$rc" = 0
for f in model/adapter_model.safetensors model/adapter_config.json output/data/training_summary.json; do
  check "$f on the host" test -s "$demo/$f"
done
check "files written as the container's user ($uid)" test "$(stat -c %u "$demo/model/adapter_model.safetensors")" = "$uid"
check "METRIC lines on stdout" grep -q '^METRIC step=40 ' "$work/demo.out"
check "a warning reached stderr (eval_baseline without a test channel)" grep -q 'WARN' "$work/demo.err"
if $cuda_build; then
  check "the CUDA build started without a GPU and says it trains on the CPU" \
    grep -q 'libcuda.so.1) is not in this container.*training on the CPU' "$work/demo.err"
  cuda_tree="$work/cuda"
  demo_tree "$cuda_tree" 2
  rc=0
  sagemaker_run oxtune-image-cuda "$cuda_tree" --rm -e OXTUNE_DEVICE=cuda > /dev/null 2> "$work/cuda.err" || rc=$?
  check "OXTUNE_DEVICE=cuda without a GPU fails (exit $rc) naming the missing driver library" \
    sh -c "[ $rc -ne 0 ] && grep -q 'libcuda.so.1' '$cuda_tree/output/failure'"
fi
check "no terminal escape codes in piped output" sh -c "! grep -q \$'\\x1b' '$work/demo.out' '$work/demo.err'"
env_seen=$(podman run --rm --entrypoint env -e TRAINING_JOB_NAME=x "$image")
check "no SM_* variable in the container" sh -c "! echo '$env_seen' | grep -q '^SM_'"

# ---- 3. podman stop, then resume ---------------------------------------------------------------
stop="$work/stop"
demo_tree "$stop" 60
sagemaker_run oxtune-image-stop "$stop" -d > /dev/null
for _ in $(seq 1 600); do
  podman logs oxtune-image-stop 2> /dev/null | grep -q '^METRIC step=10 ' && break
  sleep 0.2
done
check "the job logged step 10 before the stop" sh -c "podman logs oxtune-image-stop 2>/dev/null | grep -q '^METRIC step=10 '"
t0=$SECONDS
podman stop -t 120 oxtune-image-stop > /dev/null
stopped_in=$((SECONDS - t0))
code=$(podman inspect --format '{{.State.ExitCode}}' oxtune-image-stop)
podman rm oxtune-image-stop > /dev/null
check "SIGTERM: train exits 143 within the grace period (exit $code after ${stopped_in} s)" test "$code" = 143 -a "$stopped_in" -lt 120
check "a checkpoint was written" sh -c "ls -d '$stop'/checkpoints/checkpoint-* > /dev/null"
check "output/failure says it was interrupted" grep -q '^Interrupted' "$stop/output/failure"
step=$(find "$stop/checkpoints" -maxdepth 1 -name 'checkpoint-*' -printf '%f\n' | sed 's/checkpoint-0*//' | sort -n | tail -n 1)
rc=0
sagemaker_run oxtune-image-resume "$stop" --rm > "$work/resume.out" 2> "$work/resume.err" || rc=$?
check "the second run completes (exit $rc)" test "$rc" = 0
check "the second run resumes from the checkpoint at step $step" grep -q "Resuming from checkpoint .* at step $step\$" "$work/resume.out"
check "the resumed run finishes all 60 steps" grep -q '^Done: 60 steps' "$work/resume.out"
first=$(grep -oE '^METRIC step=[0-9]+' "$work/resume.out" | head -n 1 | cut -d= -f2)
check "the resumed run continues after step $step (its first METRIC line: step $first)" test "${first:-0}" -gt "$step"

# ---- 4. bad input -------------------------------------------------------------------------------
bad="$work/bad"
demo_tree "$bad" 10
rm -rf "$bad/input/data/train"
rc=0
sagemaker_run oxtune-image-bad "$bad" --rm > /dev/null 2> "$work/bad.err" || rc=$?
check "a job without a train channel exits 2 (exit $rc)" test "$rc" = 2
check "output/failure names the missing channel" grep -qi 'train' "$bad/output/failure"

# ---- 5. colour on a terminal only --------------------------------------------------------------
tty_tree="$work/tty"
demo_tree "$tty_tree" 2
podman run --rm -t --user "$uid:$uid" -v "$tty_tree:/opt/ml" "$image" train --eval_baseline true > "$work/tty.out" 2>&1 || true
check "on a terminal, warnings are coloured" grep -q $'\x1b\\[' "$work/tty.out"
demo_tree "$tty_tree" 2
podman run --rm -t -e NO_COLOR=1 --user "$uid:$uid" -v "$tty_tree:/opt/ml" "$image" train --eval_baseline true > "$work/tty.out" 2>&1 || true
check "NO_COLOR=1 turns colour off on a terminal" sh -c "grep -q WARN '$work/tty.out' && ! grep -q \$'\\x1b\\[' '$work/tty.out'"

# ---- 6. oxtune local --engine podman, against this image -----------------------------------------
# The launcher runs the job file in the image: channels mounted read-only, SIGTERM once the trainer
# logged step 10 (a simulated spot interruption), a restart that resumes, outputs packed.
oxtune="$(dirname "$train")/oxtune"
if [ -x "$oxtune" ]; then
  local_tree="$work/local-src"
  "$train" demo --prepare-only --ml-root "$local_tree" --steps 30 > /dev/null
  {
    printf 'name = "image-local"\n[sagemaker]\ninstance_type = "ml.g5.xlarge"\nmax_runtime = "10m"\n[hyperparameters]\n'
    python3 -c 'import json,sys; [print(f"{k} = {json.dumps(v)}") for k, v in json.load(open(sys.argv[1])).items()]' \
      "$local_tree/input/config/hyperparameters.json"
    printf '[channels]\n'
    for ch in "$local_tree"/input/data/*/; do
      ch="${ch%/}"
      printf '%s = "%s"\n' "${ch##*/}" "$ch"
    done
  } > "$work/job.toml"
  rc=0
  "$oxtune" local "$work/job.toml" --engine podman --image "$image" --gpus none --exact-name \
    --interrupt-after-step 10 --stop-grace 60s --work-dir "$work/local" > "$work/local.log" 2>&1 || rc=$?
  check "oxtune local --engine podman completes (exit $rc; $(tail -n 2 "$work/local.log" | tr '\n' ' '))" test "$rc" = 0
  check "it ran the image with podman" grep -q "locally (podman image $image)" "$work/local.log"
  check "the simulated interruption restarted the job, which resumed" \
    sh -c "grep -q 'Completed after 2 attempt' '$work/local.log' && grep -q 'Resuming from checkpoint' '$work/local.log'"
  check "model.tar.gz packed" test -s "$work/local/output/model.tar.gz"
else
  fail "no oxtune binary beside $train: build the workspace first (cargo build)"
fi

say "all checks passed"
