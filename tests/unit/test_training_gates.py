"""Quality gates: absolute floor, and no regression against the champion on the same window."""

from __future__ import annotations

import math

import pytest

from training_pipeline.config import GateConfig
from training_pipeline.gates import SegmentScores, check_gates

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


SEGMENT_GATES = GateConfig(
    min_roc_auc=0.6, max_roc_auc_drop=0.01, max_segment_roc_auc_drop=0.03, min_segment_share=0.1
)


def test_a_large_segment_that_fell_beyond_the_margin_refuses_and_is_named() -> None:
    segments = [
        SegmentScores("origin=EWR", 0.35, 0.650, 0.700),  # large, fell 0.05: refused
        SegmentScores("origin=JFK", 0.33, 0.740, 0.720),  # better
        SegmentScores("carrier=OO", 0.01, 0.400, 0.800),  # fell far, but 1% of the rows
        SegmentScores("hour=00-05", 0.12, 0.690, 0.715),  # fell 0.025: within the margin
    ]
    decision = check_gates(0.72, 0.715, SEGMENT_GATES, champion_version="4", segments=segments)
    assert not decision.passed
    assert decision.reasons == [
        "segment origin=EWR (35% of the test rows): ROC AUC 0.6500 is more than 0.0300 below "
        "champion v4's 0.7000"
    ]
    assert decision.checks[-1] == (
        "on each of the 3 segments with more than 10% of the test rows: ROC AUC >= champion "
        "v4's - 0.0300"
    )


def test_segments_are_judged_only_against_a_champion_and_when_configured() -> None:
    fell = [SegmentScores("month=11", 0.5, 0.60, 0.80)]
    assert check_gates(0.72, None, SEGMENT_GATES, segments=fell).passed  # first model
    off = SEGMENT_GATES.model_copy(update={"max_segment_roc_auc_drop": None})
    assert check_gates(0.72, 0.715, off, champion_version="4", segments=fell).passed
    undefined = [SegmentScores("carrier=9E", 0.2, math.nan, 0.7)]  # one class in the segment
    assert check_gates(0.72, 0.715, SEGMENT_GATES, segments=undefined).passed
