"""Metrics on the test window: ranking, probability quality, calibration, per origin airport."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

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
