"""Quality gates: may the candidate become champion?

Pure: the decision depends only on the metrics given. Both gates look at the same test window:
an absolute ROC AUC floor, and no regression against the current champion scored on that window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from training_pipeline.config import GateConfig


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why it failed (empty when passed)
    checks: list[str] = field(default_factory=list)  # every check, passed or not

    def summary(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "all gates passed"


def check_gates(
    candidate_roc_auc: float,
    champion_roc_auc: float | None,
    gates: GateConfig,
    *,
    champion_version: str | None = None,
) -> GateDecision:
    """``checks`` state each rule; ``reasons`` state each failure as a fact about the candidate
    ("test ROC AUC 0.5173 is below the floor 0.6500"), never the rule it broke."""
    reasons: list[str] = []
    checks: list[str] = []
    auc = f"test ROC AUC {candidate_roc_auc:.4f}"
    checks.append(f"{auc} >= floor {gates.min_roc_auc:.4f}")
    if math.isnan(candidate_roc_auc):
        reasons.append("test ROC AUC is not a number (a test window with a single class?)")
    elif candidate_roc_auc < gates.min_roc_auc:
        reasons.append(f"{auc} is below the floor {gates.min_roc_auc:.4f}")
    if champion_roc_auc is not None:
        bar = champion_roc_auc - gates.max_roc_auc_drop
        champion = f"champion v{champion_version}'s {champion_roc_auc:.4f}"
        checks.append(
            f"{auc} >= champion v{champion_version} {champion_roc_auc:.4f} - "
            f"{gates.max_roc_auc_drop:.4f} on the same window"
        )
        if not math.isnan(candidate_roc_auc) and candidate_roc_auc < bar:
            reasons.append(
                f"{auc} is more than {gates.max_roc_auc_drop:.4f} below {champion} on the same "
                "window"
            )
    return GateDecision(passed=not reasons, reasons=reasons, checks=checks)
