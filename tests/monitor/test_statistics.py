"""Drift statistics against scipy and against answers known in closed form."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from scipy import stats

from inference_pipeline.monitor.drift import (
    ABSENT,
    DRIFT,
    NO_REFERENCE,
    OK,
    USUAL,
    DriftRule,
    baseline_psi,
    categorical_drift,
    chi_square_test,
    combined_p_value,
    drift_report,
    ks_test,
    missing_rate_test,
    numeric_drift,
    out_of_distribution,
    pool_sparse_columns,
    prediction_drift,
    psi,
    summarize_drift,
)
from shared.reference_statistics import bin_fractions
from training_pipeline import reference_stats as training_reference

pytestmark = pytest.mark.unit


def reference_of(frame: pl.DataFrame, numeric: list[str], categorical: list[str], seed: int = 0):
    """Reference statistics exactly as the training pipeline writes them."""
    return training_reference.reference_stats(
        frame, numeric, categorical, np.zeros(frame.height), seed=seed
    )


# -- PSI ---------------------------------------------------------------------------------------


def test_psi_of_two_known_histograms() -> None:
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected, rel=1e-12)
    assert psi([0.25, 0.75], [0.5, 0.5]) == pytest.approx(expected, rel=1e-12)  # symmetric
    assert psi([0.1] * 10, [0.1] * 10) == 0.0


def test_psi_of_an_empty_bin_is_finite() -> None:
    value = psi([0.5, 0.5, 0.0], [0.4, 0.4, 0.2])
    assert math.isfinite(value) and value > 0.2


def test_psi_refuses_different_bins() -> None:
    with pytest.raises(ValueError, match="same bins"):
        psi([0.5, 0.5], [1.0])


def test_psi_of_a_normal_shift_matches_the_closed_form() -> None:
    """Deciles of N(0, 1); the current sample is N(mu, 1): the expected share per decile is
    Phi(e_i+1 - mu) - Phi(e_i - mu), so the PSI is known without sampling."""
    rng = np.random.default_rng(1)
    mu = 0.5
    edges = stats.norm.ppf(np.linspace(0, 1, 11))  # -inf .. +inf
    expected_shares = np.diff(stats.norm.cdf(edges - mu))
    closed_form = float(np.sum((expected_shares - 0.1) * np.log(expected_shares / 0.1)))
    current = rng.normal(mu, 1.0, 400_000)
    finite_edges = [-10.0, *edges[1:-1].tolist(), 10.0]
    measured = psi([0.1] * 10, bin_fractions(current, finite_edges))
    assert measured == pytest.approx(closed_form, rel=0.03)


def test_bins_are_open_ended_and_an_inner_edge_belongs_to_the_bin_above() -> None:
    """The binning of the reference-statistics contract (shared.reference_statistics), which
    the training pipeline writes with and monitoring reads with."""
    edges = [0.0, 1.0, 2.0, 3.0]
    values = np.array([-5.0, 0.0, 0.5, 1.0, 1.0, 2.9, 3.0, 99.0])
    np.testing.assert_array_equal(bin_fractions(values, edges), np.array([3, 2, 3]) / 8)
    np.testing.assert_array_equal(bin_fractions(np.array([]), edges), np.zeros(3))
    assert bin_fractions(values, [1.0]).size == 0


# -- KS and chi-square against scipy -----------------------------------------------------------


def test_ks_equals_scipy_and_the_known_statistic() -> None:
    """KS distance of N(0,1) and N(0.5,1) is 2 Phi(0.25) - 1."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 20_000), rng.normal(0.5, 1, 20_000)
    statistic, p_value = ks_test(a, b)
    reference = stats.ks_2samp(a, b)
    assert statistic == reference.statistic and p_value == reference.pvalue
    assert statistic == pytest.approx(2 * stats.norm.cdf(0.25) - 1, abs=0.015)
    assert p_value < 1e-100


def test_ks_false_positive_rate_matches_its_level() -> None:
    rng = np.random.default_rng(4)
    rejections = sum(
        ks_test(rng.normal(size=1000), rng.normal(size=3000))[1] < 0.05 for _ in range(400)
    )
    # Binomial(400, 0.05): mean 20, sd 4.4; KS on continuous data is exact, not conservative.
    assert 8 <= rejections <= 34


def test_chi_square_equals_scipy_without_sparse_cells() -> None:
    reference = np.array([400.0, 300.0, 200.0, 100.0])
    current = np.array([90.0, 110.0, 60.0, 40.0])
    statistic, p_value = chi_square_test(reference, current)
    expected = stats.chi2_contingency(np.vstack([reference, current]), correction=False)
    assert statistic == pytest.approx(expected.statistic)
    assert p_value == pytest.approx(expected.pvalue)


def test_chi_square_by_hand() -> None:
    table = np.array([[10.0, 20.0], [30.0, 40.0]])
    expected = np.outer(table.sum(1), table.sum(0)) / table.sum()
    by_hand = float(((table - expected) ** 2 / expected).sum())
    statistic, p_value = chi_square_test(table[0], table[1])
    assert statistic == pytest.approx(by_hand)
    assert p_value == pytest.approx(stats.chi2.sf(by_hand, df=1))


def test_sparse_categories_are_pooled_before_the_test() -> None:
    reference = np.array([5000.0, 4000.0, 30.0, 20.0, 0.0])
    current = np.array([500.0, 420.0, 1.0, 0.0, 6.0])
    table = np.vstack([reference, current])
    pooled = pool_sparse_columns(table)
    assert pooled.shape == (2, 3)  # the three sparse columns became one
    np.testing.assert_array_equal(pooled[:, -1], [50.0, 7.0])
    statistic, p_value = chi_square_test(reference, current)
    expected = stats.chi2_contingency(pooled, correction=False)
    assert statistic == pytest.approx(expected.statistic)
    assert p_value == pytest.approx(expected.pvalue)


def test_a_pool_still_too_small_joins_the_smallest_category() -> None:
    table = np.array([[5000.0, 4000.0, 3.0, 2.0], [500.0, 420.0, 1.0, 0.0]])
    pooled = pool_sparse_columns(table)
    np.testing.assert_array_equal(pooled, [[5000.0, 4005.0], [500.0, 421.0]])


def test_chi_square_with_one_category_has_nothing_to_test() -> None:
    assert chi_square_test(np.array([100.0]), np.array([50.0])) == (0.0, 1.0)


def test_missing_rate_test() -> None:
    assert missing_rate_test(10_000, 0.1, 1000, 100) == pytest.approx(1.0)
    assert missing_rate_test(10_000, 0.0, 1000, 0) == 1.0
    assert missing_rate_test(10_000, 0.01, 1000, 500) < 1e-100


def test_combined_p_value_is_bonferroni() -> None:
    assert combined_p_value([0.01, 0.5]) == pytest.approx(0.02)
    assert combined_p_value([None, 0.3]) == pytest.approx(0.3)
    assert combined_p_value([0.7, 0.6]) == 1.0
    assert combined_p_value([None]) == 1.0


# -- per feature -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_reference() -> dict:
    rng = np.random.default_rng(5)
    n = 20_000
    frame = pl.DataFrame(
        {
            "x": rng.normal(0, 1, n),
            "gappy": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
            "colour": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2]),
        }
    ).with_columns(pl.col("gappy").fill_nan(None))
    return reference_of(frame, ["x", "gappy"], ["colour"])


def window(rng: np.random.Generator, n: int, *, mu: float = 0.0, p=(0.5, 0.3, 0.2)) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "x": rng.normal(mu, 1, n),
            "gappy": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
            "colour": rng.choice(["red", "green", "blue"], n, p=list(p)),
        }
    ).with_columns(pl.col("gappy").fill_nan(None))


def test_same_distribution_is_ok(synthetic_reference: dict) -> None:
    report = drift_report(synthetic_reference, window(np.random.default_rng(6), 5000))
    assert report["status"].to_list() == [OK, OK, OK]
    assert report["psi"].max() < 0.05


def test_a_large_shift_is_drift(synthetic_reference: dict) -> None:
    report = drift_report(synthetic_reference, window(np.random.default_rng(7), 5000, mu=1.0))
    x = report.row(by_predicate=pl.col("feature") == "x", named=True)
    assert x["status"] == DRIFT and x["drifted"]
    assert x["p_value"] < 1e-10 and x["psi"] >= 0.2
    assert x["current_mean"] == pytest.approx(1.0, abs=0.05)


def test_a_trivial_but_significant_shift_is_not_drift(synthetic_reference: dict) -> None:
    """Significance alone is not enough: with 200,000 rows a 0.2 sd shift and a 3-point move
    of a category's share are significant, yet small (PSI 0.03 and 0.003)."""
    rng = np.random.default_rng(8)
    current = window(rng, 200_000, mu=0.2, p=(0.53, 0.29, 0.18))
    x = numeric_drift("x", synthetic_reference["numeric"]["x"], current["x"], DriftRule(), 20_000)
    assert x["p_value"] < 1e-4 and x["psi"] < 0.1
    assert x["status"] == OK
    colour = categorical_drift(
        "colour",
        synthetic_reference["categorical"]["colour"],
        current["colour"],
        DriftRule(),
        20_000,
    )
    assert colour["p_value"] < 1e-8 and colour["psi"] < 0.01
    assert colour["status"] == OK


def test_a_category_mix_shift_is_drift(synthetic_reference: dict) -> None:
    current = window(np.random.default_rng(9), 5000, p=(0.1, 0.2, 0.7))
    row = drift_report(synthetic_reference, current).row(
        by_predicate=pl.col("feature") == "colour", named=True
    )
    assert row["status"] == DRIFT and row["test"] == "chi2"
    expected = stats.chi2_contingency(
        np.vstack(
            [
                [synthetic_reference["categorical"]["colour"]["frequencies"][c] * 20_000
                 for c in ("red", "green", "blue")],
                [current["colour"].eq(c).sum() for c in ("red", "green", "blue")],
            ]
        ),
        correction=False,
    )  # fmt: skip
    assert row["statistic"] == pytest.approx(expected.statistic)


def test_unseen_categories_are_out_of_distribution(synthetic_reference: dict) -> None:
    rng = np.random.default_rng(10)
    current = window(rng, 1000).with_columns(
        pl.when(pl.int_range(pl.len()) < 300)
        .then(pl.lit("purple"))
        .otherwise(pl.col("colour"))
        .alias("colour")
    )
    row = categorical_drift(
        "colour",
        synthetic_reference["categorical"]["colour"],
        current["colour"],
        DriftRule(),
        20_000,
    )
    assert row["ood_rate"] == pytest.approx(0.3)
    assert "purple" in row["note"] and "purple" in row["bins"]
    assert row["status"] == DRIFT
    flags = out_of_distribution(synthetic_reference, current)
    assert flags.sum() >= 300


def test_values_outside_the_training_range_are_out_of_distribution(
    synthetic_reference: dict,
) -> None:
    reference = synthetic_reference["numeric"]["x"]
    current = pl.DataFrame({"x": [reference["min"] - 1, 0.0, reference["max"] + 1, None]})
    row = numeric_drift("x", reference, current["x"], DriftRule(min_values=2), 20_000)
    assert row["ood_rate"] == pytest.approx(2 / 3)
    assert out_of_distribution(synthetic_reference, current).to_list() == [True, False, True, False]


def test_a_feature_gone_missing_is_drift(synthetic_reference: dict) -> None:
    current = pl.DataFrame({"x": pl.Series([None] * 2000, dtype=pl.Float64)})
    row = numeric_drift("x", synthetic_reference["numeric"]["x"], current["x"], DriftRule(), 20_000)
    assert row["status"] == DRIFT
    assert row["note"] == "all values null" and row["statistic"] is None
    assert row["null_fraction_current"] == 1.0 and row["missing_p_value"] < 1e-100


def test_a_feature_with_its_usual_missing_rate_is_ok(synthetic_reference: dict) -> None:
    current = window(np.random.default_rng(11), 5000)
    row = drift_report(synthetic_reference, current).row(
        by_predicate=pl.col("feature") == "gappy", named=True
    )
    assert row["status"] == OK
    assert row["null_fraction_current"] == pytest.approx(0.1, abs=0.02)


def test_absent_features_and_missing_references(synthetic_reference: dict) -> None:
    reference = {
        **synthetic_reference,
        "numeric": {**synthetic_reference["numeric"], "empty": {"null_fraction": 1.0,
                    "bin_edges": [], "bin_fractions": [], "sample": []}},
    }  # fmt: skip
    current = (
        window(np.random.default_rng(12), 1000)
        .drop("colour")
        .with_columns(pl.lit(None, dtype=pl.Float64).alias("empty"))
    )
    report = drift_report(reference, current)
    status = dict(zip(report["feature"], report["status"], strict=True))
    assert status["colour"] == ABSENT and status["empty"] == NO_REFERENCE
    summary = summarize_drift(report, 0.15)
    assert summary.tested == 2 and summary.absent_features == ["colour"]


def test_the_drifted_share_counts_tested_features_only(synthetic_reference: dict) -> None:
    current = window(np.random.default_rng(13), 5000, mu=1.0)
    report = drift_report(synthetic_reference, current)
    summary = summarize_drift(report, 0.15)
    assert (summary.drifted, summary.tested) == (1, 3) and summary.detected
    ignored = summarize_drift(report, 0.15, ignore=["x"])
    assert (ignored.drifted, ignored.tested, ignored.detected) == (0, 2, False)
    assert ignored.ignored_features == ["x"]
    assert not summarize_drift(report, 0.5).detected


def _report(statuses: dict[str, str]) -> pl.DataFrame:
    """A drift report's feature and status columns (all summarize_drift reads)."""
    return pl.DataFrame({"feature": list(statuses), "status": list(statuses.values())})


def test_the_drifted_share_by_family_weighs_each_family_once() -> None:
    # A family of eight with one drifted feature, a family of two with both drifted, and one
    # feature no family names (a family of its own).
    statuses = {f"fresh_{i}": OK for i in range(8)} | {"wx_a": DRIFT, "wx_b": DRIFT}
    statuses |= {"fresh_0": DRIFT, "lone": OK, "absent": "absent"}
    families = {f"fresh_{i}": "events" for i in range(8)} | {"wx_a": "wx", "wx_b": "wx"}
    report = _report(statuses)
    by_feature = summarize_drift(report, 0.3)
    assert (by_feature.drifted, by_feature.tested) == (3, 11)
    assert by_feature.share == pytest.approx(3 / 11) and not by_feature.detected
    by_family = summarize_drift(report, 0.3, families=families)
    assert by_family.share == pytest.approx((1 / 8 + 2 / 2 + 0 / 1) / 3) and by_family.detected
    assert by_family.feature_share == pytest.approx(3 / 11)
    assert (by_family.share_by, by_feature.share_by) == ("family", "feature")
    assert by_family.drifted_families == {"events": "1/8", "wx": "2/2"}
    # Ignored features leave their family's count (a family left empty is not a family).
    ignored = summarize_drift(report, 0.3, ignore=["wx_a", "wx_b"], families=families)
    assert ignored.share == pytest.approx((1 / 8 + 0 / 1) / 2)
    assert summarize_drift(_report({}), 0.1, families=families).share == 0.0


def test_every_feature_of_the_view_has_a_family() -> None:
    from shared.feature_view import FLIGHT_DELAY_VIEW
    from shared.recent_departures import FEATURES as FRESH

    families = FLIGHT_DELAY_VIEW.feature_families()
    assert list(families) == FLIGHT_DELAY_VIEW.features
    assert {families[f] for f in FRESH} == {"departure_events"}
    assert (
        families["wx_temp"] == "airport_weather" and families["route_flights_28d"] == "route_stats"
    )
    assert families["origin"] == "flights" and families["plane_age_years"] == "on_demand"
    assert len(set(families.values())) == 7


def test_drift_report_of_an_empty_window_tests_nothing(synthetic_reference: dict) -> None:
    report = drift_report(synthetic_reference, window(np.random.default_rng(14), 0))
    assert set(report["status"]) == {OK}
    assert report["values"].sum() == 0


# -- the training period's own variation --------------------------------------------------------


def daily_frame(days: int, rows_per_day: int, seed: int) -> pl.DataFrame:
    """A value whose level moves day to day (like weather): rows of one day share it. Both
    features miss some values, more on some days than others."""
    rng = np.random.default_rng(seed)
    level = np.cumsum(rng.normal(0, 0.6, days))
    start = date(2013, 1, 1)
    rows = days * rows_per_day
    missing = rng.random(rows) < np.repeat(rng.uniform(0, 0.3, days), rows_per_day)
    return pl.DataFrame(
        {
            "flight_date": pl.Series(
                [start + timedelta(days=int(d)) for d in np.repeat(range(days), rows_per_day)],
                dtype=pl.Date,
            ),
            "x": np.repeat(level, rows_per_day) + rng.normal(0, 0.3, rows),
            "colour": rng.choice(["a", "b", "c"], rows),
        }
    ).with_columns(
        pl.when(pl.Series(missing)).then(None).otherwise(pl.col("x")).alias("x"),
        pl.when(pl.Series(np.roll(missing, 7)))
        .then(None)
        .otherwise(pl.col("colour"))
        .alias("colour"),
    )


def test_baseline_equals_the_report_psi_of_every_training_window() -> None:
    training = daily_frame(60, 200, seed=15)
    reference = reference_of(training, ["x"], ["colour"])
    baseline = baseline_psi(reference, training, 7, quantile=0.9)
    direct = {"x": [], "colour": []}
    for start in range(60 - 7 + 1):
        first = date(2013, 1, 1) + timedelta(days=start)
        part = training.filter(pl.col("flight_date").is_between(first, first + timedelta(days=6)))
        report = drift_report(reference, part)
        for name in direct:
            direct[name].append(report.filter(pl.col("feature") == name)["psi"][0])
    for name, values in direct.items():
        assert baseline[name] == pytest.approx(float(np.quantile(values, 0.9)), rel=1e-9)


def test_a_week_as_unusual_as_the_training_weeks_is_usual_not_drift() -> None:
    training = daily_frame(90, 200, seed=16)
    reference = reference_of(training, ["x"], ["colour"])
    week = training.filter(pl.col("flight_date") < date(2013, 1, 8))
    plain = drift_report(reference, week)
    assert plain.filter(pl.col("feature") == "x")["status"][0] == DRIFT  # without a baseline
    calibrated = drift_report(reference, week, baseline=baseline_psi(reference, training, 7))
    row = calibrated.row(by_predicate=pl.col("feature") == "x", named=True)
    assert row["status"] == USUAL and row["psi"] <= row["baseline_psi"]
    # far outside anything the training weeks saw: drift even with the baseline
    shifted = week.with_columns(pl.col("x") + 100)
    row = drift_report(reference, shifted, baseline=baseline_psi(reference, training, 7)).row(
        by_predicate=pl.col("feature") == "x", named=True
    )
    assert row["status"] == DRIFT


def test_no_baseline_when_training_is_shorter_than_the_window() -> None:
    training = daily_frame(5, 100, seed=17)
    assert baseline_psi(reference_of(training, ["x"], []), training, 7) == {}


# -- predictions -------------------------------------------------------------------------------


def test_prediction_drift() -> None:
    rng = np.random.default_rng(18)
    edges = np.linspace(0, 1, 11).tolist()
    training = rng.beta(2, 6, 50_000)
    reference = {"bin_edges": edges, "bin_fractions": bin_fractions(training, edges).tolist()}
    same = prediction_drift(reference, rng.beta(2, 6, 5000), 50_000, DriftRule())
    assert same["status"] == OK and same["psi"] < 0.02
    moved = prediction_drift(reference, rng.beta(5, 5, 5000), 50_000, DriftRule())
    assert moved["status"] == DRIFT and moved["drifted"]
    assert moved["current_mean"] == pytest.approx(0.5, abs=0.02)
    few = prediction_drift(reference, rng.beta(2, 6, 10), 50_000, DriftRule())
    assert few["status"] == "too_few" and few["psi"] is None
