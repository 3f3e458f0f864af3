#!/usr/bin/env bash
# A stand-in for the `train` binary, for the launcher's `oxtune local` supervision tests
# (launcher/tests/local.rs). It follows the trainer's contract closely enough to test the
# launcher: `train --ml-root ROOT`, METRIC lines, a checkpoint in ROOT/checkpoints written on
# SIGTERM and resumed from, model/ and output/data/ outputs, output/failure + exit 2 on error.
#
# Behaviour knobs (passed through the job's [environment]):
#   FAKE_TRAIN_STEPS        total steps (default 10)
#   FAKE_TRAIN_SLEEP        seconds per step (default 0.05)
#   FAKE_TRAIN_IGNORE_TERM  1 = ignore SIGTERM (tests the SIGKILL after the grace period)
#   FAKE_TRAIN_FAIL         1 = write output/failure and exit 2
set -u
root=""
while [ $# -gt 0 ]; do
    case "$1" in
        --ml-root) root="$2"; shift 2 ;;
        *) shift ;;
    esac
done
root="${root:-${OXTUNE_ML_ROOT:-/opt/ml}}"
steps="${FAKE_TRAIN_STEPS:-10}"
ck="$root/checkpoints"
i=0
if [ -f "$ck/step" ]; then
    i="$(cat "$ck/step")"
    echo "resuming from checkpoint at step $i"
fi
echo "job ${TRAINING_JOB_NAME:-?} hyperparameters: $(cat "$root/input/config/hyperparameters.json" | tr -d '\n ')"
echo "channels: $(ls "$root/input/data" | tr '\n' ' ')"
if [ "${FAKE_TRAIN_IGNORE_TERM:-0}" = "1" ]; then
    trap 'echo "ignoring SIGTERM"' TERM
else
    trap 'echo "$i" > "$ck/step"; echo "received SIGTERM, checkpoint saved at step $i"; exit 143' TERM
fi
while [ "$i" -lt "$steps" ]; do
    i=$((i + 1))
    echo "METRIC step=$i epoch=$(awk "BEGIN{printf \"%.2f\", $i/$steps}") loss=$(awk "BEGIN{printf \"%.4f\", 3/$i}")"
    sleep "${FAKE_TRAIN_SLEEP:-0.05}"
done
if [ "${FAKE_TRAIN_FAIL:-0}" = "1" ]; then
    echo "boom: bad data at train.jsonl:3" > "$root/output/failure"
    echo "error: boom" >&2
    exit 2
fi
echo "$i" > "$ck/step"
echo "adapter weights" > "$root/model/adapter_model.safetensors"
echo '{"steps": '"$i"'}' > "$root/output/data/summary.json"
echo "done"
