"""The monitor's shadow step against a real MLflow registry (SQLite): what it decides, what it
does with the aliases and what it records on the challenger, for each branch. The versions are
registered from placeholder files: the step reads only their aliases and gate tags; the scores
are made up so that each branch is certain."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from inference_pipeline.monitor.shadow import (
    KEEP_SHADOWING,
    KEPT,
    NO_CHALLENGER,
    PROMOTED,
    REPORTED,
    WOULD_PROMOTE,
    shadow_step,
)
from shared.promotion import (
    PROMOTION_REASON_TAG,
    SHADOW_RESULT_TAG,
    Promotion,
    ShadowRules,
    gate_tags,
)
from shared.registry import ModelRegistry, RegistrySettings

pytestmark = pytest.mark.integration

RULES = ShadowRules(min_auc_gain=0.0, max_log_loss_increase=0.0, min_labels=200)


def registry_with(tmp_path: Path, *, eligible: bool = True) -> ModelRegistry:
    """v1 champion, v2 challenger (its gates passed or not)."""
    registry = ModelRegistry(RegistrySettings(data_root=tmp_path, model_name="shadow_step"))
    files = tmp_path / "files"
    files.mkdir()
    (files / "model.txt").write_text("placeholder")
    for passed in (True, eligible):
        with registry.run("shadow-step-test", tags={}) as run_id:
            registry.register(run_id, files, tags=gate_tags(passed, "test", Promotion.never))
    registry.promote("1")
    return registry


def scored(champion_skill: float, challenger_skill: float, flights: int = 400):
    """Predictions of both versions for ``flights`` labelled flights; skill 1.0 = perfect."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, flights)
    ids = [f"f{i:04d}" for i in range(flights)]
    rows = []
    for version, skill in (("1", champion_skill), ("2", challenger_skill)):
        noise = rng.uniform(0, 1, flights)
        probability = np.clip(skill * labels + (1 - skill) * noise, 0.01, 0.99)
        rows.append(
            pl.DataFrame(
                {
                    "flight_id": ids,
                    "model_version": version,
                    "probability": probability,
                    "scored_at": datetime(2013, 3, 11, tzinfo=UTC),
                    "request_id": "r",
                }
            )
        )
    outcomes = pl.DataFrame({"flight_id": ids, "is_delayed": labels})
    return pl.concat(rows), outcomes


def test_a_better_challenger_is_promoted_when_promotion_is_on(tmp_path: Path) -> None:
    registry = registry_with(tmp_path)
    predictions, outcomes = scored(0.3, 0.6)
    step = shadow_step(
        registry, predictions, outcomes, RULES, act=True, promote=True, context="test"
    )
    assert step.action == PROMOTED and not step.pending
    assert registry.version_for("champion") == "2"
    tags = registry.get("2").tags
    assert tags[PROMOTION_REASON_TAG].startswith("test: promote challenger v2 over v1")
    assert tags[SHADOW_RESULT_TAG] == tags[PROMOTION_REASON_TAG]
    again = shadow_step(
        registry, predictions, outcomes, RULES, act=True, promote=True, context="test"
    )
    assert again.action == NO_CHALLENGER  # the challenger alias names the champion now


def test_with_promotion_off_the_decision_is_recorded_and_champion_stays(tmp_path: Path) -> None:
    registry = registry_with(tmp_path)
    predictions, outcomes = scored(0.3, 0.6)
    step = shadow_step(
        registry, predictions, outcomes, RULES, act=True, promote=False, context="test"
    )
    assert step.action == WOULD_PROMOTE and not step.pending
    assert registry.version_for("champion") == "1"
    result = registry.get("2").tags[SHADOW_RESULT_TAG]
    assert "not promoted: FTI_SHADOW_PROMOTE is off" in result
    assert "promote challenger --require-eligible" in result
    assert (
        shadow_step(
            registry, predictions, outcomes, RULES, act=True, promote=True, context="test"
        ).action
        == NO_CHALLENGER
    )  # decided once


def test_a_worse_challenger_keeps_the_champion_and_says_why(tmp_path: Path) -> None:
    registry = registry_with(tmp_path)
    predictions, outcomes = scored(0.6, 0.3)
    step = shadow_step(
        registry, predictions, outcomes, RULES, act=True, promote=True, context="test"
    )
    assert step.action == KEPT
    assert registry.version_for("champion") == "1"
    assert "not good enough on ROC AUC and log loss" in registry.get("2").tags[SHADOW_RESULT_TAG]


def test_report_only_and_too_few_labels_change_nothing(tmp_path: Path) -> None:
    registry = registry_with(tmp_path)
    predictions, outcomes = scored(0.3, 0.6)
    reported = shadow_step(
        registry, predictions, outcomes, RULES, act=False, promote=True, context="test"
    )
    assert reported.action == REPORTED and reported.decision == {
        "promote": True,
        "resolved": True,
        "reason": reported.reason,
    }
    few = shadow_step(
        registry, predictions, outcomes.head(150), RULES, act=True, promote=True, context="test"
    )
    assert few.action == KEEP_SHADOWING and few.pending
    assert few.comparison is not None and few.comparison["flights"] == 150
    assert registry.version_for("champion") == "1"
    assert SHADOW_RESULT_TAG not in registry.get("2").tags


def test_a_challenger_the_gates_refused_is_decided_at_once(tmp_path: Path) -> None:
    registry = registry_with(tmp_path, eligible=False)
    predictions, outcomes = scored(0.3, 0.9)
    step = shadow_step(
        registry, predictions, outcomes.head(10), RULES, act=True, promote=True, context="t"
    )
    assert step.action == KEPT and registry.version_for("champion") == "1"
    assert "the gates refused version 2" in registry.get("2").tags[SHADOW_RESULT_TAG]
