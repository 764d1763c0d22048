#!/usr/bin/env bash
# The main job on the embedded default (local Delta + SQLite store, no external servers):
# the full-year 2013 feature backfill.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${FTI_VENV:-.venv}/bin/activate"
export FTI_DATA_ROOT=${FTI_DATA_ROOT:-data}
set +e
python -m feature_pipeline backfill --start 2013-01-01 --end 2013-12-31
code=$?
set -e
# 3 = partial: written, with some raw rows quarantined (the real data has one impossible reading).
if [ "$code" -ne 0 ] && [ "$code" -ne 3 ]; then exit "$code"; fi
python -m feature_pipeline catalog
