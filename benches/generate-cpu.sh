#!/usr/bin/env bash
# Greedy generation tokens/s on this CPU: oxtune (trainer::generate, as evaluation and `train generate`
# run it) against transformers + PEFT `generate`, same architecture, LoRA config, prompts and lengths,
# two alternating rounds in one run. Prints the ratio and appends every result line to $OUT.
#
#   benches/generate-cpu.sh [ARCH]        # ARCH: tiny (default) | a config.json
#
# Needs a release oxtune-bench (cargo build --release -p benches) and a Python with torch,
# transformers and peft ($PYTHON, default python3; tests/fixtures/scripts/requirements.txt pins them).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH="${1:-tiny}"
PYTHON="${PYTHON:-python3}"
BENCH="${OXTUNE_BENCH:-target/release/oxtune-bench}"
OUT="${OUT:-benches/results/$(date -u +%Y-%m-%d)-cpu-generate.jsonl}"
SHAPE=(--arch "$ARCH" --batch 4 --prompt-len 32 --new-tokens 64 --warmup 1 --iters 5 --rank 16 --dtype f32)
mkdir -p "$(dirname "$OUT")"
[ -x "$BENCH" ] || { echo "no $BENCH: cargo build --release -p benches" >&2; exit 2; }
for round in 1 2; do
  echo "== round $round: oxtune" >&2
  "$BENCH" generate "${SHAPE[@]}" --json "$OUT" | grep '^RESULT'
  echo "== round $round: transformers + PEFT" >&2
  "$PYTHON" benches/hf_baseline.py generate "${SHAPE[@]}" --json "$OUT" | grep '^RESULT'
done
"$PYTHON" benches/ratio.py "$OUT"
