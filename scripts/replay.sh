#!/usr/bin/env bash
# The year replay on the embedded default: history backfill + initial champion, then July..December
# week by week (features, batch scoring, monitoring, shadow, continuous training) and a one-page
# report. Options go through to scripts/replay_2013.py (--weeks, --data-root, --fresh, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${FTI_VENV:-.venv}/bin/activate"
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false  # a download bar per batch run otherwise
exec python scripts/replay_2013.py "$@"
