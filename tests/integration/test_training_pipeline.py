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
from tests.training_fixtures import (
    PYTHON,
    SMALL,
    small_config,
    training_env,
    training_settings,
)
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
    "segment_metrics.json",
    "config.json",
    "lineage.json",
    "metrics.json",
    "reliability.png",
    "triton/cpu/flight_delay/config.pbtxt",
    "triton/cpu/flight_delay/1/model.pt",
    "triton/cpu/flight_delay/1/model.py",
    "triton/gpu/flight_delay/config.pbtxt",
    "triton/gpu/flight_delay/1/model.pt",
    # The version as an MLflow model (pyfunc), beside the Triton repositories.
    "MLmodel",
    "flight_delay_pyfunc.py",
    "artifacts/model.pt",
    "artifacts/mdt_state.json",
    "input_example.json",
    "serving_input_example.json",
    "requirements.txt",
    "python_env.yaml",
    "conda.yaml",
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

    client = MlflowClient(settings.registry_settings().tracking_uri)
    run = client.get_run(first.run_id)
    assert run.data.tags["data_sha256"] == first.lineage["data_sha256"]
    assert run.data.tags["git_commit"] == "test-commit"
    assert_mlflow_native(client, run, registry, first, monkeypatch)
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

    # What an operator lists: both versions, their aliases, gate decisions and metrics.
    env = training_env(year_root, root)
    listed = _models_cli(env, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["version"], r["aliases"], r["gates"]) for r in rows] == [
        ("2", ["challenger"], "refused"),
        ("1", ["champion"], "passed"),
    ]
    assert rows[1]["metrics"]["roc_auc"] == pytest.approx(first.network["roc_auc"], abs=1e-6)
    assert rows[0]["gates_summary"] and rows[0]["promotion_reason"] is None
    assert rows[1]["run_id"] == first.run_id and rows[1]["registered"].startswith("20")
    table = _models_cli(env, "--limit", "1")
    assert table.returncode == 0 and "challenger" in table.stdout
    assert "refused" in table.stdout and "passed" not in table.stdout  # only the newest
    assert "roc auc" in table.stdout


def _models_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "training_pipeline", "models", *args],
        env=env | {"COLUMNS": "300"},  # the table unwrapped, to read it here
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_mlflow_native(  # type: ignore[no-untyped-def]
    client: MlflowClient, run, registry: ModelRegistry, outcome, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an MLflow user finds: a run that lasted the training, with live epoch curves, source
    tags and its training data as a dataset; the version as a logged pyfunc model that loads
    from ``models:/<name>@champion`` and answers feature rows."""
    import mlflow
    import polars as pl

    from shared.mlflow_model import PROBABILITY

    assert run.info.status == "FINISHED"
    epochs = client.get_metric_history(run.info.run_id, "val_roc_auc")
    assert [m.step for m in epochs] == [1, 2, 3]  # one point per epoch, logged as it ended
    stamps = [m.timestamp for m in epochs]
    assert run.info.start_time < stamps[0] <= stamps[1] <= stamps[2] < run.info.end_time
    assert run.info.end_time - run.info.start_time > 1000  # opened when training started
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] == "test-commit"
    assert tags["mlflow.user"] and tags["mlflow.source.name"] and tags["mlflow.source.type"]

    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.digest == outcome.lineage["data_sha256"][:36]
    assert dataset.source_type == "fti_feature_store"
    source = json.loads(dataset.source)
    assert source["table_versions"] == outcome.lineage["table_versions"]
    assert source["data_sha256"] == outcome.lineage["data_sha256"]
    assert json.loads(dataset.profile)["num_rows"] == sum(outcome.lineage["rows"].values())
    input_tags = {t.key: t.value for t in dataset_input.tags}
    assert input_tags["mlflow.data.context"] == "training"
    assert input_tags["rows.test"] == str(outcome.lineage["rows"]["test"])

    version = registry.get(outcome.version)
    logged = client.get_logged_model(version.model_id)
    assert logged.source_run_id == run.info.run_id and logged.status == "READY"
    assert [o.model_id for o in client.get_run(run.info.run_id).outputs.model_outputs] == [
        version.model_id
    ]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.settings.tracking_uri)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as on an operator's machine
    model = mlflow.pyfunc.load_model(f"models:/{registry.name}@champion")
    signature = model.metadata.signature
    assert signature is not None and "route_delay_rate_7d" in signature.inputs.input_names()
    example = model.input_example
    assert example is not None and len(example) == 5
    answer = model.predict(example)
    assert list(answer.columns) == [PROBABILITY] and answer[PROBABILITY].between(0, 1).all()
    assert answer[PROBABILITY].dtype == "float32" and len(set(answer[PROBABILITY])) > 1
    missing = example.copy()
    missing["route_delay_rate_7d"] = float("nan")  # a missing feature is imputed, as online
    assert pl.Series(model.predict(missing)[PROBABILITY]).is_finite().all()
    # Loading it wrote MLflow's and Python's by-products into the (local) stored version; the
    # version still loads verified, by-products aside.
    stored = Path(registry.files_uri(version).removeprefix("file://"))
    assert {"registered_model_meta", "__pycache__"} & {p.name for p in stored.iterdir()}
    reloaded = registry.load(outcome.version)
    assert "MLmodel" in reloaded.manifest and "__pycache__" not in str(list(reloaded.manifest))


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


def test_test_metrics_per_segment_are_recorded_and_a_segment_regression_is_refused(
    year_root: Path, tmp_path: Path
) -> None:
    """Each version records its test metrics per segment (MLflow metrics, metrics.json and the
    segment_metrics.json monitoring reads); a challenger that trails the champion on a segment
    holding more than the configured share of the test rows is refused, the segment named."""
    import numpy as np
    import polars as pl
    from sklearn.metrics import roc_auc_score

    from shared.segments import segment_columns

    settings = training_settings(year_root, tmp_path / "data")
    first = run_training(settings, small_config())
    assert first is not None and first.promoted
    registry = ModelRegistry(settings.registry_settings())
    loaded = registry.load(first.version, tmp_path / "v1")
    document = loaded.read_json("segment_metrics.json")
    rows = {(r["kind"], r["segment"]): r for r in document["segments"]}
    assert {k for k, _ in rows} == {"carrier", "origin", "hour", "month"}
    assert document["test_window"] == str(small_config().windows.test)

    # Independently: the served model on the test rows of origin=EWR.
    store = open_feature_store(settings.store_settings())
    try:
        data = load_training_data(
            store, FLIGHT_DELAY_VIEW, small_config().windows, small_config().mdt
        )
    finally:
        store.close()
    frame = data.test.frame
    probs = score_version(loaded, frame)
    ewr = (segment_columns(frame)["origin"] == "EWR").to_numpy()
    expected = roc_auc_score(data.test.labels[ewr], probs[ewr])
    assert rows[("origin", "EWR")]["roc_auc"] == pytest.approx(expected, abs=1e-9)
    assert rows[("origin", "EWR")]["rows"] == ewr.sum()
    assert sum(r["share"] for (kind, _), r in rows.items() if kind == "origin") == pytest.approx(1)
    assert sum(rows[("origin", "EWR")]["prediction_fractions"]) == pytest.approx(1)
    run = MlflowClient(settings.registry_settings().tracking_uri).get_run(first.run_id)
    assert run.data.metrics["test_roc_auc.origin.EWR"] == pytest.approx(expected)
    assert "test_rows.hour.06-08" in run.data.metrics

    # A barely trained challenger, let through by the overall gate, refused on its segments.
    weak = small_config(
        **{
            "optim.epochs": 1,
            "optim.lr": 1e-5,
            "gates.max_roc_auc_drop": 1.0,
            "gates.min_roc_auc": 0.0,
            "gates.max_segment_roc_auc_drop": 0.02,
            "gates.min_segment_share": 0.15,
        }
    )
    second = run_training(settings, weak)
    assert second is not None and not second.decision.passed and not second.promoted
    assert registry.version_for(CHAMPION) == first.version
    assert second.decision.reasons and all(
        r.startswith("segment ") for r in second.decision.reasons
    )
    metrics = registry.load(second.version, tmp_path / "v2").read_json("metrics.json")
    mine = {(r["kind"], r["segment"]): r for r in metrics["network_per_segment"]}
    theirs = {(r["kind"], r["segment"]): r for r in metrics["champion_per_segment"]}
    fell = [
        f"segment {kind}={value} ({mine[(kind, value)]['share']:.0%} of the test rows)"
        for (kind, value), r in mine.items()
        if r["share"] > 0.15 and r["roc_auc"] < theirs[(kind, value)]["roc_auc"] - 0.02
    ]
    assert fell and sorted(r.split(":")[0] for r in second.decision.reasons) == sorted(fell)
    assert np.isclose(
        theirs[("origin", "EWR")]["roc_auc"], rows[("origin", "EWR")]["roc_auc"]
    )  # the champion scored with its own files on the same window: its recorded numbers
    assert pl.Series(second.decision.checks).str.contains("segments with more than 15%").any()
