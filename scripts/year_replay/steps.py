"""One pipeline call per function, each returning a plain record for the journal and the report.

Every pipeline is called through the function its own CLI calls (``run_backfill``,
``run_training``, ``score_day``, ``run_monitor``) with settings built here from the replay's one
data root, so the replay exercises the same code cron and the operators run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from typing import Any

from feature_pipeline.pipeline import run_backfill
from feature_pipeline.settings import FeaturePipelineSettings
from inference_pipeline.batch import score_day
from inference_pipeline.monitor import MonitorSettings, run_monitor
from inference_pipeline.monitor.shadow import compare, paired_scores
from inference_pipeline.monitor.window import Window, read_outcomes, read_predictions
from inference_pipeline.settings import InferenceSettings, TritonMode
from inference_pipeline.triton_server import TritonServer
from shared.errors import FTIError
from shared.feature_store import open_feature_store
from shared.promotion import Promotion, ShadowComparison
from training_pipeline.config import TrainingConfig, TrainingSettings, Windows
from training_pipeline.pipeline import run_training

from .calendar import Week
from .settings import ReplayPlan, ReplaySettings, Scorer

log = logging.getLogger(__name__)


class ReplayError(FTIError):
    """A step of the replay failed; the message names the step and the week."""


def backfill_features(settings: ReplaySettings, start: date, end: date) -> dict[str, Any]:
    """The feature pipeline for the local days [start, end]: flights (with the outcomes known
    so far), rolling statistics, weather, planes; online store materialized."""
    summary = run_backfill(FeaturePipelineSettings(**settings.shared_fields()), start, end)
    if summary.error:
        raise ReplayError(f"feature pipeline {start}..{end} failed: {summary.error}")
    flights = summary.groups.get("flights")
    return {
        "window": f"{start}..{end}",
        "flights_written": flights.rows_written if flights else 0,
        "quarantined": sum(s.quarantined for s in summary.sources.values()),
        "seconds": round(summary.seconds, 2),
    }


def training_config(plan: ReplayPlan, windows: Windows) -> TrainingConfig:
    """Cheap on purpose: few epochs and no boosted-trees baseline (it costs more than the net)."""
    base = TrainingConfig.model_validate(plan.training_config)
    return base.with_overrides(
        **{"optim.epochs": plan.epochs, "baseline.enabled": False, "windows": windows}
    )


def train_version(
    settings: ReplaySettings, plan: ReplayPlan, windows: Windows, promotion: Promotion
) -> dict[str, Any]:
    """Train, gate and register one version; ``promotion`` never -> challenger only (CT)."""
    began = time.perf_counter()
    training = TrainingSettings(
        **settings.shared_fields(),
        checkpoint_dir=settings.resolved_replay_dir / "checkpoints",
    )
    outcome = run_training(training, training_config(plan, windows), promotion=promotion)
    if outcome is None:  # only a non-zero rank of a distributed job gets None
        raise ReplayError("training returned no outcome (run the replay in one process)")
    return {
        "version": outcome.version,
        "run_id": outcome.run_id,
        "promotion": outcome.promotion.value,
        "windows": outcome.lineage.get("windows", {}),
        "test_roc_auc": outcome.network["roc_auc"],
        "test_log_loss": outcome.network["log_loss"],
        "gates_passed": outcome.decision.passed,
        "gates": outcome.decision.summary(),
        "champion_before": outcome.champion_before,
        "champion_test_roc_auc": outcome.champion_roc_auc,
        "promoted": outcome.promoted,
        "epochs": outcome.epochs,
        "best_epoch": outcome.best_epoch,
        "seconds": round(time.perf_counter() - began, 2),
    }


@contextmanager
def scorer_session(settings: ReplaySettings, scorer: Scorer) -> Iterator[str | None]:
    """For ``triton``: one managed Triton server for the whole replay (its HTTP host:port);
    starting one per batch run costs seconds a day. ``in-process`` needs nothing (None)."""
    if scorer is Scorer.in_process:
        yield None
        return
    inference = InferenceSettings(**settings.shared_fields(), allow_unauthenticated=True)
    inference.model_repository.mkdir(parents=True, exist_ok=True)
    with TritonServer.start_local(
        inference.model_repository,
        inference.serving_dir / "triton-replay",
        startup_timeout_s=inference.triton_startup_timeout_s,
    ) as server:
        yield server.endpoints.http


def score_days(
    settings: ReplaySettings, days: Sequence[date], versions: Sequence[str], triton_url: str | None
) -> dict[str, Any]:
    """The nightly batch job for each day, once per version (champion, and the challenger while
    it is shadowed). Idempotent: a day re-scored by the same version upserts the same rows."""
    extra: dict[str, Any] = {"allow_unauthenticated": True}
    if triton_url is not None:
        extra |= {"triton_mode": TritonMode.external, "triton_url": triton_url}
    inference = InferenceSettings(**settings.shared_fields(), **extra)
    per_version: dict[str, dict[str, Any]] = {}
    began = time.perf_counter()
    for version in versions:
        totals = per_version.setdefault(
            version, {"flights": 0, "inserted": 0, "updated": 0, "probability_sum": 0.0}
        )
        for day in days:
            summary = score_day(inference, day, model_ref=version, in_process=triton_url is None)
            totals["flights"] += summary.flights
            totals["inserted"] += summary.inserted
            totals["updated"] += summary.updated
            totals["probability_sum"] += (summary.mean_probability or 0.0) * summary.flights
            totals["scorer"] = summary.scorer
    for totals in per_version.values():
        flights = totals["flights"]
        totals["mean_probability"] = totals.pop("probability_sum") / flights if flights else None
    return {"versions": per_version, "seconds": round(time.perf_counter() - began, 2)}


def monitor_settings(settings: ReplaySettings, overrides: dict[str, Any]) -> MonitorSettings:
    """The monitor's own settings (``FTI_RETRAIN_*`` from the environment) on the replay's root,
    with the replay's command-line overrides on top."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return MonitorSettings(**settings.shared_fields(), **given)


def monitor_week(
    settings: MonitorSettings, week: Week, version: str, output_dir: Any
) -> dict[str, Any]:
    """Drift, delayed-label quality and the retraining policy over the week's batch scores."""
    result = run_monitor(
        settings, week.end, len(week.days), "batch", version, output_dir=output_dir
    ).to_dict()
    drift = result["drift"]
    window_quality = ((result.get("quality") or {}).get("window")) or {}
    comparison = (result.get("quality") or {}).get("comparison") or {}
    return {
        "status": result["status"],
        "alerts": result["alerts"],
        "version": result["model"]["version"],
        "drift_share": drift.get("share"),
        "drifted": drift.get("drifted"),
        "tested": drift.get("tested"),
        "drifted_features": drift.get("drifted_features", []),
        "ood_row_rate": (result.get("ood") or {}).get("row_rate"),
        "prediction_psi": (result.get("prediction_drift") or {}).get("psi"),
        "labelled": window_quality.get("labelled"),
        "roc_auc": window_quality.get("roc_auc"),
        "log_loss": window_quality.get("log_loss"),
        "ece": window_quality.get("ece"),
        "quality_status": window_quality.get("status"),
        "roc_auc_drop": comparison.get("roc_auc_drop"),
        "retrain": result["retrain"],
        "report": result.get("outputs", {}).get("html"),
        "seconds": result.get("seconds"),
    }


def shadow_comparison(
    settings: ReplaySettings, week: Week, champion: str, challenger: str
) -> ShadowComparison:
    """Champion and challenger on the week's labelled flights that both scored."""
    window = Window(end=week.end, days=len(week.days))
    store = open_feature_store(settings)
    try:
        predictions = read_predictions(store, window, "batch")
        outcomes = read_outcomes(store, window)
    finally:
        store.close()
    return compare(paired_scores(predictions, outcomes, champion, challenger), champion, challenger)
