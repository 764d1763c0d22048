"""Invariant 8 for parallel windows: the twelve months of 2013 as twelve real
`python -m feature_pipeline backfill` processes, four at a time, into one fresh root (the
Kubernetes Indexed Job's shape), end with the tables of one sequential backfill.

The processes create the tables together and commit to them together: a lost commit is retried
inside the store, so every process exits 0 (or 3: February holds the year's one bad weather row).
"""

from __future__ import annotations

import calendar
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from polars.testing import assert_frame_equal

from shared.feature_definitions import FEATURE_GROUPS, QUARANTINE
from tests.feature_tables import offline_table, online_table

pytestmark = [pytest.mark.integration, pytest.mark.data, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PARALLELISM = 4


def _month(m: int) -> list[str]:
    last = calendar.monthrange(2013, m)[1]
    return ["--start", f"2013-{m:02d}-01", "--end", f"2013-{m:02d}-{last:02d}"]


def test_twelve_months_four_at_a_time_equal_a_sequential_backfill(
    tmp_path: Path, year_root: Path
) -> None:
    root = tmp_path / "parallel"
    pending = list(range(1, 13))
    running: dict[int, subprocess.Popen[str]] = {}
    finished: dict[int, tuple[int, str, str]] = {}
    while pending or running:
        while pending and len(running) < PARALLELISM:
            month = pending.pop(0)
            running[month] = subprocess.Popen(
                [sys.executable, "-m", "feature_pipeline", "backfill", *_month(month),
                 "--data-root", str(root), "--log-level", "info"],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
        for month, proc in list(running.items()):
            if proc.poll() is not None:
                out, err = proc.communicate()
                finished[month] = (proc.returncode, out, err)
                del running[month]
        time.sleep(0.1)

    for month, (code, out, err) in sorted(finished.items()):
        assert code in (0, 3), f"month {month} exited {code}:\n{err}"
        assert json.loads(out.splitlines()[-1])["status"] in ("success", "partial")
    assert finished[2][0] == 3  # the 1,048 mph wind reading at EWR on 2013-02-12
    retries = sum(
        " ".join(err.split()).count("lost to a concurrent commit")
        for _, _, err in finished.values()
    )
    print(f"commits retried after a conflict: {retries}")

    for group in (*FEATURE_GROUPS.values(), QUARANTINE):
        assert_frame_equal(offline_table(root, group), offline_table(year_root, group))
    for group in (g for g in FEATURE_GROUPS.values() if g.online):
        assert_frame_equal(online_table(root, group), online_table(year_root, group))
