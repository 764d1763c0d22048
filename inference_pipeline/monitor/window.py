"""The edges of monitoring: read a window of logged predictions and their outcomes from the
feature store, and a model version's reference statistics and test metrics from the registry.

A window is the local flight dates ``[end - days + 1, end]`` (the date a prediction is *for*,
not when it was made: the batch job scores tomorrow's flights, the online service any day).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from inference_pipeline.model_artifact import serving_model
from shared.errors import ArtifactIntegrityError, FeatureGroupNotFound, NothingToMonitor
from shared.feature_definitions import FLIGHTS
from shared.feature_store import FeatureStore
from shared.feature_view import FeatureView, build_training_frame, local_day_start_utc
from shared.prediction_log import PREDICTIONS
from shared.reference_statistics import REFERENCE_FILE
from shared.registry import LoadedVersion, ModelRegistry

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
LINEAGE_FILE = "lineage.json"
PREDICTION_COLUMNS = (
    "flight_id",
    "model_version",
    "request_id",
    "scored_at",
    "source",
    "flight_date",
    "probability",
    "features",
    "missing_features",
    "test_traffic",
)


@dataclass(frozen=True)
class Window:
    end: date  # inclusive
    days: int

    @property
    def start(self) -> date:
        return self.end - timedelta(days=self.days - 1)

    def describe(self) -> str:
        return f"{self.start}..{self.end}"


@dataclass(frozen=True)
class VersionReference:
    """What monitoring needs from one registered version."""

    version: str
    reference_stats: dict[str, Any]
    test_metrics: dict[str, Any] | None  # metrics.json["network"]
    data_end: date | None  # last local date of the data it was built on (lineage windows)
    aliases: tuple[str, ...] = ()
    windows: dict[str, str] = field(default_factory=dict)
    view: FeatureView | None = None  # the feature view it was trained on (None: unreadable)

    @property
    def numeric(self) -> list[str]:
        return list(self.reference_stats.get("numeric", {}))

    @property
    def categorical(self) -> list[str]:
        return list(self.reference_stats.get("categorical", {}))

    @property
    def reference_rows(self) -> int:
        return int(self.reference_stats["rows"])


def read_predictions(
    store: FeatureStore, window: Window, source: str, *, include_test_traffic: bool = False
) -> pl.DataFrame:
    """Logged predictions for flights dated in the window (``source``: all, online or batch);
    requests sent as tests (``X-FTI-Test-Traffic: true``) only with ``include_test_traffic``.
    """
    try:
        frame = store.read(PREDICTIONS, columns=list(PREDICTION_COLUMNS))
    except FeatureGroupNotFound as exc:
        raise NothingToMonitor(
            "the predictions group does not exist yet: run the batch job or the online "
            "service with prediction logging first"
        ) from exc
    frame = frame.filter(pl.col("flight_date").is_between(window.start, window.end))
    if source != "all":
        frame = frame.filter(pl.col("source") == source)
    tests = int(frame["test_traffic"].fill_null(False).sum())
    if tests and not include_test_traffic:
        frame = frame.filter(~pl.col("test_traffic").fill_null(False))
        log.info("left out %d predictions of test traffic (--include-test-traffic)", tests)
    if frame.is_empty():
        left_out = f" ({tests} of test traffic left out: --include-test-traffic)" if tests else ""
        raise NothingToMonitor(
            f"no {'' if source == 'all' else source + ' '}predictions for flights dated "
            f"{window.describe()}{left_out}: score that window first (batch job or online "
            "service), or choose another --end / --window-days / --source"
        )
    return frame


def latest_per_flight(predictions: pl.DataFrame) -> pl.DataFrame:
    """One row per flight: the last time it was scored (batch and online, or several requests,
    may score the same flight; counting each once keeps the window a sample of flights)."""
    return predictions.sort(["scored_at", "request_id"]).unique(
        subset=["flight_id"], keep="last", maintain_order=True
    )


def decode_features(
    predictions: pl.DataFrame, numeric: list[str], categorical: list[str]
) -> pl.DataFrame:
    """The raw feature values logged with each prediction, typed as the reference describes
    them (numbers as Float64, categories as text, as the training pipeline casts them).

    Parsed with Python's ``json``, which reads what the writers' ``json.dumps`` may produce and
    Polars' reader refuses (``NaN``; numbers a writer stringified). A feature that no logged row
    carries at all is left out, so the drift report can call it absent rather than all-null;
    an unreadable row counts as all-missing (and is logged)."""
    rows = [_parse(text) for text in predictions["features"].to_list()]
    unreadable = sum(row is None for row in rows)
    if unreadable:
        log.warning("%d logged predictions have unreadable features JSON", unreadable)
    parsed = [row or {} for row in rows]
    logged = set().union(*(row.keys() for row in parsed)) if parsed else set()
    columns = [
        pl.Series(name, [_number(row.get(name)) for row in parsed], dtype=pl.Float64)
        for name in numeric
        if name in logged
    ] + [
        pl.Series(name, [_category(row.get(name)) for row in parsed], dtype=pl.String)
        for name in categorical
        if name in logged
    ]
    return pl.DataFrame(columns)


def _parse(text: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)  # bools are 0/1, as the reference's cast makes them
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _category(value: Any) -> str | None:
    """Text as ``pl.Series.cast(pl.String)`` writes the training values: 5 -> "5",
    True -> "true"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read_outcomes(store: FeatureStore, window: Window) -> pl.DataFrame:
    """Flights of the window with their outcome as the feature pipeline wrote it so far."""
    try:
        frame = store.read(
            FLIGHTS,
            local_day_start_utc(window.start) - timedelta(days=1),
            local_day_start_utc(window.end) + timedelta(days=2),
            columns=["flight_id", "flight_date", "is_delayed", "is_cancelled"],
        )
    except FeatureGroupNotFound:
        log.warning("the flights group does not exist: no outcomes yet")
        return pl.DataFrame(
            schema={
                "flight_id": pl.String,
                "flight_date": pl.Date,
                "is_delayed": pl.Int8,
                "is_cancelled": pl.Boolean,
            }
        )
    return frame.filter(pl.col("flight_date").is_between(window.start, window.end))


def load_version_reference(registry: ModelRegistry, ref: str) -> VersionReference:
    """Download ``ref`` (verified against its manifest) and read what monitoring needs."""
    workdir = Path(tempfile.mkdtemp(prefix="fti-monitor-"))
    try:
        loaded = registry.load(ref, workdir / "artifact")
        if not loaded.file(REFERENCE_FILE).is_file():
            raise ArtifactIntegrityError(
                f"model version {loaded.version.version} has no {REFERENCE_FILE}: it was "
                "registered without drift references; retrain it with the training pipeline",
                path=str(loaded.path),
            )
        reference = loaded.read_json(REFERENCE_FILE)
        metrics = loaded.read_json(METRICS_FILE) if loaded.file(METRICS_FILE).is_file() else {}
        lineage = loaded.read_json(LINEAGE_FILE) if loaded.file(LINEAGE_FILE).is_file() else {}
        view = _feature_view(loaded, registry.name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    windows = dict(lineage.get("windows") or {})
    return VersionReference(
        version=loaded.version.version,
        reference_stats=reference,
        test_metrics=metrics.get("network"),
        data_end=data_end(windows),
        aliases=loaded.version.aliases,
        windows=windows,
        view=view,
    )


def _feature_view(loaded: LoadedVersion, model_name: str) -> FeatureView | None:
    """The version's feature view, rebuilt the way serving rebuilds it (None: unreadable)."""
    try:
        return serving_model(loaded, alias="", flavour="cpu", default_name=model_name).view
    except (ArtifactIntegrityError, KeyError, ValueError) as exc:
        log.warning("version %s: no usable feature view (%s)", loaded.version.version, exc)
        return None


def parse_window(text: str | None) -> tuple[date, date] | None:
    """``START:END`` (END exclusive) as dates, or None."""
    start, sep, end = str(text or "").partition(":")
    try:
        return (date.fromisoformat(start), date.fromisoformat(end)) if sep else None
    except ValueError:
        return None


def read_training_features(store: FeatureStore, version: VersionReference) -> pl.DataFrame:
    """The version's training split read back from the offline store through its own feature
    view (the rows its reference statistics describe). Raises `FeatureGroupNotFound` when the
    store lacks the groups; empty when the lineage records no training window."""
    window = parse_window(version.windows.get("train"))
    if window is None or version.view is None:
        return pl.DataFrame()
    return build_training_frame(store, version.view, window[0], window[1]).frame


def data_end(windows: dict[str, str]) -> date | None:
    """Last local date of the newest split (windows are ``START:END`` with END exclusive)."""
    parsed = [w for w in (parse_window(t) for t in windows.values()) if w is not None]
    return max((end - timedelta(days=1) for _, end in parsed), default=None)
