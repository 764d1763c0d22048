"""The drift rule on the real 2013 flights: sensitive to the seasons, quiet without drift.

Feature frames are built from the session's full-year store with the model's own feature view
(point-in-time joins, on-demand features), and references with the training pipeline's own
``reference_stats`` - exactly what a registered version carries.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from inference_pipeline.monitor.drift import (
    DRIFT,
    DriftRule,
    baseline_psi,
    drift_report,
    summarize_drift,
)
from shared.feature_store import FeatureStore
from shared.feature_view import FLIGHT_DELAY_VIEW, build_training_frame
from shared.recent_departures import FEATURES as FRESH_FEATURES
from training_pipeline.reference_stats import reference_stats

pytestmark = [pytest.mark.data, pytest.mark.slow]

SHARE = 0.15  # FTI_RETRAIN_DRIFT_SHARE's default
RULE = DriftRule()
NUMERIC, CATEGORICAL = list(FLIGHT_DELAY_VIEW.numeric), list(FLIGHT_DELAY_VIEW.categorical)
FAMILIES = FLIGHT_DELAY_VIEW.feature_families()


def features(store: FeatureStore, start: date, end: date) -> pl.DataFrame:
    """The model's raw feature rows for local flight dates [start, end)."""
    return build_training_frame(store, FLIGHT_DELAY_VIEW, start, end).frame


def reference(frame: pl.DataFrame, seed: int = 0) -> dict:
    return reference_stats(frame, NUMERIC, CATEGORICAL, np.zeros(frame.height), seed=seed)


@pytest.fixture(scope="module")
def year(year_root) -> pl.DataFrame:  # type: ignore[no-untyped-def]
    from feature_pipeline.settings import FeaturePipelineSettings
    from shared.feature_store import open_feature_store

    store = open_feature_store(FeaturePipelineSettings(data_root=year_root))
    try:
        return features(store, date(2013, 1, 1), date(2014, 1, 1))
    finally:
        store.close()


def between(frame: pl.DataFrame, start: date, end: date) -> pl.DataFrame:
    return frame.filter(pl.col("flight_date").is_between(start, end, closed="left"))


@pytest.fixture(scope="module")
def winter(year: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    frame = between(year, date(2013, 1, 1), date(2013, 3, 1))
    return frame, reference(frame)


@pytest.mark.parametrize("month", [6, 7, 8])
def test_summer_months_are_flagged_against_a_winter_reference(
    year: pl.DataFrame, winter: tuple[pl.DataFrame, dict], month: int
) -> None:
    training, ref = winter
    summer = between(year, date(2013, month, 1), date(2013, month + 1, 1))
    days = summer["flight_date"].n_unique()
    for baseline in (None, baseline_psi(ref, training, days, quantile=0.99)):
        report = drift_report(ref, summer, RULE, baseline)
        summary = summarize_drift(report, SHARE)
        assert summary.detected, (month, summary)
        status = dict(zip(report["feature"], report["status"], strict=True))
        # what summer is: warm and humid, and later (season), with more delays
        for feature in ("wx_temp", "wx_dewp", "carrier_delay_rate_28d"):
            assert status[feature] == DRIFT, (month, feature, baseline is not None)
        # what it is not: the same airports, carriers and hours of day
        for feature in ("origin", "carrier", "sched_hour", "distance"):
            assert status[feature] == "ok", (month, feature)


def test_summer_weeks_are_flagged_with_the_training_baseline(
    year: pl.DataFrame, winter: tuple[pl.DataFrame, dict]
) -> None:
    training, ref = winter
    baseline = baseline_psi(ref, training, 7, quantile=0.99)
    starts = [date(2013, 6, 3) + timedelta(days=7 * i) for i in range(12)]
    reports = [
        drift_report(ref, between(year, s, s + timedelta(days=7)), RULE, baseline) for s in starts
    ]
    # By family (the default): the 26 fresh window features, which describe the last hours at
    # the airport rather than the season, count as one family among seven.
    by_family = [summarize_drift(r, SHARE, families=FAMILIES).detected for r in reports]
    assert sum(by_family) >= 10, by_family
    # Every feature alike, they dilute the share (8 of these 12 weeks when measured), unless
    # an operator leaves them out (FTI_DRIFT_IGNORE_FEATURES).
    by_feature = [summarize_drift(r, SHARE).detected for r in reports]
    assert sum(by_feature) < sum(by_family), (by_feature, by_family)
    without_fresh = [summarize_drift(r, SHARE, ignore=FRESH_FEATURES).detected for r in reports]
    assert sum(without_fresh) >= 10, without_fresh


def test_random_halves_of_one_period_stay_quiet(year: pl.DataFrame) -> None:
    """No-drift control: 40 random half-splits of March; a false alarm is any drifted
    feature at all (stricter than the window's verdict)."""
    march = between(year, date(2013, 3, 1), date(2013, 4, 1))
    rng = np.random.default_rng(2013)
    alarms = verdicts = flagged = tested = 0
    for draw in range(40):
        half = pl.Series(rng.random(march.height) < 0.5)
        report = drift_report(reference(march.filter(half), seed=draw), march.filter(~half), RULE)
        summary = summarize_drift(report, SHARE)
        alarms += summary.drifted > 0
        verdicts += summary.detected
        flagged += summary.drifted + summary.warned
        tested += summary.tested
    assert alarms / 40 < 0.05 and verdicts == 0
    assert flagged / tested < 0.01


def test_random_halves_of_one_week_stay_quiet(year: pl.DataFrame) -> None:
    """The same control with a week's rows (~3,000 per half): PSI noise grows as rows shrink."""
    week = between(year, date(2013, 5, 6), date(2013, 5, 13))
    rng = np.random.default_rng(7)
    alarms = 0
    for draw in range(40):
        half = pl.Series(rng.random(week.height) < 0.5)
        report = drift_report(reference(week.filter(half), seed=draw), week.filter(~half), RULE)
        alarms += summarize_drift(report, SHARE).drifted > 0
    assert alarms / 40 < 0.05


def test_weeks_inside_the_training_period_stay_quiet_with_the_baseline(
    year: pl.DataFrame,
) -> None:
    """The realistic control: each week of Jan-Sep against a Jan-Sep reference. Without the
    training-period baseline nearly every week alarms (rows of a week share weather and rolling
    statistics); with it, fewer than 5% do."""
    training = between(year, date(2013, 1, 1), date(2013, 10, 1))
    ref = reference(training)
    baseline = baseline_psi(ref, training, 7, quantile=0.99)
    starts = [date(2013, 1, 1) + timedelta(days=7 * i) for i in range(38)]
    plain = calibrated = by_family = 0
    for start in starts:
        current = between(year, start, start + timedelta(days=7))
        plain += summarize_drift(drift_report(ref, current, RULE), SHARE).detected
        report = drift_report(ref, current, RULE, baseline)
        calibrated += summarize_drift(report, SHARE).detected
        by_family += summarize_drift(report, SHARE, families=FAMILIES).detected
    assert plain / len(starts) > 0.9  # the problem the baseline solves
    assert calibrated / len(starts) < 0.05
    assert by_family / len(starts) < 0.05  # a small family's drift weighs more: still quiet
