"""The daily Dagster job run for real: every task is a pipeline CLI in a subprocess, on a small
data root (three weeks of January 2013, a small champion)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

from orchestration.runs import run_day, run_days
from orchestration.settings import DagSettings
from shared.feature_definitions import FLIGHTS
from shared.feature_store import open_feature_store
from shared.prediction_log import PREDICTIONS
from shared.registry import ModelRegistry, RegistrySettings
from shared.settings import FeatureStoreSettings
from tests.orchestration.conftest import DAG_DAY, MODEL, OperatingRoot

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RETRAIN_ARGS = '["--train-days", "10", "--validation-days", "3", "--test-days", "4"]'


def dag_settings(root: OperatingRoot, **overrides: object) -> DagSettings:
    fields: dict[str, object] = {
        "batch_in_process": True,  # no Triton in this test: the same TorchScript file in process
        "retry_delay_s": 0,
        "max_retries": 1,
        "first_day": date(2013, 1, 2),
        "retrain_config": root.training_config,
    }
    return DagSettings(**(fields | overrides))


def batch_days(root: Path) -> set[date]:
    """Local flight dates the batch job scored into the predictions table."""
    store = open_feature_store(FeatureStoreSettings(data_root=root))
    try:
        rows = store.read(PREDICTIONS, columns=["flight_date", "source"])
    finally:
        store.close()
    return set(rows.filter(pl.col("source") == "batch")["flight_date"].to_list())


def flight_days(root: Path) -> set[date]:
    """Local dates of the flights in the offline store."""
    store = open_feature_store(FeatureStoreSettings(data_root=root))
    try:
        flights = store.read(FLIGHTS, columns=["sched_dep_utc"])
    finally:
        store.close()
    local = pl.col("sched_dep_utc").dt.convert_time_zone("America/New_York").dt.date()
    return set(flights.select(local).to_series().to_list())


def test_one_day_runs_every_task_over_the_real_clis(
    pipeline_env: OperatingRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = pipeline_env.root
    monkeypatch.setenv("FTI_RETRAIN_MAX_AGE_DAYS", "1")  # the policy fires: retraining runs
    monkeypatch.setenv("FTI_DAG_RETRAIN_ARGS", RETRAIN_ARGS)
    assert DAG_DAY not in flight_days(root)

    run = run_day(dag_settings(pipeline_env), DAG_DAY)

    assert run.success, run.failures
    features, batch = run.tasks["feature_run"], run.tasks["batch_scoring"]
    monitoring, retraining = run.tasks["monitoring"], run.tasks["retraining"]
    assert features.exit_code in (0, 3) and features.summary is not None
    assert features.argv[-3:] == ["run", "--date", "2013-01-21"]
    assert DAG_DAY in flight_days(root)  # the day's flights and outcomes arrived

    tomorrow = DAG_DAY + timedelta(days=1)
    assert batch.exit_code == 0 and batch.summary is not None
    assert batch.summary["date"] == tomorrow.isoformat() and batch.summary["flights"] > 500
    assert tomorrow in batch_days(root)  # scored with the features the feature run wrote

    assert monitoring.exit_code == 3 and monitoring.verdict == "finding"  # the age policy fired
    assert monitoring.summary is not None
    assert monitoring.summary["window"]["end"] == DAG_DAY.isoformat()
    assert Path(monitoring.summary["outputs"]["html"]).is_file()

    assert retraining.skipped is None and retraining.exit_code in (0, 3)
    command = retraining.argv[retraining.argv.index("retrain") :]
    assert command[:4] == ["retrain", "--until", "2013-01-21", "--config"]
    assert command[-2:] == ["--test-days", "4"]  # FTI_DAG_RETRAIN_ARGS
    registry = ModelRegistry(RegistrySettings(data_root=root, model_name=MODEL))
    root_champion = pipeline_env.champion
    assert registry.version_for("champion") == root_champion  # CT never moves champion
    new = retraining.summary["version"] if retraining.summary else None
    assert new is not None and new != pipeline_env.champion
    assert registry.version_for("challenger") == new

    shadow = run.tasks["shadow_decision"]  # the last task: the new challenger has no shadow yet
    assert shadow.exit_code == 0 and shadow.summary is not None
    assert shadow.summary["challenger"] == new and shadow.summary["champion"] == root_champion
    if retraining.exit_code == 3:  # refused by the gates: decided at once, champion kept
        assert shadow.summary["action"] == "kept the champion" and not shadow.summary["pending"]
        assert "gates refused" in registry.get(new).tags["shadow_result"]
    else:
        assert shadow.summary["action"] == "keep shadowing" and shadow.summary["pending"]
        assert "shadow_result" not in registry.get(new).tags
    assert registry.version_for("champion") == root_champion


def test_a_failed_feature_run_stops_the_days_downstream_tasks(
    pipeline_env: OperatingRoot, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = pipeline_env.root
    broken = tmp_path / "raw"
    broken.mkdir()
    (broken / "flights.csv").write_text("year,month,day\nnot,a,flight\n")
    monkeypatch.setenv("FTI_SOURCE", str(broken))  # the feature CLI fails (exit 1)
    predictions_before = batch_days(root)
    reports_before = set((root / "monitoring").glob("*"))

    runs = run_days(dag_settings(pipeline_env), DAG_DAY, DAG_DAY + timedelta(days=1))

    assert len(runs) == 1, "the backfill stops at the failed day"
    run = runs[0]
    assert not run.success
    assert "feature_run" in run.failures and "exit 1" in run.failures["feature_run"]
    assert run.retries == {"feature_run": 1}  # exit 1 is retried (max_retries=1), then fails
    assert run.tasks == {}  # batch scoring, monitoring, retraining, shadow decision: none ran
    assert batch_days(root) == predictions_before  # nothing scored with stale features
    assert DAG_DAY not in flight_days(root)
    after = set((root / "monitoring").glob("*"))
    assert after == reports_before
