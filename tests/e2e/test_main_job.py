"""The main job (``scripts/fti_flow.py``, what ``bash scripts/main.sh`` runs after set-up) end to
end on the embedded default, into a fresh data root: it shows the fresh window features during
the stream's replay of 2013-12-31 beside each probability, and missing once past the stream."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def main_job(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    root = tmp_path_factory.mktemp("main_job") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTI_")}
    env |= {
        "FTI_DATA_ROOT": str(root),
        "FTI_MAIN_EPOCHS": "1",  # the flow, not the model, is under test
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "PYTHONPATH": str(ROOT),
        # one thread per process on a shared machine (docs/training.md: the default threads
        # were ten times slower under load)
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fti_flow.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,  # a few minutes alone; generous for a loaded machine
    )


def test_the_main_job_runs_the_whole_flow(main_job: subprocess.CompletedProcess[str]) -> None:
    assert main_job.returncode == 0, main_job.stdout[-3000:] + main_job.stderr[-3000:]
    out = main_job.stdout
    for title in ("backfill", "training pipeline", "streaming feature pipeline", "nightly run",
                  "batch scoring", "done"):  # fmt: skip
        assert title in out, title


def test_predictions_during_the_replay_show_their_fresh_features(
    main_job: subprocess.CompletedProcess[str],
) -> None:
    """Each flight predicted during the replay: the stream's watermark had reached its T, the
    service answered a probability, and its window features are there (a busy morning)."""
    out = main_job.stdout
    replay = out[out.index("=== streaming feature pipeline") : out.index("stream done")]
    marks = re.findall(r"stream watermark (\d\d:\d\d)Z -> POST as_of (\d\d:\d\d)Z", replay)
    assert len(marks) == 5
    assert all(mark >= t for mark, t in marks)  # (hh:mm, all of one UTC day)
    probabilities = re.findall(r"p\(delay>15min\)=(0\.\d{3})", replay)
    assert len(probabilities) == 5
    departures = [int(n) for n in re.findall(r"dep/60m=(\d+)", replay)]
    assert len(departures) == 5 and sum(departures) > 0
    assert "fresh features: missing" not in replay


def test_after_the_stream_stopped_the_fresh_features_are_missing(
    main_job: subprocess.CompletedProcess[str],
) -> None:
    """The 12-31 evening flights' T is past the stream's watermark (about 13:00 local): their
    fresh features are missing, imputed and reported, as the service's answer says."""
    out = main_job.stdout
    after = out[out.index("=== more requests") : out.index("=== feature pipeline: the nightly")]
    assert after.count("fresh features: missing") >= 3
    assert "origin_departures_60m" in after  # among the imputed features the service reported
