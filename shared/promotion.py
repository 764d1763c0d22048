"""Gate eligibility recorded on a model version, and promotion that respects it.

Continuous training registers every new version as ``challenger`` and never moves ``champion``
itself; a later step (a shadow comparison, an operator) decides. For that later step to refuse a
challenger the gates refused, the training pipeline records its gate decision as tags on the
version. These names are the contract between the training pipeline, which writes them, and
whoever promotes, which reads them; both import only ``shared``.

The explicit ``python -m training_pipeline promote VERSION`` stays an operator's override and
does not look at the tags unless asked to (``--require-eligible``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from shared.errors import GateFailed
from shared.registry import ModelRegistry, RegisteredVersion

log = logging.getLogger(__name__)

GATES_PASSED_TAG = "gates_passed"  # "true" | "false"
GATES_SUMMARY_TAG = "gates_summary"  # the gates' reasons, or "all gates passed"
PROMOTION_POLICY_TAG = "promotion_policy"  # the Promotion the version was trained under
PROMOTION_REASON_TAG = "promotion_reason"  # why it was made champion (set when promoted)
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
