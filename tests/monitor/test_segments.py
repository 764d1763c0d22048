"""Quality and drift per segment (unit): the segments a flight falls in, and the per-segment rows
monitoring reports, against the test window's metrics per segment or the window's overall."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from inference_pipeline.monitor.drift import DriftRule
from inference_pipeline.monitor.segments import TEST, WINDOW, segment_rows
from shared.segments import prediction_fractions, segment_columns

pytestmark = pytest.mark.unit

RULE = DriftRule()


def test_every_flight_falls_in_one_segment_of_each_kind() -> None:
    frame = pl.DataFrame(
        {
            "carrier": ["UA", "B6", "9E", None],
            "origin": ["EWR", "JFK", "LGA", "EWR"],
            "sched_hour": [5, 6, 23, None],
            "flight_date": [date(2013, 1, 31), date(2013, 2, 1), date(2013, 12, 31), None],
        }
    )
    segments = segment_columns(frame)
    assert segments.rows() == [
        ("UA", "EWR", "00-05", "01"),
        ("B6", "JFK", "06-08", "02"),
        ("9E", "LGA", "21-23", "12"),
        (None, "EWR", None, None),
    ]
    # hours as the monitor decodes them from the logged JSON (text) give the same buckets
    as_text = segment_columns(frame.with_columns(pl.col("sched_hour").cast(pl.String)))
    assert as_text.equals(segments)
    with pytest.raises(KeyError, match="sched_hour"):
        segment_columns(frame.drop("sched_hour"))


def _scored(rng: np.random.Generator, origin: str, rows: int, skill: float) -> pl.DataFrame:
    labels = rng.integers(0, 2, rows)
    probability = np.clip(skill * labels + (1 - skill) * rng.uniform(0, 1, rows), 0, 1)
    return pl.DataFrame(
        {
            "carrier": "UA",
            "origin": origin,
            "sched_hour": 10,
            "flight_date": date(2013, 7, 1),
            "probability": probability.astype(np.float32),
            "is_delayed": labels.astype(np.int8),
        }
    )


def test_rows_compare_each_segment_with_its_test_metrics_and_fall_furthest_first() -> None:
    rng = np.random.default_rng(5)
    scored = pl.concat(
        [
            _scored(rng, "EWR", 800, 0.05),
            _scored(rng, "JFK", 800, 0.5),
            _scored(rng, "LGA", 50, 0.9),
        ]
    )
    reference = {
        "segments": [
            {"kind": "origin", "segment": o, "rows": 5000, "share": 1 / 3, "roc_auc": 0.75,
             "log_loss": 0.5, "base_rate": 0.2, "mean_prediction": 0.2,
             "prediction_fractions": prediction_fractions(np.full(10, 0.15))}
            for o in ("EWR", "JFK", "LGA")
        ]
    }  # fmt: skip
    rows = segment_rows(scored, reference, RULE, min_labels=100)
    origins = [r for r in rows if r["kind"] == "origin"]
    assert [r["segment"] for r in origins] == ["EWR", "JFK", "LGA"]  # fell furthest first
    ewr = origins[0]
    in_ewr = scored.filter(pl.col("origin") == "EWR")
    expected = roc_auc_score(in_ewr["is_delayed"], in_ewr["probability"])
    assert ewr["roc_auc"] == pytest.approx(expected)
    assert ewr["fell_by"] == pytest.approx(0.75 - expected) and ewr["fell_against"] == TEST
    assert ewr["share"] == pytest.approx(800 / 1650) and ewr["labelled"] == 800
    assert ewr["prediction_status"] == "drift"  # spread out, against a reference all in one bin
    lga = origins[2]
    assert lga["roc_auc"] is None and lga["fell_by"] is None  # 50 labels < 100: not judged
    assert [r["name"] for r in rows if r["kind"] == "carrier"] == ["carrier=UA"]


def test_without_test_metrics_segments_are_compared_with_the_window() -> None:
    rng = np.random.default_rng(6)
    scored = pl.concat([_scored(rng, "EWR", 600, 0.1), _scored(rng, "JFK", 600, 0.6)])
    unlabelled = scored.with_columns(
        pl.when(pl.col("origin") == "JFK")
        .then(None)
        .otherwise(pl.col("is_delayed"))
        .alias("is_delayed")
    )
    rows = segment_rows(scored, None, RULE, min_labels=100)
    overall = roc_auc_score(scored["is_delayed"], scored["probability"])
    ewr = next(r for r in rows if r["name"] == "origin=EWR")
    assert ewr["fell_against"] == WINDOW and ewr["fell_by"] == pytest.approx(
        overall - ewr["roc_auc"]
    )
    assert ewr["prediction_status"] == "no_reference" and rows[0]["name"] == "origin=EWR"
    waiting = next(
        r for r in segment_rows(unlabelled, None, RULE, 100) if r["name"] == "origin=JFK"
    )
    assert waiting["labelled"] == 0 and waiting["roc_auc"] is None and waiting["flights"] == 600
