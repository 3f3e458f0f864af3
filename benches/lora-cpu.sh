#!/usr/bin/env bash
# LoRA training tokens/s on this CPU: oxtune (trainer::train::sft::train, as `train` runs it) against
# transformers + PEFT, same architecture, LoRA config, shape and steps, both f32, two alternating
# rounds in one run. Prints the ratio, appends every result line to $OUT and writes oxtune's per-op
# step breakdown (`oxtune-bench lora --profile`, last round) to $PROFILE.
#
#   benches/lora-cpu.sh [ARCH]        # ARCH: a config.json (default benches/configs/llama-60m.json) | tiny
#
# Needs a release oxtune-bench (cargo build --release -p benches) and a Python with torch,
# transformers and peft ($PYTHON, default python3; tests/fixtures/scripts/requirements.txt pins them).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH="${1:-benches/configs/llama-60m.json}"
PYTHON="${PYTHON:-python3}"
BENCH="${OXTUNE_BENCH:-target/release/oxtune-bench}"
DAY="$(date -u +%Y-%m-%d)"
OUT="${OUT:-benches/results/$DAY-cpu-lora.jsonl}"
PROFILE="${PROFILE:-benches/results/$DAY-cpu-lora-profile.md}"  # the breakdown of the last round
SHAPE=(--arch "$ARCH" --seq "${SEQ:-512}" --batch "${BATCH:-2}" --steps "${STEPS:-6}" --warmup 2 --rank 16 --dtype f32)
mkdir -p "$(dirname "$OUT")" "$(dirname "$PROFILE")"
[ -x "$BENCH" ] || { echo "no $BENCH: cargo build --release -p benches" >&2; exit 2; }
for round in 1 2; do
  echo "== round $round: oxtune" >&2
  "$BENCH" lora "${SHAPE[@]}" --json "$OUT" --profile "$PROFILE" | grep '^RESULT' | cut -c1-200
  echo "== round $round: transformers + PEFT" >&2
  "$PYTHON" benches/hf_baseline.py lora "${SHAPE[@]}" --json "$OUT" | grep '^RESULT' | cut -c1-200
done
"$PYTHON" benches/ratio.py "$OUT"
