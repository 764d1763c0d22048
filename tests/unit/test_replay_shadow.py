"""The year replay's pure parts: its calendar, and the shadow comparison and promotion rule it
shares with the monitor's shadow step (shared.promotion, inference_pipeline.monitor.shadow)."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from inference_pipeline.monitor.shadow import compare, paired_scores
from scripts.year_replay.calendar import replay_weeks, selected_weeks
from scripts.year_replay.report import short_reason
from shared.errors import ConfigurationError
from shared.promotion import Eligibility, ShadowComparison, ShadowRules, decide

pytestmark = pytest.mark.unit

ELIGIBLE = Eligibility("5", True, "version 5 passed the gates")
RULES = ShadowRules(min_auc_gain=0.0, max_log_loss_increase=0.0, min_labels=100)


def test_the_replay_calendar_covers_july_to_december_in_weeks() -> None:
    weeks = replay_weeks()
    assert len(weeks) == 27
    assert (weeks[0].start, weeks[0].end) == (date(2013, 7, 1), date(2013, 7, 7))
    assert weeks[-1].days == [date(2013, 12, 30), date(2013, 12, 31)]
    assert sum(len(w.days) for w in weeks) == 184  # every day of July..December, once
    assert [w.index for w in selected_weeks(3, 2)] == [3, 4]
    with pytest.raises(ConfigurationError, match=r"weeks 1\.\.27"):
        selected_weeks(28, None)


def _predictions(rows: list[tuple[str, str, float]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "flight_id": [r[0] for r in rows],
            "model_version": [r[1] for r in rows],
            "probability": [r[2] for r in rows],
            "scored_at": [datetime(2013, 7, 1, tzinfo=UTC)] * len(rows),
            "request_id": ["batch-2013-07-01"] * len(rows),
        }
    )


def test_both_versions_are_compared_on_the_same_labelled_flights_only() -> None:
    predictions = _predictions(
        [
            ("a", "1", 0.2), ("a", "2", 0.1),
            ("b", "1", 0.7), ("b", "2", 0.9),
            ("c", "1", 0.4), ("c", "2", 0.3),
            ("d", "1", 0.5),  # scored by the champion only: left out
            ("e", "1", 0.6), ("e", "2", 0.6),  # cancelled, no label: left out
        ]
    )  # fmt: skip
    outcomes = pl.DataFrame(
        {"flight_id": ["a", "b", "c", "d", "e"], "is_delayed": [0, 1, 0, 1, None]},
        schema={"flight_id": pl.String, "is_delayed": pl.Int8},
    )
    pairs = paired_scores(predictions, outcomes, "1", "2")
    assert pairs["flight_id"].to_list() == ["a", "b", "c"]
    comparison = compare(pairs, "1", "2")
    assert comparison.flights == 3
    labels = [0, 1, 0]
    assert comparison.champion_roc_auc == pytest.approx(roc_auc_score(labels, [0.2, 0.7, 0.4]))
    assert comparison.challenger_log_loss == pytest.approx(log_loss(labels, [0.1, 0.9, 0.3]))
    assert comparison.auc_gain == pytest.approx(0.0)
    assert comparison.log_loss_increase < 0


def _comparison(auc: tuple[float, float], loss: tuple[float, float], flights: int = 5000):
    return ShadowComparison("4", "5", flights, auc[0], loss[0], auc[1], loss[1])


def test_a_better_eligible_challenger_is_promoted_and_says_why() -> None:
    decision = decide(_comparison((0.70, 0.72), (0.55, 0.54)), ELIGIBLE, RULES)
    assert decision.promote and decision.resolved
    assert decision.reason.startswith("promote challenger v5 over v4")
    assert "5,000 labelled flights" in decision.reason


def test_the_margins_decide_and_name_what_failed() -> None:
    worse_loss = decide(_comparison((0.70, 0.72), (0.55, 0.56)), ELIGIBLE, RULES)
    assert not worse_loss.promote and worse_loss.resolved
    assert "not good enough on log loss" in worse_loss.reason
    tolerant = ShadowRules(min_auc_gain=-0.01, max_log_loss_increase=0.02, min_labels=100)
    assert decide(_comparison((0.70, 0.695), (0.55, 0.56)), ELIGIBLE, tolerant).promote
    demanding = ShadowRules(min_auc_gain=0.03, min_labels=100)
    refused = decide(_comparison((0.70, 0.72), (0.55, 0.54)), ELIGIBLE, demanding)
    assert not refused.promote and "ROC AUC" in refused.reason
    undefined = decide(_comparison((0.70, math.nan), (0.55, 0.54)), ELIGIBLE, RULES)
    assert not undefined.promote


def test_an_ineligible_challenger_is_never_promoted_however_good() -> None:
    refused = Eligibility("5", False, "the gates refused version 5: failed: floor")
    decision = decide(_comparison((0.60, 0.80), (0.60, 0.40)), refused, RULES)
    assert not decision.promote and decision.resolved
    assert "gates refused" in decision.reason


def test_an_ineligible_challenger_is_decided_without_waiting_for_labels() -> None:
    refused = Eligibility("5", False, "the gates refused version 5: failed: floor")
    decision = decide(_comparison((0.70, 0.80), (0.55, 0.40), flights=0), refused, RULES)
    assert decision.resolved and not decision.promote
    assert decision.reason == "keep champion v4: the gates refused version 5: failed: floor"


def test_too_few_labels_keeps_shadowing() -> None:
    decision = decide(_comparison((0.70, 0.80), (0.55, 0.40), flights=99), ELIGIBLE, RULES)
    assert not decision.promote and not decision.resolved
    assert decision.reason.startswith("keep shadowing")


def test_the_report_shortens_the_drifted_feature_list_only() -> None:
    drift = "data drift: 22 of 43 features drifted (51% > 15%): wx_temp, wx_dewp"
    assert short_reason(drift) == "data drift: 22 of 43 features drifted (51% > 15%)"
    quality = "quality: ROC AUC 0.058 below the test AUC (> 0.030) on 6,636 labelled flights"
    assert short_reason(quality) == quality


def test_random_scores_are_no_better_than_the_champion_on_real_sized_samples() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 4000)
    champion = np.clip(labels * 0.3 + rng.normal(0.35, 0.15, 4000), 0.01, 0.99)
    challenger = rng.uniform(0.01, 0.99, 4000)
    pairs = pl.DataFrame(
        {"flight_id": [str(i) for i in range(4000)], "champion": champion},
    ).with_columns(
        pl.Series("challenger", challenger), pl.Series("is_delayed", labels, dtype=pl.Int8)
    )
    decision = decide(compare(pairs, "4", "5"), ELIGIBLE, RULES)
    assert not decision.promote and "ROC AUC and log loss" in decision.reason
