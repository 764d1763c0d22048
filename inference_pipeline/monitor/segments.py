"""Quality and drift per segment (carrier, origin, hour-of-day bucket, month) over the window.

A model can hold its overall ROC AUC while one airport or one evening bucket falls apart; the
per-segment view finds it. Each segment of the monitored version's own predictions in the window
is measured on its labelled flights (ROC AUC, log loss, delay rate, mean prediction) and its
predictions are compared with the same segment of the version's test window, which the training
pipeline records with each version (``segment_metrics.json``, :mod:`shared.segments`): the ROC
AUC it lost since the test window, the change of its share of flights, and prediction drift
(the rule of :func:`inference_pipeline.monitor.drift.prediction_drift`). For a version without
per-segment test metrics, segments are compared with the window's overall ROC AUC instead.

Rows come sorted with the segments that fell furthest first. A segment needs
``FTI_SEGMENT_MIN_LABELS`` labelled flights before its quality counts; one that lost more than
``FTI_SEGMENT_AUC_DROP`` is named in the report's notes (it does not change the status: the
retraining policy looks at the whole window).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from inference_pipeline.monitor.drift import DriftRule, prediction_drift
from inference_pipeline.monitor.quality import attach_outcomes, log_loss, roc_auc
from inference_pipeline.monitor.window import decode_features, latest_per_flight
from shared.segments import PREDICTION_EDGES, segment_columns, segment_members, segment_name

TEST = "test"  # fell against the segment's own test metrics
WINDOW = "window"  # fell against the window's overall ROC AUC (no per-segment reference)


def segment_rows(
    scored: pl.DataFrame,
    reference: Mapping[str, Any] | None,
    rule: DriftRule,
    min_labels: int,
) -> list[dict[str, Any]]:
    """One row per segment of ``scored`` (one row per flight: ``probability``, ``is_delayed``,
    and the segment inputs ``carrier``, ``origin``, ``sched_hour``, ``flight_date``), the
    segments that fell furthest first. ``reference``: the version's ``segment_metrics.json``."""
    segments = segment_columns(scored)
    probabilities = scored["probability"].cast(pl.Float64).to_numpy()
    labels = scored["is_delayed"].cast(pl.Float64).to_numpy()  # NaN: no outcome (yet)
    labelled = ~np.isnan(labels) & ~np.isnan(probabilities)
    overall = _auc(labels[labelled], probabilities[labelled], min_labels)
    known = {(r["kind"], r["segment"]): r for r in (reference or {}).get("segments", [])}
    rows = []
    for kind, value, index in segment_members(segments):
        mine = index[labelled[index]]
        auc = _auc(labels[mine], probabilities[mine], min_labels)
        against = _reference(known.get((kind, value)), probabilities[index], rule)
        rows.append(
            {
                "kind": kind,
                "segment": value,
                "name": segment_name(kind, value),
                "flights": int(index.size),
                "share": index.size / scored.height,
                "labelled": int(mine.size),
                "base_rate": float(labels[mine].mean()) if mine.size else None,
                "mean_prediction": _finite(float(np.nanmean(probabilities[index]))),
                "roc_auc": auc,
                "log_loss": _finite(log_loss(labels[mine], probabilities[mine])),
            }
            | against
            | _fell(auc, against["reference_roc_auc"], overall)
        )
    return sorted(rows, key=_furthest_first)


def _auc(labels: np.ndarray, probabilities: np.ndarray, min_labels: int) -> float | None:
    """ROC AUC with at least ``min_labels`` labels of both classes, else None."""
    if labels.size < min_labels:
        return None
    return _finite(roc_auc(labels, probabilities))


def _reference(
    test: Mapping[str, Any] | None, probabilities: np.ndarray, rule: DriftRule
) -> dict[str, Any]:
    """The segment's test-window reference, and its predictions' drift from it."""
    if test is None:
        return {
            "reference_share": None,
            "reference_base_rate": None,
            "reference_mean_prediction": None,
            "reference_roc_auc": None,
            "reference_log_loss": None,
            "prediction_psi": None,
            "prediction_status": "no_reference",
        }
    drift = prediction_drift(
        {"bin_edges": list(PREDICTION_EDGES), "bin_fractions": test["prediction_fractions"]},
        probabilities,
        int(test["rows"]),
        rule,
    )
    return {
        "reference_share": _finite(test.get("share")),
        "reference_base_rate": _finite(test.get("base_rate")),
        "reference_mean_prediction": _finite(test.get("mean_prediction")),
        "reference_roc_auc": _finite(test.get("roc_auc")),
        "reference_log_loss": _finite(test.get("log_loss")),
        "prediction_psi": drift["psi"],
        "prediction_status": drift["status"],
    }


def _fell(auc: float | None, reference: float | None, overall: float | None) -> dict[str, Any]:
    """How far the segment fell: below its own test ROC AUC when recorded, else below the
    window's overall ROC AUC."""
    if auc is None:
        return {"fell_by": None, "fell_against": None}
    if reference is not None:
        return {"fell_by": reference - auc, "fell_against": TEST}
    if overall is not None:
        return {"fell_by": overall - auc, "fell_against": WINDOW}
    return {"fell_by": None, "fell_against": None}


def _furthest_first(row: Mapping[str, Any]) -> tuple[int, float, float]:
    fell, psi = row["fell_by"], row["prediction_psi"]
    return (0 if fell is not None else 1, -(fell or 0.0), -(psi or 0.0))


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def segment_section(
    predictions: pl.DataFrame,
    outcomes: pl.DataFrame,
    version: str,
    reference: Mapping[str, Any] | None,
    rule: DriftRule,
    *,
    min_labels: int,
    auc_drop: float,
) -> dict[str, Any]:
    """The per-segment view of ``version``'s own predictions in the window (each flight once)."""
    section: dict[str, Any] = {
        "version": version,
        "against": TEST if reference else WINDOW,
        "min_labels": min_labels,
        "auc_drop": auc_drop,
        "rows": [],
        "fell": [],
    }
    own = latest_per_flight(predictions.filter(pl.col("model_version") == version))
    if own.is_empty():
        return section | {"note": f"v{version} made no predictions in this window"}
    inputs = decode_features(own, [], ["carrier", "origin", "sched_hour"])
    absent = [c for c in ("carrier", "origin", "sched_hour") if c not in inputs.columns]
    if absent:
        return section | {"note": f"the logged features lack {', '.join(absent)}"}
    scored = pl.concat([attach_outcomes(own, outcomes), inputs], how="horizontal")
    rows = segment_rows(scored, reference, rule, min_labels)
    fell = [r["name"] for r in rows if r["fell_by"] is not None and r["fell_by"] > auc_drop]
    return section | {"rows": rows, "fell": fell}
