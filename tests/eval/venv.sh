#!/usr/bin/env bash
# The Python side of the evaluation parity tests: a venv with Python's `rouge-score` (pinned, with
# its dependencies, in requirements.txt), made once under tests/eval/.venv. Prints the venv's
# python, which the test command exports as OXTUNE_TEST_PYTHON for trainer/tests/it/rouge.rs.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PYTHON="${PYTHON:-python3}"
if ! "$VENV/bin/python" -c "import rouge_score" 2>/dev/null; then
    echo "eval/venv.sh: creating $VENV with $(grep -c . "$HERE/requirements.txt") pinned packages" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt" >&2
fi
echo "$VENV/bin/python"
