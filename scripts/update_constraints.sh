#!/usr/bin/env bash
# Renew constraints.txt: set up a fresh virtual environment with the newest releases that
# pyproject.toml allows (no constraints), then write down the version of every distribution it
# installed, except this project and torch (pinned by scripts/setup.sh and the Dockerfiles;
# GPU boxes install its CUDA build). Run the test suite with the new file before committing it.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
FTI_VENV="$work/venv" FTI_CONSTRAINTS= bash scripts/setup.sh
{
    echo "# Exact versions the test suite passed with (scripts/setup.sh and the images install"
    echo "# with them). Renew: bash scripts/update_constraints.sh, then run the tests."
    "$work/venv/bin/python" -m pip freeze --exclude-editable | grep -v -i -E '^torch=='
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pinned distributions"
