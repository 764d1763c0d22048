"""The training pipeline end to end on real January data: register, gates, promote, rollback."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from shared.feature_store import open_feature_store
from shared.feature_view import FLIGHT_DELAY_VIEW
from shared.registry import CHALLENGER, CHAMPION, ModelRegistry
from tests.training_fixtures import SMALL, small_config, training_env, training_settings
from training_pipeline import loop
from training_pipeline.__main__ import app
from training_pipeline.champion import load_exported, score_version
from training_pipeline.data import load_training_data
from training_pipeline.evaluation import classification_metrics
from training_pipeline.model import TabularNet
from training_pipeline.pipeline import run_training

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPECTED_FILES = {
    "model.pt",
    "mdt_state.json",
    "signature.json",
    "feature_view.json",
    "reference_stats.json",
    "config.json",
    "lineage.json",
    "metrics.json",
    "reliability.png",
    "triton/cpu/flight_delay/config.pbtxt",
    "triton/cpu/flight_delay/1/model.pt",
    "triton/cpu/flight_delay/1/model.py",
    "triton/gpu/flight_delay/config.pbtxt",
    "triton/gpu/flight_delay/1/model.pt",
}


def test_train_register_refuse_a_worse_model_promote_and_roll_back(
    year_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    settings = training_settings(year_root, root)
    config = small_config(**{"baseline.enabled": True, "baseline.max_iter": 30})

    first = run_training(settings, config)
    assert first is not None and first.decision.passed and first.promoted
    assert first.baseline is not None and 0.5 < first.baseline["roc_auc"] < 1
    assert first.network["roc_auc"] > 0.6
    assert first.lineage["cancelled"] > 0 and first.lineage["table_versions"]["flights"] >= 1

    registry = ModelRegistry(settings.registry_settings())
    assert registry.version_for(CHAMPION) == registry.version_for(CHALLENGER) == "1"
    loaded = registry.load(CHAMPION, tmp_path / "v1")  # every sha256 checked on the way
    assert set(loaded.manifest) == EXPECTED_FILES
    assert loaded.read_json("signature.json")["n_numeric"] > 0
    assert loaded.read_json("lineage.json")["data_sha256"] == first.lineage["data_sha256"]

    run = MlflowClient(settings.registry_settings().tracking_uri).get_run(first.run_id)
    assert run.data.tags["data_sha256"] == first.lineage["data_sha256"]
    assert run.data.tags["git_commit"] == "test-commit"
    assert run.data.tags["table_version.route_stats"].isdigit()
    assert run.data.params["optim.lr"] == str(config.optim.lr)
    assert {"test_roc_auc", "test_pr_auc", "test_log_loss", "test_brier", "test_base_rate"} <= set(
        run.data.metrics
    )
    assert "test_roc_auc.EWR" in run.data.metrics and "baseline_test_roc_auc" in run.data.metrics

    # A worse candidate (barely trained) on the same window: registered, refused, exit code 3.
    for key, value in training_env(year_root, root).items():
        if key.startswith("FTI_"):
            monkeypatch.setenv(key, value)
    worse = tmp_path / "worse.json"
    worse.write_text(
        json.dumps(SMALL | {"optim": SMALL["optim"] | {"epochs": 1, "lr": 1e-7, "warmup_steps": 0}})
    )
    monkeypatch.setenv("FTI_LEAD_MINUTES", "120")  # the flag wins over the environment
    result = CliRunner().invoke(app, ["train", "--config", str(worse), "--lead-minutes", "15"])
    assert result.exit_code == 3, result.output
    assert "stays challenger" in result.output and "champion v1" in result.output
    assert registry.version_for(CHAMPION) == "1"
    assert registry.version_for(CHALLENGER) == "2"

    # The lead is stored with each version: tag, config, feature view; the data hash follows it.
    assert first.lead_minutes == 60 and registry.get("1").tags["lead_minutes"] == "60"
    assert registry.get("2").tags["lead_minutes"] == "15"
    second = registry.load("2", tmp_path / "v2")
    assert second.read_json("feature_view.json")["lead_minutes"] == 15
    assert second.read_json("config.json")["lead_minutes"] == 15
    assert loaded.read_json("feature_view.json")["lead_minutes"] == 60
    assert second.read_json("lineage.json")["data_sha256"] != first.lineage["data_sha256"]
    monkeypatch.delenv("FTI_LEAD_MINUTES")

    result = CliRunner().invoke(app, ["promote", "challenger"])
    assert result.exit_code == 0, result.output
    assert registry.version_for(CHAMPION) == "2"
    result = CliRunner().invoke(app, ["rollback"])
    assert result.exit_code == 0 and "version 1" in result.output
    assert registry.version_for(CHAMPION) == "1"


def test_cli_errors_are_one_line_and_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FTI_DATA_ROOT", str(tmp_path))
    result = CliRunner().invoke(app, ["train", "--train", "2013-03-01"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "expected START:END" in result.output
    result = CliRunner().invoke(app, ["rollback"])
    assert result.exit_code == 1 and result.output.startswith("error:")
    result = CliRunner().invoke(app, ["train", "--epochs", "1"])  # no feature store there
    assert result.exit_code == 1 and "feature pipeline" in result.output
    result = CliRunner().invoke(app, ["train", "--lead-minutes", "-5"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "--lead-minutes" in result.output, result.output
    # From the environment, through the real command line (one line, exit 2).
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTI_")}
    done = subprocess.run(
        [sys.executable, "-m", "training_pipeline", "retrain", "--until", "2013-03-01"],
        env=env | {"FTI_DATA_ROOT": str(tmp_path), "FTI_LEAD_MINUTES": "soon"},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "FTI_LEAD_MINUTES" in done.stderr and "'soon'" in done.stderr, done.stderr


def test_recorded_test_metrics_are_the_served_models(
    year_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gates and the registry judge the exported float32 TorchScript model, scored as Triton
    runs it, not the network as it trained. The network here trains under bf16 autocast (the
    GPU's precision, on CPU), so its own probabilities differ from the served model's."""

    def bf16(device: torch.device) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    monkeypatch.setattr(loop, "autocast", bf16)
    settings = training_settings(year_root, tmp_path / "data")
    config = small_config()
    outcome = run_training(settings, config)
    assert outcome is not None

    loaded = ModelRegistry(settings.registry_settings()).load(outcome.version, tmp_path / "v")
    store = open_feature_store(settings.store_settings())
    try:
        data = load_training_data(store, FLIGHT_DELAY_VIEW, config.windows, config.mdt)
    finally:
        store.close()
    served = classification_metrics(data.test.labels, score_version(loaded, data.test.frame))
    assert outcome.network == served
    assert loaded.read_json("metrics.json")["network"] == served
    assert loaded.version.tags["test_roc_auc"] == f"{served['roc_auc']:.6f}"
    run = MlflowClient(settings.registry_settings().tracking_uri).get_run(outcome.run_id)
    assert run.data.metrics["test_roc_auc"] == served["roc_auc"]
    assert run.data.metrics["test_log_loss"] == served["log_loss"]

    # ... and the bf16 network itself scores differently: the check above is not vacuous.
    net = TabularNet.from_config(config.model, data.mdt.n_numeric, data.mdt.cardinalities)
    net.load_state_dict(load_exported(loaded.file("model.pt")).net.state_dict())
    tensors = loop.Tensors.from_split(data.test.features, data.test.labels, torch.device("cpu"))
    network_probs = loop.predict(net, tensors, config.optim.eval_batch_size).numpy()
    assert classification_metrics(data.test.labels, network_probs) != served
