"""Gate eligibility recorded on a model version, the shadow decision, and promotion.

Continuous training registers every new version as ``challenger`` and never moves ``champion``
itself; a later step (a shadow comparison, an operator) decides. For that later step to refuse a
challenger the gates refused, the training pipeline records its gate decision as tags on the
version. These names are the contract between the training pipeline, which writes them, and
whoever promotes, which reads them; both import only ``shared``.

The **shadow decision** is the one rule by which a challenger that scored the same flights as the
champion replaces it: the year replay (batch shadowing) and the monitor's shadow step (online
shadow traffic, ``python -m inference_pipeline monitor shadow``) both call :func:`decide`, with
the margins of :class:`ShadowRuleSettings` (``FTI_SHADOW_*``). How the two versions' scores are
paired and measured on labelled flights lives with the monitor's quality metrics.

The explicit ``python -m training_pipeline promote VERSION`` stays an operator's override and
does not look at the tags unless asked to (``--require-eligible``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import GateFailed
from shared.registry import ModelRegistry, RegisteredVersion

log = logging.getLogger(__name__)

GATES_PASSED_TAG = "gates_passed"  # "true" | "false"
GATES_SUMMARY_TAG = "gates_summary"  # the gates' reasons, or "all gates passed"
PROMOTION_POLICY_TAG = "promotion_policy"  # the Promotion the version was trained under
PROMOTION_REASON_TAG = "promotion_reason"  # why it was made champion (set when promoted)
SHADOW_RESULT_TAG = "shadow_result"  # on a challenger: how its shadow comparison ended
MAX_TAG_CHARS = 4000  # MLflow refuses longer tag values in some stores


class Promotion(StrEnum):
    """What a training run may do with ``champion`` when its version passes the gates."""

    if_gates_pass = "if-gates-pass"  # the default `train`: a passing version becomes champion
    never = "never"  # continuous training: challenger only; a later step promotes


def gate_tags(passed: bool, summary: str, promotion: Promotion) -> dict[str, str]:
    """The tags a training run puts on the version it registers."""
    return {
        GATES_PASSED_TAG: "true" if passed else "false",
        GATES_SUMMARY_TAG: summary[:MAX_TAG_CHARS],
        PROMOTION_POLICY_TAG: promotion.value,
    }


@dataclass(frozen=True)
class Eligibility:
    version: str
    eligible: bool
    reason: str


def gate_eligibility(version: RegisteredVersion) -> Eligibility:
    """Did the gates pass this version when it was trained? Unknown counts as no."""
    passed = version.tags.get(GATES_PASSED_TAG)
    summary = version.tags.get(GATES_SUMMARY_TAG, "")
    if passed is None:
        return Eligibility(
            version.version,
            False,
            f"version {version.version} has no recorded gate decision (registered before gate "
            "tags existed?); promote it explicitly with `python -m training_pipeline promote`",
        )
    if passed != "true":
        return Eligibility(
            version.version, False, f"the gates refused version {version.version}: {summary}"
        )
    return Eligibility(version.version, True, f"version {version.version} passed the gates")


def promote_if_eligible(registry: ModelRegistry, ref: str, reason: str) -> RegisteredVersion:
    """Make ``ref`` (a version or alias) champion only if its gates passed; record why.

    Raises :class:`GateFailed` (champion unchanged) for a version the gates refused or whose
    decision was never recorded.
    """
    version = registry.resolve(ref)
    eligibility = gate_eligibility(version)
    if not eligibility.eligible:
        raise GateFailed(
            f"not promoted, champion unchanged: {eligibility.reason}", reasons=[eligibility.reason]
        )
    promoted = registry.promote(version.version)
    registry.client.set_model_version_tag(
        registry.name, version.version, PROMOTION_REASON_TAG, reason[:MAX_TAG_CHARS]
    )
    log.info("promoted version %s: %s", version.version, reason)
    return promoted


# -- the shadow decision --------------------------------------------------------------------


class ShadowRuleSettings(BaseSettings):
    """The margins of the shadow decision (``FTI_SHADOW_*``), the same for the replay and the
    monitor's shadow step."""

    model_config = SettingsConfigDict(env_prefix="FTI_", env_file=None, extra="ignore")

    shadow_min_auc_gain: float = Field(
        default=0.0,
        ge=-1,
        le=1,
        description="the challenger's ROC AUC minus the champion's, on the same labelled flights, "
        "must be at least this to promote (negative: a tolerated loss)",
    )
    shadow_max_log_loss_increase: float = Field(
        default=0.0,
        ge=0,
        description="the challenger's log loss may exceed the champion's by at most this",
    )
    shadow_min_labels: int = Field(
        default=1000, ge=1, description="labelled flights both versions scored, before deciding"
    )

    @property
    def shadow_rules(self) -> ShadowRules:
        return ShadowRules(
            min_auc_gain=self.shadow_min_auc_gain,
            max_log_loss_increase=self.shadow_max_log_loss_increase,
            min_labels=self.shadow_min_labels,
        )


@dataclass(frozen=True)
class ShadowRules:
    min_auc_gain: float = 0.0  # challenger AUC - champion AUC must be >= this
    max_log_loss_increase: float = 0.0  # challenger log loss - champion's must be <= this
    min_labels: int = 1000


@dataclass(frozen=True)
class ShadowComparison:
    """Both versions measured on the same labelled flights (each flight scored by both)."""

    champion: str
    challenger: str
    flights: int  # labelled flights both versions scored
    champion_roc_auc: float
    champion_log_loss: float
    challenger_roc_auc: float
    challenger_log_loss: float

    @property
    def auc_gain(self) -> float:
        return self.challenger_roc_auc - self.champion_roc_auc

    @property
    def log_loss_increase(self) -> float:
        return self.challenger_log_loss - self.champion_log_loss

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "auc_gain": self.auc_gain,
            "log_loss_increase": self.log_loss_increase,
        }


@dataclass(frozen=True)
class ShadowDecision:
    promote: bool
    resolved: bool  # False: not enough labels yet, keep shadowing
    reason: str


def decide(
    comparison: ShadowComparison, eligibility: Eligibility, rules: ShadowRules
) -> ShadowDecision:
    """Promote the challenger, keep the champion, or keep shadowing - and why.

    A challenger the gates refused is decided at once (keep the champion). Promote only a
    gate-eligible challenger at least as good as the champion by the margins (ROC AUC gain at
    least ``min_auc_gain`` AND log loss increase at most ``max_log_loss_increase``), on at least
    ``min_labels`` labelled flights both scored."""
    c = comparison
    if not eligibility.eligible:  # no number of labels would make it promotable
        return ShadowDecision(False, True, f"keep champion v{c.champion}: {eligibility.reason}")
    if c.flights < rules.min_labels:
        return ShadowDecision(
            promote=False,
            resolved=False,
            reason=f"keep shadowing: {c.flights:,} labelled flights scored by both, "
            f"{rules.min_labels:,} needed",
        )
    versus = (
        f"ROC AUC {c.challenger_roc_auc:.4f} vs {c.champion_roc_auc:.4f} "
        f"({c.auc_gain:+.4f}, needs >= {rules.min_auc_gain:+.4f}), log loss "
        f"{c.challenger_log_loss:.4f} vs {c.champion_log_loss:.4f} "
        f"({c.log_loss_increase:+.4f}, allows <= {rules.max_log_loss_increase:+.4f}) "
        f"on {c.flights:,} labelled flights"
    )
    failures = []
    if math.isnan(c.auc_gain) or c.auc_gain < rules.min_auc_gain:
        failures.append("ROC AUC")
    if math.isnan(c.log_loss_increase) or c.log_loss_increase > rules.max_log_loss_increase:
        failures.append("log loss")
    if failures:
        return ShadowDecision(
            False,
            True,
            f"keep champion v{c.champion}: challenger v{c.challenger} not good enough on "
            f"{' and '.join(failures)}: {versus}",
        )
    return ShadowDecision(
        True, True, f"promote challenger v{c.challenger} over v{c.champion}: {versus}"
    )


def record_shadow_result(registry: ModelRegistry, version: str, result: str) -> None:
    """Close a challenger's shadow run: the tag says how it ended (a later step does not decide
    on it again; retraining may replace it)."""
    registry.client.set_model_version_tag(
        registry.name, version, SHADOW_RESULT_TAG, result[:MAX_TAG_CHARS]
    )
