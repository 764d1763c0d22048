#!/usr/bin/env bash
# The main job on the embedded default (Delta + SQLite store, sqlite:/// MLflow, Triton from the
# nvidia-pytriton wheel; no external servers): backfill -> train + register -> serve + predict ->
# batch-score a day -> stop. Data, registry and logs go to ./data (FTI_DATA_ROOT).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${FTI_VENV:-.venv}/bin/activate"
export FTI_DATA_ROOT=${FTI_DATA_ROOT:-data}
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
exec python scripts/fti_flow.py
