#!/usr/bin/env bash
# The GPU benchmark in one command (benches/README.md). Run in the repo root on the GPU machine,
# with .gpu/bin carried from the build machine (kernels/scripts/gpu-tests.sh pack):
#
#   benches/run-gpu.sh                  # everything: env gemm lora qlora grpo report
#   benches/run-gpu.sh lora             # one phase at a time (each phase fits a 10-minute command)
#   benches/run-gpu.sh report           # write benches/results/<date>-<gpu>.{md,json} from what ran
#   benches/run-gpu.sh smoke            # the same harness on the CPU, tiny arch (any machine)
#
# Phases append to $BENCH_DIR/results.jsonl (default .gpu/bench, git-ignored); when $OUT is set
# (the device runner's return folder) the raw lines and logs are copied there after every phase.
# Settings (environment): OXTUNE_BENCH (binary, default .gpu/bin/oxtune-bench), PYTHON (python3),
# BENCH_DEVICE (cuda), SEQ (2048), BATCH (2), STEPS (5), WARMUP (2), RANK (16),
# GRPO_STEPS (2), GRPO_WARMUP (1), RUN_TIMEOUT (seconds per single run, 540), ARCHS_LORA
# ("llama-3.2-1b llama-3.1-8b"), ARCHS_QLORA ("llama-3.1-8b"), ARCH_GRPO (llama-3.2-1b).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

BIN="${OXTUNE_BENCH:-$root/.gpu/bin/oxtune-bench}"
PY="${PYTHON:-python3}"
DEV="${BENCH_DEVICE:-cuda}"
SEQ="${SEQ:-2048}" BATCH="${BATCH:-2}" STEPS="${STEPS:-5}" WARMUP="${WARMUP:-2}" RANK="${RANK:-16}"
GRPO_STEPS="${GRPO_STEPS:-2}" GRPO_WARMUP="${GRPO_WARMUP:-1}"
RUN_TIMEOUT="${RUN_TIMEOUT:-540}"
ARCHS_LORA="${ARCHS_LORA:-llama-3.2-1b llama-3.1-8b}"
ARCHS_QLORA="${ARCHS_QLORA:-llama-3.1-8b}"
ARCH_GRPO="${ARCH_GRPO:-llama-3.2-1b}"
BENCH_DIR="${BENCH_DIR:-$root/.gpu/bench}"
RESULTS="$BENCH_DIR/results.jsonl"
mkdir -p "$BENCH_DIR/logs"

# CUDA 13 runtime libraries for the carried binary (as kernels/scripts/gpu-tests.sh run finds them).
cuda_libs() {
  local d
  for d in "${CUDA_HOME:-/nonexistent}/lib64" /usr/local/cuda/lib64 \
    $("$PY" -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
    [ -e "$d/libcublas.so.13" ] && printf '%s:' "$d"
  done
}
[ "$DEV" = cuda ] && export LD_LIBRARY_PATH="$(cuda_libs)${LD_LIBRARY_PATH:-}"

sync_out() {
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT/bench"
    cp -r "$BENCH_DIR/." "$OUT/bench/" 2>/dev/null || true
  fi
}

# run NAME IMPL METHOD ARCH -- command...: one run under a timeout; a failure becomes a result line.
run() {
  local name="$1" impl="$2" method="$3" arch="$4"
  shift 5
  local log="$BENCH_DIR/logs/$name.log"
  echo "== $name: $*" | tee -a "$BENCH_DIR/commands.txt"
  local before after rc
  before=$(wc -l <"$RESULTS" 2>/dev/null || echo 0)
  timeout --signal=INT --kill-after=20 "$RUN_TIMEOUT" "$@" >"$log" 2>&1
  rc=$?
  after=$(wc -l <"$RESULTS" 2>/dev/null || echo 0)
  tail -n 3 "$log" | cut -c1-400
  if [ "$after" = "$before" ]; then
    local why="exit code $rc"
    [ "$rc" = 124 ] || [ "$rc" = 130 ] && why="timed out after ${RUN_TIMEOUT}s (RUN_TIMEOUT)"
    "$PY" - "$impl" "$method" "$arch" "$why" "$log" >>"$RESULTS" <<'EOF'
import json, sys
impl, method, arch, why, log = sys.argv[1:]
tail = open(log, errors="replace").read()[-600:]
oom = "out of memory" in tail.lower() or "OUT_OF_MEMORY" in tail
print(json.dumps({"impl": impl, "method": method, "arch": arch, "status": "oom" if oom else "failed",
                  "reason": f"{why}; log tail: {tail.strip()[-300:]}"}))
EOF
  fi
  sync_out
}

common() { echo --device "$DEV" --json "$RESULTS"; }

phase_env() {
  local gpu driver
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
  "$PY" - "$BENCH_DIR/env.json" "${gpu:-cpu}" "${driver:-none}" "$BIN" <<'EOF'
import json, os, platform, subprocess, sys, datetime
path, gpu, driver, binary = sys.argv[1:]
def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""
env = {"date": datetime.date.today().isoformat(), "gpu": gpu, "driver": driver, "host": platform.node(),
       "commit": sh("git", "rev-parse", "HEAD") or "unknown",
       "dirty": bool(sh("git", "status", "--porcelain", "--untracked-files=no")),
       "oxtune_bench": binary, "nvidia_smi": sh("nvidia-smi", "-L")}
json.dump(env, open(path, "w"), indent=1)
print(json.dumps(env))
EOF
  sync_out
}

phase_gemm() {
  run gemm-oxtune oxtune gemm - -- "$BIN" gemm $(common) --n 8192 --iters 50
  run gemm-torch torch gemm - -- "$PY" benches/hf_baseline.py gemm $(common) --n 8192 --iters 50
}

train_args() { echo --seq "$SEQ" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --rank "$RANK"; }

phase_lora() {
  local a
  for a in $ARCHS_LORA; do
    run "lora-oxtune-$a" oxtune lora "$a" -- "$BIN" lora --arch "$a" $(train_args) $(common)
    run "lora-hf-$a" hf lora "$a" -- "$PY" benches/hf_baseline.py lora --arch "$a" $(train_args) $(common)
  done
}

phase_qlora() {
  local a
  for a in $ARCHS_QLORA; do
    run "qlora-oxtune-$a" oxtune qlora "$a" -- "$BIN" qlora --arch "$a" $(train_args) $(common)
    run "qlora-hf-$a" hf qlora "$a" -- "$PY" benches/hf_baseline.py qlora --arch "$a" $(train_args) $(common)
  done
}

phase_grpo() {
  local g="--prompts 8 --generations 8 --completion 256 --prompt-len 64 --batch 8 --rank $RANK --steps $GRPO_STEPS --warmup $GRPO_WARMUP"
  run "grpo-hf-$ARCH_GRPO" hf grpo "$ARCH_GRPO" -- "$PY" benches/hf_baseline.py grpo --arch "$ARCH_GRPO" $g $(common)
  run "grpo-oxtune-$ARCH_GRPO" oxtune grpo "$ARCH_GRPO" -- "$BIN" grpo --arch "$ARCH_GRPO" $g $(common)
}

phase_report() {
  [ -f "$BENCH_DIR/env.json" ] || phase_env
  local gpu date slug
  gpu=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["gpu"])' "$BENCH_DIR/env.json")
  date=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["date"])' "$BENCH_DIR/env.json")
  slug=$(echo "$gpu" | tr '[:upper:]' '[:lower:]' | sed -E 's/^nvidia //; s/[^a-z0-9]+/-/g; s/^-|-$//g')
  "$PY" - "$BENCH_DIR/env.json" "$BENCH_DIR/commands.txt" <<'EOF'
import json, sys
env = json.load(open(sys.argv[1]))
try:
    env["commands"] = [l[3:].split(": ", 1)[1].strip() for l in open(sys.argv[2]) if l.startswith("== ")]
except OSError:
    env["commands"] = []
json.dump(env, open(sys.argv[1], "w"), indent=1)
EOF
  local out="${REPORT_PREFIX:-$root/benches/results/$date-${slug:-unknown}}"
  mkdir -p "$(dirname "$out")"
  "$PY" benches/report.py --env "$BENCH_DIR/env.json" --out "$out" "$RESULTS"
  if [ -n "${OUT:-}" ]; then mkdir -p "$OUT/results"; cp "$out.md" "$out.json" "$OUT/results/"; fi
  sync_out
}

# CPU check of the whole pipeline: tiny arch, both sides, every phase, report into $BENCH_DIR.
phase_smoke() {
  BENCH_DEVICE=cpu SEQ=64 BATCH=2 STEPS=2 WARMUP=1 GRPO_STEPS=1 GRPO_WARMUP=1 \
    ARCHS_LORA=tiny ARCHS_QLORA=tiny ARCH_GRPO=tiny REPORT_PREFIX="$BENCH_DIR/smoke-report" \
    "$0" env gemm-small lora qlora grpo-small report
}
phase_gemm-small() {
  run gemm-oxtune oxtune gemm - -- "$BIN" gemm $(common) --n 256 --iters 5
  run gemm-torch torch gemm - -- "$PY" benches/hf_baseline.py gemm $(common) --n 256 --iters 5
}
phase_grpo-small() {
  local g="--prompts 2 --generations 2 --completion 8 --prompt-len 8 --batch 2 --rank $RANK --steps $GRPO_STEPS --warmup $GRPO_WARMUP"
  run "grpo-hf-$ARCH_GRPO" hf grpo "$ARCH_GRPO" -- "$PY" benches/hf_baseline.py grpo --arch "$ARCH_GRPO" $g $(common)
  run "grpo-oxtune-$ARCH_GRPO" oxtune grpo "$ARCH_GRPO" -- "$BIN" grpo --arch "$ARCH_GRPO" $g $(common)
}

[ -n "${OXTUNE_BENCH:-}" ] || kernels/scripts/gpu-tests.sh unpack
[ -x "$BIN" ] || { echo "no oxtune-bench at $BIN: run 'kernels/scripts/gpu-tests.sh pack' on the build machine and carry .gpu/bin (or set OXTUNE_BENCH)" >&2; exit 2; }
phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(env gemm lora qlora grpo report)
for p in "${phases[@]}"; do
  case "$p" in
    env | gemm | lora | qlora | grpo | report | smoke | gemm-small | grpo-small) echo "#### phase $p"; "phase_$p" ;;
    *) echo "unknown phase '$p' (env gemm lora qlora grpo report smoke)" >&2; exit 2 ;;
  esac
done
