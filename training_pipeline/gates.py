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
    reasons: list[str] = []
    checks: list[str] = []
    floor = f"test ROC AUC {candidate_roc_auc:.4f} >= floor {gates.min_roc_auc:.4f}"
    checks.append(floor)
    if math.isnan(candidate_roc_auc) or candidate_roc_auc < gates.min_roc_auc:
        reasons.append(f"failed: {floor}")
    if champion_roc_auc is not None:
        bar = champion_roc_auc - gates.max_roc_auc_drop
        versus = (
            f"test ROC AUC {candidate_roc_auc:.4f} >= champion v{champion_version} "
            f"{champion_roc_auc:.4f} - {gates.max_roc_auc_drop:.4f} on the same window"
        )
        checks.append(versus)
        if math.isnan(candidate_roc_auc) or candidate_roc_auc < bar:
            reasons.append(f"failed: {versus}")
    return GateDecision(passed=not reasons, reasons=reasons, checks=checks)
