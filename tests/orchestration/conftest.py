"""A small operating data root for the daily DAG: three weeks of real January 2013 features, a
small champion trained on them by the training pipeline, its batch predictions for the six days
before the DAG's day (so monitoring has a window of scored, labelled flights), and the schedule
of the day after the DAG's day.

The schedule: the DAG's batch task scores the departures of the run's "today" (partition day
D + 1) before they leave, which needs them in the ``flights`` group ahead of time, without
outcomes. The feature pipeline writes a day's flights only once the day is over (with their
outcomes), so here an upstream schedule feed is stood in for: D + 1's real flights, their
outcome columns emptied, inserted through the feature store API.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

from feature_pipeline.pipeline import run_backfill
from feature_pipeline.settings import FeaturePipelineSettings
from shared.feature_definitions import FLIGHTS
from shared.feature_store import open_feature_store

HISTORY_END = date(2013, 1, 20)  # features in the store up to this day
DAG_DAY = date(2013, 1, 21)  # the partition the tests run
SCORED_BEFORE = [HISTORY_END - timedelta(days=i) for i in range(5, -1, -1)]  # Jan 15..20
ROOT_DIR = Path(__file__).resolve().parents[2]
MODEL = "flight_delay"

SMALL_TOML = """
[model]
hidden = [16]
dropout = 0.0
max_embedding_dim = 4

[optim]
epochs = 1
batch_size = 1024
warmup_steps = 5
patience = 5

[baseline]
enabled = false

[gates]
min_roc_auc = 0.5
"""


@dataclass(frozen=True)
class OperatingRoot:
    root: Path
    champion: str
    training_config: Path


def build_operating_root(root: Path) -> OperatingRoot:
    from inference_pipeline.batch import score_day
    from inference_pipeline.settings import InferenceSettings
    from training_pipeline.config import TrainingConfig, TrainingSettings
    from training_pipeline.pipeline import run_training

    summary = run_backfill(FeaturePipelineSettings(data_root=root), date(2013, 1, 1), HISTORY_END)
    assert summary.error is None, summary.error
    insert_schedule(root, DAG_DAY + timedelta(days=1))
    config_file = root / "small-training.toml"
    config_file.write_text(SMALL_TOML)
    config = TrainingConfig.from_file(config_file).with_overrides(
        windows={
            "train": {"start": "2013-01-01", "end": "2013-01-11"},
            "validation": {"start": "2013-01-11", "end": "2013-01-15"},
            "test": {"start": "2013-01-15", "end": "2013-01-21"},
        }
    )
    settings = TrainingSettings(
        data_root=root,
        model_name=MODEL,
        checkpoint_dir=root / "checkpoints",
        git_commit="dag-tests",
        device="cpu",
    )
    outcome = run_training(settings, config)
    assert outcome is not None and outcome.promoted, outcome
    inference = InferenceSettings(data_root=root, model_name=MODEL, allow_unauthenticated=True)
    for day in SCORED_BEFORE:
        score_day(inference, day, model_ref="champion", in_process=True)
    return OperatingRoot(root=root, champion=outcome.version, training_config=config_file)


def insert_schedule(root: Path, day: date) -> None:
    """``day``'s scheduled departures (no outcome yet) into the root's ``flights`` group."""
    scratch = root / "schedule-scratch"
    summary = run_backfill(FeaturePipelineSettings(data_root=scratch), day, day)
    assert summary.error is None, summary.error
    source = open_feature_store(FeaturePipelineSettings(data_root=scratch))
    target = open_feature_store(FeaturePipelineSettings(data_root=root))
    try:
        flights = source.read(FLIGHTS).filter(pl.col("flight_date") == day)
        schedule = flights.with_columns(
            pl.lit(None, pl.Float32).alias("dep_delay"),
            pl.lit(False).alias("is_cancelled"),
            pl.lit(None, pl.Int8).alias("is_delayed"),
        )
        assert schedule.height > 500
        target.insert(FLIGHTS, schedule)
    finally:
        source.close()
        target.close()
    shutil.rmtree(scratch)


@pytest.fixture(scope="session")
def operating_root_template(tmp_path_factory: pytest.TempPathFactory) -> OperatingRoot:
    return build_operating_root(tmp_path_factory.mktemp("dag_template"))


@pytest.fixture
def operating_root(operating_root_template: OperatingRoot, tmp_path: Path) -> OperatingRoot:
    """A private copy per test: the DAG writes features, predictions and versions into it."""
    root = tmp_path / "root"
    shutil.copytree(operating_root_template.root, root)
    return OperatingRoot(
        root=root,
        champion=operating_root_template.champion,
        training_config=root / "small-training.toml",
    )


@pytest.fixture
def pipeline_env(operating_root: OperatingRoot, monkeypatch: pytest.MonkeyPatch) -> OperatingRoot:
    """The environment the DAG's CLI subprocesses inherit, as cron's would be."""
    for name in list(os.environ):
        if name.startswith("FTI_"):
            monkeypatch.delenv(name)
    root = operating_root.root
    monkeypatch.setenv("FTI_DATA_ROOT", str(root))
    monkeypatch.setenv("FTI_MODEL_NAME", MODEL)
    monkeypatch.setenv("FTI_CHECKPOINT_DIR", str(root / "checkpoints"))
    monkeypatch.setenv("FTI_DEVICE", "cpu")
    monkeypatch.setenv("FTI_GIT_COMMIT", "dag-tests")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setenv("PYTHONPATH", str(ROOT_DIR))
    return operating_root
