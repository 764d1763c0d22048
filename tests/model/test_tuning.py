"""Hyperparameter search: search spaces, the test window never read, trials as nested MLflow
runs with their curves, pruning, the best configuration as a `train --config` file."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient

import training_pipeline.data as training_data
from tests.training_fixtures import small_config, training_settings
from training_pipeline.config import TrainingConfig, TuningSettings, Window, Windows
from training_pipeline.loop import EpochRecord
from training_pipeline.tuning import (
    PARENT_RUN_TAG,
    STATE_TAG,
    PruningHook,
    SearchTarget,
    network_config,
    run_study,
    tuned_config,
    write_config,
)


def tuning_settings(year_root: Path, root: Path, **overrides: Any) -> TuningSettings:
    base = training_settings(year_root, root)
    return TuningSettings.model_validate(base.model_dump() | overrides)


@pytest.mark.unit
def test_a_trials_parameters_give_back_the_config_it_trained(tmp_path: Path) -> None:
    base = small_config()
    trial = optuna.trial.FixedTrial(
        {
            "width": 100,
            "depth": 3,
            "dropout": 0.2,
            "max_embedding_dim": 8,
            "lr": 2e-3,
            "weight_decay": 1e-3,
            "batch_size": 1024,
        }
    )
    config = network_config(trial, base)
    assert config.model.hidden == (100, 50, 25)
    assert (config.model.dropout, config.model.max_embedding_dim) == (0.2, 8)
    assert (config.optim.lr, config.optim.weight_decay, config.optim.batch_size) == (
        2e-3,
        1e-3,
        1024,
    )
    assert config.windows == base.windows and config.gates == base.gates  # only the searched keys
    path = tmp_path / "tuned.json"
    write_config(tuned_config(SearchTarget.network, base, trial.params), path)
    assert TrainingConfig.from_file(path) == config  # what `train --config` reads


@pytest.mark.unit
def test_grace_must_outlast_the_heartbeat(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="FTI_TUNING_GRACE_S"):
        TuningSettings(data_root=tmp_path, tuning_heartbeat_s=30, tuning_grace_s=30)


@pytest.mark.slow
@pytest.mark.integration
def test_a_study_never_reads_the_test_window_and_nests_every_trial_in_mlflow(
    year_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[tuple[date, date]] = []
    real = training_data.build_training_frame

    def recording(store: Any, view: Any, start: date, end: date, **kwargs: Any) -> Any:
        read.append((start, end))
        return real(store, view, start, end, **kwargs)

    monkeypatch.setattr(training_data, "build_training_frame", recording)
    # A test window the store does not even hold: `train` would refuse it, a search never looks.
    windows = Windows(
        train=Window.parse("2013-01-01:2013-01-22"),
        validation=Window.parse("2013-01-22:2013-01-29"),
        test=Window.parse("2014-03-01:2014-04-01"),
    )
    base = small_config(windows=windows, **{"optim.epochs": 2})
    settings = tuning_settings(year_root, tmp_path / "root", tuning_study="unit")
    outcome = run_study(settings, base, trials=3, output=tmp_path / "tuned.json")

    assert read and max(end for _, end in read) <= windows.validation.end
    assert sum(outcome.states.get(s, 0) for s in ("COMPLETE", "PRUNED")) == 3
    assert outcome.worker_trials == 3
    tuned = TrainingConfig.from_file(tmp_path / "tuned.json")
    assert tuned == tuned_config(SearchTarget.network, base, outcome.best_params)
    assert tuned.windows == windows  # the gates' test window is the base config's, unchanged

    client = MlflowClient(settings.tracking_uri)
    study_run = client.get_run(outcome.mlflow_run_id)
    assert study_run.info.status == "FINISHED"
    assert study_run.data.metrics["best_val_roc_auc"] == pytest.approx(outcome.best_value)
    trials = client.search_runs(
        [study_run.info.experiment_id], f"tags.`{PARENT_RUN_TAG}` = '{outcome.mlflow_run_id}'"
    )
    assert len(trials) == 3
    for run in trials:
        assert run.data.tags[STATE_TAG] in ("COMPLETE", "PRUNED")
        assert {"trial.width", "trial.lr", "trial.batch_size", "model.hidden"} <= set(
            run.data.params
        )
        curve = client.get_metric_history(run.info.run_id, "val_roc_auc")
        assert [m.step for m in curve] == list(range(1, len(curve) + 1)) and curve
        # A valid AUC, not a good one: a trial drawn with lr=1e-4 and batches of 4096 barely
        # moves in 2 epochs, and such a draw may score under 0.5 on a week of validation.
        assert 0.0 <= run.data.metrics["best_val_roc_auc"] <= 1.0
        assert run.data.metrics["best_val_roc_auc"] == pytest.approx(max(m.value for m in curve))
    best = next(r for r in trials if r.data.tags["optuna.trial"] == str(outcome.best_trial))
    assert best.data.metrics["best_val_roc_auc"] == pytest.approx(outcome.best_value)
    assert json.loads(json.dumps(outcome.summary()))["best"]["trial"] == outcome.best_trial


@pytest.mark.slow
@pytest.mark.integration
def test_the_boosted_trees_search_writes_its_section(year_root: Path, tmp_path: Path) -> None:
    base = small_config(**{"baseline.max_iter": 20})
    settings = tuning_settings(year_root, tmp_path / "root", tuning_study="trees")
    outcome = run_study(
        settings, base, trials=2, target=SearchTarget.baseline, output=tmp_path / "trees.json"
    )
    assert outcome.states == {"COMPLETE": 2}
    tuned = TrainingConfig.from_file(tmp_path / "trees.json")
    assert tuned.baseline.enabled
    assert tuned.baseline.learning_rate == pytest.approx(outcome.best_params["learning_rate"])
    assert tuned.model == base.model and tuned.optim == base.optim
    client = MlflowClient(settings.tracking_uri)
    run_id = optuna.load_study(study_name="trees", storage=settings.storage_url).best_trial
    curve = client.get_metric_history(run_id.user_attrs["mlflow_run_id"], "val_loss")
    assert len(curve) >= 2  # the trees' validation loss per boosting iteration


def epoch(number: int, auc: float) -> EpochRecord:
    return EpochRecord(number, 0.5, 0.5, auc, 1e-3, 1000.0, 1.0)


@pytest.mark.unit
def test_a_trial_below_the_median_stops_unless_it_is_on_its_last_epoch() -> None:
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1)
    )
    good = study.ask()
    hook = PruningHook(good, last_epoch=3)
    assert not any(hook(epoch(e, 0.7 + e / 100)) for e in (1, 2, 3))
    study.tell(good, hook.best)

    bad = PruningHook(study.ask(), last_epoch=3)
    assert not bad(epoch(1, float("nan")))  # nothing to report yet (one class only)
    assert bad(epoch(2, 0.6)) and bad.pruned_at == 2
    on_its_last = PruningHook(study.ask(), last_epoch=2)
    assert not on_its_last(epoch(2, 0.6)) and on_its_last.pruned_at is None
    assert on_its_last.best == 0.6  # the best so far is what is reported, not the last epoch's


@pytest.mark.unit
def test_bad_tuning_settings_are_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from training_pipeline.__main__ import app

    monkeypatch.setenv("FTI_DATA_ROOT", str(tmp_path))
    result = CliRunner().invoke(app, ["tune", "--trials", "1", "--storage", "nonsense"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "--storage" in result.output and "sqlite:///" in result.output
    monkeypatch.setenv("FTI_TUNING_GRACE_S", "5")
    monkeypatch.setenv("FTI_TUNING_HEARTBEAT_S", "10")
    result = CliRunner().invoke(app, ["tune", "--trials", "1"])
    assert result.exit_code == 2 and "FTI_TUNING_GRACE_S" in result.output, result.output
