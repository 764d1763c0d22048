"""Every CLI answers a bad setting or input with ONE line that names it (the option and its
FTI_* variable, or the config key), says what was given and what it must be, and exits 2.

The real CLIs run as subprocesses, as cron and operators run them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from feature_pipeline.pipeline import run_backfill
from feature_pipeline.settings import FeaturePipelineSettings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FIX = "Fix the option or the environment variable (--help lists each with its default)."


def _cli(module: str, *args: str, root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FTI_")}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, "FTI_DATA_ROOT": str(root), "COLUMNS": "80", **env},
        timeout=300,
    )


def _one_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "validation error" not in lines[0] and "pydantic.dev" not in lines[0], lines[0]
    return lines[0]


CASES = {
    "feature option": (
        ("feature_pipeline", "backfill", "--start", "2013-01-01", "--end", "2013-01-02",
         "--max-bad-share", "2"),
        {},
        "error: invalid setting --max-bad-share (env FTI_MAX_BAD_SHARE): got 2.0, must be less "
        f"than or equal to 1. {FIX}",
    ),
    "feature variable": (
        ("feature_pipeline", "backfill", "--start", "2013-01-01", "--end", "2013-01-02"),
        {"FTI_CHUNK_DAYS": "abc"},
        "error: invalid setting --chunk-days (env FTI_CHUNK_DAYS): got 'abc', must be a valid "
        f"integer, unable to parse string as an integer. {FIX}",
    ),
    "feature variable the command has no option for": (
        ("feature_pipeline", "run", "--date", "2013-01-02"),
        {"FTI_CHUNK_DAYS": "0"},
        "error: invalid setting FTI_CHUNK_DAYS: got '0', must be greater than or equal to 1. "
        + FIX,
    ),
    "feature JSON variable": (
        ("feature_pipeline", "catalog"),
        {"FTI_STORAGE_OPTIONS": "not json"},
        f"error: invalid setting FTI_STORAGE_OPTIONS: is not valid JSON for it. {FIX}",
    ),
    "reversed training window": (
        ("training_pipeline", "train", "--train", "2013-03-01:2013-01-01"),
        {},
        "error: --train: window '2013-03-01:2013-01-01': window end 2013-01-01 must be after its "
        "start 2013-03-01; give START:END with END after START (END exclusive)",
    ),
    "overlapping training windows": (
        ("training_pipeline", "train", "--train", "2013-01-01:2013-03-01",
         "--validation", "2013-02-01:2013-03-01"),
        {},
        "error: invalid setting --train/--validation/--test: windows must not overlap and must "
        "run train < validation < test. Fix the options or the config file.",
    ),
    "training variable": (
        ("training_pipeline", "train"),
        {"FTI_DEVICE": "tpu"},
        f"error: invalid setting FTI_DEVICE: got 'tpu', must be 'auto', 'cpu' or 'cuda'. {FIX}",
    ),
    "serve option": (
        ("inference_pipeline", "serve", "--port", "99999"),
        {},
        "error: invalid setting --port (env FTI_PORT): got 99999, must be less than or equal to "
        f"65535. {FIX}",
    ),
    "triton variable": (
        ("inference_pipeline", "triton"),
        {"FTI_PORT": "x"},
        "error: invalid setting FTI_PORT: got 'x', must be a valid integer, unable to parse "
        f"string as an integer. {FIX}",
    ),
    "batch variable": (
        ("inference_pipeline.batch", "--date", "2013-01-01"),
        {"FTI_BATCH_SIZE": "abc"},
        "error: invalid setting FTI_BATCH_SIZE: got 'abc', must be a valid integer, unable to "
        f"parse string as an integer. {FIX}",
    ),
    "monitor variable": (
        ("inference_pipeline.monitor", "run", "--end", "2013-03-01"),
        {"FTI_DRIFT_PSI": "x"},
        "error: invalid setting FTI_DRIFT_PSI: got 'x', must be a valid number, unable to parse "
        f"string as a number. {FIX}",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(case: str, tmp_path: Path) -> None:
    (module, *args), env, expected = CASES[case]
    assert _one_line(_cli(module, *args, root=tmp_path, **env)) == expected
    assert not (tmp_path / "offline").exists()  # nothing ran


def test_an_empty_training_window_names_the_windows(tmp_path: Path) -> None:
    summary = run_backfill(
        FeaturePipelineSettings(data_root=tmp_path), date(2013, 1, 1), date(2013, 1, 3)
    )
    assert summary.error is None
    result = _cli(
        "training_pipeline", "train", "--train", "2013-01-01:2013-01-04",
        "--validation", "2014-02-01:2014-02-15", "--test", "2014-02-15:2014-03-01",
        root=tmp_path,
    )  # fmt: skip
    line = _one_line(result)
    assert line.startswith(
        "error: no labeled flights in the validation 2014-02-01:2014-02-15, test "
        "2014-02-15:2014-03-01 windows (START:END, END exclusive);"
    ), line
    assert "datetime" not in line
