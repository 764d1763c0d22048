#!/usr/bin/env bash
# The test command: set-up, quality gates (ruff, mypy, import contract), then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${FTI_VENV:-.venv}/bin/activate"
echo "== ruff" && ruff check .
echo "== mypy" && mypy shared feature_pipeline training_pipeline inference_pipeline orchestration
echo "== import contract" && lint-imports
echo "== pytest" && python -m pytest "$@"
