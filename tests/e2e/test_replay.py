"""A short year replay through its command line, on the real data: the retraining policy fires,
continuous training makes a challenger and never a champion, only the shadow comparison
promotes, the report lists every week, and re-running doubles nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from shared.feature_store import open_feature_store
from shared.prediction_log import PREDICTIONS
from shared.promotion import GATES_PASSED_TAG, PROMOTION_POLICY_TAG, PROMOTION_REASON_TAG
from shared.registry import CHALLENGER, CHAMPION, ModelRegistry, RegistrySettings
from shared.settings import FeatureStoreSettings
from tests.training_fixtures import SMALL

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "replay_2013.py"


def replay(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FTI_")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--data-root", str(root), *args],
        cwd=ROOT,
        env=base | {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"} | env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def batch_predictions(root: Path) -> tuple[pl.DataFrame, int | None]:
    store = open_feature_store(FeatureStoreSettings(data_root=root))
    try:
        rows = store.read(PREDICTIONS, columns=["flight_id", "model_version", "flight_date"])
        return rows, store.table_version(PREDICTIONS)
    finally:
        store.close()


def journal(root: Path) -> dict[str, Any]:
    return json.loads((root / "replay" / "journal.json").read_text())


@pytest.fixture(scope="module")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trainer's small test model; gates tolerant enough that a retrain is eligible."""
    path = tmp_path_factory.mktemp("config") / "small.json"
    config = {k: v for k, v in SMALL.items() if k != "windows"}
    path.write_text(json.dumps(config | {"gates": {"min_roc_auc": 0.5, "max_roc_auc_drop": 0.05}}))
    return path


# Forced to fire: any drifted feature (summer vs a winter-spring reference drifts), no schedule,
# a training allowed every week, and shadow margins a useful challenger can meet.
POLICY = ["--drift-share", "0.01", "--schedule-weeks", "0", "--epochs", "1"]
ENV = {
    "FTI_RETRAIN_COOLDOWN_WEEKS": "1",
    "FTI_SHADOW_MIN_AUC_GAIN": "-0.1",
    "FTI_SHADOW_MAX_LOG_LOSS_INCREASE": "1.0",
}


def test_a_short_replay_retrains_shadows_promotes_and_resumes(
    tmp_path: Path, small_config: Path
) -> None:
    root = tmp_path / "replay"
    options = [*POLICY, "--config", str(small_config)]
    first = replay(root, "--weeks", "2", *options, **ENV)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["weeks"] == 2 and summary["promotions"] == 1

    weeks = journal(root)["weeks"]
    one, two = weeks
    # W01: the policy fired on drift; CT trained v2 as challenger; champion stayed v1.
    assert one["policy"]["fire"] and "data drift" in one["policy"]["reasons"][0]
    assert one["policy"]["trained"] == "2" and one["champion_after"] == "1"
    assert set(one["scoring"]["versions"]) == {"1"}
    # W02: both scored; the shadow comparison on W02's labels promoted v2; CT trained v3.
    assert set(two["scoring"]["versions"]) == {"1", "2"}
    assert two["shadow"]["promoted"] and two["shadow"]["flights"] > 1000
    assert two["champion_after"] == "2" and two["policy"]["trained"] == "3"

    registry = ModelRegistry(RegistrySettings(data_root=root))
    assert registry.champion_history() == ["1", "2"]  # only the initial one and the shadow's
    assert registry.version_for(CHAMPION) == "2" and registry.version_for(CHALLENGER) == "3"
    assert registry.get("2").tags[PROMOTION_REASON_TAG].startswith("W02")
    v3 = registry.get("3").tags
    assert v3[PROMOTION_POLICY_TAG] == "never" and GATES_PASSED_TAG in v3

    report = (root / "replay" / "report.md").read_text()
    assert "W01 Jul 01-Jul 07" in report and "W02 Jul 08-Jul 14" in report
    assert (root / "replay" / "report.html").is_file()
    assert json.loads((root / "replay" / "report.json").read_text())["summary"]["weeks"] == 2
    monitoring = list((root / "replay" / "monitoring").glob("week-0*/*.html"))
    assert len(monitoring) == 2

    before, _ = batch_predictions(root)
    assert before.height == before.select("flight_id", "model_version").n_unique()
    by_week = before.group_by(pl.col("flight_date") > pl.date(2013, 7, 7)).agg(
        pl.col("model_version").unique().sort()
    )
    versions = {row[0]: row[1] for row in by_week.iter_rows()}
    assert versions == {False: ["1"], True: ["1", "2"]}  # W02: champion and shadow, both logged
    counts = before.group_by("model_version").len().sort("model_version")

    # Resume with one more week: W01-W02 are not redone, W03 is added.
    second = replay(root, "--weeks", "3", *options, **ENV)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "W01 Jul 01-Jul 07: done in an earlier run" in second.stderr
    after, version = batch_predictions(root)
    assert after.height == after.select("flight_id", "model_version").n_unique()
    old_weeks = after.filter(pl.col("flight_date") <= pl.date(2013, 7, 14))
    assert old_weeks.group_by("model_version").len().sort("model_version").equals(counts)
    assert [w["label"][:3] for w in journal(root)["weeks"]] == ["W01", "W02", "W03"]

    # The same command again: nothing to do, nothing written.
    third = replay(root, "--weeks", "3", *options, **ENV)
    assert third.returncode == 0, third.stderr[-3000:]
    again, same_version = batch_predictions(root)
    assert again.height == after.height and same_version == version
    report = (root / "replay" / "report.md").read_text()
    assert report.count("| W03 Jul 15-Jul 21 |") == 1

    # Resuming under another plan would mix two experiments: refused, nothing touched.
    other_plan = [*POLICY[:-1], "2", "--config", str(small_config)]  # --epochs 2
    other = replay(root, "--weeks", "4", *other_plan, **ENV)
    assert other.returncode == 2 and "another plan" in other.stderr and "epochs" in other.stderr
    assert batch_predictions(root)[1] == version


def test_bad_options_and_unsafe_roots_are_one_line_errors(tmp_path: Path) -> None:
    result = replay(tmp_path / "r", "--start-week", "30")
    assert result.returncode == 2 and "weeks 1..27" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    precious = tmp_path / "data"
    (precious / "offline").mkdir(parents=True)
    result = replay(precious, "--fresh")
    assert result.returncode == 2 and "refusing to delete" in result.stderr
    assert (precious / "offline").is_dir()
