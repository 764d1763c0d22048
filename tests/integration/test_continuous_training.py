"""Continuous training: a new version becomes challenger only; the gates' decision is recorded on
it, and a later promotion step refuses what the gates refused. Real January data, real MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from shared.errors import GateFailed
from shared.promotion import (
    GATES_PASSED_TAG,
    GATES_SUMMARY_TAG,
    PROMOTION_POLICY_TAG,
    PROMOTION_REASON_TAG,
    Promotion,
    gate_eligibility,
    promote_if_eligible,
)
from shared.registry import CHALLENGER, CHAMPION, ModelRegistry
from tests.training_fixtures import SMALL, small_config, training_env, training_settings
from training_pipeline.__main__ import app
from training_pipeline.pipeline import run_training

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ct_mode_never_moves_champion_and_records_the_gate_decision(
    year_root: Path, tmp_path: Path
) -> None:
    settings = training_settings(year_root, tmp_path / "data")
    registry = ModelRegistry(settings.registry_settings())
    config = small_config()

    first = run_training(settings, config)  # the default: a passing version becomes champion
    assert first is not None and first.promoted and first.promotion is Promotion.if_gates_pass
    assert registry.get(first.version).tags[GATES_PASSED_TAG] == "true"
    assert "training run" in registry.get(first.version).tags[PROMOTION_REASON_TAG]

    # Same config, same data, same seed: at least as good as the champion, so the gates pass -
    # and still champion does not move.
    second = run_training(settings, config, promotion=Promotion.never)
    assert second is not None and second.decision.passed and not second.promoted
    assert registry.version_for(CHAMPION) == first.version
    assert registry.version_for(CHALLENGER) == second.version
    tags = registry.get(second.version).tags
    assert tags[GATES_PASSED_TAG] == "true" and tags[PROMOTION_POLICY_TAG] == "never"
    assert tags[GATES_SUMMARY_TAG] == "all gates passed"
    assert PROMOTION_REASON_TAG not in tags
    assert registry.champion_history() == [first.version]

    # The later step (shadow comparison) may promote it, and says why.
    promote_if_eligible(registry, CHALLENGER, "shadow: beat the champion on 7 days of labels")
    assert registry.version_for(CHAMPION) == second.version
    assert registry.get(second.version).tags[PROMOTION_REASON_TAG].startswith("shadow:")


def test_a_refused_challenger_is_recorded_and_cannot_be_promoted_as_eligible(
    year_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    settings = training_settings(year_root, root)
    registry = ModelRegistry(settings.registry_settings())
    champion = run_training(settings, small_config())
    assert champion is not None and champion.promoted

    barely_trained = small_config(
        **{"optim.epochs": 1, "optim.lr": 1e-7, "optim.warmup_steps": 0, "gates.min_roc_auc": 0.6}
    )
    refused = run_training(settings, barely_trained, promotion=Promotion.never)
    assert refused is not None and not refused.decision.passed and not refused.promoted
    version = registry.get(refused.version)
    assert version.tags[GATES_PASSED_TAG] == "false"
    assert "is below the floor 0.6000" in version.tags[GATES_SUMMARY_TAG]
    eligibility = gate_eligibility(version)
    assert not eligibility.eligible and "refused" in eligibility.reason

    with pytest.raises(GateFailed, match="champion unchanged"):
        promote_if_eligible(registry, CHALLENGER, "should not happen")
    assert registry.version_for(CHAMPION) == champion.version

    for key, value in training_env(year_root, root).items():
        if key.startswith("FTI_"):
            monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["promote", "challenger", "--require-eligible"])
    assert result.exit_code == 3, result.output
    assert result.output.startswith("error: not promoted") and "refused" in result.output
    assert registry.version_for(CHAMPION) == champion.version


def test_retrain_cli_trains_on_the_newest_window_as_challenger_only(
    year_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    settings = training_settings(year_root, root)
    registry = ModelRegistry(settings.registry_settings())
    champion = run_training(settings, small_config())
    assert champion is not None and champion.promoted
    for key, value in training_env(year_root, root).items():
        if key.startswith("FTI_"):
            monkeypatch.setenv(key, value)
    config = tmp_path / "small.json"
    config.write_text(json.dumps(SMALL))

    args = ["retrain", "--until", "2013-02-25", "--config", str(config)]
    windows = ["--train-days", "21", "--validation-days", "7", "--test-days", "14"]
    result = CliRunner().invoke(app, args + windows)
    assert result.exit_code in (0, 3), result.output  # the gates decide; never champion
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["promoted"] is False and summary["promotion"] == "never"
    assert registry.version_for(CHAMPION) == champion.version
    assert registry.version_for(CHALLENGER) == summary["version"]
    run = MlflowClient(settings.registry_settings().tracking_uri).get_run(summary["run_id"])
    assert run.data.tags["window.test"] == "2013-02-12:2013-02-26"  # ends the day after --until
    assert run.data.tags["window.validation"] == "2013-02-05:2013-02-12"
    assert run.data.tags["window.train"] == "2013-01-15:2013-02-05"
    eligible = registry.get(summary["version"]).tags[GATES_PASSED_TAG] == "true"
    assert eligible == (result.exit_code == 0)

    result = CliRunner().invoke(app, ["retrain", "--until", "2013-02-30"])
    assert result.exit_code == 2 and "--until '2013-02-30'" in result.output
    result = CliRunner().invoke(app, ["retrain", "--until", "2013-02-25", "--train-days", "2"])
    assert result.exit_code == 2 and "invalid setting --train-days" in result.output
