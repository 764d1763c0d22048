"""The ``predictions`` feature group: every prediction the batch job and the online service make.

Monitoring reads it (feature drift, delayed-label quality), so each row carries the flight, the
model version, the feature values the model was given (before the MDT, as JSON), which of them
were missing and imputed, and how long it took.

Keys: ``flight_id`` + ``model_version`` + ``request_id``, event time ``scored_at``. The online
service gives each API call a fresh request id and the wall-clock time; the batch job uses
``batch-<date>`` and the local midnight of the scored day, so re-running it upserts the very same
rows (nothing inserted, nothing updated).

The flight identity expressions below are the request-side twins of the feature pipeline's
(a test checks they agree), so a prediction joins its label by ``flight_id``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pandera.polars as pa
import polars as pl

from shared.feature_group import UTC_TIMESTAMP, FeatureGroup
from shared.flight_identity import flight_id, sched_dep_utc

ONLINE_SOURCE = "online"
SHADOW_SOURCE = "shadow"  # a challenger scoring live requests off the response path
BATCH_SOURCE = "batch"


def _col(
    dtype: type[pl.DataType] | pl.DataType, description: str, *, nullable: bool = True
) -> pa.Column:
    return pa.Column(dtype, nullable=nullable, description=description)


PREDICTIONS = FeatureGroup(
    name="predictions",
    version=1,
    primary_key=("flight_id", "model_version", "request_id"),
    event_time="scored_at",
    online=False,
    description="Predictions made by batch and online inference, for monitoring.",
    non_features=(
        "source",
        "flight_date",
        "sched_dep_utc",
        "probability",
        "features",
        "missing_features",
        "latency_ms",
    ),
    schema=pa.DataFrameSchema(
        {
            "flight_id": _col(pl.String, "date-carrier+flight-origin-hhmm", nullable=False),
            "model_version": _col(pl.String, "registered model version", nullable=False),
            "request_id": _col(pl.String, "API request id, or batch-<date>", nullable=False),
            "scored_at": _col(UTC_TIMESTAMP, "when scored (batch: the day's local midnight)"),
            "source": _col(pl.String, "online, shadow or batch", nullable=False),
            "flight_date": _col(pl.Date, "local date of the scheduled departure"),
            "sched_dep_utc": _col(UTC_TIMESTAMP, "scheduled departure instant (UTC)"),
            "probability": _col(pl.Float32, "predicted probability of a >15 min delay"),
            "features": _col(pl.String, "feature values given to the MDT, as JSON"),
            "missing_features": _col(pl.String, "features missing and imputed, comma-separated"),
            "latency_ms": _col(pl.Float32, "online: request latency; batch: null"),
        },
        unique=["flight_id", "model_version", "request_id", "scored_at"],
    ),
)


def features_json(frame: pl.DataFrame, features: Sequence[str]) -> list[str]:
    """One JSON object per row with the feature values (dates and times as ISO text)."""
    rows = frame.select(features).to_dicts()
    return [json.dumps(row, default=str, sort_keys=True) for row in rows]


def prediction_rows(
    frame: pl.DataFrame,
    features: Sequence[str],
    probability: Sequence[float],
    missing: Sequence[Sequence[str]],
    *,
    model_version: str,
    request_id: str,
    scored_at: datetime,
    source: str,
    latency_ms: float | None = None,
) -> pl.DataFrame:
    """Rows of :data:`PREDICTIONS` for the scored ``frame`` (it holds the request fields)."""
    if not (frame.height == len(probability) == len(missing)):
        raise ValueError("one probability and one missing-feature list per row are needed")
    ids = frame.select(
        flight_id() if "flight_id" not in frame.columns else pl.col("flight_id"),
        sched_dep_utc() if "sched_dep_utc" not in frame.columns else pl.col("sched_dep_utc"),
        pl.col("flight_date"),
    )
    rows = ids.with_columns(
        pl.lit(model_version).alias("model_version"),
        pl.lit(request_id).alias("request_id"),
        pl.lit(scored_at).cast(UTC_TIMESTAMP).alias("scored_at"),
        pl.lit(source).alias("source"),
        pl.Series("probability", list(probability), dtype=pl.Float32),
        pl.Series("features", features_json(frame, features), dtype=pl.String),
        pl.Series("missing_features", [",".join(m) for m in missing], dtype=pl.String),
        pl.lit(latency_ms, dtype=pl.Float32).alias("latency_ms"),
    )
    return PREDICTIONS.conform(rows)


# The plain record the online service queues per prediction (no frame on the request path);
# :func:`prediction_frame` turns a flush's worth of them into PREDICTIONS rows at once.
_RECORD_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "flight_id": pl.String,
    "flight_date": pl.Date,
    "sched_dep_time": pl.Int16,
    "model_version": pl.String,
    "request_id": pl.String,
    "scored_at": UTC_TIMESTAMP,
    "source": pl.String,
    "probability": pl.Float32,
    "features": pl.String,
    "missing_features": pl.String,
    "latency_ms": pl.Float32,
}


def prediction_record(
    flight_id: str,
    flight_date: object,
    sched_dep_time: int,
    features: Mapping[str, Any],
    probability: float,
    missing: Sequence[str],
    *,
    model_version: str,
    request_id: str,
    scored_at: datetime,
    source: str,
    latency_ms: float | None,
) -> dict[str, Any]:
    """One prediction as plain values (``features``: the values given to the MDT)."""
    return {
        "flight_id": flight_id,
        "flight_date": flight_date,
        "sched_dep_time": sched_dep_time,
        "model_version": model_version,
        "request_id": request_id,
        "scored_at": scored_at,
        "source": source,
        "probability": probability,
        "features": json.dumps(features, default=str, sort_keys=True),
        "missing_features": ",".join(missing),
        "latency_ms": latency_ms,
    }


def prediction_frame(records: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """Rows of :data:`PREDICTIONS` from :func:`prediction_record` records."""
    frame = pl.DataFrame(list(records), schema=_RECORD_SCHEMA, orient="row")
    return PREDICTIONS.conform(frame.with_columns(sched_dep_utc()))
