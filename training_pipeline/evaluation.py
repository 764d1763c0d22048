"""Metrics on the test window: ranking, probability quality, calibration, per origin airport,
and per segment (carrier, origin, hour-of-day bucket, month: :mod:`shared.segments`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from shared.segments import HOUR_BUCKETS, SEGMENT_KINDS, prediction_fractions, segment_members

_EPS = 1e-7


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """ROC AUC, PR AUC, log loss, Brier, base rate (NaN where one class is absent)."""
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    both = labels.size > 0 and 0 < labels.sum() < labels.size
    return {
        "rows": float(labels.size),
        "base_rate": float(labels.mean()) if labels.size else math.nan,
        "mean_prediction": float(probs.mean()) if probs.size else math.nan,
        "roc_auc": float(roc_auc_score(labels, probs)) if both else math.nan,
        "pr_auc": float(average_precision_score(labels, probs)) if both else math.nan,
        "log_loss": float(log_loss(labels, probs, labels=[0, 1])) if labels.size else math.nan,
        "brier": float(brier_score_loss(labels, probs)) if labels.size else math.nan,
    }


def reliability_curve(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Observed delay rate against mean predicted probability, per quantile bin."""
    observed, predicted = calibration_curve(labels, probs, n_bins=bins, strategy="quantile")
    return {"predicted": predicted.tolist(), "observed": observed.tolist(), "bins": bins}


def per_group_metrics(
    groups: np.ndarray, labels: np.ndarray, probs: np.ndarray
) -> dict[str, dict[str, float]]:
    """The metrics of each group (e.g. origin airport), keyed by the group's value."""
    return {
        str(value): classification_metrics(labels[groups == value], probs[groups == value])
        for value in sorted(set(groups.tolist()))
    }


SEGMENT_METRICS = ("rows", "base_rate", "mean_prediction", "roc_auc", "log_loss", "brier")


def segment_metrics(
    segments: pl.DataFrame, labels: np.ndarray, probs: np.ndarray
) -> list[dict[str, Any]]:
    """The metrics of every segment present (``segments``: :func:`shared.segments.segment_columns`
    of the same rows), with its share of the rows and its predictions' histogram."""
    rows = []
    for kind, value, index in segment_members(segments):
        metrics = classification_metrics(labels[index], probs[index])
        rows.append(
            {"kind": kind, "segment": value, "share": index.size / max(len(labels), 1)}
            | {name: metrics[name] for name in SEGMENT_METRICS}
            | {"prediction_fractions": prediction_fractions(probs[index])}
        )
    return rows


def segment_document(rows: list[dict[str, Any]], test_window: str) -> dict[str, Any]:
    """``segment_metrics.json`` of a model version: what monitoring compares each segment of a
    window with."""
    return {
        "format": "fti-segment-metrics/1",
        "test_window": test_window,
        "kinds": list(SEGMENT_KINDS),
        "hour_buckets": [name for _, name in HOUR_BUCKETS],
        "segments": rows,
    }


def plot_reliability(curves: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    """Reliability diagram of several models on one test window (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for name, curve in curves.items():
        ax.plot(curve["predicted"], curve["observed"], marker="o", label=name)
    ax.set_xlabel("mean predicted probability of a >15 min delay")
    ax.set_ylabel("observed share delayed")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
