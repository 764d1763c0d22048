"""Delayed-label quality metrics against scikit-learn, and the windows' bookkeeping."""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from inference_pipeline.monitor import quality
from inference_pipeline.monitor.quality import NOT_ENOUGH_LABELS

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(3000) < 0.2).astype(np.float64)
    # rounded scores: many ties, which the rank formula must average like scikit-learn does
    probabilities = np.round(np.clip(0.2 + 0.3 * labels + rng.normal(0, 0.2, 3000), 0, 1), 2)
    assert quality.roc_auc(labels, probabilities) == pytest.approx(
        roc_auc_score(labels, probabilities), abs=1e-12
    )
    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    assert quality.log_loss(labels, probabilities) == pytest.approx(
        log_loss(labels, clipped, labels=[0, 1]), rel=1e-9
    )
    assert quality.brier(labels, probabilities) == pytest.approx(
        brier_score_loss(labels, probabilities), rel=1e-12
    )


def test_auc_of_known_orderings() -> None:
    assert quality.roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert quality.roc_auc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert quality.roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert math.isnan(quality.roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_calibration_by_hand() -> None:
    labels = np.array([0, 0, 1, 1, 1, 0])
    probabilities = np.array([0.05, 0.15, 0.15, 0.85, 0.95, 0.95])
    result = quality.calibration(labels, probabilities)
    bins = {round(b["low"], 1): b for b in result["bins"] if b["rows"]}
    assert bins[0.0]["rows"] == 1 and bins[0.1]["observed_rate"] == 0.5
    assert bins[0.9]["mean_predicted"] == pytest.approx(0.95)
    # |0.05-0| * 1 + |0.15-0.5| * 2 + |0.85-1| * 1 + |0.95-0.5| * 2, over 6 rows
    assert result["ece"] == pytest.approx((0.05 + 0.7 + 0.15 + 0.9) / 6)
    assert sum(b["rows"] for b in result["bins"]) == 6


def scored_window(rows_per_day: dict[date, int], arrived: int, seed: int = 0) -> pl.DataFrame:
    """Predictions with outcomes for the first ``arrived`` rows of each day."""
    rng = np.random.default_rng(seed)
    parts = []
    for day, rows in rows_per_day.items():
        labels = (rng.random(rows) < 0.25).astype(np.int8)
        has = np.arange(rows) < arrived
        parts.append(
            pl.DataFrame(
                {
                    "flight_id": [f"{day}-{i}" for i in range(rows)],
                    "flight_date": [day] * rows,
                    "probability": np.clip(0.25 + 0.3 * labels + rng.normal(0, 0.2, rows), 0, 1),
                    "is_delayed": pl.Series(np.where(has, labels, 0), dtype=pl.Int8),
                    "arrived": has,
                }
            )
        )
    frame = pl.concat(parts)
    return frame.with_columns(
        pl.when(pl.col("arrived")).then(pl.col("is_delayed")).alias("is_delayed"),
        pl.when(pl.col("arrived")).then(pl.lit(False)).alias("is_cancelled"),
    ).drop("arrived")


def test_window_quality_waits_for_enough_labels() -> None:
    scored = scored_window({date(2013, 7, 1): 400, date(2013, 7, 2): 400}, arrived=100)
    result = quality.window_quality(scored, min_labels=500)
    assert result == {"status": NOT_ENOUGH_LABELS, "labelled": 200, "needed": 500}
    ok = quality.window_quality(scored, min_labels=150)
    assert ok["status"] == "ok" and ok["labelled"] == 200
    labelled = scored.drop_nulls("is_delayed")
    assert ok["roc_auc"] == pytest.approx(
        roc_auc_score(labelled["is_delayed"], labelled["probability"])
    )


def test_daily_quality_reports_each_day() -> None:
    scored = scored_window({date(2013, 7, 1): 300, date(2013, 7, 2): 300}, arrived=300)
    scored = scored.with_columns(  # day two's outcomes have not arrived yet
        pl.when(pl.col("flight_date") == date(2013, 7, 2)).then(None).otherwise(c).alias(c)
        for c in ("is_delayed", "is_cancelled")
    )
    days = quality.daily_quality(scored, min_labels=100)
    assert [d["date"] for d in days] == ["2013-07-01", "2013-07-02"]
    assert days[0]["status"] == "ok" and days[0]["outcomes_arrived"] == 300
    assert days[1]["status"] == NOT_ENOUGH_LABELS and days[1]["outcomes_arrived"] == 0
    assert "calibration" not in days[0]


def test_cancelled_flights_have_no_label() -> None:
    predictions = pl.DataFrame({"flight_id": ["a", "b", "c"], "probability": [0.1, 0.8, 0.5]})
    outcomes = pl.DataFrame(
        {"flight_id": ["a", "b"], "is_delayed": pl.Series([0, None], dtype=pl.Int8),
         "is_cancelled": [False, True]}
    )  # fmt: skip
    joined = quality.attach_outcomes(predictions, outcomes)
    assert joined["is_delayed"].to_list() == [0, None, None]
    assert joined["is_cancelled"].to_list() == [False, True, None]


def test_comparison_with_the_test_metrics() -> None:
    window = {"status": "ok", "roc_auc": 0.70, "log_loss": 0.55, "brier": 0.18}
    test = {"roc_auc": 0.74, "log_loss": 0.50, "brier": 0.17}
    comparison = quality.compare_with_test(window, test)
    assert comparison["roc_auc_drop"] == pytest.approx(0.04)
    assert comparison["log_loss_increase"] == pytest.approx(0.05)
    empty = quality.compare_with_test({"status": NOT_ENOUGH_LABELS}, test)
    assert set(empty.values()) == {None}
