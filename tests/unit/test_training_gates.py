"""Quality gates: absolute floor, and no regression against the champion on the same window."""

from __future__ import annotations

import math

import pytest

from training_pipeline.config import GateConfig
from training_pipeline.gates import check_gates

pytestmark = pytest.mark.unit

GATES = GateConfig(min_roc_auc=0.65, max_roc_auc_drop=0.005)


def test_first_model_only_needs_the_floor() -> None:
    assert check_gates(0.70, None, GATES).passed
    refused = check_gates(0.60, None, GATES)
    assert not refused.passed and "floor" in refused.summary()


def test_worse_than_champion_is_refused() -> None:
    refused = check_gates(0.70, 0.72, GATES, champion_version="3")
    assert not refused.passed
    assert "champion v3" in refused.summary()


def test_within_tolerance_of_champion_passes() -> None:
    assert check_gates(0.716, 0.72, GATES, champion_version="3").passed


def test_nan_auc_never_passes() -> None:
    assert not check_gates(math.nan, None, GATES).passed


def test_a_refusal_states_the_failure_not_the_rule() -> None:
    floor = check_gates(0.5173, None, GateConfig(min_roc_auc=0.65))
    assert floor.reasons == ["test ROC AUC 0.5173 is below the floor 0.6500"]
    assert floor.checks == ["test ROC AUC 0.5173 >= floor 0.6500"]  # the rule, kept apart
    versus = check_gates(0.70, 0.72, GATES, champion_version="3")
    assert versus.reasons == [
        "test ROC AUC 0.7000 is more than 0.0050 below champion v3's 0.7200 on the same window"
    ]
    assert check_gates(math.nan, 0.72, GATES).reasons == [
        "test ROC AUC is not a number (a test window with a single class?)"
    ]
