"""One monitoring run: a window of logged predictions against the model's training reference.

:func:`run_monitor` is the plain Python API (the CLI and the year-replay orchestrator call it):

1. load the monitored version (``--model``, an alias or a number) from the registry: its
   reference statistics, test metrics and lineage;
2. read the window's logged predictions; each flight counts once (its latest prediction);
3. **data drift** of the logged raw features against the monitored version's reference, the
   out-of-distribution rate;
4. per model version that made predictions in the window: **prediction drift** against that
   version's own training predictions and **quality** (delayed labels) against that version's
   own test metrics. Several versions appear when a rollout, a canary or a shadow ran in the
   window; data drift is measured once, against the monitored version, because the raw
   features do not depend on which model scored them and the retraining question is whether
   the data left what the *monitored* model learned from;
5. the retraining policy decides; the status is ``drift`` when data drift is detected or
   retraining is recommended, else ``healthy``. Prediction drift is reported (and gauged) but
   does not decide: a week's predictions move with its weather as much as its features do,
   and the reference keeps no per-window baseline for them;
6. **quality and drift per segment** (carrier, origin, hour-of-day bucket, month) of the
   monitored version's predictions against its test metrics per segment, the segments that
   fell furthest first (reported, named in the notes when they fell more than
   ``FTI_SEGMENT_AUC_DROP``; they do not decide the status);
7. the **shadow comparison**, when a challenger is in shadow: champion and challenger on the
   window's labelled flights both scored, and what the shadow rule decides (reported only:
   :func:`run_shadow`, ``python -m inference_pipeline monitor shadow``, acts on it);
8. the JSON result, the HTML report and the Prometheus gauges are written.

:func:`run_shadow` is the shadow step on its own: the same comparison and rule, then it promotes
(when ``FTI_SHADOW_PROMOTE`` allows) or records why not, with its own JSON and HTML report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl
from rich.progress import Progress

from inference_pipeline.monitor.drift import (
    DriftRule,
    DriftSummary,
    baseline_psi,
    drift_report,
    out_of_distribution,
    prediction_drift,
    summarize_drift,
)
from inference_pipeline.monitor.gauges import publish_gauges
from inference_pipeline.monitor.policy import RetrainPolicy, model_age_days, retrain_decision
from inference_pipeline.monitor.quality import (
    attach_outcomes,
    compare_with_test,
    daily_quality,
    window_quality,
)
from inference_pipeline.monitor.report import render_html, render_shadow_html
from inference_pipeline.monitor.segments import segment_section
from inference_pipeline.monitor.settings import DriftShareBy, MonitorSettings, PredictionSource
from inference_pipeline.monitor.shadow import ShadowStep, shadow_step
from inference_pipeline.monitor.status import DRIFT, HEALTHY
from inference_pipeline.monitor.window import (
    PREDICTION_COLUMNS,
    VersionReference,
    Window,
    decode_features,
    latest_per_flight,
    load_version_reference,
    read_outcomes,
    read_predictions,
    read_training_features,
)
from shared.errors import (
    ConfigurationError,
    FeatureGroupNotFound,
    ModelVersionNotFound,
    NothingToMonitor,
)
from shared.feature_store import FeatureStore, open_feature_store
from shared.prediction_log import PREDICTIONS
from shared.registry import ModelRegistry

log = logging.getLogger(__name__)

TEST_METRICS = ("roc_auc", "log_loss", "brier", "base_rate", "mean_prediction", "rows")


@dataclass
class MonitorResult:
    """Everything one run found; ``to_dict()`` is the JSON result, the report renders it."""

    status: str
    alerts: list[str]  # why the status is drift (the retraining policy's reasons)
    notes: list[str]  # worth a look, but not drift by the rule (e.g. prediction drift)
    window: dict[str, Any]
    model: dict[str, Any]
    predictions: dict[str, Any]
    drift: dict[str, Any]
    ood: dict[str, Any]
    prediction_drift: dict[str, Any] | None
    quality: dict[str, Any] | None
    versions: list[dict[str, Any]]
    retrain: dict[str, Any]
    thresholds: dict[str, Any]
    generated_at: str
    outputs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    shadow: dict[str, Any] | None = None  # the shadow comparison (reported, not acted on)
    segments: dict[str, Any] | None = None  # quality and drift per segment

    @property
    def exit_code(self) -> int:
        return 3 if self.status == DRIFT else 0

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)


def _json_safe(value: Any) -> Any:
    """NaN and infinity are not JSON: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, date):
        return value.isoformat()
    return value


def drift_rule(settings: MonitorSettings) -> DriftRule:
    return DriftRule(
        p_value=settings.drift_p_value,
        psi_drift=settings.drift_psi,
        psi_warn=settings.drift_psi_warn,
        min_values=settings.drift_min_values,
    )


def drift_families(reference: VersionReference, settings: MonitorSettings) -> dict[str, str] | None:
    """Each feature's family, when the drifted share is taken by family (None: by feature, also
    for a version whose feature view cannot be read, with a warning)."""
    if settings.drift_share_by is not DriftShareBy.family:
        return None
    if reference.view is None:
        log.warning(
            "version %s: no feature view to group its features by; the drifted share is taken "
            "by feature",
            reference.version,
        )
        return None
    return reference.view.feature_families()


def retrain_policy(settings: MonitorSettings) -> RetrainPolicy:
    return RetrainPolicy(
        drift_share=settings.retrain_drift_share,
        auc_drop=settings.retrain_auc_drop,
        max_age_days=settings.retrain_max_age_days,
        min_labels=settings.quality_min_labels,
    )


def run_monitor(
    settings: MonitorSettings,
    end: date,
    window_days: int = 7,
    source: str = "all",
    model: str = "champion",
    *,
    output_dir: Path | None = None,
    write: bool = True,
    progress: Progress | None = None,
    include_test_traffic: bool = False,
) -> MonitorResult:
    """Monitor the window of local flight dates ``[end - window_days + 1, end]``.

    Raises `NothingToMonitor` for an empty window, `ModelVersionNotFound` for an unknown
    ``model``, `ConfigurationError` for a bad ``window_days`` or ``source``."""
    began = time.perf_counter()
    if window_days < 1:
        raise ConfigurationError(f"window_days={window_days}: the window needs at least 1 day")
    if source not in set(PredictionSource):
        choices = ", ".join(PredictionSource)
        raise ConfigurationError(f"source={source!r}: use one of {choices}")
    window = Window(end=end, days=window_days)
    task = progress.add_task("load model", total=8) if progress else None

    def step(label: str) -> None:
        if progress is not None and task is not None:
            progress.update(task, description=label, advance=1)

    registry = ModelRegistry(settings.registry_settings())
    monitored = load_version_reference(registry, model)
    step(f"read predictions {window.describe()}")
    store = open_feature_store(settings.store_settings())
    try:
        predictions = read_predictions(
            store, window, source, include_test_traffic=include_test_traffic
        )
        outcomes = read_outcomes(store, window)
        step("data drift: the training period's own variation")
        baseline, baseline_info = training_baseline(store, monitored, window_days, settings)
    finally:
        store.close()
    flights = latest_per_flight(predictions)

    step("data drift")
    rule = drift_rule(settings)
    features = decode_features(flights, monitored.numeric, monitored.categorical)
    report = drift_report(monitored.reference_stats, features, rule, baseline)
    summary = summarize_drift(
        report,
        settings.retrain_drift_share,
        settings.drift_ignore_features,
        families=drift_families(monitored, settings),
    )
    ood = out_of_distribution(monitored.reference_stats, features)

    step("prediction drift and quality per version")
    references = {monitored.version: monitored}
    versions = [
        version_section(predictions, outcomes, version, references, registry, rule, settings)
        for version in sorted(predictions["model_version"].unique().to_list(), key=_version_key)
    ]
    own = next((v for v in versions if v["version"] == monitored.version), None)

    step("quality and drift per segment")
    segments = segment_section(
        predictions,
        outcomes,
        monitored.version,
        monitored.segment_metrics,
        rule,
        min_labels=settings.segment_min_labels,
        auc_drop=settings.segment_auc_drop,
    )

    step("shadow comparison")
    shadow = shadow_step(
        registry,
        predictions,
        outcomes,
        settings.shadow_rules,
        act=False,
        promote=settings.shadow_promote,
        context=f"monitor {window.describe()}",
    )

    step("retraining policy")
    quality = own["quality"] if own else None
    comparison = (quality or {}).get("comparison", {})
    labelled = ((quality or {}).get("window") or {}).get("labelled", 0)
    age = model_age_days(monitored.data_end, end)
    decision = retrain_decision(
        retrain_policy(settings),
        summary,
        auc_drop=comparison.get("roc_auc_drop"),
        labelled=labelled,
        age_days=age,
    )
    alerts = list(decision.reasons)
    predicted = own["prediction_drift"] if own else None
    notes = observations(summary, predicted, own is not None, monitored.version, baseline_info)
    if segments["fell"]:
        notes.append(
            f"segments whose ROC AUC fell more than {settings.segment_auc_drop} below "
            f"{'their test values' if segments['against'] == 'test' else 'the window'}: "
            + ", ".join(segments["fell"])
        )
    status = DRIFT if summary.detected or decision.fire else HEALTHY

    result = MonitorResult(
        status=status,
        alerts=alerts,
        notes=notes,
        window={
            "start": window.start.isoformat(),
            "end": window.end.isoformat(),
            "days": window.days,
            "source": source,
        },
        model={
            "name": settings.model_name,
            "ref": model,
            "version": monitored.version,
            "aliases": list(monitored.aliases),
            "data_end": monitored.data_end.isoformat() if monitored.data_end else None,
            "age_days": age,
            "windows": monitored.windows,
            "test_metrics": _test_metrics(monitored),
            "scored_in_window": own is not None,
        },
        predictions={
            "rows": predictions.height,
            "flights": flights.height,
            "by_version": _counts(predictions, "model_version"),
            "by_source": _counts(predictions, "source"),
            "test_traffic_included": include_test_traffic,
            "test_traffic_rows": int(predictions["test_traffic"].fill_null(False).sum()),
            "with_missing_features": int((flights["missing_features"].fill_null("") != "").sum()),
        },
        drift=asdict(summary)
        | {
            "threshold_share": settings.retrain_drift_share,
            "baseline": baseline_info,
            "features": report.to_dicts(),
        },
        ood={
            "row_rate": int(ood.sum()) / ood.len() if ood.len() else None,
            "rows": int(ood.sum()),
            "features": {
                r["feature"]: r["ood_rate"] for r in report.to_dicts() if r["ood_rate"] is not None
            },
        },
        prediction_drift=predicted,
        quality=quality,
        versions=versions,
        retrain=decision.to_dict(),
        thresholds=asdict(rule) | {"retrain": asdict(retrain_policy(settings))},
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        shadow=shadow.to_dict(),
        segments=segments,
    )
    step("write report")
    result.seconds = round(time.perf_counter() - began, 3)
    if write:
        write_outputs(result, settings, output_dir or settings.resolved_report_dir)
    return result


def observations(
    drift: DriftSummary,
    predicted: dict[str, Any] | None,
    scored: bool,
    version: str,
    baseline: dict[str, Any],
) -> list[str]:
    """Findings that do not decide the status but a reader should see first."""
    notes = []
    if predicted and predicted.get("drifted"):
        # Informational: the predictions of a week move with its weather and delays as much as
        # the features do, and the training predictions keep no per-window baseline to say
        # what is usual; quality (delayed labels) is what decides about the model.
        notes.append(
            f"prediction drift: PSI {predicted['psi']:.3f} (p={predicted['p_value']:.2g}) "
            f"against the training predictions of v{version}"
        )
    if not scored:
        notes.append(
            f"v{version} made no predictions in this window: no quality or prediction "
            "drift for it; data drift compares the window's features with its reference"
        )
    if drift.absent_features:
        notes.append(
            f"features absent from the logged predictions: {', '.join(drift.absent_features)}"
        )
    if not baseline.get("used"):
        notes.append(f"no training-period baseline: {baseline.get('reason')}")
    return notes


def training_baseline(
    store: FeatureStore, monitored: VersionReference, window_days: int, settings: MonitorSettings
) -> tuple[dict[str, float], dict[str, Any]]:
    """Per feature, the PSI that windows of ``window_days`` inside the monitored version's
    training split reach (see :func:`drift.baseline_psi`), and a description of what was used.
    Without it (disabled, training data unreadable or too short) the rule runs without step 3."""
    info: dict[str, Any] = {
        "used": False,
        "quantile": settings.drift_baseline_quantile,
        "training_window": monitored.windows.get("train"),
        "reason": "",
    }
    if not settings.drift_baseline:
        return {}, info | {"reason": "disabled (FTI_DRIFT_BASELINE=false)"}
    try:
        training = read_training_features(store, monitored)
    except FeatureGroupNotFound as exc:
        return {}, info | {"reason": f"training data not in the store: {exc}"}
    if training.is_empty():
        return {}, info | {
            "reason": "the training split cannot be read back (no training window or feature "
            "view recorded with the version, or no rows in the store)"
        }
    baseline = baseline_psi(
        monitored.reference_stats,
        training,
        window_days,
        quantile=settings.drift_baseline_quantile,
        min_rows=settings.drift_min_values,
    )
    days = training["flight_date"].n_unique()
    if not baseline:
        return {}, info | {"reason": f"the training split spans {days} days, fewer than the window"}
    return baseline, info | {"used": True, "training_rows": training.height, "training_days": days}


def version_section(
    predictions: pl.DataFrame,
    outcomes: pl.DataFrame,
    version: str,
    references: dict[str, VersionReference],
    registry: ModelRegistry,
    rule: DriftRule,
    settings: MonitorSettings,
) -> dict[str, Any]:
    """Prediction drift and quality of one version's predictions, against its own reference."""
    own = latest_per_flight(predictions.filter(pl.col("model_version") == version))
    reference = references.get(version)
    note = ""
    if reference is None:
        try:
            reference = references[version] = load_version_reference(registry, version)
        except ModelVersionNotFound:
            note = f"version {version} is not in the registry: nothing to compare with"
    scored = attach_outcomes(own, outcomes)
    window = window_quality(scored, settings.quality_min_labels)
    test = _test_metrics(reference) if reference else None
    return {
        "version": version,
        "flights": own.height,
        "note": note,
        "prediction_drift": (
            prediction_drift(
                reference.reference_stats["prediction"],
                own["probability"].to_numpy(),
                reference.reference_rows,
                rule,
            )
            if reference and "prediction" in reference.reference_stats
            else None
        ),
        "quality": {
            "window": window,
            "days": daily_quality(scored, settings.quality_min_labels_per_day),
            "test": test,
            "comparison": compare_with_test(window, test),
        },
    }


def _test_metrics(reference: VersionReference) -> dict[str, Any] | None:
    if not reference.test_metrics:
        return None
    return {k: reference.test_metrics.get(k) for k in TEST_METRICS}


def _counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in frame[column].value_counts().iter_rows()}


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (1 << 62, version)


def output_paths(result: MonitorResult, output_dir: Path) -> dict[str, Path]:
    stem = f"monitor_{result.window['end']}_{result.window['days']}d_{result.window['source']}"
    return {"json": output_dir / f"{stem}.json", "html": output_dir / f"{stem}.html"}


def write_outputs(result: MonitorResult, settings: MonitorSettings, output_dir: Path) -> None:
    """JSON result and HTML report (each written whole or not at all), then the gauges."""
    paths = output_paths(result, output_dir)
    result.outputs = {"json": str(paths["json"]), "html": str(paths["html"])}
    gauges = publish_gauges(result.to_dict(), settings)
    result.outputs |= gauges
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(paths["html"], render_html(result.to_dict()))
    _write_atomic(paths["json"], result.to_json())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# -- the shadow step on its own ---------------------------------------------------------------


@dataclass
class ShadowResult:
    """One shadow step; ``to_dict()`` is its JSON result, the shadow report renders it."""

    model_name: str
    window: dict[str, Any]
    shadow: dict[str, Any]
    generated_at: str
    outputs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)


def run_shadow(
    settings: MonitorSettings,
    end: date,
    window_days: int = 7,
    *,
    promote: bool | None = None,
    output_dir: Path | None = None,
    write: bool = True,
) -> ShadowResult:
    """Decide on the challenger in shadow over the window ``[end - window_days + 1, end]`` (every
    source: online and shadow rows, batch rows): promote it when the rule says so and
    ``promote`` (default ``FTI_SHADOW_PROMOTE``) allows, else record why not."""
    began = time.perf_counter()
    if window_days < 1:
        raise ConfigurationError(f"window_days={window_days}: the window needs at least 1 day")
    window = Window(end=end, days=window_days)
    registry = ModelRegistry(settings.registry_settings())
    store = open_feature_store(settings.store_settings())
    try:
        predictions = read_window_predictions(store, window)
        outcomes = read_outcomes(store, window)
    finally:
        store.close()
    step: ShadowStep = shadow_step(
        registry,
        predictions,
        outcomes,
        settings.shadow_rules,
        act=True,
        promote=settings.shadow_promote if promote is None else promote,
        context=f"shadow step {window.describe()}",
    )
    result = ShadowResult(
        model_name=settings.model_name,
        window={
            "start": window.start.isoformat(),
            "end": window.end.isoformat(),
            "days": window.days,
            "predictions": predictions.height,
        },
        shadow=step.to_dict(),
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    result.seconds = round(time.perf_counter() - began, 3)
    if write:
        directory = output_dir or settings.resolved_report_dir
        stem = f"shadow_{window.end.isoformat()}_{window.days}d"
        paths = {"json": directory / f"{stem}.json", "html": directory / f"{stem}.html"}
        result.outputs = {name: str(path) for name, path in paths.items()}
        directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(paths["html"], render_shadow_html(result.to_dict()))
        _write_atomic(paths["json"], result.to_json())
    return result


def read_window_predictions(store: FeatureStore, window: Window) -> pl.DataFrame:
    """Every source's predictions of the window; none at all is not an error here (a challenger
    with nothing scored yet keeps shadowing)."""
    try:
        return read_predictions(store, window, PredictionSource.all.value)
    except NothingToMonitor:
        schema = PREDICTIONS.polars_schema
        return pl.DataFrame(schema={name: schema[name] for name in PREDICTION_COLUMNS})
