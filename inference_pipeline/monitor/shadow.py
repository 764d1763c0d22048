"""The shadow step: does the challenger that scored the window's flights beside the champion
replace it?

Online, a service started with ``FTI_SHADOW=true`` has the ``challenger`` score every request
after the response (logged with ``source=shadow``); in the year replay the batch job scores with
both. Once the flights' outcomes reach the feature store, each version is measured on exactly the
labelled flights that *both* scored - not on each version's own sample - so a difference is the
models', not the samples'. The decision itself is :func:`shared.promotion.decide`, the one rule
the replay uses too: promote only a gate-eligible challenger at least as good as the champion by
the margins ``FTI_SHADOW_MIN_AUC_GAIN`` / ``FTI_SHADOW_MAX_LOG_LOSS_INCREASE``, on at least
``FTI_SHADOW_MIN_LABELS`` labelled flights; otherwise keep the champion, or keep shadowing.

A challenger is *in shadow* while the ``challenger`` alias names a version other than the
champion's that has no ``shadow_result`` tag: a resolved comparison writes that tag (with the
reason), so the step never decides on the same version twice and retraining may replace it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from inference_pipeline.monitor.quality import log_loss, roc_auc
from shared.promotion import (
    SHADOW_RESULT_TAG,
    ShadowComparison,
    ShadowRules,
    decide,
    gate_eligibility,
    promote_if_eligible,
    record_shadow_result,
)
from shared.registry import CHALLENGER, CHAMPION, ModelRegistry

log = logging.getLogger(__name__)

# What the step did (``ShadowStep.action``).
NO_CHALLENGER = "none: no challenger in shadow"
KEEP_SHADOWING = "keep shadowing"
KEPT = "kept the champion"
PROMOTED = "promoted the challenger"
WOULD_PROMOTE = "not promoted: automatic promotion is off"
REPORTED = "reported only"  # `monitor run`: the decision is shown; `monitor shadow` acts


def paired_scores(
    predictions: pl.DataFrame, outcomes: pl.DataFrame, champion: str, challenger: str
) -> pl.DataFrame:
    """``flight_id, champion, challenger, is_delayed``: labelled flights scored by both versions
    (each version's latest prediction of the flight; cancelled flights have no label)."""

    def scores(version: str) -> pl.DataFrame:
        return (
            predictions.filter(pl.col("model_version") == version)
            .sort("scored_at", "request_id")
            .unique("flight_id", keep="last")
            .select("flight_id", pl.col("probability").cast(pl.Float64).alias(version))
        )

    labels = outcomes.filter(pl.col("is_delayed").is_not_null()).select(
        "flight_id", pl.col("is_delayed").cast(pl.Int8)
    )
    pairs = (
        scores(champion)
        .join(scores(challenger), on="flight_id", how="inner")
        .join(labels.unique("flight_id"), on="flight_id", how="inner")
        .sort("flight_id")
    )
    return pairs.rename({champion: "champion", challenger: "challenger"})


def compare(pairs: pl.DataFrame, champion: str, challenger: str) -> ShadowComparison:
    labels = pairs["is_delayed"].to_numpy()
    first, second = pairs["champion"].to_numpy(), pairs["challenger"].to_numpy()
    return ShadowComparison(
        champion=champion,
        challenger=challenger,
        flights=pairs.height,
        champion_roc_auc=roc_auc(labels, first),
        champion_log_loss=log_loss(labels, first),
        challenger_roc_auc=roc_auc(labels, second),
        challenger_log_loss=log_loss(labels, second),
    )


@dataclass
class ShadowStep:
    """What the shadow step found and did; ``to_dict()`` is its section of the JSON result."""

    champion: str | None
    challenger: str | None
    pending: bool  # a challenger is still in shadow after this step
    action: str
    reason: str
    comparison: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None
    rules: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "champion": self.champion,
            "challenger": self.challenger,
            "pending": self.pending,
            "action": self.action,
            "reason": self.reason,
            "comparison": self.comparison,
            "decision": self.decision,
            "rules": self.rules,
        }


def shadowed_challenger(registry: ModelRegistry) -> tuple[str | None, str | None, str]:
    """(champion, challenger in shadow or None, why none)."""
    champion = registry.version_for(CHAMPION)
    challenger = registry.version_for(CHALLENGER)
    if challenger is None:
        return champion, None, "the registry has no challenger"
    if challenger == champion:
        return champion, None, f"the challenger alias names the champion v{champion}"
    if champion is None:
        return None, None, "the registry has no champion to compare with"
    result = registry.get(challenger).tags.get(SHADOW_RESULT_TAG)
    if result is not None:
        return champion, None, f"challenger v{challenger} was decided already: {result}"
    return champion, challenger, ""


def shadow_step(
    registry: ModelRegistry,
    predictions: pl.DataFrame,
    outcomes: pl.DataFrame,
    rules: ShadowRules,
    *,
    act: bool,
    promote: bool,
    context: str,
) -> ShadowStep:
    """Compare the challenger in shadow with the champion on the window's labelled flights and
    decide. With ``act``: promote (only when ``promote``, and only a gate-eligible challenger)
    and close a resolved comparison with its ``shadow_result`` tag; without: report only."""
    rule_values = {
        "min_auc_gain": rules.min_auc_gain,
        "max_log_loss_increase": rules.max_log_loss_increase,
        "min_labels": rules.min_labels,
        "automatic_promotion": promote,
    }
    champion, challenger, why_none = shadowed_challenger(registry)
    if challenger is None or champion is None:
        return ShadowStep(champion, None, False, NO_CHALLENGER, why_none, rules=rule_values)
    comparison = compare(
        paired_scores(predictions, outcomes, champion, challenger), champion, challenger
    )
    decision = decide(comparison, gate_eligibility(registry.get(challenger)), rules)
    step = ShadowStep(
        champion=champion,
        challenger=challenger,
        pending=not decision.resolved,
        action=KEEP_SHADOWING if not decision.resolved else REPORTED,
        reason=decision.reason,
        comparison=comparison.to_dict(),
        decision={
            "promote": decision.promote,
            "resolved": decision.resolved,
            "reason": decision.reason,
        },
        rules=rule_values,
    )
    if not act or not decision.resolved:
        return step
    if decision.promote and promote:
        promote_if_eligible(registry, challenger, f"{context}: {decision.reason}")
        step.action = PROMOTED
        result = decision.reason
    elif decision.promote:
        step.action = WOULD_PROMOTE
        result = (
            f"{decision.reason}; not promoted: FTI_SHADOW_PROMOTE is off (promote it with "
            "`python -m training_pipeline promote challenger --require-eligible`)"
        )
        step.reason = result
    else:
        step.action = KEPT
        result = decision.reason
    record_shadow_result(registry, challenger, f"{context}: {result}")
    step.pending = False
    log.info("shadow step: %s: %s", step.action, result)
    return step
