"""Segments of flights that quality and drift are measured per: carrier, origin airport,
hour-of-day bucket and month.

One definition for both sides: the training pipeline records its test metrics per segment (and
its gates refuse a challenger that loses too much on a large segment), and monitoring reports
the window's quality and drift per segment against those test metrics. Both derive a flight's
segments from the same columns with :func:`segment_columns`: ``carrier`` and ``origin`` (spine
features), ``sched_hour`` (the on-demand feature, local hour of the scheduled departure) and
``flight_date`` (local date).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

SEGMENT_KINDS = ("carrier", "origin", "hour", "month")
# Local hour-of-day buckets of the scheduled departure: (first hour, label), in order.
HOUR_BUCKETS = (
    (0, "00-05"),
    (6, "06-08"),
    (9, "09-11"),
    (12, "12-14"),
    (15, "15-17"),
    (18, "18-20"),
    (21, "21-23"),
)
INPUT_COLUMNS = ("carrier", "origin", "sched_hour", "flight_date")
# Predicted probabilities are histogrammed per segment on these edges (the drift reference).
PREDICTION_EDGES = tuple(np.round(np.linspace(0.0, 1.0, 11), 1).tolist())
SEGMENT_FILE = "segment_metrics.json"  # written with each model version by the training pipeline


def hour_bucket(hour: pl.Expr) -> pl.Expr:
    """The bucket label of a local hour (0-23); null stays null."""
    label = pl.lit(None, pl.String)
    for first, name in HOUR_BUCKETS:
        label = pl.when(hour >= first).then(pl.lit(name)).otherwise(label)
    return label


def segment_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """One String column per segment kind (``carrier``, ``origin``, ``hour``, ``month``) for
    each row of ``frame`` (which holds :data:`INPUT_COLUMNS`); a missing input gives null."""
    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise KeyError(f"segments need the columns {missing}")
    return frame.select(
        pl.col("carrier").cast(pl.String).alias("carrier"),
        pl.col("origin").cast(pl.String).alias("origin"),
        hour_bucket(pl.col("sched_hour").cast(pl.Int32, strict=False)).alias("hour"),
        pl.col("flight_date").cast(pl.Date).dt.strftime("%m").alias("month"),
    )


def segment_members(segments: pl.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    """``(kind, value, row indices)`` of every segment present, kinds in order, values sorted;
    rows whose value is null belong to no segment of that kind."""
    members = []
    for kind in SEGMENT_KINDS:
        values = segments[kind]
        for value in sorted(v for v in values.unique().to_list() if v is not None):
            members.append((kind, value, np.flatnonzero((values == value).to_numpy())))
    return members


def prediction_fractions(probabilities: Sequence[float] | np.ndarray) -> list[float]:
    """Share of predictions per bin of :data:`PREDICTION_EDGES` (1.0 falls in the last bin)."""
    values = np.asarray(probabilities, dtype=np.float64)
    values = values[~np.isnan(values)]
    bins = len(PREDICTION_EDGES) - 1
    if values.size == 0:
        return [0.0] * bins
    index = np.clip(np.searchsorted(PREDICTION_EDGES[1:-1], values, side="right"), 0, bins - 1)
    return (np.bincount(index, minlength=bins) / values.size).tolist()


def segment_name(kind: str, value: str) -> str:
    """How a segment is named in reasons and reports: ``origin=EWR``."""
    return f"{kind}={value}"
