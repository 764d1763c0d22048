#!/usr/bin/env bash
# Idempotent set-up of the project's virtual environment (.venv): safe to run on every call.
# Reinstalls only when pyproject.toml changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${FTI_VENV:-.venv}
STAMP="$VENV/.fti-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    echo "setting up $VENV (one-off, a few minutes)..." >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # torch first, pinned: the CPU build is available offline on our machines; GPU boxes install
    # the CUDA build of the same version. numpy<2 is required by nvidia-pytriton.
    "$VENV/bin/python" -m pip install --quiet "torch==2.13.0" "numpy<2"
    "$VENV/bin/python" -m pip install --quiet -e ".[feature,training,inference,hopsworks,dev]"
    echo "$want" > "$STAMP"
fi
