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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any

import numpy as np
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
        "test_traffic",
    ),
    added_columns=("test_traffic",),
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
            "test_traffic": _col(
                pl.Boolean,
                "sent as a test (X-FTI-Test-Traffic: true): not monitored by default; "
                "null in rows logged before this column existed (production)",
            ),
        },
        unique=["flight_id", "model_version", "request_id", "scored_at"],
    ),
)


def features_json(frame: pl.DataFrame, features: Sequence[str]) -> pl.Series:
    """One JSON object per row with the feature values, keys sorted (dates as ISO text, NaN as
    null), encoded by Polars: Python's json per row costs most of a logged prediction."""
    # Float32 as Float64: the text is the value the model was given, as Python prints it.
    wide = [
        pl.col(f).cast(pl.Float64) if frame.schema[f] == pl.Float32 else pl.col(f)
        for f in sorted(features)
    ]
    encoded = frame.select(pl.struct(wide).struct.json_encode().alias("features"))
    return encoded.to_series()


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
    test_traffic: bool = False,
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
        features_json(frame, features),
        pl.Series("missing_features", [",".join(m) for m in missing], dtype=pl.String),
        pl.lit(latency_ms, dtype=pl.Float32).alias("latency_ms"),
        pl.lit(test_traffic).alias("test_traffic"),
    )
    return PREDICTIONS.conform(rows)


@dataclass(slots=True)  # not frozen: made per request, where a frozen init costs twice as much
class LoggedPredictions:
    """Predictions of one scored request (or one version's share of it), as the online service
    queues them for the log: references to what scoring built, no copies or formatting on the
    request path. :func:`logged_prediction_rows` turns a flush's worth into rows at once."""

    flight_ids: Sequence[str]
    # Request fields and features, one value per flight of a scored batch; these predictions
    # are the ``window`` of its rows.
    columns: Mapping[str, Sequence[Any]]
    window: slice
    features: Sequence[str]  # the model's input features among ``columns``
    probabilities: Sequence[float]
    missing: Sequence[Sequence[str]]
    model_version: str
    request_id: str
    scored_at: datetime
    source: str
    latency_ms: float | None
    test_traffic: bool = False  # sent as a test: logged, not monitored by default

    def __len__(self) -> int:
        return len(self.flight_ids)


def logged_prediction_rows(batches: Sequence[LoggedPredictions]) -> pl.DataFrame:
    """Rows of :data:`PREDICTIONS` for queued predictions; one frame per set of model features
    (champion and challenger may differ), the features JSON encoded column-wise."""
    by_features: dict[tuple[str, ...], list[LoggedPredictions]] = {}
    for batch in batches:
        by_features.setdefault(tuple(batch.features), []).append(batch)
    frames = [_logged_rows(list(names), part) for names, part in by_features.items()]
    if not frames:
        return pl.DataFrame(schema=PREDICTIONS.polars_schema)
    return PREDICTIONS.conform(pl.concat(frames, how="vertical"))


def _logged_rows(features: list[str], batches: list[LoggedPredictions]) -> pl.DataFrame:
    def each(values: Callable[[LoggedPredictions], Sequence[Any]]) -> list[Any]:
        return list(chain.from_iterable(values(batch) for batch in batches))

    def repeated(value: Callable[[LoggedPredictions], Any]) -> list[Any]:
        return list(chain.from_iterable([value(batch)] * len(batch) for batch in batches))

    rows = sum(len(batch) for batch in batches)
    spans = _spans(batches)
    inputs = pl.DataFrame([_input_column(name, spans) for name in features])
    frame = pl.DataFrame(
        {
            "flight_id": each(lambda b: b.flight_ids),
            "flight_date": _span_values("flight_date", spans),
            "sched_dep_time": _span_values("sched_dep_time", spans),
            "model_version": repeated(lambda b: b.model_version),
            "request_id": repeated(lambda b: b.request_id),
            "scored_at": repeated(lambda b: b.scored_at),
            "source": repeated(lambda b: b.source),
            "probability": each(lambda b: b.probabilities),
            "features": features_json(inputs, features) if features else [None] * rows,
            "missing_features": [",".join(m) for b in batches for m in b.missing],
            "latency_ms": repeated(lambda b: b.latency_ms),
            "test_traffic": repeated(lambda b: b.test_traffic),
        },
        schema=_LOGGED_SCHEMA,
    )
    return frame.with_columns(sched_dep_utc())


def _spans(batches: list[LoggedPredictions]) -> list[tuple[Mapping[str, Sequence[Any]], slice]]:
    """``batches`` as runs of rows of the same scored columns: the requests of one coalesced
    batch are its consecutive windows and arrive one after the other, so a flush slices each
    batch's ~90 columns once, not once per request."""
    spans: list[tuple[Mapping[str, Sequence[Any]], slice]] = []
    for batch in batches:
        window = batch.window
        if spans and spans[-1][0] is batch.columns and spans[-1][1].stop == window.start:
            spans[-1] = (batch.columns, slice(spans[-1][1].start, window.stop))
        else:
            spans.append((batch.columns, window))
    return spans


def _input_column(name: str, spans: list[tuple[Mapping[str, Sequence[Any]], slice]]) -> pl.Series:
    """One column over all ``spans``: whole columns are concatenated (per-value Python work
    over ~90 inputs per prediction would cost as much as serving it)."""
    first = spans[0][0][name]
    if isinstance(first, np.ndarray):  # an on-demand feature
        return pl.Series(name, np.concatenate([columns[name][window] for columns, window in spans]))
    return pl.Series(name, _span_values(name, spans), strict=False)


def _span_values(name: str, spans: list[tuple[Mapping[str, Sequence[Any]], slice]]) -> list[Any]:
    """One request field or stored feature over all ``spans``, as plain values."""
    return list(chain.from_iterable(columns[name][window] for columns, window in spans))


_LOGGED_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
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
    "test_traffic": pl.Boolean,
}
