#!/usr/bin/env bash
# Idempotent set-up of the project's virtual environment (.venv): safe to run on every call.
# Reinstalls only when pyproject.toml or constraints.txt changed since the last successful install.
#
# constraints.txt holds the exact versions the test suite last passed with (every dependency but
# torch, pinned below): a release upstream cannot turn a clean set-up red overnight (pyarrow 26,
# which imports only with numpy 2, did). FTI_CONSTRAINTS= (empty) resolves the newest releases
# the ranges in pyproject.toml allow instead: scripts/update_constraints.sh does, to renew the file.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${FTI_VENV:-.venv}
CONSTRAINTS=${FTI_CONSTRAINTS-constraints.txt}
STAMP="$VENV/.fti-installed"
pin=()
if [ -n "$CONSTRAINTS" ]; then
    pin=(--constraint "$CONSTRAINTS")
fi
want=$(cat pyproject.toml ${CONSTRAINTS:+"$CONSTRAINTS"} | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    echo "setting up $VENV (one-off, a few minutes)..." >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # torch first, pinned: the CPU build is available offline on our machines; GPU boxes install
    # the CUDA build of the same version. numpy<2 is required by nvidia-pytriton.
    "$VENV/bin/python" -m pip install --quiet ${pin[@]+"${pin[@]}"} "torch==2.13.0" "numpy<2"
    "$VENV/bin/python" -m pip install --quiet ${pin[@]+"${pin[@]}"} \
        -e ".[feature,training,inference,hopsworks,dev]"
    echo "$want" > "$STAMP"
fi
