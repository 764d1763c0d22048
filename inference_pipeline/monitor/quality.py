"""Concept drift with delayed labels: how good the logged predictions were, once outcomes arrive.

The outcome of a departure (``is_delayed``) reaches the ``flights`` group through the feature
pipeline a day or more after the flight was scored. Joined by ``flight_id`` with the logged
predictions it gives ROC AUC, log loss, Brier score and calibration per day and over the window,
compared with the model's own test metrics (``metrics.json`` of the version). Cancelled flights
have no outcome and are left out; a window or day with too few labels says so instead of
reporting a number nobody should trust.

Pure functions over numpy arrays and Polars frames; no scikit-learn (the inference image does
not ship it), the tests check these against it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from inference_pipeline.monitor.status import MEASURED, NOT_ENOUGH_LABELS, ONE_CLASS

PROBABILITY_FLOOR = 1e-7  # as the training pipeline's log loss clips
CALIBRATION_BINS = 10


def roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney U of the positives' ranks (ties averaged),
    scaled to [0, 1]. NaN when one class is absent."""
    y = np.asarray(labels, dtype=np.float64)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = stats.rankdata(np.asarray(probabilities, dtype=np.float64))
    u = ranks[y == 1].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64)
    if y.size == 0:
        return math.nan
    p = np.clip(np.asarray(probabilities, np.float64), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def brier(labels: np.ndarray, probabilities: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64)
    if y.size == 0:
        return math.nan
    return float(np.mean((np.asarray(probabilities, np.float64) - y) ** 2))


def calibration(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS
) -> dict[str, Any]:
    """Reliability on equal-width probability bins and the expected calibration error (ECE:
    the row-weighted mean gap between predicted and observed delay rate)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    index = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    rows = np.bincount(index, minlength=bins)
    predicted = np.bincount(index, weights=p, minlength=bins)
    observed = np.bincount(index, weights=y, minlength=bins)
    filled = rows > 0
    mean_predicted = np.where(filled, predicted / np.maximum(rows, 1), np.nan)
    mean_observed = np.where(filled, observed / np.maximum(rows, 1), np.nan)
    gaps = np.abs(mean_predicted - mean_observed)[filled]
    ece = float(np.sum(gaps * rows[filled]) / y.size) if y.size else math.nan
    return {
        "ece": ece,
        "bins": [
            {
                "low": i / bins,
                "high": (i + 1) / bins,
                "rows": int(rows[i]),
                "mean_predicted": _finite(mean_predicted[i]),
                "observed_rate": _finite(mean_observed[i]),
            }
            for i in range(bins)
        ],
    }


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def quality_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """ROC AUC, log loss, Brier, calibration, base rate and mean prediction of labelled rows."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    calibrated = calibration(y, p)
    return {
        "labelled": int(y.size),
        "delayed": int(y.sum()),
        "base_rate": _finite(float(y.mean())) if y.size else None,
        "mean_probability": _finite(float(p.mean())) if p.size else None,
        "roc_auc": _finite(roc_auc(y, p)),
        "log_loss": _finite(log_loss(y, p)),
        "brier": _finite(brier(y, p)),
        "ece": _finite(calibrated["ece"]),
        "calibration": calibrated["bins"],
    }


def attach_outcomes(predictions: pl.DataFrame, outcomes: pl.DataFrame) -> pl.DataFrame:
    """Predictions with their flight's outcome: ``is_delayed`` (null while the outcome has not
    arrived, and for cancelled flights) and ``is_cancelled`` (null while not arrived)."""
    return predictions.join(
        outcomes.select("flight_id", "is_delayed", "is_cancelled"), on="flight_id", how="left"
    )


def _not_enough(labelled: int, needed: int) -> dict[str, Any]:
    return {"status": NOT_ENOUGH_LABELS, "labelled": labelled, "needed": needed}


def window_quality(scored: pl.DataFrame, min_labels: int) -> dict[str, Any]:
    """Quality over every labelled row of ``scored`` (``probability``, ``is_delayed``)."""
    labelled = scored.filter(
        pl.col("is_delayed").is_not_null() & pl.col("probability").is_not_nan()
    )
    if labelled.height < min_labels:
        return _not_enough(labelled.height, min_labels)
    metrics = quality_metrics(labelled["is_delayed"].to_numpy(), labelled["probability"].to_numpy())
    status = MEASURED if metrics["roc_auc"] is not None else ONE_CLASS
    return {"status": status} | metrics


def daily_quality(scored: pl.DataFrame, min_labels: int) -> list[dict[str, Any]]:
    """One row per local flight date: predictions, outcomes arrived, metrics when enough."""
    days = []
    for (day,), group in scored.sort("flight_date").group_by("flight_date", maintain_order=True):
        arrived = group.filter(pl.col("is_cancelled").is_not_null())
        quality = window_quality(group, min_labels)
        days.append(
            {
                "date": day.isoformat(),
                "predictions": group.height,
                "outcomes_arrived": arrived.height,
                "cancelled": int(arrived["is_cancelled"].sum()),
            }
            | {k: v for k, v in quality.items() if k != "calibration"}
        )
    return days


def compare_with_test(
    window: Mapping[str, Any], test: Mapping[str, Any] | None
) -> dict[str, float | None]:
    """Window minus test for each metric both have (AUC drop is test minus window)."""
    if test is None or window.get("status") != MEASURED:
        return {"roc_auc_drop": None, "log_loss_increase": None, "brier_increase": None}

    def diff(name: str, sign: float) -> float | None:
        w, t = window.get(name), test.get(name)
        if w is None or t is None or (isinstance(t, float) and math.isnan(t)):
            return None
        return sign * (float(w) - float(t))

    return {
        "roc_auc_drop": diff("roc_auc", -1.0),
        "log_loss_increase": diff("log_loss", 1.0),
        "brier_increase": diff("brier", 1.0),
    }
