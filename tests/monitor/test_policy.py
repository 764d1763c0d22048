"""The retraining policy: each reason fires it on its own; too few labels never do."""

from __future__ import annotations

from datetime import date

import pytest

from inference_pipeline.monitor.drift import DriftSummary
from inference_pipeline.monitor.policy import RetrainPolicy, model_age_days, retrain_decision

pytestmark = pytest.mark.unit

POLICY = RetrainPolicy(drift_share=0.15, auc_drop=0.03, max_age_days=30, min_labels=500)


def drift(drifted: int, tested: int = 40) -> DriftSummary:
    share = drifted / tested
    return DriftSummary(
        tested=tested,
        drifted=drifted,
        warned=0,
        share=share,
        detected=share > 0.15,
        drifted_features=[f"f{i}" for i in range(drifted)],
        absent_features=[],
        ignored_features=[],
    )


def test_quiet_when_nothing_crosses_a_threshold() -> None:
    decision = retrain_decision(POLICY, drift(6), auc_drop=0.03, labelled=5000, age_days=30)
    assert not decision.fire and decision.reasons == []
    assert decision.to_dict()["policy"]["drift_share"] == 0.15


def test_drift_fires() -> None:
    decision = retrain_decision(POLICY, drift(7), auc_drop=None, labelled=0, age_days=None)
    assert decision.fire and decision.reasons[0].startswith("data drift: 7 of 40")


def test_quality_fires_only_with_enough_labels() -> None:
    fired = retrain_decision(POLICY, drift(0), auc_drop=0.05, labelled=500, age_days=1)
    assert fired.fire and "ROC AUC" in fired.reasons[0]
    waiting = retrain_decision(POLICY, drift(0), auc_drop=0.05, labelled=499, age_days=1)
    assert not waiting.fire


def test_age_fires_on_schedule() -> None:
    assert model_age_days(date(2013, 6, 30), date(2013, 8, 1)) == 32
    decision = retrain_decision(POLICY, drift(0), auc_drop=None, labelled=0, age_days=32)
    assert decision.fire and decision.reasons == [
        "age: the model's data ends 32 days before the window's end (> 30)"
    ]
    no_schedule = RetrainPolicy(max_age_days=None)
    assert not retrain_decision(no_schedule, drift(0), auc_drop=None, labelled=0, age_days=900).fire
    assert model_age_days(None, date(2013, 8, 1)) is None


def test_every_reason_is_reported() -> None:
    decision = retrain_decision(POLICY, drift(20), auc_drop=0.1, labelled=9000, age_days=60)
    assert len(decision.reasons) == 3
