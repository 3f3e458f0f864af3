#!/usr/bin/env bash
# Data parallelism on this machine's CPU: the demo job on one rank against two ranks (processes,
# the TCP collective through rank 0), with the same effective batch (per_device_batch_size 4 ×
# gradient accumulation 2 × 1 rank = 4 × 1 × 2 ranks) and the same cores (one rank: every core;
# two: half each, RAYON_NUM_THREADS). Reports tokens/s after the first logged window and, for two
# ranks, the share of each window rank 0 spent in the all-reduce (waiting for the other rank
# included). A benchmark, not a test; results go to benches/results/.
#
#   benches/ranks-cpu.sh [STEPS] [OUT.md]      # needs target/release/train (cargo build --release -p trainer)
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-40}"
out="${2:-benches/results/$(date +%F)-cpu-ranks.md}"
train="${TRAIN:-target/release/train}"
[ -x "$train" ] || { echo "no $train: cargo build --release -p trainer --bin train" >&2; exit 1; }
cores="$(nproc)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$train" demo --ml-root "$work/demo" --prepare-only > /dev/null

# run RANKS GA THREADS: prints "tokens/s allreduce_share" (means over the logged windows after the first)
run() {
  local ranks="$1" ga="$2" threads="$3" tree="$work/run-$1"
  rm -rf "$tree" && cp -r "$work/demo" "$tree"
  RAYON_NUM_THREADS="$threads" OXTUNE_DEVICE=cpu OXTUNE_MASTER_PORT=$((20000 + RANDOM % 20000)) \
    "$train" --ml-root "$tree" --num_gpus "$ranks" --per_device_batch_size 4 --gradient_accumulation_steps "$ga" \
    --max_steps "$steps" --logging_steps 5 --eval_steps 0 --save_steps 0 > "$tree.log"
  awk '/^METRIC step=/ { n++; if (n == 1) next
         for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "tokens_per_sec") t += kv[2]; if (kv[1] == "allreduce_share") a += kv[2] }
         m++ }
       END { printf "%.0f %.3f\n", t / m, a / m }' "$tree.log"
}

read -r one_tps _ < <(run 1 2 "$cores")
read -r two_tps two_share < <(run 2 1 $((cores / 2 > 0 ? cores / 2 : 1)))
{
  echo "# CPU data parallelism: 1 rank against 2 ranks ($(date +%F))"
  echo
  echo "Command: \`benches/ranks-cpu.sh $steps\` (train $("$train" --version | awk '{print $2}'), $cores cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))."
  echo "The demo job (tiny Llama, LoRA r=16, packed 128-token rows), $steps steps, effective batch 8 rows per step."
  echo
  echo "| ranks | threads per rank | tokens/s | all-reduce share of a step (rank 0) |"
  echo "|---|---|---|---|"
  echo "| 1 | $cores | $one_tps | — |"
  echo "| 2 | $((cores / 2 > 0 ? cores / 2 : 1)) | $two_tps | $two_share |"
  echo
  echo "Scaling: 2 ranks = $(awk -v a="$two_tps" -v b="$one_tps" 'BEGIN { printf "%.2f", a / b }')× one rank on the same cores."
} | tee "$out"
